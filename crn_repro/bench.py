"""`crn-repro bench`: how fast a model trains and synthesizes on this machine, in the settings its
params give (precision, memory format, compilation, activation checkpointing, fused Adam), with the
trainer's own step (``trainer.train_step``). No dataset is read: a random layout and image of the
params' size stand in (the work does not depend on the pixels).

What it reports, in ``benchmarks/results/<device>.json`` (one entry per model, params file and scale):
- training steps/s and images/s; synthesis images/s;
- FLOPs per image of a training step and of synthesis, counted by ``torch.utils.flop_counter`` at the
  params' full size (on the meta device, so even 1024x2048 costs nothing to count), and the achieved
  TFLOP/s;
- the same run's peak of a large matrix product in the step's precision, and the fraction of it the
  step and synthesis reach;
- peak memory: the CUDA allocator's peak on a GPU; elsewhere the bytes a step holds, sized from the
  shapes (``memory.training_step_memory``);
- the projected wall time of the whole schedule (``total_steps``).

``--scale S`` (``--quick`` on a CPU: 4) times the networks at 1/S of the height and width, for machines
that cannot run the full size in minutes; the networks are fully convolutional, so only the pixel
count changes, and the projection to the full size multiplies the time by S^2 (marked as such).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from crn_repro import memory, trainer
from crn_repro.checkpoint import save_model_file
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_json
from crn_repro.params import Params
from crn_repro.prepare import num_classes_for
from crn_repro.registry import BuildContext, get_spec
from crn_repro.runtime import Runtime, prepare_networks, setup_runtime

RESULTS = Path("benchmarks") / "results"


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


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    """FLOP/s of a size x size x size matrix product in ``dtype`` on ``device``, best of repeated runs:
    the peak a convolutional step can hope to approach, measured in the same run."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _synchronize(device)
    best, spent = math.inf, 0.0
    while spent < seconds:
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * size**3 / best


def _inputs(spec, network_kwargs: dict, num_classes: int, size_hw, batch: int, device, memory_format):
    """A random one-hot layout (or colour map) and image of the given size, as the networks read them."""
    h, w = size_hw
    if spec.reads(network_kwargs) == "label_colors":
        layout = torch.rand(batch, 3, h, w, device=device) * 255
    else:
        ids = torch.randint(0, num_classes, (batch, h, w), device=device)
        layout = torch.nn.functional.one_hot(ids, num_classes).permute(0, 3, 1, 2).float()
    image = torch.rand(batch, 3, h, w, device=device) * 255
    return layout.contiguous(memory_format=memory_format), image.contiguous(memory_format=memory_format)


def _count_flops(run: trainer.Run, rt: Runtime, batch) -> dict[str, float]:
    """FLOPs of one training step (every phase, forward and backward) and of one synthesis forward, as
    ``torch.utils.flop_counter`` counts them (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(run, rt, 0, batch, nullcontext())
    train_flops = counter.get_total_flops()
    generator = run.nets[run.spec.main_network]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(batch[0])
    return {"train": float(train_flops), "synthesis": float(counter.get_total_flops())}


def bench(
    params: Params, model: str, params_name: str, *, scale: int | None = None, quick: bool = False,
    steps: int | None = None, out_dir: Path = RESULTS, console: Console | None = None,
) -> dict:
    """Measure ``model`` with ``params`` (see the module docstring); returns the entry written to
    ``out_dir/<device>.json``."""
    console = console or Console(stderr=True)
    spec = get_spec(model)
    mp = params.model(model)
    tp = mp.train
    rt = setup_runtime(tp)
    if scale is None:
        scale = 4 if quick and rt.device.type == "cpu" else 1
    full_hw = tuple(params.data.image_size_hw)
    if scale < 1 or full_hw[0] % scale or full_hw[1] % scale:
        raise CrnError(f"--scale {scale}: must be a positive divisor of the image size {full_hw[0]}x{full_hw[1]}")
    size_hw = (full_hw[0] // scale, full_hw[1] // scale)
    warmup, timed = (1, 2) if quick else (3, 10)
    timed = steps or timed
    batch_size = tp.batch_size_per_process
    num_classes = num_classes_for(params)
    notes: list[str] = []
    vgg = params.vgg
    if vgg.weights != "random":  # the same network with random weights: the same work, no file needed
        vgg = type(vgg)("random", None, False, vgg.pooling, vgg.seed)

    with tempfile.TemporaryDirectory() as runs:
        for required in spec.requires:  # e.g. gan-semseg's segmenter: an untrained one of the params' shape
            _untrained_model_file(params, required, Path(runs), full_hw, num_classes)
        # the inputs are random: a model that reads Cityscapes' colour label maps gets random ones (no data needed)
        ctx = BuildContext(full_hw, num_classes, vgg, 1000, Path(runs), None, params.data.dataset,
                           params.data.dataset == "cityscapes", notes.append)
        run = _build(model, mp, ctx, rt, notes)
        meta = Runtime(torch.device("meta"), 0, 1, None, False)  # FLOPs do not depend on the dtype
        plain = dataclasses.replace(mp, train=dataclasses.replace(tp, fused_adam=False, compile=False))
        meta_run = _build(model, plain, ctx, meta, notes)
    run.nets = prepare_networks(run.nets, tp, rt)
    usable = _runnable_scale(meta_run, spec, num_classes, full_hw, batch_size, scale)
    if usable != scale:  # e.g. pix2pix's U-Net needs H and W divisible by 2^num_downs
        console.print(f"bench {model}: the network does not run at 1/{scale} of the size; timing at 1/{usable}", highlight=False)
        scale, size_hw = usable, (full_hw[0] // usable, full_hw[1] // usable)

    # FLOPs and memory at the full size, from shapes on the meta device (nothing is computed)
    meta_batch = _inputs(spec, run.network_kwargs, num_classes, full_hw, batch_size, meta.device, torch.contiguous_format)
    flops_full = _count_flops(meta_run, meta, meta_batch)
    flops_timed = {k: v / scale**2 for k, v in flops_full.items()}  # convolutions: FLOPs proportional to pixels
    checkpointing = tp.activation_checkpointing and spec.cascade
    step_memory = memory.training_step_memory(meta_run.nets, spec.main_network, meta_run.objective, *meta_batch,
                                              bf16=rt.autocast_dtype is not None, checkpointing=checkpointing)

    batch = _inputs(spec, run.network_kwargs, num_classes, size_hw, batch_size, rt.device, rt.memory_format)
    autocast = torch.autocast(rt.device.type, dtype=rt.autocast_dtype) if rt.autocast_dtype else nullcontext()
    for net in run.nets.values():
        net.train()
    run.objective.train()
    console.print(f"bench {model}: {warmup} warm-up and {timed} timed training steps at {size_hw[0]}x{size_hw[1]}, "
                  f"batch {batch_size}, on {device_name(rt.device)}", highlight=False)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    step_s = _time(lambda step: trainer.train_step(run, rt, step, batch, autocast), warmup, timed, rt.device)
    peak_bytes = torch.cuda.max_memory_allocated(rt.device) if rt.device.type == "cuda" else None
    generator = run.nets[spec.main_network].eval()
    with torch.no_grad(), autocast:
        synth_s = _time(lambda step: generator(batch[0]), warmup, timed, rt.device)
    dtype = rt.autocast_dtype or torch.float32
    peak_flops = matmul_peak(rt.device, dtype, 8192 if rt.device.type == "cuda" else 2048, 2.0 if quick else 5.0)

    entry = {
        "model": model,
        "params": params_name,
        "device": device_name(rt.device),
        "torch": torch.__version__,
        "image_size_hw": list(full_hw),
        "timed_at_hw": list(size_hw),
        "scale": scale,
        "batch_size_per_process": batch_size,
        "precision": str(dtype).removeprefix("torch."),
        "channels_last": rt.channels_last,
        "compile": tp.compile,
        "activation_checkpointing": checkpointing,
        "fused_adam": tp.fused_adam,
        "train_steps_per_s": 1 / step_s,
        "train_images_per_s": batch_size / step_s,
        "synthesis_images_per_s": batch_size / synth_s,
        "train_flops_per_image": flops_full["train"] / batch_size,
        "synthesis_flops_per_image": flops_full["synthesis"] / batch_size,
        "train_tflops_per_s": flops_timed["train"] / step_s / 1e12,
        "synthesis_tflops_per_s": flops_timed["synthesis"] / synth_s / 1e12,
        "matmul_peak_tflops_per_s": peak_flops / 1e12,
        "train_fraction_of_peak": flops_timed["train"] / step_s / peak_flops,
        "synthesis_fraction_of_peak": flops_timed["synthesis"] / synth_s / peak_flops,
        "peak_memory_bytes": peak_bytes,
        "peak_memory_source": "CUDA allocator peak" if peak_bytes is not None else "not measured (no CUDA device)",
        "computed_step_memory_bytes": step_memory,
        "total_steps": tp.total_steps,
        "projected_schedule_hours": tp.total_steps * step_s * scale**2 / 3600,
        "projection": "measured" if scale == 1 else f"extrapolated: time per step x {scale}^2 (timed at 1/{scale} of the size)",
        "quick": quick,
        "timed_steps": timed,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(out_dir) / f"{device_slug(rt.device)}.json"
    key = (model, params_name, scale)
    entries = [e for e in _read_results(path) if (e.get("model"), e.get("params"), e.get("scale")) != key] + [entry]
    atomic_write_json(path, sorted(entries, key=lambda e: (e["params"], e["model"], e["scale"])))
    return dict(entry, path=str(path))


def _runnable_scale(meta_run: trainer.Run, spec, num_classes: int, full_hw, batch: int, scale: int) -> int:
    """The largest divisor of ``scale`` (halving) at which the generator runs, tried on the meta device."""
    generator = meta_run.nets[spec.main_network]
    while scale > 1:
        hw = (full_hw[0] // scale, full_hw[1] // scale)
        try:
            with torch.no_grad():
                generator(_inputs(spec, meta_run.network_kwargs, num_classes, hw, batch, torch.device("meta"),
                                  torch.contiguous_format)[0])
            return scale
        except (RuntimeError, ValueError):
            scale //= 2
    return 1


def _build(model: str, mp, ctx: BuildContext, rt: Runtime, notes: list[str]) -> trainer.Run:
    """A ``trainer.Run`` without data: networks, objective and optimizers as training builds them."""
    spec = get_spec(model)
    kwargs, nets, objective, optimizers = trainer.build_networks(model, mp, ctx, rt, notes)
    return trainer.Run(model, spec, mp.train, mp.train.batch_size_per_process, None, spec.reads(kwargs), kwargs, nets,
                       optimizers, objective, "", ctx.runs_dir, {})


def _time(work, warmup: int, timed: int, device: torch.device) -> float:
    """Seconds per call of ``work(i)`` over ``timed`` calls after ``warmup`` ones."""
    for i in range(warmup):
        work(i)
    _synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + timed):
        work(i)
    _synchronize(device)
    return (time.perf_counter() - start) / timed


def _untrained_model_file(params: Params, model: str, runs: Path, size_hw, num_classes: int) -> None:
    """An untrained model file of ``model`` where a required model's file is expected."""
    spec = get_spec(model)
    ctx = BuildContext(size_hw, num_classes, params.vgg, 1, runs)
    kwargs = {n: resolve(params.model(model).network, ctx) for n, (_, resolve) in spec.networks.items()}
    nets = {n: cls(**kwargs[n]) for n, (cls, _) in spec.networks.items()}
    save_model_file(runs / model / "model.pt", model, kwargs, nets, {"image_size_hw": list(size_hw)})


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


def results_table(out_dir: Path = RESULTS) -> str:
    """Every benchmark result under ``out_dir`` as one markdown table (for the README)."""
    rows = [
        "| device | params | model | size (timed at) | precision | train img/s | train TFLOP/s (% of matmul peak) | "
        "synthesis img/s (% of peak) | memory | schedule |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            if not isinstance(json.loads(path.read_text()), list):
                continue  # another benchmark's file (e.g. loader_vs_step-cpu.json), not crn-repro bench's
        except (OSError, ValueError):
            pass  # _read_results names the file
        for e in _read_results(path):
            h, w = e["image_size_hw"]
            th, tw = e["timed_at_hw"]
            size = f"{h}x{w}" + ("" if e["scale"] == 1 else f" ({th}x{tw})")
            if e["peak_memory_bytes"] is not None:
                mem = f"{e['peak_memory_bytes'] / 2**30:.1f} GiB peak"
            else:
                mem = f"{e['computed_step_memory_bytes']['total'] / 2**30:.1f} GiB computed"
            schedule = f"{e['projected_schedule_hours']:.1f} h" + ("" if e["scale"] == 1 else " (extrapolated)")
            rows.append(
                f"| {e['device']} | {e['params']} | {e['model']} | {size} | {e['precision']} | {e['train_images_per_s']:.3g} | "
                f"{e['train_tflops_per_s']:.3g} ({e['train_fraction_of_peak']:.0%}) | {e['synthesis_images_per_s']:.3g} "
                f"({e['synthesis_fraction_of_peak']:.0%}) | {mem} | {schedule} |"
            )
    return "\n".join(rows)
