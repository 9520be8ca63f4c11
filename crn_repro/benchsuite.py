"""`crn-repro bench --suite gpu`: everything we want to know from a GPU, in one command and one file.

The parts, in order (each one's figures, or its one-line error, go into
``benchmarks/results/<device>-suite.json``, rewritten after every part, so a part that fails or a
suite that is stopped keeps what was measured before it):

- ``crn-256p-bf16``, ``crn-256p-fp32``, ``crn-1024p-bf16``, ``crn-1024p-fp32``: the CRN's training step
  and synthesis at the preset's full size (presets cityscapes-256p and cityscapes-1024p, every module
  trained; fp32 with TF32 on, as training runs it on CUDA, said in each part's ``tf32``), median and IQR of timed steps, model and hardware FLOPs, fraction of the sustained matmul
  peak of the dtype, the CUDA allocator's peak (``bench.measure``);
- ``pix2pix-256p-bf16``: pix2pix as in preset cityscapes-256p;
- ``crn-1024p-all-modules-checkpointed``: the 1024p step of every module with activation checkpointing
  in bf16, the setting the README's memory sentence is about: its allocator peak at the full size;
- ``loss-parity``: ``PARITY_STEPS`` training steps of the CRN on the device and on the CPU from the
  same initial weights and the same batches, fp32 with TF32 off; the per-step relative difference
  of the total loss, against ``PARITY_TOLERANCE``;
- ``drn-tf32``: DRN-D-105 (random weights drawn as DRN initialises them, a smooth random image) at 1024x2048 with TF32 on and off:
  how many pixels' argmax class flips, and the largest logit difference.

``smoke=True`` runs the same parts at tiny sizes on the demo's networks (the CRN at 32x64 and 64x128,
pix2pix at 64x128, 5 timed steps, 20 parity steps, DRN at 64x128); on a machine without CUDA, on the CPU, where the parity run compares the CPU
with itself at another thread count and TF32 does not exist. It exists so that the GPU run works the
first time: CI runs it.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from crn_repro import trainer
from crn_repro.bench import RESULTS, build_run_without_data, device_name, device_slug, measure, sustained_peak
from crn_repro.datasets import Batch
from crn_repro.drn import DRNSegmenter
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_json
from crn_repro.metrics import full_fp32
from crn_repro.params import Params, parse_params
from crn_repro.prepare import num_classes_for
from crn_repro.presets import load_preset
from crn_repro.runtime import Runtime

PARITY_STEPS = 100
# fp32 on two devices differs in the order of its sums (~1e-7 relative per operation); over training
# steps the difference grows (measured: the CPU at 1 and at 2 threads, the full suite's 100 steps at 64x128,
# differ by at most 2.8e-5 relative). A total loss that differs by more than this at any step is a finding.
PARITY_TOLERANCE = 0.01
SMOKE_WIDTHS = {(64, 128): [128, 128, 128, 64, 32], (128, 256): [128, 128, 128, 64, 32, 16],
                (32, 64): [64, 64, 32, 16]}


def suite_params(base: dict, model: str, *, size_hw=None, name: str, **train) -> Params:
    """``base`` (a resolved preset's values) with ``model``'s `train` entries and, for a smoke run, the
    image size (and the demo CRN's widths for it) changed; validated like any params file."""
    raw = copy.deepcopy(base)
    if size_hw is not None:
        raw["data"]["image_size_hw"] = list(size_hw)
        if model == "crn":
            raw["crn"]["network"].update(preset=None, widths=SMOKE_WIDTHS[tuple(size_hw)])
    section = raw[model].get("train") or {}
    raw[model]["train"] = {**section, "compile": False, "init_from": None, "train_last_modules": None, **train}
    return parse_params(raw, name)


def plan(smoke: bool) -> list[tuple[str, str, dict]]:
    """(part, model, settings) of each timed part: the presets' sizes, or the demo's tiny ones."""
    small, large = ((32, 64), (64, 128)) if smoke else (None, None)
    pix2pix_small = (64, 128) if smoke else None  # its demo U-Net halves the size 6 times
    return [
        ("crn-256p-bf16", "crn", dict(preset="cityscapes-256p", size_hw=small, precision="bf16")),
        ("crn-256p-fp32", "crn", dict(preset="cityscapes-256p", size_hw=small, precision="fp32")),
        ("crn-1024p-bf16", "crn", dict(preset="cityscapes-1024p", size_hw=large, precision="bf16")),
        ("crn-1024p-fp32", "crn", dict(preset="cityscapes-1024p", size_hw=large, precision="fp32")),
        ("pix2pix-256p-bf16", "pix2pix", dict(preset="cityscapes-256p", size_hw=pix2pix_small, precision="bf16")),
        ("crn-1024p-all-modules-checkpointed", "crn",
         dict(preset="cityscapes-1024p", size_hw=large, precision="bf16", activation_checkpointing=True)),
    ]


def run_suite(smoke: bool = False, out_dir: Path = RESULTS, console: Console | None = None) -> dict:
    """Run every part (module docstring) and write the results file; returns the results with ``path``.
    A part that fails is recorded with its error and the others still run (``failed`` names them)."""
    console = console or Console(stderr=True)
    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise CrnError("bench --suite gpu: no CUDA device here (torch.cuda.is_available() is false); "
                       "`crn-repro bench --suite gpu --smoke` runs the same parts at tiny sizes on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    path = Path(out_dir) / f"{device_slug(device)}-suite{'-smoke' if smoke else ''}.json"
    results = {"suite": "gpu", "smoke": smoke, "device": device_name(device), "torch": torch.__version__,
               "cuda": torch.version.cuda if cuda else None, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "parts": {}, "failed": []}
    started = time.perf_counter()
    peaks: dict[str, dict] = {}
    parts = [(name, _timed_part(model, settings, smoke, peaks, device, console)) for name, model, settings in plan(smoke)]
    parts += [("loss-parity", lambda: loss_parity(smoke, device)), ("drn-tf32", lambda: drn_tf32(smoke, device))]
    for i, (name, work) in enumerate(parts, 1):
        console.print(f"suite [{i}/{len(parts)}] {name} ({time.perf_counter() - started:.0f} s so far)", highlight=False)
        results["parts"][name] = _run_part(name, work, results, console)
        results["wall_s"] = time.perf_counter() - started
        atomic_write_json(path, results)
    return dict(results, path=str(path))


def _run_part(name: str, work, results: dict, console: Console) -> dict:
    """One part's figures and wall time; an exception is recorded as its one-line error, not raised."""
    start = time.perf_counter()
    try:
        figures = work()
    except Exception as error:  # CUDA out of memory included (a RuntimeError)  # one part's failure must not cost the others
        line = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        console.print(f"suite {name}: failed: {line}", highlight=False, markup=False)
        figures = {"error": line, "where": traceback.format_exc(limit=-3).strip().splitlines()[-3:]}
        results["failed"].append(name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    figures["part_wall_s"] = time.perf_counter() - start
    return figures


def _timed_part(model: str, settings: dict, smoke: bool, peaks: dict, device: torch.device, console: Console):
    """The work of one timed part: ``bench.measure`` at scale 1 with the dtype's sustained peak, measured
    once per dtype and shared by the parts."""
    def work() -> dict:
        settings_ = dict(settings)
        preset = settings_.pop("preset")
        base = load_preset("demo" if smoke else preset)
        name = f"preset {preset}" + (" at a smoke size, demo networks" if smoke else "")
        params = suite_params(base, model, name=name, **settings_)
        dtype = torch.bfloat16 if settings_["precision"] == "bf16" else torch.float32
        if device.type == "cuda":  # as training sets them (runtime.setup_runtime): fp32 products run in TF32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        key = str(dtype)
        if key not in peaks:
            peaks[key] = sustained_peak(device, dtype, 1024 if smoke else 8192, 0.5 if smoke else 5.0)
        warmup, timed = (3, 5) if smoke else (3, 10)
        entry = measure(params, model, params_name=name, warmup=warmup, timed=timed,
                        peak=peaks[key], console=console)
        entry["tf32"] = bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
        return entry
    return work


# --- loss parity: the device against the CPU ---------------------------------------------------------

def parity_batches(params: Params, count: int, batch: int, num_classes: int) -> list[Batch]:
    """``count`` batches of random layouts and images, drawn on the CPU from a fixed seed (the same on
    every device)."""
    h, w = params.data.image_size_hw
    gen = torch.Generator().manual_seed(20171022)
    out = []
    for step in range(count):
        ids = torch.randint(0, num_classes, (batch, h, w), generator=gen)
        layout = F.one_hot(ids, num_classes).permute(0, 3, 1, 2).float()
        out.append(Batch(layout, torch.rand(batch, 3, h, w, generator=gen) * 255, tuple(range(step * batch, (step + 1) * batch))))
    return out


def parity_losses(params: Params, device: torch.device, batches: list[Batch], threads: int | None = None) -> list[float]:
    """The total loss of each training step of the CRN on ``device`` (fp32, TF32 off, plain Adam), from
    the weights ``build_run_without_data`` initialises from the seed."""
    mp = params.model("crn")
    rt = Runtime(device, 0, 1, None, False)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with full_fp32(), tempfile.TemporaryDirectory() as runs:
            run = build_run_without_data(params, "crn", mp, rt, Path(runs))
            losses = [trainer.train_step(run, rt, i, _to(b, device), nullcontext()) for i, b in enumerate(batches)]
            return [float(step["G/total"]) for step in losses]
    finally:
        torch.set_num_threads(before)


def loss_parity(smoke: bool, device: torch.device) -> dict:
    """``PARITY_STEPS`` (smoke: 20) CRN steps on ``device`` and on the CPU; agreement of their losses."""
    size, steps = ((32, 64), 20) if smoke else ((64, 128), PARITY_STEPS)
    params = suite_params(load_preset("demo"), "crn", size_hw=size, name="parity", precision="fp32",
                          batch_size_per_process=1, fused_adam=False, channels_last="off")
    batches = parity_batches(params, steps, 1, num_classes_for(params))
    threads = torch.get_num_threads()
    if device.type == "cpu":  # no second device: the CPU against itself at another thread count (other sum orders)
        fewer = threads // 2 if threads > 1 else 2
        other, compared = parity_losses(params, device, batches, fewer), f"cpu ({fewer} threads) vs cpu ({threads} threads)"
    else:
        other, compared = parity_losses(params, device, batches), f"{device_name(device)} vs cpu ({threads} threads)"
    reference = parity_losses(params, torch.device("cpu"), batches)
    return {"compared": compared, "steps": steps, "image_size_hw": list(size), "precision": "fp32, TF32 off",
            **agreement(other, reference)}


def agreement(device_losses: list[float], cpu_losses: list[float], tolerance: float = PARITY_TOLERANCE) -> dict:
    """Per-step relative differences |device - cpu| / |cpu| of two loss curves: the largest, the median and
    the last; ``agree`` when the largest is within ``tolerance``."""
    if len(device_losses) != len(cpu_losses) or not cpu_losses:
        raise ValueError(f"loss curves of {len(device_losses)} and {len(cpu_losses)} steps")
    relative = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(device_losses, cpu_losses)]
    finite = all(math.isfinite(x) for x in device_losses + cpu_losses)
    return {
        "losses_device": device_losses, "losses_cpu": cpu_losses,
        "max_relative_difference": max(relative), "median_relative_difference": statistics.median(relative),
        "last_step_relative_difference": relative[-1], "tolerance": tolerance,
        "agree": finite and max(relative) <= tolerance,
    }


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.layout.to(device), batch.image.to(device), batch.keys)


# --- DRN-D-105 with TF32 on and off ---------------------------------------------------------------------

def smooth_image(size_hw, seed: int = 0) -> torch.Tensor:
    """A (1, 3, H, W) image of whole values in 0..255: random colours at 1/32 of the size, upsampled
    (regions and edges, as photographs have, rather than per-pixel noise)."""
    h, w = size_hw
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, h // 32), max(1, w // 32), generator=gen) * 255
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).round().clamp(0, 255)


def drn_with_random_weights(seed: int) -> DRNSegmenter:
    """DRN-D-105 with weights drawn as DRN initialises its convolutions (normal, std sqrt(2 / (k^2 x output
    channels)), biases zero; BatchNorm's statistics the identity): its class scores vary over the image, as
    a trained one's do (torch's default initialisation gives one class everywhere)."""
    torch.manual_seed(seed)
    net = DRNSegmenter()
    with torch.no_grad():
        for module in net.modules():
            if type(module) is torch.nn.Conv2d:
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    module.bias.zero_()
    return net


def drn_tf32(smoke: bool, device: torch.device) -> dict:
    """DRN-D-105 (random weights from a fixed seed) on one image with TF32 on and off: the pixels whose
    argmax class differs and the largest logit difference. On a CPU both runs are fp32."""
    size = (64, 128) if smoke else (1024, 2048)
    net = drn_with_random_weights(105).to(device)
    image = smooth_image(size).to(device)
    outputs = {}
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            with torch.no_grad():
                outputs[tf32] = net(image).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    flips = int((outputs[True].argmax(1) != outputs[False].argmax(1)).sum())
    return {
        "image_size_hw": list(size), "weights": "random, DRN's initialisation (seed 105)", "image": "smooth random colours (seed 0)",
        "tf32": "on vs off" if device.type == "cuda" else "not on this device (both runs fp32)",
        "pixels": size[0] * size[1], "argmax_flips": flips, "argmax_flip_fraction": flips / (size[0] * size[1]),
        "max_abs_logit_difference": float((outputs[True] - outputs[False]).abs().max()),
        "max_abs_logit": float(outputs[False].abs().max()),
        "classes_predicted": int(outputs[False].argmax(1).unique().numel()),
    }


# --- what the command prints ---------------------------------------------------------------------------

def summary_lines(results: dict) -> list[str]:
    """One line per part with its main figures, then where the file is."""
    lines = [f"bench --suite gpu{' --smoke' if results['smoke'] else ''} on {results['device']} "
             f"(torch {results['torch']}): {results['wall_s']:.0f} s"]
    for name, part in results["parts"].items():
        lines.append(f"  {name}: " + _summary(part))
    lines.append(f"-> {results['path']}")
    return lines


def _summary(part: dict) -> str:
    if "error" in part:
        return f"FAILED {part['error']}"
    if "train_step_s" in part:
        h, w = part["timed_at_hw"]
        memory = part["allocator_peak_bytes_at_timed_size"]
        return (f"{h}x{w} {part['precision']}: train {part['train_images_per_s_at_timed_size']:.3g} img/s "
                f"(step {part['train_step_s']['median_s']:.3g} s, IQR {part['train_step_s']['iqr_s']:.2g}), "
                f"{part['train_fraction_of_sustained_peak']:.0%} of the sustained peak; synthesis "
                f"{part['synthesis_images_per_s_at_timed_size']:.3g} img/s; allocator peak "
                + (f"{memory / 2**30:.2f} GiB" if memory is not None else "none (CPU)"))
    if "agree" in part:
        return (f"{part['compared']}, {part['steps']} steps: largest relative loss difference "
                f"{part['max_relative_difference']:.2e} (tolerance {part['tolerance']:g}): "
                + ("agree" if part["agree"] else "DISAGREE"))
    return (f"{part['image_size_hw'][0]}x{part['image_size_hw'][1]}, TF32 {part['tf32']}: {part['argmax_flips']} of "
            f"{part['pixels']} pixels change class, largest logit difference {part['max_abs_logit_difference']:.3g}")
