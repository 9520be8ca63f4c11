import copy

import pytest
import yaml

from crn_repro.errors import CrnError
from crn_repro.files import read_yaml
from crn_repro.params import load_params, parse_params
from crn_repro.registry import GENERATORS, MODELS

from conftest import REPO


def test_shipped_params_validate():
    params = load_params(REPO / "params.yaml")
    assert set(params.models) == set(GENERATORS)
    assert params.model("crn").optimizer["G"].lr > 0


def test_every_registry_model_has_a_section_in_shipped_params():
    raw = read_yaml(REPO / "params.yaml", "")
    assert set(MODELS) <= set(raw)


def test_dvc_yaml_stages_use_params_sections():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    raw = read_yaml(REPO / "params.yaml", "")
    assert list(dvc["stages"]) == ["prepare", "segmenter", "train", "synthesize", "evaluate", "report"]
    assert dvc["stages"]["train"]["foreach"] == "${models}"
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            key = entry.split(".")[0]
            assert key in ("${item}", "${data") or key in raw, entry
    assert "${data.dataset}" in dvc["stages"]["prepare"]["params"]  # only the section of the dataset read


def test_schedule_scale_leaves_the_judge_alone(tiny_raw):
    """`train.schedule_scale` scales every model's schedule but the segmenter's (the judge of every
    experiment's automatic scores), and the segmenter stage does not depend on it: a smoke experiment
    reuses the judge."""
    import dataclasses

    from crn_repro.params import TrainParams

    raw = copy.deepcopy(tiny_raw)
    raw["train"]["total_steps"] = 400
    raw["segmenter"]["train"] = {"total_steps": 500}
    raw["train"]["schedule_scale"] = 0.05
    params = parse_params(raw)
    assert params.model("crn").train.total_steps == 20 and params.model("segmenter").train.total_steps == 500
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["segmenter"]["params"]
    keys = {f"train.{f.name}" for f in dataclasses.fields(TrainParams)}
    assert {p for p in stage if p.startswith("train")} == keys - {"train.schedule_scale"}


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r["train"].update(totl_steps=3), "train.totl_steps: unknown key"),
        (lambda r: r["train"].pop("batch_size_per_process"), "train.batch_size_per_process: missing key"),
        (lambda r: r["train"].update(batch_size_per_process="four"), "train.batch_size_per_process: expected int"),
        (lambda r: r["vgg"].update(pooling="median"), "vgg.pooling: 'median' is not one of"),
        (lambda r: r.update(extra={}), "extra: unknown section"),
        (lambda r: r.update(models=["crn", "nope"]), "unknown model 'nope'"),
        (lambda r: r["crn"]["network"].update(preset="cityscapes-256p"), "set exactly one of `preset` and `widths`"),
        (lambda r: r["crn"]["optimizer"].update(D={"lr": 1.0, "betas": [0.5, 0.9]}), "one entry per network"),
        (lambda r: r["data"].update(image_size_hw=[64]), "data.image_size_hw: expected 2 values"),
        (lambda r: r["crn"].update(train={"total_step": 5}), "crn.train.total_step: unknown key"),
        (lambda r: r["models"].append("segmenter"), "unknown model 'segmenter'"),
    ],
)
def test_bad_params_name_the_key(tiny_raw, mutate, needle):
    raw = copy.deepcopy(tiny_raw)
    mutate(raw)
    with pytest.raises(CrnError) as info:
        parse_params(raw)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_all_problems_reported_at_once(tiny_raw):
    tiny_raw["train"]["totl_steps"] = 1
    tiny_raw["vgg"]["pooling"] = "median"
    with pytest.raises(CrnError) as info:
        parse_params(tiny_raw)
    assert "totl_steps" in str(info.value) and "median" in str(info.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(CrnError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_model_train_overrides_merge_with_global(tiny_raw):
    tiny_raw["crn"]["train"] = {"total_steps": 7}
    params = parse_params(tiny_raw)
    assert params.model("crn").train.total_steps == 7
    assert params.model("crn").train.batch_size_per_process == params.train.batch_size_per_process


def test_progressive_keys_are_per_model(tiny_raw):
    tiny_raw["train"]["train_last_modules"] = 2
    with pytest.raises(CrnError, match=r"train.train_last_modules: set it per model \(e.g. crn.train.train_last_modules\)"):
        parse_params(tiny_raw)
    tiny_raw["train"]["train_last_modules"] = None
    tiny_raw["crn"]["train"] = {"train_last_modules": 2, "init_from": "runs/low/crn/model.pt"}
    assert parse_params(tiny_raw).model("crn").train.train_last_modules == 2


def test_what_prepare_reads_must_lie_in_the_folder_dvc_watches(tmp_path, tiny_raw):
    """paths.raw is prepare's DVC dependency: a dataset read from elsewhere would change unseen."""
    watched, elsewhere = tmp_path / "data" / "raw" / "cityscapes", tmp_path.parent / f"{tmp_path.name}-datasets"
    watched.parent.mkdir(parents=True)
    (elsewhere / "cityscapes").mkdir(parents=True)
    raw = copy.deepcopy(tiny_raw)
    raw["paths"]["raw"] = str(watched)
    raw["data"]["dataset"] = "cityscapes"
    raw["cityscapes"]["root"] = str(elsewhere / "cityscapes")
    with pytest.raises(CrnError, match=r"cityscapes.root: .* is outside paths.raw .*; put the data under paths.raw"):
        parse_params(raw)
    raw["paths"]["raw"] = str(elsewhere / "cityscapes")  # DVC watches the folder where the data is
    parse_params(raw)
    watched.symlink_to(elsewhere / "cityscapes", target_is_directory=True)  # or a symlinked folder
    raw["paths"]["raw"], raw["cityscapes"]["root"] = str(watched), str(watched)
    parse_params(raw)

    raw["data"]["dataset"] = "nyu"
    raw["paths"]["raw"] = str(tmp_path / "data" / "raw" / "nyu")
    raw["nyu"].update(path=str(tmp_path / "data" / "raw" / "nyu" / "nyu.mat"), class_mapping=str(elsewhere / "map.mat"))
    with pytest.raises(CrnError, match=r"nyu.class_mapping: .* is outside paths.raw") as error:
        parse_params(raw)
    assert "nyu.path" not in str(error.value)
    raw["data"]["dataset"] = "synthetic"  # generated, reads nothing
    parse_params(raw)


# --- params read as DVC reads them (YAML 1.2, ruamel.yaml's safe loader) ----------------------------------

NUMBER_FORMS = ["2e-4", "2.0e-4", "0.0002", "1e-3", "1E-3", "1e4", "1.0e+4", "1e+4", ".5", "5e-1", "1", "400",
                "012", "1_000", "0x10", "yes", "true", "null", "~", "", "'2e-4'", "1e", "2e-4.5"]


@pytest.mark.parametrize("form", NUMBER_FORMS)
def test_values_are_read_as_dvc_reads_them(form):
    """DVC parses params.yaml with ruamel.yaml as YAML 1.2 (`dvc params diff`, `dvc exp show`, the values
    `-S` edits): the suite's reader gives the same value of the same type for every form people write."""
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    from crn_repro.files import parse_yaml

    text = f"a:\n  lr: {form}\n"
    ours, dvcs = parse_yaml(text, "test", ""), dvc_parse_yaml(text, "test")
    assert ours == dvcs and type(ours["a"]["lr"]) is type(dvcs["a"]["lr"]), (ours, dvcs)


def test_learning_rates_written_as_papers_write_them_are_floats(tmp_path):
    """`lr: 2e-4` and `schedule_scale: 5e-2` (YAML 1.2 floats; PyYAML, YAML 1.1, read them as strings)."""
    text = (REPO / "params.yaml").read_text()
    text = text.replace("G: {lr: 1.0e-3, betas: [0.9, 0.999]}   # paper: lr 1e-4", "G: {lr: 2e-4, betas: [0.9, 0.999]}   # paper: lr 1e-4", 1)
    text = text.replace("  schedule_scale: 1.0 ", "  schedule_scale: 5e-1", 1)
    text = text.replace("  total_steps: 400 ", "  total_steps: 4e2 ", 1)  # not an int in YAML 1.2 either
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(CrnError, match=r"train.total_steps: expected int, got 400.0"):
        load_params(path)
    path.write_text(text.replace("  total_steps: 4e2 ", "  total_steps: 400 ", 1))
    params = load_params(path)
    assert params.model("crn").optimizer["G"].lr == 2e-4 and params.train.schedule_scale == 0.5


def test_a_yaml_error_names_the_line_and_column(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  seed: 0\n  seed: 1\n")  # a repeated key: PyYAML kept the last silently
    with pytest.raises(CrnError, match=r"params.yaml: not valid YAML at line 3, column 3"):
        load_params(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(CrnError, match=r"params.yaml: not valid YAML at line \d+, column \d+"):
        load_params(path)


# --- --params: a full params file or a preset ----------------------------------------------------------------

def test_a_preset_file_is_a_params_file(tmp_path):
    """`-p presets/cityscapes-1024p.yaml` (the documented torchrun and SLURM commands) is the preset resolved
    over presets/demo.yaml, exactly as `crn-repro preset cityscapes-1024p` writes it."""
    from crn_repro.params import write_preset

    written = write_preset("cityscapes-1024p", tmp_path / "params.yaml", presets_dir=REPO / "presets")
    direct = load_params(REPO / "presets/cityscapes-1024p.yaml")
    assert direct == load_params(written)
    assert direct.data.image_size_hw == (1024, 2048) and direct.paths.runs == "runs/cityscapes-1024p"
    assert load_params(REPO / "presets/demo.yaml") == load_params(REPO / "params.yaml")


def test_a_preset_of_your_own_is_resolved_over_its_folders_defaults(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "demo.yaml").write_text((REPO / "presets/demo.yaml").read_text())
    (presets / "mine.yaml").write_text("train:\n  total_steps: 1e1\n")
    with pytest.raises(CrnError, match=r"mine.yaml \(resolved over .*demo.yaml\): invalid params: train.total_steps: expected int"):
        load_params(presets / "mine.yaml")
    (presets / "mine.yaml").write_text("train:\n  total_steps: 10\ncrn:\n  optimizer:\n    G: {lr: 2e-4, betas: [0.9, 0.999]}\n")
    params = load_params(presets / "mine.yaml")
    assert params.train.total_steps == 10 and params.model("crn").optimizer["G"].lr == 2e-4


def test_a_partial_file_that_is_not_a_preset_is_refused_with_how_to_make_a_full_one(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("train:\n  total_steps: 10\n")
    with pytest.raises(CrnError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: a partial params file (no paths, data, ") and "\n" not in message
    assert "move it into presets/" in message and "`crn-repro --params FILE preset demo`" in message


def test_the_cli_takes_a_preset_file(tmp_path):
    import json

    from typer.testing import CliRunner

    from crn_repro.cli import app

    result = CliRunner().invoke(app, ["--params", str(REPO / "presets/cityscapes-1024p.yaml"), "info", "--model", "crn", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parameters"] == 98_674_531  # docs/facts.md §1: the 1024p CRN
