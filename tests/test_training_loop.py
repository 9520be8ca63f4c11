"""The GPU-ready training loop (trainer.run_steps): options that must not change what is computed
(prefetching, activation checkpointing, fused Adam, bf16 autocast on CPU, torch.compile), no host
synchronisation between log steps, the non-finite check, GAN phases that leave the discriminator's
weights alone, and training states without frozen networks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from crn_repro import trainer
from crn_repro.batches import BatchPrefetcher
from crn_repro.checkpoint import load_training_state
from crn_repro.errors import CrnError
from crn_repro.params import parse_params
from crn_repro.registry import get_spec
from crn_repro.runlog import LossLog
from crn_repro.runtime import setup_runtime
from crn_repro.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _params(raw, prepared_root, runs, **train):
    raw = dict(raw)
    raw["paths"] = dict(raw["paths"], prepared=str(prepared_root / "data/prepared"), runs=str(runs))
    raw["train"] = dict(raw["train"], **train)
    return parse_params(raw)


def _small_params(raw, prepared, runs, model, **train):
    """``model`` alone on the 32x64 data (conftest.SMALL_SIZE), with tiny networks."""
    from conftest import SMALL_SIZE

    raw = dict(raw, models=[model])
    raw["paths"] = dict(raw["paths"], prepared=str(prepared), runs=str(runs))
    raw["data"] = dict(raw["data"], image_size_hw=list(SMALL_SIZE))
    raw["crn"]["network"]["widths"] = [8, 8, 8, 8]
    raw["pix2pix"]["network"].update(num_downs=5, ngf=4, ndf=4)
    raw["train"] = dict(raw["train"], **train)
    return parse_params(raw)


def _weights(runs, model="crn", net="G"):
    return load_training_state(Path(runs) / model / "state.pt")["nets"][net]


def _close(a, b, **tolerance):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance, msg=key)


def test_prefetching_changes_nothing(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "a", prefetch_batches=0), "crn")
    train(_params(tiny_raw, root, tmp_path / "b", prefetch_batches=3), "crn")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_gives_the_same_training(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "a"), "crn")
    train(_params(tiny_raw, root, tmp_path / "b", activation_checkpointing=True), "crn")
    _close(_weights(tmp_path / "a"), _weights(tmp_path / "b"), rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_keeps_only_module_inputs():
    """The saved activations of a checkpointed CRN are a fraction of the plain one's (a module's
    internals are recomputed in the backward pass)."""
    from crn_repro.crn import CRN

    torch.manual_seed(0)
    net = CRN(20, [16, 16, 16, 16, 16])
    layout = torch.rand(1, 20, 64, 128)
    saved = []

    def count():
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            net(layout).sum().backward()
        return sum(saved)

    plain = count()
    net.activation_checkpointing = True
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    checkpointed = count()
    assert checkpointed < plain / 2, (checkpointed, plain)
    for before, p in zip(grads, net.parameters()):
        torch.testing.assert_close(p.grad, before, rtol=1e-5, atol=1e-6)


def test_fused_adam_matches_the_plain_one(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "a"), "crn")
    train(_params(tiny_raw, root, tmp_path / "b", fused_adam=True), "crn")
    state = load_training_state(tmp_path / "b/crn/state.pt")
    assert state["optimizers"]["G"]["param_groups"][0]["fused"] is True
    _close(_weights(tmp_path / "a"), _weights(tmp_path / "b"), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains_on_the_cpu(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    summary = train(_params(tiny_raw, root, tmp_path / "bf16", precision="bf16"), "crn")
    assert summary["precision"] == "bf16 autocast" and summary["finished"]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "bf16").values())


def test_a_bf16_training_step_matches_the_fp32_one(tiny_raw, tmp_path):
    """The same crn step (same weights, batch and seed) in bf16 autocast and in fp32: the losses agree
    within 2% (bf16 keeps 8 significant bits, 0.4% per rounding) and Adam's first update, whose size is
    lr x sign(gradient), has the same sign for at least 95% of the weights."""
    from crn_repro.bench import build_run_without_data, synthetic_batch
    from crn_repro.datasets import Batch
    from crn_repro.runtime import Runtime

    params = parse_params(tiny_raw)
    rt = Runtime(torch.device("cpu"), 0, 1, None, False)
    torch.manual_seed(0)
    runs = {name: build_run_without_data(params, "crn", params.model("crn"), rt, tmp_path) for name in ("fp32", "bf16")}
    layout, image = synthetic_batch(runs["fp32"], params, 2, rt.device)
    before = {k: v.clone() for k, v in runs["fp32"].nets["G"].state_dict().items()}
    losses = {
        name: trainer.train_step(run, rt, 0, Batch(layout, image, (0, 1)), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                                     enabled=name == "bf16"))
        for name, run in runs.items()
    }
    assert losses["bf16"].keys() == losses["fp32"].keys()
    for key, value in losses["fp32"].items():
        torch.testing.assert_close(losses["bf16"][key], value, rtol=2e-2, atol=1e-6, msg=key)
    steps = {name: torch.cat([(run.nets["G"].state_dict()[k] - before[k]).flatten() for k in before if before[k].is_floating_point()])
             for name, run in runs.items()}
    moved = steps["fp32"] != 0
    agree = (torch.sign(steps["bf16"][moved]) == torch.sign(steps["fp32"][moved])).float().mean()
    assert moved.float().mean() > 0.9 and agree >= 0.95, float(agree)


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "eager"), "crn")
    summary = train(_params(tiny_raw, root, tmp_path / "compiled", compile=True), "crn")
    assert summary["finished"]
    state = load_training_state(tmp_path / "compiled/crn/state.pt")
    assert not any(k.startswith("_orig_mod") for k in state["nets"]["G"])  # saved unwrapped
    _close(_weights(tmp_path / "eager"), _weights(tmp_path / "compiled"), rtol=1e-4, atol=1e-5)


SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def test_no_host_synchronisation_between_log_steps(prepared_small, tiny_raw, tmp_path, monkeypatch):
    """Between log steps, no code of this project reads a tensor's value on the host (each such read
    waits for the GPU). Calls from torch's own code (e.g. Adam's step counter, a CPU tensor) don't count."""
    ours = (str(REPO / "crn_repro"), str(REPO / "baselines"))
    reads: list[str] = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            if counting.active and caller.f_code.co_filename.startswith(ours):
                reads.append(f"{name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        return wrapper

    counting.active = False
    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def watched(fn):
        def run(*args, **kwargs):
            counting.active = True
            try:
                return fn(*args, **kwargs)
            finally:
                counting.active = False

        return run

    monkeypatch.setattr(trainer, "train_step", watched(trainer.train_step))
    monkeypatch.setattr(LossLog, "add", watched(LossLog.add))
    monkeypatch.setattr(BatchPrefetcher, "get", watched(BatchPrefetcher.get))
    for model in ("crn", "pix2pix"):
        train(_small_params(tiny_raw, prepared_small, tmp_path / model, model, total_steps=6, log_every_steps=3,
                            checkpoint_every_steps=3), model)
    assert reads == []


def test_a_non_finite_loss_stops_with_the_step_named(prepared_tiny, tiny_raw, tmp_path, monkeypatch):
    root, _ = prepared_tiny
    real_step = trainer.train_step

    def poisoned(run, rt, step, batch, autocast):
        losses = real_step(run, rt, step, batch, autocast)
        if step + 1 == 3:
            losses["G/total"] = losses["G/total"] * float("nan")
        return losses

    monkeypatch.setattr(trainer, "train_step", poisoned)
    params = _params(tiny_raw, root, tmp_path / "runs", total_steps=8, log_every_steps=4, checkpoint_every_steps=4)
    with pytest.raises(CrnError, match="crn: loss became non-finite at step 3 "):
        train(params, "crn")
    assert not (tmp_path / "runs/crn/state.pt").exists()  # no checkpoint of a diverged run


def test_the_generator_phase_leaves_the_discriminator_weights_alone(prepared_small, tiny_raw, tmp_path, monkeypatch):
    """pix2pix: D's weights receive gradient once per step (its own phase), never from G's loss."""
    params = _small_params(tiny_raw, prepared_small, tmp_path / "runs", "pix2pix", total_steps=2, checkpoint_every_steps=2)
    calls = {"D": 0, "G": 0}
    counts = {}
    real_build = trainer.build_run

    def build(*args, **kwargs):
        run = real_build(*args, **kwargs)
        for name, net in run.nets.items():
            counts[name] = sum(1 for _ in net.parameters())
            for p in net.parameters():
                p.register_hook(lambda grad, name=name: calls.__setitem__(name, calls[name] + 1))
        return run

    monkeypatch.setattr(trainer, "build_run", build)
    train(params, "pix2pix")
    assert calls == {"D": 2 * counts["D"], "G": 2 * counts["G"]}  # two steps, one backward each


def test_training_state_holds_no_frozen_network(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "runs"), "crn")
    state = load_training_state(tmp_path / "runs/crn/state.pt")
    assert not any(key.startswith("loss.vgg.") for key in state["objective"])
    assert "loss.lambdas" in state["objective"]


def test_an_older_state_with_the_vgg_weights_still_resumes(prepared_tiny, tiny_raw, tmp_path):
    root, _ = prepared_tiny
    params = _params(tiny_raw, root, tmp_path / "runs")
    train(params, "crn", until_step=2)
    path = tmp_path / "runs/crn/state.pt"
    state = load_training_state(path)
    state["objective"]["loss.vgg.features.0.weight"] = torch.zeros(1)  # what older states carried
    torch.save(state, path)
    assert train(params, "crn")["finished"]


def test_log_every_steps_must_divide_the_checkpoint_interval(tiny_raw):
    tiny_raw["train"].update(checkpoint_every_steps=5, log_every_steps=2)
    with pytest.raises(CrnError, match="train.checkpoint_every_steps: must be a multiple of log_every_steps"):
        parse_params(tiny_raw)


def test_cpu_threads_sets_torch_threads(tiny_params):
    import dataclasses

    before = torch.get_num_threads()
    try:
        setup_runtime(dataclasses.replace(tiny_params.train, cpu_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cached_reference_features_give_the_same_training(prepared_tiny, tiny_raw, tmp_path, monkeypatch):
    """Each training image's VGG-19 features are computed once (the data has no augmentation), and
    training ends where it ends without the cache, to float rounding (a batch's companions can change
    the kernels' rounding)."""
    from crn_repro.losses import FeatureMatchingLoss

    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "plain", total_steps=9, checkpoint_every_steps=9,
                  cache_reference_features=False), "crn")
    images_through_vgg = []
    real = FeatureMatchingLoss.reference_features

    def counting(self, image, keys=None):
        if self.reference_cache is not None and keys is not None:  # training batches (validation has no keys)
            images_through_vgg.extend(k for k in keys if k not in self.reference_cache)
        return real(self, image, keys)

    monkeypatch.setattr(FeatureMatchingLoss, "reference_features", counting)
    summary = train(_params(tiny_raw, root, tmp_path / "cached", total_steps=9, checkpoint_every_steps=9,
                            cache_reference_features=True), "crn")
    assert summary["finished"]
    assert sorted(images_through_vgg) == list(range(6))  # 9 steps x 2 = 3 epochs of 6 images, each computed once
    _close(_weights(tmp_path / "plain"), _weights(tmp_path / "cached"), rtol=1e-5, atol=1e-6)


def test_checkpoints_log_validation_losses_and_sample_images(prepared_tiny, tiny_raw, tmp_path):
    from PIL import Image

    root, _ = prepared_tiny
    train(_params(tiny_raw, root, tmp_path / "runs", total_steps=4, checkpoint_every_steps=2), "crn")
    live = tmp_path / "runs/crn/live/plots"
    rows = (live / "metrics/val/G/total.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in rows[1:]] == ["2", "4"]  # one row per checkpoint
    assert all(float(row.split("\t")[1]) > 0 for row in rows[1:])
    sample = Image.open(live / "images/samples/val_0.png")
    assert sample.size == (3 * 32, 16)  # layout | synthesized | reference, at 16x32
    metrics = json.loads((tmp_path / "runs/crn/metrics.json").read_text())
    assert set(metrics) == {"steps", "loss", "min", "img_s"} and metrics["steps"] == 4
