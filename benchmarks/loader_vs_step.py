"""Benchmark: is data loading ever the bottleneck? (issue: Cityscapes at 256x512)

Measures, on whatever machine runs it, images/s of
  0. the cache read alone (the host-side work of a GPU run), and
  1. the prepared-cache loader exactly as the trainer calls it (``PreparedSplit.batch`` on the
     batch indices of successive steps: memory-mapped uint8 read, copy to the device, one-hot
     layout expanded there), and
  2. one training step of the CRN 256p preset (d = 1024 x5, 512, 512; feature-matching loss
     through VGG-19; Adam) at batch 1, the paper's setting, with bf16 autocast and channels_last
     on CUDA (fp32 on CPU) — the trainer's own code path (objective phases, backward, step).
The cache is built by ``crn-repro prepare`` from the synthetic city at 256x512, which has the same
array shapes and dtypes as prepared Cityscapes (pixel values do not change read or step speed).

Usage:  python benchmarks/loader_vs_step.py [--frames 64] [--steps 3] [--out benchmarks/results]
Writes <out>/loader_vs_step-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crn_repro.datasets import PreparedSplit
from crn_repro.params import parse_params
from crn_repro.prepare import prepare
from crn_repro.presets import load_preset
from crn_repro.registry import BuildContext, get_spec
from crn_repro.batches import batch_indices
from crn_repro.runtime import setup_runtime
from crn_repro.trainer import Run, build_networks, train_step

REPO = Path(__file__).resolve().parents[1]


def bench_params(root: Path, frames: int) -> dict:
    raw = load_preset("cityscapes-256p", REPO / "presets")
    raw["paths"] = {k: str(root / k) for k in raw["paths"]}
    raw["data"]["dataset"] = "synthetic"
    raw["synthetic"].update(num_train=frames, num_val=4, image_size_hw=[256, 512])
    raw["vgg"].update(weights="random", allow_download=False)  # same compute as real weights
    raw["evaluate"].update(inception="none", inception_path=None)
    return raw


def time_loader(split: PreparedSplit, batch_size: int, device: torch.device, seconds: float = 3.0) -> float:
    step, n, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        layout, image = split.batch(batch_indices(0, step, len(split), batch_size), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step, n = step + 1, n + batch_size
    return n / (time.perf_counter() - start)


def time_cache_read(split: PreparedSplit, batch_size: int, seconds: float = 3.0) -> float:
    """The host-side part alone (what a GPU run pays on the CPU): memory-mapped uint8 rows gathered."""
    step, n, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = batch_indices(0, step, len(split), batch_size)
        np.ascontiguousarray(split.images[idx]), np.ascontiguousarray(split.labels[idx])
        step, n = step + 1, n + batch_size
    return n / (time.perf_counter() - start)


def time_step(params, device_rt, steps: int) -> float:
    """Images per second of the trainer's own CRN step (``trainer.train_step``) at batch 1, the batch
    read from the cache as the trainer reads it."""
    mp = params.model("crn")
    split = PreparedSplit(Path(params.paths.prepared), "train")
    ctx = BuildContext((256, 512), split.num_classes, params.vgg, len(split), Path(params.paths.runs))
    kwargs, nets, objective, optimizers = build_networks("crn", mp, ctx, device_rt, [])
    run = Run("crn", get_spec("crn"), mp.train, 1, split, "layout", kwargs, nets, optimizers, objective, "", Path(params.paths.runs), {})
    autocast = torch.autocast(device_rt.device.type, dtype=device_rt.autocast_dtype, enabled=device_rt.autocast_dtype is not None)
    times = []
    for step in range(steps + 1):  # the first step warms up (cuDNN autotuning, allocation)
        t0 = time.perf_counter()
        batch = split.to_device(split.read(batch_indices(0, step, len(split), 1)), device_rt.device)
        batch = tuple(t.contiguous(memory_format=device_rt.memory_format) for t in batch)
        train_step(run, device_rt, step, batch, autocast)
        if device_rt.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1.0 / (sum(times[1:]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        params = parse_params(bench_params(Path(tmp), args.frames), "benchmark params")
        t0 = time.perf_counter()
        prepare(params)
        prepare_s = time.perf_counter() - t0
        rt = setup_runtime(params.train)
        split = PreparedSplit(Path(params.paths.prepared), "train")
        result = {
            "device": torch.cuda.get_device_name() if rt.device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__,
            "image_size_hw": [256, 512],
            "prepare_frames_per_s (synthetic render + resize + write)": round((args.frames + 4) / prepare_s, 1),
            "cache_read_images_per_s": {f"batch {b}": round(time_cache_read(split, b), 1) for b in (1, 8)},
            "loader_images_per_s (read + to device + one-hot)": {
                f"batch {b}": round(time_loader(split, b, rt.device), 1) for b in (1, 8)
            },
            "train_step_images_per_s (crn 256p, batch 1)": round(time_step(params, rt, args.steps), 3),
            "precision": "bf16 autocast" if rt.autocast_dtype else "fp32",
        }
    ratio = result["loader_images_per_s (read + to device + one-hot)"]["batch 1"] / result["train_step_images_per_s (crn 256p, batch 1)"]
    result["loader_headroom (loader / step)"] = round(ratio, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "cuda" if rt.device.type == "cuda" else "cpu"
    (args.out / f"loader_vs_step-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:60s} {value}")


if __name__ == "__main__":
    main()
