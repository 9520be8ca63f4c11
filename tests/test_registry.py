"""Every registry model: builds from the shipped params, runs forward and backward with finite
values, and a few CPU steps of the one trainer lower its loss."""

import json

import pytest
import torch

from crn_repro.checkpoint import save_model_file
from crn_repro.params import parse_params
from crn_repro.registry import GENERATORS, MODELS, BuildContext, get_spec
from crn_repro.trainer import train
from conftest import SMALL_SIZE

# Small networks for 32x64 images (the shipped params are for 64x128; pix2pix needs 2^5 | H).
SIZE = SMALL_SIZE
TINY_NETWORKS = {
    "crn": {"preset": None, "widths": [8, 8, 8, 8], "num_outputs": 1},
    "image-space": {"preset": None, "widths": [8, 8, 8, 8], "num_outputs": 1},
    "crn-diverse": {"preset": None, "widths": [8, 8, 8, 8], "num_outputs": 3},
    "fullres": {"num_layers": 4, "width": 8, "max_dilation": None},
    "unet": {"depth": 2, "base_width": 4, "max_width": 8},
    "pix2pix": {"input": "layout", "num_downs": 5, "ngf": 4, "ndf": 4, "n_layers_d": 3, "dropout": 0.5},
    "gan-semseg": {"ngf": 4, "ndf": 4, "num_downs": 3, "num_downs_d": 3},
    "segmenter": {"base_width": 4, "depth": 2, "max_width": 8},
}


def tiny_model_params(raw, runs):
    raw["paths"]["runs"] = str(runs)
    raw["data"]["image_size_hw"] = list(SIZE)
    raw["models"] = list(GENERATORS)
    for name, network in TINY_NETWORKS.items():
        raw[name]["network"] = network
    return raw


def test_every_model_has_a_tiny_config():
    assert set(TINY_NETWORKS) == set(MODELS)


def test_specs_are_consistent():
    """What a spec says of a model fits the rest of the registry: display names are unique, required
    models exist, the progress loss names one of the phases, only cascades freeze modules."""
    assert len({spec.display_name for spec in MODELS.values()}) == len(MODELS)
    for name, spec in MODELS.items():
        assert all(required in MODELS and required != name for required in spec.requires), name
        assert spec.progress_loss.split("/")[0] in spec.networks, name
        assert spec.cascade == hasattr(spec.networks[spec.main_network][0], "freeze_all_but_last"), name


def _model_file(params, ctx, model):
    """An untrained model file of ``model`` where the pipeline keeps it (a model another one requires)."""
    spec = get_spec(model)
    kwargs = {n: resolve(params.model(model).network, ctx) for n, (_, resolve) in spec.networks.items()}
    nets = {n: cls(**kwargs[n]) for n, (cls, _) in spec.networks.items()}
    path = ctx.runs_dir / model / "model.pt"
    save_model_file(path, model, kwargs, nets, {"image_size_hw": list(ctx.image_size_hw)})


@pytest.mark.parametrize("model", list(MODELS))
def test_forward_backward_finite(model, tiny_raw, tmp_path):
    params = parse_params(tiny_model_params(tiny_raw, tmp_path / "runs"))
    spec = get_spec(model)
    mp = params.model(model)
    ctx = BuildContext(SIZE, 20, params.vgg, 3, tmp_path / "runs")
    for required in spec.requires:
        _model_file(params, ctx, required)
    torch.manual_seed(0)
    nets = {n: cls(**resolve(mp.network, ctx)) for n, (cls, resolve) in spec.networks.items()}
    json.dumps({n: resolve(mp.network, ctx) for n, (_, resolve) in spec.networks.items()})  # storable kwargs
    objective = spec.objective(mp.objective, ctx)
    layout = torch.nn.functional.one_hot(torch.randint(0, 20, (2, *SIZE)), 20).permute(0, 3, 1, 2).float()
    image = torch.rand(2, 3, *SIZE) * 255
    if spec.role == "generator":
        out = nets["G"](layout)
        assert out.shape[0] == 2 and out.shape[1] % 3 == 0 and out.shape[2:] == SIZE
        assert torch.isfinite(out).all()
    for phase in objective.phases:
        for net in nets.values():
            net.zero_grad()
        losses = objective(phase, nets, (layout, image))
        assert "total" in losses and all(torch.isfinite(v).all() for v in losses.values())
        losses["total"].backward()
        grads = [p.grad for p in nets[phase].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), phase


@pytest.mark.slow
@pytest.mark.parametrize("model", list(GENERATORS))
def test_few_cpu_steps_lower_the_loss(model, prepared_small, tiny_raw, tmp_path):
    raw = tiny_model_params(tiny_raw, tmp_path / "runs")
    raw["paths"]["prepared"] = str(prepared_small)
    raw["train"].update(total_steps=16, checkpoint_every_steps=16)
    params = parse_params(raw)
    spec = get_spec(model)
    for required in spec.requires:
        _model_file(params, BuildContext(SIZE, 20, params.vgg, 3, tmp_path / "runs"), required)
    summary = train(params, model)
    assert summary["finished"]
    tsv = tmp_path / f"runs/{model}/live/plots/metrics/train/{spec.progress_loss}.tsv"
    losses = [float(line.split("\t")[-1]) for line in tsv.read_text().splitlines()[1:]]
    assert sum(losses[-4:]) < sum(losses[:4]), (model, losses)


def test_gan_semseg_state_excludes_the_frozen_segmenter(tiny_raw, tmp_path):
    params = parse_params(tiny_model_params(tiny_raw, tmp_path / "runs"))
    ctx = BuildContext(SIZE, 20, params.vgg, 3, tmp_path / "runs")
    _model_file(params, ctx, "segmenter")
    objective = get_spec("gan-semseg").objective(params.model("gan-semseg").objective, ctx)
    state = objective.state_dict()
    assert not any(key.startswith("segmenter.") for key in state)
    before = {k: v.clone() for k, v in objective.segmenter.state_dict().items()}
    objective.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in objective.segmenter.state_dict().items())
    assert len(objective.identity()["segmenter_sha256"]) == 64


def test_the_model_families_docs_multi_gpu_names():
    """docs/multi-gpu.md states what N processes compute per family: BatchNorm only in pix2pix and gan-semseg,
    dropout (the one noise a network draws) only in pix2pix, and always the per-image kind of crn_repro.noise;
    every other model normalises per image (layer or group norm). Checked on the shipped networks."""
    from pathlib import Path

    from conftest import REPO
    from crn_repro.noise import Dropout
    from crn_repro.params import load_params

    params = load_params(REPO / "params.yaml")
    ctx = BuildContext(tuple(params.data.image_size_hw), 20, params.vgg, 3, Path("runs"))
    batchnorm, dropout = set(), set()
    for model, spec in MODELS.items():
        for name, (cls, resolve) in spec.networks.items():
            with torch.device("meta"):
                net = cls(**resolve(params.model(model).network, ctx))
            for module in net.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    batchnorm.add(model)
                if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                    assert isinstance(module, Dropout), f"{model}.{name}: {type(module).__name__} draws noise per process"
                    dropout.add(model)
    assert batchnorm == {"pix2pix", "gan-semseg"} and dropout == {"pix2pix"}
