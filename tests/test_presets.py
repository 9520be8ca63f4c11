"""The paper's experiments as params files (presets/): each loads and validates, and every model
builds at its preset's resolution and class count (on the meta device: no memory is allocated)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crn_repro.params import load_params
from crn_repro.prepare import num_classes_for
from crn_repro.registry import MODELS, BuildContext, count_parameters

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "cityscapes-256p": ("cityscapes", (256, 512), 20),
    "cityscapes-512p": ("cityscapes", (512, 1024), 20),
    "cityscapes-1024p": ("cityscapes", (1024, 2048), 20),
    "nyu": ("nyu", (256, 512), 41),
}


def test_every_preset_file_is_listed():
    assert sorted(p.stem for p in (REPO / "presets").glob("*.yaml")) == sorted(PRESETS)


def test_presets_and_the_demo_never_share_an_output_folder():
    """Switching params files must not overwrite another experiment's cache, runs, images or reports."""
    files = [REPO / "params.yaml"] + [REPO / "presets" / f"{name}.yaml" for name in sorted(PRESETS)]
    for key in ("prepared", "runs", "synth", "reports"):
        folders = [getattr(load_params(path).paths, key) for path in files]
        assert len(set(folders)) == len(folders), (key, folders)
    studies = [load_params(path).study.dir for path in files]  # all under paths.studies, one folder each
    assert len(set(studies)) == len(studies), studies


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_loads_and_every_model_builds(name):
    params = load_params(REPO / "presets" / f"{name}.yaml")
    dataset, size_hw, num_classes = PRESETS[name]
    assert params.data.dataset == dataset and tuple(params.data.image_size_hw) == size_hw
    assert num_classes_for(params) == num_classes
    assert params.vgg.weights != "random" and params.evaluate.inception != "none"  # faithful runs only
    assert params.train.batch_size_per_process == 1  # paper
    ctx = BuildContext(size_hw, num_classes, params.vgg, 1, Path(params.paths.runs), ((0, 0, 0),) * num_classes)
    counts = {}
    for model in MODELS:
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
