"""`crn-repro bench`: how fast a model trains and synthesizes on this machine, in the settings its
params give (precision, memory format, compilation, activation checkpointing, fused Adam).

The step timed is the trainer's own (``trainer.train_step``) on batches of the prepared training data
(``paths.prepared``; without it, random layouts and images of the same shape, and the entry says so),
carrying the images' keys, so the reference-feature cache is used as training uses it: the timed steps
reuse the warm-up steps' batches, as training does after its first epoch.

What it reports, in ``benchmarks/results/<device>.json`` (one entry per model, params file and scale):
- per-step times of ``timed`` steps after ``warmup`` (at least 3 and 10; ``--quick``: 3 and 5): the
  median and the interquartile range; images/s at the size timed (``timed_at_hw``);
- FLOPs counted by ``torch.utils.flop_counter`` (matrix products and convolutions): *model* FLOPs (the
  step without recomputation) and *hardware* FLOPs (with activation-checkpoint recomputation), per
  image at the size timed and at the full size, and synthesis FLOPs;
- the sustained matmul peak of the step's dtype (large products, back to back, in windows of a
  tenth of a second or more; the best window), and the fraction of it the step reaches (hardware FLOPs);
- the CUDA allocator's peak at the size timed (none on a CPU: ``--cpu-rss`` measures a step's peak
  resident memory in a fresh process instead);
- projections to the full size and the whole schedule, in fields marked ``projected_`` (the time per
  step scaled by the FLOPs ratio of full size to timed size).

``--suite gpu`` (``benchsuite.run_suite``) runs the set of measurements wanted from a GPU in one go.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from crn_repro import trainer
from crn_repro.batches import batch_indices
from crn_repro.checkpoint import save_model_file
from crn_repro.datasets import Batch, PreparedSplit
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_json
from crn_repro.params import Params
from crn_repro.prepare import num_classes_for
from crn_repro.registry import BuildContext, get_spec
from crn_repro.runtime import Runtime, prepare_networks, setup_runtime

RESULTS = Path("benchmarks") / "results"
META = torch.device("meta")


def device_name(device: torch.device) -> str:
    """The machine in words: the GPU's name, or the CPU's model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """The results file's name for this machine: cuda-<gpu> or cpu-<model>."""
    text = device_name(device) if device.type == "cuda" else device_name(device).rsplit(" (", 1)[0]
    return device.type + "-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- timing -----------------------------------------------------------------------------------------

def time_calls(work, warmup: int, timed: int, device: torch.device) -> list[float]:
    """Seconds of each of ``timed`` calls ``work(i)`` after ``warmup`` untimed ones (the device is
    synchronised after each call, so each time is the call's own)."""
    for i in range(warmup):
        work(i)
    _synchronize(device)
    times = []
    for i in range(warmup, warmup + timed):
        start = time.perf_counter()
        work(i)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def spread(times: list[float]) -> dict[str, float]:
    """Median and quartiles (inclusive method) of per-call times, in seconds."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "n": len(times)}


def sustained_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> dict:
    """The sustained FLOP/s of size x size x size matrix products in ``dtype``: products run back to
    back in windows of at least 0.1 s (at least 4 each), for ``seconds``; the best window's rate and
    the median's. The best window is the peak a step's achieved FLOP/s is compared with."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3
    start = time.perf_counter()
    for _ in range(2):
        a @ b
    _synchronize(device)
    per_window = max(4, math.ceil(0.1 / max((time.perf_counter() - start) / 2, 1e-9)))
    rates, spent = [], 0.0
    while spent < seconds or len(rates) < 3:
        start = time.perf_counter()
        for _ in range(per_window):
            a @ b
        _synchronize(device)
        elapsed = time.perf_counter() - start
        rates.append(flops * per_window / elapsed)
        spent += elapsed
    return {"flops_per_s": max(rates), "median_flops_per_s": statistics.median(rates), "size": size,
            "dtype": str(dtype).removeprefix("torch."), "windows": len(rates), "products_per_window": per_window}


def peak_size(device: torch.device) -> int:
    return 8192 if device.type == "cuda" else 2048


# --- the run, its batches and its FLOPs ------------------------------------------------------------

def build_run_without_data(params: Params, model: str, mp, rt: Runtime, runs_dir: Path) -> trainer.Run:
    """A ``trainer.Run`` of ``model`` with the section ``mp``, as training builds it but without data: a
    random-weight VGG-19 (the same work, no file needed) and, for a model that requires another's model
    file (gan-semseg: the segmenter's), an untrained one of the params' shape written under ``runs_dir``."""
    spec = get_spec(model)
    full_hw = tuple(params.data.image_size_hw)
    num_classes = num_classes_for(params)
    vgg = params.vgg
    if vgg.weights != "random":
        vgg = type(vgg)("random", None, False, vgg.pooling, vgg.seed)
    for required in spec.requires:
        _untrained_model_file(params, required, Path(runs_dir), full_hw, num_classes)
    notes: list[str] = []
    # a model that reads Cityscapes' colour label maps gets random ones when there is no data
    ctx = BuildContext(full_hw, num_classes, vgg, 1000, Path(runs_dir), None, params.data.dataset,
                       params.data.dataset == "cityscapes", notes.append)
    kwargs, nets, objective, optimizers = trainer.build_networks(model, mp, ctx, rt, notes)
    return trainer.Run(model, spec, mp.train, mp.train.batch_size_per_process, None, spec.reads(kwargs), kwargs, nets,
                       optimizers, objective, "", Path(runs_dir), {}, params.to_dict())


def synthetic_batch(run: trainer.Run, params: Params, batch: int, device: torch.device, size_hw=None):
    """A random one-hot layout (or colour map) and image (0..255) of ``size_hw`` (default: the params'),
    as the networks read them; the work of a step does not depend on the pixels."""
    h, w = size_hw or params.data.image_size_hw
    if run.reads == "label_colors":
        layout = torch.rand(batch, 3, h, w, device=device) * 255
    else:
        ids = torch.randint(0, num_classes_for(params), (batch, h, w), device=device)
        layout = F.one_hot(ids, num_classes_for(params)).permute(0, 3, 1, 2).float()
    return layout, torch.rand(batch, 3, h, w, device=device) * 255


def training_batches(params: Params, run: trainer.Run, size_hw, count: int, rt: Runtime) -> tuple[list[Batch], str]:
    """The batches of training steps 0..count-1 from the prepared training data (resized to
    ``size_hw`` when timing below the full size: nearest for layouts, area for images), with their
    keys; random ones with keys 0, 1, ... where the prepared data is missing or of another size. Returns
    (batches, where they came from)."""
    n, prepared = run.global_batch, Path(params.paths.prepared)
    try:
        data = PreparedSplit(prepared, "train")
        fits = data.size_hw == tuple(params.data.image_size_hw) and data.num_classes == num_classes_for(params)
    except CrnError:
        data, fits = None, False
    batches = []
    for step in range(count):
        if fits:
            indices = batch_indices(run.train.seed, step, len(data), n)
            layout, image = data.batch(indices, rt.device, run.reads)
            keys = tuple(int(i) for i in indices)
        else:
            layout, image = synthetic_batch(run, params, n, rt.device)
            keys = tuple(range(step * n, (step + 1) * n))
        if tuple(layout.shape[-2:]) != tuple(size_hw):
            layout, image = F.interpolate(layout, size=size_hw, mode="nearest"), F.interpolate(image, size=size_hw, mode="area")
        fmt = rt.memory_format
        batches.append(Batch(layout.contiguous(memory_format=fmt), image.contiguous(memory_format=fmt), keys))
    source = f"prepared training data ({prepared})" if fits else f"random layouts and images (no prepared data of this size at {prepared})"
    return batches, source


def synthesis_input(run: trainer.Run, batch: Batch) -> torch.Tensor:
    """What the main network reads to synthesize: the layout (a segmenter: the image, which it segments)."""
    return batch.image if run.spec.role == "segmenter" else batch.layout


def count_flops(run: trainer.Run, rt: Runtime, batch: Batch) -> dict[str, float]:
    """FLOPs of one training step as timed (every phase, forward and backward; the reference-feature
    cache filled by a first, uncounted step): ``model`` without activation-checkpoint recomputation,
    ``hardware`` with it (what the device computes); and of one synthesis forward. Counted by
    ``torch.utils.flop_counter`` (matrix products and convolutions), on any device (meta: shapes only)."""
    generator = run.nets[run.spec.main_network]
    checkpointing = getattr(generator, "activation_checkpointing", False)
    trainer.train_step(run, rt, 0, batch, nullcontext())
    counts = {}
    for name, recompute in (("model", False), ("hardware", checkpointing)):
        if checkpointing:
            generator.activation_checkpointing = recompute
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(run, rt, 1, batch, nullcontext())
        counts[name] = float(counter.get_total_flops())
    if checkpointing:
        generator.activation_checkpointing = True
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(synthesis_input(run, batch))
    counts["synthesis"] = float(counter.get_total_flops())
    return counts


def _untrained_model_file(params: Params, model: str, runs: Path, size_hw, num_classes: int) -> None:
    """An untrained model file of ``model`` where a required model's file is expected."""
    spec = get_spec(model)
    ctx = BuildContext(size_hw, num_classes, params.vgg, 1, runs)
    kwargs = {n: resolve(params.model(model).network, ctx) for n, (_, resolve) in spec.networks.items()}
    nets = {n: cls(**kwargs[n]) for n, (cls, _) in spec.networks.items()}
    save_model_file(runs / model / "model.pt", model, kwargs, nets, {"image_size_hw": list(size_hw)})


# --- the measurement ------------------------------------------------------------------------------

def with_size(params: Params, size_hw) -> Params:
    """``params`` with ``data.image_size_hw`` replaced (networks built for that size)."""
    return dataclasses.replace(params, data=dataclasses.replace(params.data, image_size_hw=tuple(size_hw)))


def plan_scale(params: Params, model: str, mp, scale: int, runs: Path) -> tuple[int, tuple[int, int]]:
    """The largest divisor of ``scale`` (halving) at which a training step of ``model`` runs (tried on
    the meta device), and the size its networks are built for: the full size, or, for networks that
    only run at the size they were built for (e.g. gan-semseg's discriminator), the size timed."""
    full_hw = tuple(params.data.image_size_hw)
    plain = dataclasses.replace(mp, train=dataclasses.replace(mp.train, fused_adam=False, compile=False))
    meta = Runtime(META, 0, 1, None, False)
    while scale >= 1:
        hw = (full_hw[0] // scale, full_hw[1] // scale)
        for build_hw in dict.fromkeys((full_hw, hw)):
            try:
                run = build_run_without_data(with_size(params, build_hw), model, plain, meta, runs)
                layout, image = synthetic_batch(run, params, run.global_batch, META, hw)
                trainer.train_step(run, meta, 0, Batch(layout, image, tuple(range(run.global_batch))), nullcontext())
                return scale, build_hw
            except (RuntimeError, ValueError, CrnError):
                continue
        scale //= 2
    raise CrnError(f"bench {model}: a training step does not run at {full_hw[0]}x{full_hw[1]}; check the model's params")


def _flops_at(params: Params, model: str, mp, build_hw, size_hw, runs: Path) -> dict[str, float]:
    """``count_flops`` of a run built for ``build_hw`` on inputs of ``size_hw``, on the meta device."""
    plain = dataclasses.replace(mp, train=dataclasses.replace(mp.train, fused_adam=False, compile=False))
    meta = Runtime(META, 0, 1, None, False)
    run = build_run_without_data(with_size(params, build_hw), model, plain, meta, runs)
    layout, image = synthetic_batch(run, params, run.global_batch, META, size_hw)
    return count_flops(run, meta, Batch(layout, image, tuple(range(run.global_batch))))


def measure(params: Params, model: str, params_name: str, *, scale: int = 1, warmup: int = 3, timed: int = 10,
            peak: dict | None = None, console: Console | None = None) -> dict:
    """Time ``model``'s training step and synthesis (see the module docstring) and return the entry;
    ``peak`` (a ``sustained_peak`` result) is measured here unless given."""
    console = console or Console(stderr=True)
    mp = params.model(model)
    rt = setup_runtime(mp.train)
    full_hw = tuple(params.data.image_size_hw)
    if scale < 1 or full_hw[0] % scale or full_hw[1] % scale:
        raise CrnError(f"--scale {scale}: must be a positive divisor of the image size {full_hw[0]}x{full_hw[1]}")
    with tempfile.TemporaryDirectory() as runs:
        usable, build_hw = plan_scale(params, model, mp, scale, Path(runs))
        if usable != scale:  # e.g. pix2pix's U-Net needs H and W divisible by 2^num_downs
            console.print(f"bench {model}: a step does not run at 1/{scale} of the size; timing at 1/{usable}", highlight=False)
        size_hw = (full_hw[0] // usable, full_hw[1] // usable)
        flops = _flops_at(params, model, mp, build_hw, size_hw, Path(runs))
        flops_full = _flops_at(params, model, mp, full_hw, full_hw, Path(runs)) if usable > 1 else None
        run = build_run_without_data(with_size(params, build_hw), model, mp, rt, Path(runs))
    run.nets = prepare_networks(run.nets, mp.train, rt)
    batches, source = training_batches(params, run, size_hw, warmup, rt)
    console.print(f"bench {model}: {warmup} warm-up and {timed} timed training steps at {size_hw[0]}x{size_hw[1]}, "
                  f"batch {run.global_batch}, on {device_name(rt.device)}; batches: {source}", highlight=False)
    times = _time_step_and_synthesis(run, rt, batches, warmup, timed)
    dtype = rt.autocast_dtype or torch.float32
    peak = peak or sustained_peak(rt.device, dtype, peak_size(rt.device), 2.0 if timed < 10 else 5.0)
    entry = _entry(params, model, params_name, run, rt, times, flops, flops_full, peak)
    entry.update(scale=usable, timed_at_hw=list(size_hw), networks_built_for_hw=list(build_hw), batches=source,
                 warmup_steps=warmup, timed_steps=timed)
    return entry


def _time_step_and_synthesis(run: trainer.Run, rt: Runtime, batches: list[Batch], warmup: int, timed: int) -> dict:
    """Per-call times of the trainer's step (timed steps reuse the warm-up batches, so a reference-
    feature cache is hit as after training's first epoch) and of synthesis, and the CUDA allocator's
    peak over the training steps."""
    autocast = torch.autocast(rt.device.type, dtype=rt.autocast_dtype) if rt.autocast_dtype else nullcontext()
    for net in run.nets.values():
        net.train()
    run.objective.train()
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    step = time_calls(lambda i: trainer.train_step(run, rt, i, batches[i % len(batches)], autocast), warmup, timed, rt.device)
    allocator_peak = torch.cuda.max_memory_allocated(rt.device) if rt.device.type == "cuda" else None
    generator = run.nets[run.spec.main_network].eval()
    with torch.no_grad(), autocast:
        synthesis = time_calls(lambda i: generator(synthesis_input(run, batches[i % len(batches)])), warmup, timed, rt.device)
    return {"train": spread(step), "synthesis": spread(synthesis), "allocator_peak_bytes": allocator_peak}


def _entry(params: Params, model: str, params_name: str, run, rt, times, flops, flops_full, peak) -> dict:
    """The figures of one measurement, each named with what it is and where it holds."""
    tp, batch = run.train, run.global_batch
    step_s, synth_s = times["train"]["median_s"], times["synthesis"]["median_s"]
    full = flops_full or flops
    ratio = full["hardware"] / flops["hardware"]
    checkpointing = bool(getattr(run.nets[run.spec.main_network], "activation_checkpointing", False))
    return {
        "model": model, "params": params_name, "device": device_name(rt.device), "torch": torch.__version__,
        "image_size_hw": list(params.data.image_size_hw), "batch_size_per_process": batch,
        "precision": str(rt.autocast_dtype or torch.float32).removeprefix("torch."), "channels_last": rt.channels_last,
        "compile": tp.compile, "activation_checkpointing": checkpointing, "fused_adam": tp.fused_adam,
        "train_step_s": times["train"], "synthesis_s": times["synthesis"],
        "train_images_per_s_at_timed_size": batch / step_s, "synthesis_images_per_s_at_timed_size": batch / synth_s,
        "model_train_flops_per_image_at_timed_size": flops["model"] / batch,
        "hardware_train_flops_per_image_at_timed_size": flops["hardware"] / batch,
        "synthesis_flops_per_image_at_timed_size": flops["synthesis"] / batch,
        "model_train_flops_per_image_at_full_size": full["model"] / batch,
        "hardware_train_flops_per_image_at_full_size": full["hardware"] / batch,
        "hardware_train_tflops_per_s": flops["hardware"] / step_s / 1e12,
        "model_train_tflops_per_s": flops["model"] / step_s / 1e12,
        "synthesis_tflops_per_s": flops["synthesis"] / synth_s / 1e12,
        "sustained_peak": peak, "sustained_peak_tflops_per_s": peak["flops_per_s"] / 1e12,
        "train_fraction_of_sustained_peak": flops["hardware"] / step_s / peak["flops_per_s"],
        "synthesis_fraction_of_sustained_peak": flops["synthesis"] / synth_s / peak["flops_per_s"],
        "allocator_peak_bytes_at_timed_size": times["allocator_peak_bytes"],
        "total_steps": tp.total_steps,
        "projected_full_size_step_s": step_s * ratio,
        "projected_schedule_hours": tp.total_steps * step_s * ratio / 3600,
        "projection": "measured at the full size" if ratio == 1 else
                      f"projected: median step time x {ratio:.4g} (hardware FLOPs at the full size / at the size timed)",
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def bench(
    params: Params, model: str, params_name: str, *, scale: int | None = None, quick: bool = False,
    steps: int | None = None, out_dir: Path = RESULTS, console: Console | None = None, cpu_rss: bool = False,
) -> dict:
    """Measure ``model`` with ``params`` (see the module docstring); the entry is written to
    ``out_dir/<device>.json``, replacing one of the same model, params and scale."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if scale is None:
        scale = 4 if quick and device.type == "cpu" else 1
    warmup, timed = (3, 5) if quick else (3, 10)  # at least 3 warm-up and 10 (quick: 5) timed
    entry = measure(params, model, params_name, scale=scale, warmup=warmup, timed=steps or timed, console=console)
    entry["quick"] = quick
    if cpu_rss:
        entry["cpu_step_peak_rss"] = cpu_step_peak_rss(params, model)
    path = Path(out_dir) / f"{device_slug(device)}.json"
    key = (model, params_name, entry["scale"])
    entries = [e for e in _read_results(path) if (e.get("model"), e.get("params"), e.get("scale")) != key] + [entry]
    atomic_write_json(path, sorted(entries, key=lambda e: (e["params"], e["model"], e["scale"])))
    return dict(entry, path=str(path))


# --- memory: the peak resident memory of a step in a fresh process ------------------------------------

def cpu_step_peak_rss(params: Params, model: str) -> dict:
    """The peak resident memory (``ru_maxrss``) of a fresh process that runs one training step of
    ``model`` at the params' full size on the CPU, in bf16 autocast with activation checkpointing
    (VGG-19 included, random weights: the same sizes), and its resident memory before the step."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.json"
        path.write_text(json.dumps(params.to_dict()))
        code = f"from crn_repro.bench import _rss_child; _rss_child({str(path)!r}, {model!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise CrnError(f"bench: the memory-measuring process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_child(params_json: str, model: str) -> None:
    """In the fresh process of ``cpu_step_peak_rss``: one step, then the figures as a JSON line."""
    from crn_repro.params import parse_params

    params = parse_params(json.loads(Path(params_json).read_text()), params_json)
    mp = params.model(model)
    mp = dataclasses.replace(mp, train=dataclasses.replace(
        mp.train, precision="bf16", activation_checkpointing=True, fused_adam=False, compile=False, channels_last="off"))
    rt = Runtime(torch.device("cpu"), 0, 1, torch.bfloat16, False)
    with tempfile.TemporaryDirectory() as runs:
        run = build_run_without_data(params, model, mp, rt, Path(runs))
        layout, image = synthetic_batch(run, params, run.global_batch, rt.device)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        trainer.train_step(run, rt, 0, Batch(layout, image, tuple(range(run.global_batch))),
                           torch.autocast("cpu", dtype=torch.bfloat16))
    print(json.dumps({
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss_before_step_bytes": before,
        "step_s": time.perf_counter() - started, "image_size_hw": list(params.data.image_size_hw),
        "batch_size": run.global_batch, "precision": "bfloat16 autocast", "activation_checkpointing": True,
        "what": "ru_maxrss of a fresh process after one training step on the CPU (weights, Adam, VGG-19, activations)",
    }))


def _read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CrnError(f"{path}: unreadable benchmark results ({error}); move it away to start a new file") from None
    if not isinstance(entries, list):
        raise CrnError(f"{path}: expected a list of benchmark entries; move it away to start a new file")
    return entries


def _row(e: dict) -> str | None:
    """One results-table row; None for an entry written by an older bench (without median and IQR)."""
    if "train_step_s" not in e:
        return None
    h, w = e["image_size_hw"]
    th, tw = e["timed_at_hw"]
    step, synth = e["train_step_s"], e["synthesis_s"]
    if e["allocator_peak_bytes_at_timed_size"] is not None:
        mem = f"{e['allocator_peak_bytes_at_timed_size'] / 2**30:.2f} GiB allocator peak at {th}x{tw}"
    elif e.get("cpu_step_peak_rss"):
        mem = f"{e['cpu_step_peak_rss']['peak_rss_bytes'] / 2**30:.1f} GiB peak RSS at {h}x{w} (bf16, ckpt)"
    else:
        mem = "not measured"
    return (
        f"| {e['device']} | {e['params']} | {e['model']} | {h}x{w} | {th}x{tw} | {e['precision']} | "
        f"{step['median_s']:.3g} ({step['iqr_s']:.2g}) | {e['train_images_per_s_at_timed_size']:.3g} | "
        f"{e['hardware_train_tflops_per_s']:.3g} ({e['train_fraction_of_sustained_peak']:.0%}) | "
        f"{e['batch_size_per_process'] / synth['median_s']:.3g} | {mem} | {e['projected_schedule_hours']:.3g} h |"
    )


def results_table(out_dir: Path = RESULTS) -> str:
    """Every benchmark result under ``out_dir`` as one markdown table (for the README)."""
    rows = [
        "| device | params | model | full size | timed at | precision | train step s, median (IQR) | train img/s "
        "(timed size) | hardware TFLOP/s (% of sustained peak) | synthesis img/s (timed size) | memory | "
        "projected schedule |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            if not isinstance(json.loads(path.read_text()), list):
                continue  # another benchmark's file (e.g. loader_vs_step-cpu.json or a suite), not bench's
        except (OSError, ValueError):
            pass  # _read_results names the file
        rows += [row for row in map(_row, _read_results(path)) if row]
    return "\n".join(rows)
