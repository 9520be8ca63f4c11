"""NYU Depth v2 through the whole pipeline (paper Sec. 5.1): prepare from a miniature v7.3 file,
then every stage with c = num_classes + 1 layout channels instead of Cityscapes' 20."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from nyu_fixture import write_class_mapping, write_nyu_mat
from typer.testing import CliRunner

from crn_repro.cli import app
from crn_repro.datasets import PreparedSplit
from crn_repro.params import parse_params
from crn_repro.prepare import num_classes_for, prepare

runner = CliRunner()


def nyu_raw(tiny_raw, tmp_path, num_frames=9, num_train=6, **nyu):
    write_nyu_mat(tmp_path / "nyu.mat", num_frames, hw=(48, 64), num_raw_classes=12, seed=3)
    tiny_raw["data"]["dataset"] = "nyu"
    tiny_raw["paths"]["raw"] = str(tmp_path)  # the folder DVC would watch holds what prepare reads
    tiny_raw["nyu"].update(
        {"path": str(tmp_path / "nyu.mat"), "num_frames": num_frames, "num_train": num_train, "frame_size_hw": [48, 64],
         "num_classes": 5, "class_mapping": None, "fit": "crop", **nyu}
    )
    return tiny_raw


def test_prepare_nyu_most_frequent_and_splits(tmp_path, tiny_raw):
    params = parse_params(nyu_raw(tiny_raw, tmp_path))
    meta = prepare(params)
    assert meta["dataset"] == "nyu" and len(meta["channel_names"]) == 6 == num_classes_for(params)
    assert meta["channel_names"][-1] == "void" and meta["fit"] == "crop"
    train, val = PreparedSplit(params.paths.prepared, "train"), PreparedSplit(params.paths.prepared, "val")
    assert train.names == [f"nyu_{i:04d}" for i in range(1, 7)] and val.names == ["nyu_0007", "nyu_0008", "nyu_0009"]
    assert train.num_classes == 6 and int(train.labels[:].max()) <= 5
    layout, image = val.batch([0, 1])
    assert layout.shape == (2, 6, 16, 32) and image.shape == (2, 3, 16, 32)


def test_prepare_nyu_with_class_mapping_checks_num_classes(tmp_path, tiny_raw):
    raw = nyu_raw(tiny_raw, tmp_path, num_classes=3)
    write_class_mapping(tmp_path / "map.mat", [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], ["wall", "floor", "chair"])
    raw["nyu"]["class_mapping"] = str(tmp_path / "map.mat")
    meta = prepare(parse_params(raw))
    assert meta["channel_names"] == ["wall", "floor", "chair", "void"]
    raw["nyu"]["num_classes"] = 40
    with pytest.raises(Exception, match="maps to 3 classes, but nyu.num_classes is 40"):
        prepare(parse_params(raw))


def test_nyu_errors_are_one_line_and_keep_the_cache(tmp_path, tiny_raw):
    raw = nyu_raw(tiny_raw, tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["--params", str(params_file), "prepare"]).exit_code == 0
    before = (tmp_path / "data/prepared/train/labels.npy").read_bytes()
    for change, message in (
        ({"num_frames": 1449}, "1449"),
        ({"path": str(tmp_path / "absent.mat")}, "absent.mat"),
    ):
        params_file.write_text(yaml.safe_dump(dict(raw, nyu=dict(raw["nyu"], **change))))
        result = runner.invoke(app, ["--params", str(params_file), "prepare"])
        assert result.exit_code == 1 and "error:" in result.output and message in result.output, result.output
        assert "Traceback" not in result.output
    (tmp_path / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + b"\0" * 200)
    params_file.write_text(yaml.safe_dump(dict(raw, nyu=dict(raw["nyu"], path=str(tmp_path / "v5.mat")))))
    result = runner.invoke(app, ["--params", str(params_file), "prepare"])
    assert result.exit_code == 1 and "v5.mat" in result.output and "v7.3" in result.output, result.output
    assert (tmp_path / "data/prepared/train/labels.npy").read_bytes() == before


@pytest.mark.slow
def test_every_stage_runs_on_nyu(tmp_path, tiny_raw):
    """prepare -> segmenter -> crn and pix2pix (colour input with NYU's palette) -> synthesize ->
    evaluate -> report, with 6 layout channels."""
    raw = nyu_raw(tiny_raw, tmp_path, num_frames=12, num_train=6)
    raw["models"] = ["crn", "pix2pix"]
    raw["data"]["image_size_hw"] = [32, 64]
    raw["crn"]["network"]["widths"] = [8, 8, 8, 8]
    raw["pix2pix"]["network"].update(input="color", num_downs=5, ngf=4, ndf=4)
    raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    raw["evaluate"]["bootstrap_resamples"] = 20
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    stages = [["prepare"], ["train", "--model", "segmenter"], ["train", "--model", "crn"], ["train", "--model", "pix2pix"],
              ["synthesize", "--model", "crn"], ["synthesize", "--model", "pix2pix"], ["evaluate"], ["report"]]
    for command in stages:
        result = runner.invoke(app, ["--params", str(params_file)] + command)
        assert result.exit_code == 0, (command, result.output)
    import torch

    model = torch.load(tmp_path / "runs/pix2pix/model.pt", weights_only=True)
    colors = model["network_kwargs"]["G"]["colors"]
    meta = PreparedSplit(tmp_path / "data/prepared", "val").label_space
    assert colors == [list(c) for c in meta.colors] and len(colors) == 6
    assert (tmp_path / "reports/report.md").is_file()
    layout_png = tmp_path / "reports/figures/qualitative.png"
    assert layout_png.stat().st_size > 1000
    metrics = yaml.safe_load((tmp_path / "reports/metrics.json").read_text())
    assert np.isfinite(metrics["models"]["crn"]["segmentation_miou"]["value"])
