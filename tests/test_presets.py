"""The paper's experiments as presets (presets/: the demo's full defaults and small override files):
each resolves and validates, every model builds at its preset's resolution and class count (on the
meta device: no memory is allocated), the shipped params.yaml is the resolved demo, and `dvc exp run
-S` changes only the line it edits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import yaml

from crn_repro.errors import CrnError
from crn_repro.params import load_params, parse_params
from crn_repro.prepare import num_classes_for
from crn_repro.presets import preset_names, resolve, write_preset
from crn_repro.registry import MODELS, SEGMENTERS, BuildContext, count_parameters

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "cityscapes-256p": ("cityscapes", (256, 512), 20),
    "cityscapes-512p": ("cityscapes", (512, 1024), 20),
    "cityscapes-1024p": ("cityscapes", (1024, 2048), 20),
    "nyu": ("nyu", (256, 512), 41),
}


def _preset(name):
    return parse_params(yaml.safe_load(resolve(name, REPO / "presets")), f"preset {name}")


def test_every_preset_file_is_listed():
    assert preset_names(REPO / "presets") == sorted([*PRESETS, "demo"])


def test_the_shipped_params_are_the_resolved_demo():
    assert (REPO / "params.yaml").read_text() == resolve("demo", REPO / "presets")


def test_presets_are_small():
    """A preset holds what its experiment changes, not a copy of the defaults."""
    demo = len((REPO / "presets/demo.yaml").read_text().splitlines())
    for name in PRESETS:
        assert len((REPO / "presets" / f"{name}.yaml").read_text().splitlines()) < demo / 2, name


def test_presets_and_the_demo_never_share_an_output_folder():
    """Switching params files must not overwrite another experiment's cache, runs, images or reports."""
    all_params = [load_params(REPO / "params.yaml")] + [_preset(name) for name in sorted(PRESETS)]
    for key in ("prepared", "runs", "synth", "reports"):
        folders = [getattr(params.paths, key) for params in all_params]
        assert len(set(folders)) == len(folders), (key, folders)
    studies = [params.study.dir for params in all_params]  # all under paths.studies, one folder each
    assert len(set(studies)) == len(studies), studies


def test_writing_a_preset_keeps_edits_unless_forced(tmp_path):
    target = tmp_path / "params.yaml"
    write_preset("cityscapes-256p", target, presets_dir=REPO / "presets")
    write_preset("demo", target, presets_dir=REPO / "presets")  # a preset's file: replaced freely
    edited = target.read_text().replace("total_steps: 400", "total_steps: 7")
    target.write_text(edited)
    with pytest.raises(CrnError, match="params.yaml: has edits that no preset holds"):
        write_preset("nyu", target, presets_dir=REPO / "presets")
    assert target.read_text() == edited  # nothing lost
    write_preset("nyu", target, force=True, presets_dir=REPO / "presets")
    assert load_params(target).data.dataset == "nyu"


def test_a_preset_naming_an_unknown_key_is_refused(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "demo.yaml").write_text((REPO / "presets/demo.yaml").read_text())
    (presets / "typo.yaml").write_text("train:\n  total_stpes: 5\n")
    with pytest.raises(CrnError, match=r"typo.yaml: train.total_stpes: not a key of presets/demo.yaml"):
        resolve("typo", presets)


def test_a_dvc_exp_run_set_changes_only_its_own_line(tmp_path):
    """`dvc exp run -S train.total_steps=20` rewrites params.yaml through DVC's own YAML round trip."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    with modify_yaml(str(path)) as data:
        data["train"]["total_steps"] = 20
        data["crn"]["optimizer"]["G"]["lr"] = 0.002
    before, after = (REPO / "params.yaml").read_text().splitlines(), path.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == ["total_steps: 20", "G: {lr: 0.002, betas: [0.9, 0.999]}"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_loads_and_every_model_builds(name):
    params = _preset(name)
    dataset, size_hw, num_classes = PRESETS[name]
    assert params.data.dataset == dataset and tuple(params.data.image_size_hw) == size_hw
    assert num_classes_for(params) == num_classes
    assert params.vgg.weights != "random" and params.evaluate.inception != "none"  # faithful runs only
    assert params.train.batch_size_per_process == 1  # paper
    ctx = BuildContext(size_hw, num_classes, params.vgg, 1, Path(params.paths.runs), ((0, 0, 0),) * num_classes)
    counts = {}
    for model in [*params.models, *SEGMENTERS]:  # what the preset trains
        spec = MODELS[model]
        network = params.model(model).network
        for net_name, (cls, resolve) in spec.networks.items():
            with torch.device("meta"):
                counts[(model, net_name)] = count_parameters(cls(**resolve(network, ctx)))
    if name == "cityscapes-1024p":
        assert counts[("crn", "G")] == 98_674_531  # docs/facts.md §1
    if name == "nyu":
        # 256p with k = 9 and c = 20 has 97,875,483; k = 1 drops 24 x 513 output weights; each of the 21
        # extra classes adds a 3x3 input filter to every module: 9 x (5 x 1024 + 2 x 512) = 55,296.
        assert counts[("crn", "G")] == 97_875_483 - 24 * 513 + 21 * 55_296
