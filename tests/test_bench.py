"""`crn-repro bench` and the computed memory of a training step."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from crn_repro.bench import bench, results_table
from crn_repro.cli import app
from crn_repro.crn import CRN, PRESETS, CRNNetworkParams, crn_kwargs
from crn_repro.losses import FeatureMatchingObjective, FeatureMatchingParams, VggParams
from crn_repro.memory import training_step_memory
from crn_repro.params import parse_params


def _conv_flops(net: torch.nn.Module, size_hw) -> int:
    """Forward FLOPs of a CRN's convolutions, 2 x multiply-adds, by hand."""
    h, w = size_hw
    flops = 0
    for i, module in enumerate(net.cascade):
        scale = 2 ** (len(net.cascade) - 1 - i)
        pixels = (h // scale) * (w // scale)
        for conv in (module.conv1, module.conv2):
            flops += 2 * conv.in_channels * conv.out_channels * 9 * pixels
    return flops + 2 * net.to_rgb.in_channels * net.to_rgb.out_channels * h * w


def test_bench_writes_its_figures(tiny_params, tmp_path):
    entry = bench(tiny_params, "crn", "tiny", quick=True, scale=1, out_dir=tmp_path)
    path = tmp_path / entry["path"].rsplit("/", 1)[1]
    stored = json.loads(path.read_text())
    assert [e["model"] for e in stored] == ["crn"]
    for key in ("train_steps_per_s", "train_images_per_s", "synthesis_images_per_s", "train_tflops_per_s",
                "matmul_peak_tflops_per_s", "train_fraction_of_peak", "projected_schedule_hours"):
        assert entry[key] > 0, key
    assert entry["computed_step_memory_bytes"]["total"] > 0
    net = CRN(**crn_kwargs(CRNNetworkParams(None, (8, 8, 8), 1), (16, 32), 20))
    assert entry["synthesis_flops_per_image"] == _conv_flops(net, (16, 32))  # the counter counts what we would
    assert entry["train_flops_per_image"] > 3 * entry["synthesis_flops_per_image"]  # + backward, + VGG
    again = bench(tiny_params, "crn", "tiny", quick=True, scale=1, out_dir=tmp_path)
    assert len(json.loads(path.read_text())) == 1 and again["utc"] >= entry["utc"]  # replaced, not appended
    assert "| crn |" in results_table(tmp_path)


def test_bench_at_a_smaller_scale_projects_to_the_full_size(tiny_raw, tmp_path):
    tiny_raw["data"]["image_size_hw"] = [32, 64]
    tiny_raw["crn"]["network"]["widths"] = [8, 8, 8, 8]
    entry = bench(parse_params(tiny_raw), "crn", "tiny", quick=True, scale=2, out_dir=tmp_path)
    assert entry["timed_at_hw"] == [16, 32] and entry["image_size_hw"] == [32, 64]
    assert entry["projection"].startswith("extrapolated")
    with pytest.raises(Exception, match="--scale 3: must be a positive divisor"):
        bench(parse_params(tiny_raw), "crn", "tiny", scale=3, out_dir=tmp_path)


def test_bench_times_at_the_largest_scale_the_network_runs_and_reads_colour_maps_without_data(tiny_raw, tmp_path):
    """pix2pix's U-Net needs H, W divisible by 2^num_downs: at 1/4 of 32x64 (8x16) it cannot run with
    num_downs 5, so bench times it at the full size; input 'color' on Cityscapes needs no prepared data."""
    tiny_raw["data"].update(dataset="cityscapes", image_size_hw=[32, 64])
    tiny_raw["cityscapes"]["root"] = tiny_raw["paths"]["raw"]
    tiny_raw["pix2pix"]["network"].update(num_downs=5, ngf=4, ndf=4, input="color")
    entry = bench(parse_params(tiny_raw), "pix2pix", "tiny", quick=True, scale=4, out_dir=tmp_path)
    assert entry["scale"] == 1 and entry["timed_at_hw"] == [32, 64] and entry["projection"] == "measured"
    (tmp_path / "loader_vs_step-cpu.json").write_text('{"another": "benchmark"}')
    assert "| pix2pix |" in results_table(tmp_path)  # another benchmark's file in the folder is left out


def test_bench_cli_names_an_unknown_preset(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["bench", "--preset", "no-such-preset"])
    assert result.exit_code == 1
    assert "--preset no-such-preset: no presets/no-such-preset.yaml (presets: cityscapes-1024p" in result.output


def _crn_1024p_step(bf16: bool, checkpointing: bool) -> dict:
    hw = PRESETS["cityscapes-1024p"]["image_size_hw"]
    params = FeatureMatchingParams("all", "authors-512p", 100.0, "per-class", 0.0)
    objective = FeatureMatchingObjective(params, VggParams("random", None, False, "max", 0), 1000).to("meta")
    with torch.device("meta"):
        net = CRN(**crn_kwargs(CRNNetworkParams("cityscapes-1024p", None, 1), hw, 20))
        layout, image = torch.zeros(1, 20, *hw), torch.zeros(1, 3, *hw)
    net.activation_checkpointing = checkpointing
    return training_step_memory({"G": net}, "G", objective, layout, image, bf16=bf16, checkpointing=checkpointing)


def test_all_nine_1024p_modules_train_in_12_gb_in_bf16_with_checkpointing():
    """The paper's GPU had 12 GB: weights, gradients, Adam, the saved activations of the CRN and its
    VGG-19 loss, and a workspace for the backward pass fit, computed from the shapes."""
    budget = _crn_1024p_step(bf16=True, checkpointing=True)
    assert budget["trainable_parameters"] == 98_674_531
    assert budget["total"] <= 12e9, {k: round(v / 2**30, 2) for k, v in budget.items()}
    plain = _crn_1024p_step(bf16=True, checkpointing=False)
    fp32 = _crn_1024p_step(bf16=False, checkpointing=False)
    assert budget["activations"] < plain["activations"] < fp32["activations"]
    assert fp32["total"] > 12e9  # without bf16 it would not fit
