import copy

import pytest
import yaml

from crn_repro.errors import CrnError
from crn_repro.params import load_params, parse_params
from crn_repro.registry import GENERATORS, MODELS

from conftest import REPO


def test_shipped_params_validate():
    params = load_params(REPO / "params.yaml")
    assert set(params.models) == set(GENERATORS)
    assert params.model("crn").optimizer["G"].lr > 0


def test_every_registry_model_has_a_section_in_shipped_params():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(MODELS) <= set(raw)


def test_dvc_yaml_stages_use_params_sections():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert list(dvc["stages"]) == ["prepare", "segmenter", "train", "synthesize", "evaluate", "report"]
    assert dvc["stages"]["train"]["foreach"] == "${models}"
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            key = entry.split(".")[0]
            assert key in ("${item}", "${data") or key in raw, entry
    assert "${data.dataset}" in dvc["stages"]["prepare"]["params"]  # only the section of the dataset read


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
