"""DRN-D-105 (crn_repro/drn.py), the literature's Cityscapes segmenter: the release's state_dict
layout, loading files written in that layout, the fixed bilinear up-sampling, and the scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crn_repro.drn import DRNSegmenter, bilinear_kernel, confusion, load_drn, scores
from crn_repro.errors import CrnError


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return DRNSegmenter()


def test_the_state_dict_has_the_release_layout(network):
    state = network.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["base.0.0.weight"] == (16, 3, 7, 7)  # the 7x7 stem
    assert shapes["base.2.0.weight"] == (32, 16, 3, 3)
    assert shapes["base.3.0.downsample.0.weight"] == (256, 32, 1, 1)
    assert shapes["base.5.22.conv3.weight"] == (1024, 256, 1, 1)  # 23 blocks in the dilated stage
    assert shapes["base.6.2.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["base.7.0.weight"] == (512, 2048, 3, 3) and shapes["base.8.0.weight"] == (512, 512, 3, 3)
    assert shapes["seg.weight"] == (19, 512, 1, 1) and shapes["up.weight"] == (19, 1, 16, 16)
    assert "mean" not in state  # the normalisation is not part of the file
    assert network.base[5][0].conv2.dilation == (2, 2) and network.base[6][0].conv2.dilation == (4, 4)
    assert network.base[7][0].dilation == (2, 2)


def test_bilinear_kernel_is_fcns():
    k = bilinear_kernel(16)
    f, c = 8, 15 / 16
    expected = torch.tensor([[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(16)] for i in range(16)])
    torch.testing.assert_close(k, expected.float())


def test_output_is_class_scores_at_the_input_size(network):
    with torch.no_grad():
        out = network(torch.rand(1, 3, 64, 128) * 255)
    assert out.shape == (1, 19, 64, 128)
    with pytest.raises(CrnError, match="multiple of 8"):
        network(torch.rand(1, 3, 60, 128))


@pytest.mark.parametrize("wrap", ["plain", "module", "checkpoint"])
def test_load_the_release_file_in_its_forms(network, tmp_path, wrap):
    state = network.state_dict()
    if wrap == "module":  # saved from nn.DataParallel
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap == "checkpoint":
        state = {"state_dict": state, "epoch": 10}
    path = tmp_path / "drn-d-105_ms_cityscapes.pth"
    torch.save(state, path)
    loaded = load_drn(path)
    image = torch.rand(1, 3, 32, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), network(image))


def test_bad_files_are_one_line_errors(network, tmp_path):
    with pytest.raises(CrnError, match=r"nowhere\.pth: DRN-D-105 weights file not found; it is fyu/drn's .*evaluate\.drn_weights"):
        load_drn(tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CrnError, match=r"junk\.pth: not a readable DRN-D-105 weights file \(.*\); it is fyu/drn's "
                                       r"Cityscapes model drn-d-105_ms_cityscapes\.pth .*evaluate\.drn_weights"):
        load_drn(tmp_path / "junk.pth")
    state = network.state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("seg")}, tmp_path / "partial.pth")
    with pytest.raises(CrnError, match="not DRN-D-105 for Cityscapes .2 missing keys"):
        load_drn(tmp_path / "partial.pth")
    torch.save(dict(state, **{"seg.weight": torch.zeros(20, 512, 1, 1)}), tmp_path / "other.pth")
    with pytest.raises(CrnError, match=r"seg.weight has shape \(20, 512, 1, 1\)"):
        load_drn(tmp_path / "other.pth")


def test_scores_ignore_void_and_count_it_on_request():
    target = torch.tensor([[0, 0, 1, 19], [2, 2, 19, 19]])  # 19: void
    predicted = torch.tensor([[0, 1, 1, 5], [2, 2, 0, 0]])
    s = scores(confusion(predicted, target))
    # class 0: tp 1, fp 1 (a class-1 pixel? no: predicted 1 where target 0) -> by hand:
    # target 0 at (0,0),(0,1): predicted 0, 1; target 1 at (0,2): predicted 1; target 2 at (1,0),(1,1): predicted 2, 2
    iou = {0: 1 / 2, 1: 1 / 2, 2: 1.0}  # class 0: tp 1 / (2 + 1 - 1); class 1: tp 1 / (1 + 2 - 1); class 2: 2 / 2
    assert s["miou"] == pytest.approx(np.mean(list(iou.values())))
    assert s["pixel_accuracy"] == pytest.approx(4 / 5)  # void pixels left out
    assert s["pixel_accuracy_void_counted"] == pytest.approx(4 / 8)


@pytest.mark.slow
def test_evaluate_scores_cityscapes_with_drn_when_its_file_is_there(tmp_path, tiny_raw, network):
    import json

    import yaml
    from cityscapes_fixture import TRAIN_CITIES, VAL_CITIES, write_cityscapes
    from typer.testing import CliRunner

    from crn_repro.cli import app

    write_cityscapes(tmp_path / "cs", {"train": dict(zip(TRAIN_CITIES, (2, 2, 1))), "val": dict(zip(VAL_CITIES, (3, 3)))})
    tiny_raw["paths"]["raw"] = str(tmp_path / "cs")
    tiny_raw["data"].update(dataset="cityscapes", image_size_hw=[16, 32])
    tiny_raw["cityscapes"].update(root=str(tmp_path / "cs"), expected_train=5, expected_val=6, frame_size_hw=[32, 64],
                                  keep_full_resolution_val_labels=True)
    tiny_raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    tiny_raw["evaluate"].update(bootstrap_resamples=10, drn_weights=str(tmp_path / "drn-d-105_ms_cityscapes.pth"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw))
    runner = CliRunner()
    for command in (["prepare"], ["train", "-m", "segmenter"], ["train", "-m", "crn"], ["synthesize", "-m", "crn"], ["evaluate"]):
        result = runner.invoke(app, ["--params", str(params), *command])
        assert result.exit_code == 0, (command, result.output)
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert "drn_miou" not in metrics["models"]["crn"]  # no file yet: missing, with its name and where to get it
    assert any("DRN-D-105 (SPADE's segmenter)" in m["metric"] and "(not found)" in m["needs"] and "fyu/drn" in m["from"]
               for m in metrics["missing"])
    torch.save(network.state_dict(), tmp_path / "drn-d-105_ms_cityscapes.pth")
    assert runner.invoke(app, ["--params", str(params), "evaluate"]).exit_code == 0
    crn = json.loads((tmp_path / "reports/metrics.json").read_text())["models"]["crn"]
    for name in ("drn_miou", "drn_pixel_accuracy", "drn_pixel_accuracy_void"):
        entry = crn[name]
        assert 0 <= entry["value"] <= 1 and "DRN-D-105" in entry["protocol"], name
    assert crn["drn_pixel_accuracy_void"]["value"] <= crn["drn_pixel_accuracy"]["value"]
    upsampled = crn["drn_miou_upsampled"]  # the upsampled variant: the 16x32 images upsampled to the frames' 32x64
    assert 0 <= upsampled["value"] <= 1 and "upsampled variant" in upsampled["protocol"]
    assert "upsampled bilinearly to 32x64 and rounded to 8-bit values as saved images are, against the 32x64 labels" \
        in upsampled["protocol"]
    assert "synthesis-size variant" in crn["drn_miou"]["protocol"]
    from crn_repro.datasets import PreparedSplit
    from crn_repro.labels import ID_TO_CHANNEL
    from PIL import Image

    val = PreparedSplit(tmp_path / "data/prepared", "val")
    stem = val.names[0]
    ids = np.asarray(Image.open(next((tmp_path / "cs/gtFine/val").glob(f"*/{stem}_gtFine_labelIds.png"))))
    np.testing.assert_array_equal(val.labels_full[0], ID_TO_CHANNEL[ids])  # the frame's own labels, unresized
    headline = json.loads((tmp_path / "reports/headline/crn.json").read_text())
    assert "drn_miou" in headline and "drn_acc" not in headline  # the headline keeps one DRN number


def test_each_variant_has_one_name_everywhere():
    """docs/facts.md §11 leaves open which variant SPADE used: each has one name (drn.VARIANTS) in the report's
    titles, the README and facts.md, and no file calls either one "SPADE's protocol"."""
    import re
    from pathlib import Path

    from crn_repro.drn import VARIANTS
    from crn_repro.report import METRIC_TITLES

    repo = Path(__file__).resolve().parents[1]
    for suffix, name in VARIANTS.items():
        titles = [title for key, title in METRIC_TITLES.items() if key.startswith("drn_") and key.endswith(suffix)
                  and (suffix or not key.endswith("_upsampled"))]
        assert len(titles) == 3 and all(f", {name}" in title for title in titles), (name, titles)
        for doc in ("README.md", "docs/facts.md"):
            assert f"*{name}*" in (repo / doc).read_text(), (doc, name)
    files = [repo / "README.md", repo / "params.yaml", *(repo / "docs").glob("*.md"), *(repo / "presets").glob("*.yaml"),
             *(repo / "crn_repro").rglob("*.py")]
    for file in files:
        text = " ".join(file.read_text().split())  # across line breaks
        for match in re.finditer(r"SPADE's (segmentation )?protocol", text):
            assert text[: match.start()].endswith("called "), (file, text[match.start() - 60 : match.end()])
