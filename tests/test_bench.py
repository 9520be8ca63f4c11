"""`crn-repro bench`: its figures against hand counts and definitions, and the computed memory of a
training step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from crn_repro.batches import batch_indices
from crn_repro.bench import (
    build_run_without_data, count_flops, cpu_step_peak_rss, measure, bench, plan_scale, results_table, spread,
    sustained_peak, synthetic_batch, training_batches,
)
from crn_repro.cli import app
from crn_repro.crn import CRN, PRESETS, CRNNetworkParams, crn_kwargs
from crn_repro.datasets import Batch
from crn_repro.losses import FeatureMatchingObjective, FeatureMatchingParams, VggParams
from crn_repro.memory import training_step_memory
from crn_repro.params import parse_params
from crn_repro.registry import MODELS
from crn_repro.runtime import Runtime

META = torch.device("meta")


def _conv_flops(net: torch.nn.Module, size_hw) -> list[tuple[str, int]]:
    """Forward FLOPs of each of a CRN's convolutions, 2 x multiply-adds, by hand: (name, FLOPs)."""
    h, w = size_hw
    flops = []
    for i, module in enumerate(net.cascade):
        scale = 2 ** (len(net.cascade) - 1 - i)
        pixels = (h // scale) * (w // scale)
        for name in ("conv1", "conv2"):
            conv = getattr(module, name)
            flops.append((f"{i}.{name}", 2 * conv.in_channels * conv.out_channels * 9 * pixels))
    return flops + [("to_rgb", 2 * net.to_rgb.in_channels * net.to_rgb.out_channels * h * w)]


def test_the_spread_is_the_median_and_the_quartiles():
    assert spread([5.0, 1.0, 3.0, 2.0, 4.0]) == {"median_s": 3.0, "q1_s": 2.0, "q3_s": 4.0, "iqr_s": 2.0, "n": 5}


def test_the_sustained_peak_runs_windows_of_back_to_back_products():
    peak = sustained_peak(torch.device("cpu"), torch.float32, 128, seconds=0.3)
    assert peak["windows"] >= 3 and peak["products_per_window"] >= 4
    assert peak["flops_per_s"] >= peak["median_flops_per_s"] > 0 and peak["dtype"] == "float32"


def test_training_flops_match_a_hand_count(tiny_raw, tmp_path):
    """image-space (CRN, L1 on pixels: no VGG): a training step is the forward F, the weight gradients
    (F again) and the input gradients (F, except for the first convolution, whose input is the layout);
    activation checkpointing recomputes each refinement module's forward once more (hardware FLOPs)."""
    tiny_raw["train"]["activation_checkpointing"] = True
    params = parse_params(tiny_raw)
    mp = params.model("image-space")
    mp = dataclasses.replace(mp, network=dataclasses.replace(mp.network, preset=None, widths=(8, 6, 4)))
    run = build_run_without_data(params, "image-space", mp, Runtime(META, 0, 1, None, False), tmp_path)
    layout, image = synthetic_batch(run, params, 2, META)
    flops = count_flops(run, Runtime(META, 0, 1, None, False), Batch(layout, image, (0, 1)))
    convs = dict(_conv_flops(CRN(**crn_kwargs(CRNNetworkParams(None, (8, 6, 4), 1), (16, 32), 20)), (16, 32)))
    forward = 2 * sum(convs.values())  # batch 2
    assert flops["synthesis"] == forward
    assert flops["model"] == 3 * forward - 2 * convs["0.conv1"]
    assert flops["hardware"] == flops["model"] + 2 * sum(f for name, f in convs.items() if name != "to_rgb")


@pytest.mark.slow
def test_bench_writes_figures_that_hold_up(tiny_params, tmp_path):
    entry = bench(tiny_params, "crn", "tiny", quick=True, scale=1, out_dir=tmp_path)
    path = tmp_path / entry["path"].rsplit("/", 1)[1]
    assert [e["model"] for e in json.loads(path.read_text())] == ["crn"]
    assert entry["warmup_steps"] >= 3 and entry["timed_steps"] == entry["train_step_s"]["n"] == 5
    step = entry["train_step_s"]
    assert step["q1_s"] <= step["median_s"] <= step["q3_s"] and step["iqr_s"] == step["q3_s"] - step["q1_s"]
    assert entry["train_images_per_s_at_timed_size"] == 2 / step["median_s"]
    # achieved (hardware FLOPs / median step) cannot exceed the sustained peak of the same dtype
    assert entry["sustained_peak"]["dtype"] == entry["precision"]
    assert 0 < entry["train_fraction_of_sustained_peak"] <= 1 and 0 < entry["synthesis_fraction_of_sustained_peak"] <= 1
    net = CRN(**crn_kwargs(CRNNetworkParams(None, (8, 8, 8), 1), (16, 32), 20))
    assert entry["synthesis_flops_per_image_at_timed_size"] == sum(f for _, f in _conv_flops(net, (16, 32)))
    assert entry["projection"] == "measured at the full size" and entry["projected_full_size_step_s"] == step["median_s"]
    assert entry["allocator_peak_bytes_at_timed_size"] is None  # no CUDA here
    assert entry["batches"].startswith("random layouts and images (no prepared data")
    again = bench(tiny_params, "crn", "tiny", quick=True, scale=1, out_dir=tmp_path)
    assert len(json.loads(path.read_text())) == 1 and again["utc"] >= entry["utc"]  # replaced, not appended
    (tmp_path / "loader_vs_step-cpu.json").write_text('{"another": "benchmark"}')
    assert "| crn | 16x32 | 16x32 | float32 |" in results_table(tmp_path)


def test_bench_below_the_full_size_labels_its_projection(tiny_raw, tmp_path):
    tiny_raw["data"]["image_size_hw"] = [32, 64]
    tiny_raw["crn"]["network"]["widths"] = [8, 8, 8, 8]
    params = parse_params(tiny_raw)
    peak = sustained_peak(torch.device("cpu"), torch.float32, 64, 0.05)
    entry = measure(params, "crn", "tiny", scale=2, warmup=1, timed=2, peak=peak)
    assert entry["timed_at_hw"] == [16, 32] and entry["image_size_hw"] == [32, 64]
    ratio = entry["hardware_train_flops_per_image_at_full_size"] / entry["hardware_train_flops_per_image_at_timed_size"]
    assert 3.9 < ratio < 4.1 and entry["projection"].startswith("projected: median step time x ")
    assert entry["projected_full_size_step_s"] == pytest.approx(entry["train_step_s"]["median_s"] * ratio)
    with pytest.raises(Exception, match="--scale 3: must be a positive divisor"):
        measure(params, "crn", "tiny", scale=3, peak=peak)


def test_the_timed_batches_are_the_trainers_from_the_prepared_data(prepared_tiny, tmp_path):
    root, params = prepared_tiny
    mp = params.model("crn")
    rt = Runtime(torch.device("cpu"), 0, 1, None, False)
    run = build_run_without_data(params, "crn", mp, rt, tmp_path)
    batches, source = training_batches(params, run, (8, 16), 2, rt)
    assert source.startswith("prepared training data")
    indices = batch_indices(mp.train.seed, 1, params.synthetic.num_train, 2)
    assert batches[1].keys == tuple(int(i) for i in indices)  # the images step 1 of training reads, with their keys
    assert batches[1].layout.shape == (2, 20, 8, 16) and batches[1].layout.sum(1).eq(1).all()  # still one-hot


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_registered_model_runs_in_bench_at_the_quick_scale(model, tiny_raw, tmp_path):
    """At 1/4 of 64x128 (--quick on a CPU) or the largest divisor at which the model's step runs (pix2pix's
    U-Net needs 2^num_downs, and its dropout is counted on the meta device; gan-semseg's discriminator is then built for the size timed)."""
    tiny_raw["data"]["image_size_hw"] = [64, 128]
    tiny_raw["pix2pix"]["network"].update(num_downs=6, ngf=4, ndf=4)  # 6: one block with dropout, as the demo's
    tiny_raw["gan-semseg"]["network"].update(ngf=4, ndf=4) if "ngf" in tiny_raw["gan-semseg"]["network"] else None
    for section in tiny_raw.values():
        if isinstance(section, dict) and "widths" in section.get("network", {}):
            section["network"].update(preset=None, widths=[4] * 5)
    params = parse_params(tiny_raw)
    scale, build_hw = plan_scale(params, model, params.model(model), 4, tmp_path)
    entry = measure(params, model, "tiny", scale=scale, warmup=1, timed=1,
                    peak=sustained_peak(torch.device("cpu"), torch.float32, 64, 0.05))
    assert entry["scale"] == scale and entry["networks_built_for_hw"] == list(build_hw)
    assert entry["train_step_s"]["median_s"] > 0 and entry["model_train_flops_per_image_at_timed_size"] > 0
    if model != "pix2pix":  # the others run at 1/4
        assert scale == 4, model


def test_bench_cli_names_an_unknown_preset(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["bench", "--preset", "no-such-preset"])
    assert result.exit_code == 1
    assert "--preset no-such-preset: no presets/no-such-preset.yaml (presets: cityscapes-1024p" in result.output


@pytest.mark.slow
def test_the_peak_resident_memory_of_a_step_is_measured_in_a_fresh_process(tiny_params):
    figures = cpu_step_peak_rss(tiny_params, "crn")
    assert figures["image_size_hw"] == [16, 32] and figures["activation_checkpointing"]
    assert 100e6 < figures["peak_rss_before_step_bytes"] <= figures["peak_rss_bytes"] < 4e9  # torch alone is 100s of MB


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
