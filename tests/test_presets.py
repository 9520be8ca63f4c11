"""The paper's experiments as presets (presets/: the demo's full defaults and small override files):
each resolves and validates, every model builds at its preset's resolution and class count (on the
meta device: no memory is allocated), the shipped params.yaml is the resolved demo, and the real `dvc exp
run -S` changes only the line it edits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crn_repro.errors import CrnError
from crn_repro.params import load_params, parse_params, write_preset
from crn_repro.prepare import num_classes_for
from crn_repro.presets import load_preset, preset_names, resolve
from crn_repro.registry import MODELS, SEGMENTERS, BuildContext, count_parameters

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "cityscapes-256p": ("cityscapes", (256, 512), 20),
    "cityscapes-512p": ("cityscapes", (512, 1024), 20),
    "cityscapes-1024p": ("cityscapes", (1024, 2048), 20),
    "nyu": ("nyu", (256, 512), 41),
}


def _preset(name):
    return parse_params(load_preset(name, REPO / "presets"), f"preset {name}")


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


DVC_STAGE = """stages:
  seen:
    cmd: python -c "from crn_repro.params import load_params; p = load_params('params.yaml'); print(p.train.schedule_scale, p.model('crn').train.total_steps, p.model('crn').optimizer['G'].lr)" > seen.txt
    params: [train, crn]
    outs: [seen.txt]
"""


@pytest.mark.slow
def test_dvc_exp_run_set_changes_exactly_one_line(tmp_path):
    """The README's `dvc exp run -S train.schedule_scale=0.05`, run by the real DVC on the shipped params.yaml
    in a git repository with a one-stage pipeline: the file differs in that one line, and the stage (which
    reads the file as every stage does) sees the new value; a second `-S` changes its own line only."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])

    def run(*cmd):
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(DVC_STAGE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(*git, "init", "-q")
    run("dvc", "init", "-q")
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "params")
    before = (tmp_path / "params.yaml").read_text().splitlines()
    for override, line, seen in [("train.schedule_scale=0.05", "schedule_scale: 0.05", "0.05 20 0.001"),
                                 ("crn.optimizer.G.lr=2e-4", "G: {lr: 0.0002, betas: [0.9, 0.999]}", "0.05 20 0.0002")]:
        run("dvc", "exp", "run", "-S", override)
        after = (tmp_path / "params.yaml").read_text().splitlines()
        assert len(after) == len(before), override
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(changed) == 1 and changed[0][1].split("#")[0].strip() == line, changed
        assert changed[0][0].split("#")[1:] == changed[0][1].split("#")[1:]  # its comment kept
        assert (tmp_path / "seen.txt").read_text().split() == seen.split()
        before = after


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


def test_writing_a_preset_compares_values_not_text(tmp_path):
    """A file whose values are a preset's is replaced freely however it is laid out (flow or block lists,
    `1e-3` or `0.001`, other comments): after a `dvc exp run -S` that was put back, `crn-repro preset`
    switches; a real edit is refused with the edits it would drop, listed against the closest preset."""
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    write_preset("demo", target, presets_dir=REPO / "presets")
    apply_overrides(str(target), ["train.schedule_scale=0.05", "crn.optimizer.G.lr=0.002"])
    apply_overrides(str(target), ["train.schedule_scale=1.0", "crn.optimizer.G.lr=1e-3"])
    relaid = (REPO / "presets/demo.yaml").read_text().replace("# ", "#  ")  # flow lists, other comments
    for text in (target.read_text(), relaid):
        target.write_text(text)
        write_preset("nyu", target, presets_dir=REPO / "presets")
        assert load_params(target).data.dataset == "nyu"
        write_preset("demo", target, presets_dir=REPO / "presets")
    apply_overrides(str(target), ["train.total_steps=7", "crn.optimizer.G.lr=0.002", "+train.extra=1"])
    with pytest.raises(CrnError) as info:
        write_preset("nyu", target, presets_dir=REPO / "presets")
    message = str(info.value)
    assert message.startswith(f"{target}: has edits that no preset holds (against preset demo: ")
    assert "crn.optimizer.G.lr: 0.002 (preset: 0.001)" in message and "train.total_steps: 7 (preset: 400)" in message
    assert "train.extra: 1 (no such setting in the preset)" in message and "--force" in message


def test_a_preset_file_is_never_overwritten_by_a_params_file(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "demo.yaml").write_text((REPO / "presets/demo.yaml").read_text())
    with pytest.raises(CrnError, match="demo.yaml: is a preset file"):
        write_preset("demo", presets / "demo.yaml", force=True, presets_dir=presets)


@pytest.mark.parametrize("name", sorted([*PRESETS, "demo"]))
def test_every_preset_is_written_as_dvc_writes_params(name, tmp_path):
    """DVC's own `-S` machinery (dvc.utils.hydra.apply_overrides, what `dvc exp run -S` calls) rewrites the
    resolved file byte for byte, twice over: so a `-S` edit changes only its own line, then and later (a
    comment or blank line after a block list would be dropped by the second edit)."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    text = resolve(name, REPO / "presets")
    path.write_text(text)
    for _ in range(2):
        apply_overrides(str(path), ["train.seed=0"])
        assert path.read_text() == text


def test_writing_a_preset_makes_its_raw_data_folder(tmp_path):
    """`crn-repro preset cityscapes-256p && dvc repro` without the dataset must reach prepare's own message
    (what to download, where to put it): DVC stops at a missing dependency before running a stage, so the
    preset's `paths.raw` starts as an empty folder. A link already there (to the dataset) is kept."""
    write_preset("cityscapes-256p", tmp_path / "params.yaml", presets_dir=REPO / "presets")
    assert (tmp_path / "data/raw/cityscapes").is_dir() and not any((tmp_path / "data/raw/cityscapes").iterdir())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data/raw/nyu").symlink_to(tmp_path / "elsewhere")
    write_preset("nyu", tmp_path / "params.yaml", presets_dir=REPO / "presets")
    assert (tmp_path / "data/raw/nyu").is_symlink()
