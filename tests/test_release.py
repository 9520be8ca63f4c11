"""Importing the authors' released checkpoints (crn_repro/release.py): checkpoints written by
TensorFlow's own Saver from a graph with the release's variable names; the imported model must give
the TensorFlow graph's output to float32 rounding, for one output and for k outputs (whose channel
layout differs). TensorFlow runs in a subprocess (tests/tf_release_writer.py); the import itself
needs no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crn_repro.cli import app
from crn_repro.errors import CrnError
from crn_repro.registry import load_model
from crn_repro.release import import_release, read_checkpoint, read_checkpoint_index, release_layout

HERE = Path(__file__).resolve().parent


def tensorflow_checkpoint(folder: Path, widths: list[int], k: int, seed: int = 0) -> Path:
    """A release-style checkpoint and its graph's output, written by TensorFlow in its own process."""
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, str(HERE / "tf_release_writer.py"), str(folder), ",".join(map(str, widths)), str(k), str(seed)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]  # tensorflow-cpu is a test dependency (pip install -e '.[test]')
    return folder / "model.ckpt"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return {k: tensorflow_checkpoint(root / f"k{k}", [16, 12, 8], k, seed=k) for k in (1, 3)}


def test_the_index_lists_generator_and_adam_tensors_with_their_shapes(checkpoints):
    shards, entries = read_checkpoint_index(checkpoints[3])
    assert shards == 1
    assert entries["g_4_conv1/weights"]["shape"] == [3, 3, 5, 16]
    assert entries["g_16_conv100/weights"]["shape"] == [1, 1, 8, 9]
    assert "g_4_conv1/weights/Adam" in entries and "beta1_power" in entries
    assert release_layout(entries) == {"heights": [4, 8, 16], "widths": [16, 12, 8], "num_classes": 5, "num_outputs": 3}


@pytest.mark.parametrize("k", [1, 3])
def test_imported_model_reproduces_tensorflows_output(checkpoints, tmp_path, k):
    facts = import_release(checkpoints[k], tmp_path / "model.pt")
    assert facts["model"] == ("crn" if k == 1 else "crn-diverse") and facts["image_size_hw"] == [16, 32]
    nets, data = load_model(tmp_path / "model.pt")
    layout = np.load(checkpoints[k].parent / "layout.npy")  # (N, H, W, c)
    expected = np.load(checkpoints[k].parent / "output.npy")  # (N, H, W, 3k): image u = channels u, k+u, 2k+u
    with torch.no_grad():
        ours = nets["G"](torch.from_numpy(layout).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    for u in range(k):
        np.testing.assert_allclose(ours[..., 3 * u : 3 * u + 3], expected[..., [u, k + u, 2 * k + u]], rtol=1e-4, atol=2e-3)
    assert np.abs(expected).max() > 50  # a real image range, not a degenerate output


def test_importing_without_the_channel_permutation_would_be_wrong(checkpoints, tmp_path):
    """The permutation matters: the release's channel u is not our channel u for k > 1."""
    import_release(checkpoints[3], tmp_path / "model.pt")
    nets, _ = load_model(tmp_path / "model.pt")
    layout = np.load(checkpoints[3].parent / "layout.npy")
    expected = np.load(checkpoints[3].parent / "output.npy")
    with torch.no_grad():
        ours = nets["G"](torch.from_numpy(layout).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - expected).max() > 1.0


def test_cli_import_then_the_model_file_is_checked(checkpoints, tmp_path):
    out = tmp_path / "runs/crn/model.pt"
    result = CliRunner().invoke(app, ["import-release", str(checkpoints[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "crn, 16x32" in result.stdout
    _, data = load_model(out, expected="crn")
    assert data["facts"]["source"].startswith("authors' release")


def test_bfloat16_tensors_are_read_as_the_floats_tensorflow_reads(tmp_path):
    """A bfloat16 variable (TF's DT_BFLOAT16, stored as the top 16 bits of a float32) saved by TensorFlow's
    Saver decodes to the float32 values TensorFlow casts it to (rounded pi, a subnormal, infinity included);
    a uint16 variable (stored the same width) stays integers."""
    result = subprocess.run([sys.executable, str(HERE / "tf_release_writer.py"), str(tmp_path), "dtypes"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = np.load(tmp_path / "values.npz")
    _, entries = read_checkpoint_index(tmp_path / "model.ckpt")
    assert entries["g_4_conv1/LayerNorm/gamma"]["dtype"] == 14 and entries["counts"]["dtype"] == 17  # DT_BFLOAT16, DT_UINT16
    tensors = read_checkpoint(tmp_path / "model.ckpt")
    gamma = tensors["g_4_conv1/LayerNorm/gamma"]
    assert gamma.dtype == np.float32 and gamma.shape == (10,)
    np.testing.assert_array_equal(gamma, expected["bfloat16"])  # bit for bit (-0.0 and inf compare as values)
    assert np.signbit(gamma[1]) and gamma[4] == np.float32(3.140625) and 0 < gamma[8] < 1.2e-38
    assert tensors["counts"].dtype == np.uint16 and tensors["counts"].tolist() == expected["uint16"].tolist() == [0, 1, 16256, 65535]


def test_missing_or_damaged_checkpoint_files_are_one_line_errors(checkpoints, tmp_path):
    with pytest.raises(CrnError, match=r"nowhere\.index: checkpoint index not found.*cqf\.io"):
        import_release(tmp_path / "nowhere", tmp_path / "m.pt")
    broken = tmp_path / "broken"
    (tmp_path / "broken.index").write_bytes(checkpoints[1].with_suffix(".ckpt.index").read_bytes()[:-20])
    with pytest.raises(CrnError, match="not a TensorFlow checkpoint index"):
        import_release(broken, tmp_path / "m.pt")
    copy = tmp_path / "copy"
    (tmp_path / "copy.index").write_bytes(checkpoints[1].with_suffix(".ckpt.index").read_bytes())
    with pytest.raises(CrnError, match=r"copy\.data-00000-of-00001: checkpoint data not found"):
        import_release(copy, tmp_path / "m.pt")
    data = checkpoints[1].parent / "model.ckpt.data-00000-of-00001"
    (tmp_path / "copy.data-00000-of-00001").write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CrnError, match="beyond the file"):
        read_checkpoint(copy)
    assert not (tmp_path / "m.pt").exists()
