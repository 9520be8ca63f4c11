"""The one trainer (STYLE convention 4): builds a registry model's networks, optimizers and
objective, and runs the objective's phases every step. It never branches on the model.

Resuming is running the same command again: the training state holds step, networks, optimizers
and the objective's state, and every random choice at step s derives from (seed, s), so an
interrupted run continues exactly as an uninterrupted one. Multi-GPU runs use torchrun (DDP).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from crn_repro.checkpoint import (
    STATE_FORMAT,
    atomic_torch_save,
    init_from_model_file,
    load_training_state,
    save_model_file,
    unwrap,
)
from crn_repro.config import to_dict
from crn_repro.datasets import PreparedSplit, read_prepared_meta
from crn_repro.errors import CrnError, one_line
from crn_repro.files import atomic_write_json, atomic_write_text
from crn_repro.losses import Objective
from crn_repro.params import Params, TrainParams
from crn_repro.registry import BuildContext, ModelSpec, count_parameters, get_spec


# Purposes of derived seeds, so that no two random streams of a run coincide.
INIT, BATCHES, STEP_NOISE = 0, 1, 2


def derive_seed(*values: int) -> int:
    """A 63-bit seed derived from non-negative integers, e.g. (seed, STEP_NOISE, step)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batch_indices(seed: int, step: int, num_items: int, batch_size: int) -> np.ndarray:
    """The global batch of step ``step``: epoch e = step // steps_per_epoch walks a permutation drawn
    from (seed, e); the last batch of an epoch wraps around so every batch is full."""
    steps_per_epoch = math.ceil(num_items / batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng(derive_seed(seed, BATCHES, epoch)).permutation(num_items)
    return order[(position * batch_size + np.arange(batch_size)) % num_items]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(tp: TrainParams) -> Runtime:
    """Device, DDP process group (under torchrun), precision and memory format."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    use_bf16 = tp.precision == "bf16" or (tp.precision == "auto" and cuda)
    channels_last = tp.channels_last == "on" or (tp.channels_last == "auto" and cuda)
    return Runtime(device, rank, world_size, torch.bfloat16 if use_bf16 else None, channels_last)


def run_fingerprint(model: str, network_kwargs: dict, params: Params, objective_identity: dict) -> str:
    """Hash of every setting that makes a saved state incompatible with the current params: the
    networks, objective, optimizers, the training data (the prepared cache's dataset, size, label
    space, how labels were read, and its training split's count and class frequencies), seed and
    batch size, the initialisation file and frozen modules, and what the objective itself depends
    on (e.g. the VGG weights, a frozen segmenter's file). Other paths, validation-only settings
    and step counts are left out, so changing them resumes instead of starting over. (The
    initialisation file only matters at step 0: a resumed run neither rereads nor needs it.)"""
    mp = params.model(model)
    data = params.data
    meta = read_prepared_meta(Path(params.paths.prepared))
    # Kept labelIds (label_id_colors) only matter to the models that read them, whose network_kwargs say so.
    skip = ("source", "splits", "label_id_colors")
    meta = {k: v for k, v in meta.items() if k not in skip} | {"train": meta["splits"]["train"]}
    identity = {
        "model": model,
        "network_kwargs": network_kwargs,
        "objective": to_dict(mp.objective),
        "objective_inputs": objective_identity,
        "optimizer": to_dict(mp.optimizer),
        "data": [data.dataset, list(data.image_size_hw), data.max_train_images],
        "prepared": meta,
        "seed": mp.train.seed,
        "batch_size": mp.train.batch_size,
        "init_from": mp.train.init_from,
        "train_last_modules": mp.train.train_last_modules,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Run:
    """Everything one training run is made of, built once by ``build_run``."""

    model: str
    spec: ModelSpec
    train: TrainParams  # the global `train` section with this model's overrides
    data: PreparedSplit
    reads: str  # what the networks read of a layout (datasets.READS)
    network_kwargs: dict[str, dict]
    nets: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    objective: Objective
    fingerprint: str  # run_fingerprint: a saved state with another one is not resumed
    run_dir: Path
    facts: dict  # what the model file and summary say about the run

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.pt"


@dataclass
class Position:
    """Where training stands: the steps done, the wall time they took, and the last logged losses."""

    step: int = 0
    wall_time_s: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)


def train(params: Params, model: str, until_step: int | None = None, console: Console | None = None) -> dict:
    """Train ``model`` up to ``train.total_steps`` (or stop after ``until_step``), resuming from the
    run folder's training state if it matches the current params. Returns the run summary."""
    console = console or Console(stderr=True)
    rt = setup_runtime(params.model(model).train)
    run = build_run(params, model, rt, console)
    position = resume(run, rt, console)
    if position.step == 0:
        _initialise(model, run.nets, run.train, console if rt.is_main else None)
    if rt.world_size > 1:
        run.nets = wrap_for_ddp(run.nets, rt)
    stop = run.train.total_steps if until_step is None else min(run.train.total_steps, until_step)
    live = _open_live(run.run_dir, resume=position.step > 0, start_step=position.step) if rt.is_main else None
    if rt.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.run_dir / "params.json", params.to_dict())
    position = run_steps(run, rt, position, stop, live, console)
    return finish(run, rt, params, position, live)


def build_run(params: Params, model: str, rt: Runtime, console: Console) -> Run:
    """The run's data, networks (initialised from (seed, INIT), frozen where asked), objective and
    optimizers, on the runtime's device and memory format, and the facts its files record."""
    spec = get_spec(model)
    mp = params.model(model)
    tp = mp.train
    if tp.batch_size % rt.world_size:
        raise CrnError(f"{model}.train.batch_size: {tp.batch_size} is not divisible by {rt.world_size} processes")

    data = PreparedSplit(Path(params.paths.prepared), "train")
    if data.size_hw != tuple(params.data.image_size_hw):
        raise CrnError(
            f"{params.paths.prepared}: prepared at {data.size_hw}, but data.image_size_hw is "
            f"{tuple(params.data.image_size_hw)}; run `crn-repro prepare` again"
        )
    steps_per_epoch = math.ceil(len(data) / tp.batch_size)
    space = data.label_space
    notes: list[str] = []
    ctx = BuildContext(
        tuple(params.data.image_size_hw), space.num_classes, params.vgg, steps_per_epoch, Path(params.paths.runs),
        space.colors, data.dataset, data.label_ids is not None, notes.append,
    )
    network_kwargs = {}
    for name, (_, resolve) in spec.networks.items():
        try:
            network_kwargs[name] = resolve(mp.network, ctx)
        except ValueError as error:
            raise CrnError(f"{model}.network: {error}") from None
    if rt.is_main:
        for note in dict.fromkeys(notes):  # networks resolved alike say it once
            console.print(note, highlight=False, markup=False)
    reads = spec.reads(network_kwargs)
    data.require(reads)

    torch.manual_seed(derive_seed(tp.seed, INIT))
    nets = {name: cls(**network_kwargs[name]) for name, (cls, _) in spec.networks.items()}
    if tp.train_last_modules is not None:
        if not spec.cascade:
            raise CrnError(f"{model}.train.train_last_modules: only CRN-architecture models have refinement modules; set it to null")
        try:
            nets[spec.main_network].freeze_all_but_last(tp.train_last_modules)
        except ValueError as error:
            raise CrnError(f"{model}.train.train_last_modules: {error}") from None
    objective = spec.objective(mp.objective, ctx)
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    for net in nets.values():
        net.to(rt.device, memory_format=memory_format)
    objective.to(rt.device)
    optimizers = {
        name: torch.optim.Adam([p for p in nets[name].parameters() if p.requires_grad], lr=opt.lr, betas=tuple(opt.betas))
        for name, opt in mp.optimizer.items()
    }
    facts = {
        "model": model,
        "dataset": params.data.dataset,
        "image_size_hw": list(params.data.image_size_hw),
        "train_images": len(data),
        "batch_size": tp.batch_size,
        "total_steps": tp.total_steps,
        "vgg": objective.perception_network(),
        "vgg_pooling": params.vgg.pooling,
        "objective": to_dict(mp.objective),
        "parameters": {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()},
        "trainable_parameters": {name: count_parameters(net) for name, net in nets.items()},
        "init_from": tp.init_from,
        "num_classes": space.num_classes,
        "device": str(rt.device) + (f" x{rt.world_size}" if rt.world_size > 1 else ""),
        "precision": "bf16 autocast" if rt.autocast_dtype else "fp32",
    }
    return Run(
        model, spec, tp, data, reads, network_kwargs, nets, optimizers, objective,
        run_fingerprint(model, network_kwargs, params, objective.identity()), Path(params.paths.runs) / model, facts,
    )


def resume(run: Run, rt: Runtime, console: Console) -> Position:
    """Load the run folder's training state if its fingerprint matches; a state saved with other
    settings is kept aside as ``state.stale-<fingerprint>.pt`` and training starts afresh."""
    if not run.state_path.is_file():
        return Position()
    state = load_training_state(run.state_path)
    if state["fingerprint"] != run.fingerprint:
        stale = run.run_dir / f"state.stale-{state['fingerprint']}.pt"
        if rt.is_main:
            os.replace(run.state_path, stale)
            console.print(f"[yellow]{run.state_path}: saved with other settings; kept as {stale.name}, starting afresh[/]")
        return Position()
    try:
        for name, net in run.nets.items():
            net.load_state_dict(state["nets"][name])
        for name, opt in run.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        run.objective.load_state_dict(state["objective"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CrnError(
            f"{run.state_path}: does not fit the current code ({one_line(error)}); move it away to start afresh"
        ) from None
    if rt.is_main:
        console.print(f"resuming {run.model} from {run.state_path} at step {int(state['step'])}")
    return Position(int(state["step"]), float(state["wall_time_s"]), dict(state.get("last_losses", {})))


def wrap_for_ddp(nets: dict[str, torch.nn.Module], rt: Runtime) -> dict[str, torch.nn.Module]:
    """Every network with trainable parameters in DistributedDataParallel (torchrun)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return {
        name: DDP(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if any(p.requires_grad for p in net.parameters())
        else net
        for name, net in nets.items()
    }


def save_checkpoint(run: Run, position: Position) -> None:
    """The training state and the model file at ``position`` (rank 0 only), each written atomically."""
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "fingerprint": run.fingerprint,
            "step": position.step,
            "wall_time_s": position.wall_time_s,
            "nets": {name: unwrap(net).state_dict() for name, net in run.nets.items()},
            "optimizers": {name: opt.state_dict() for name, opt in run.optimizers.items()},
            "objective": run.objective.state_dict(),
            "last_losses": position.last_losses,
        },
        run.state_path,
    )
    facts = dict(run.facts, steps=position.step, wall_time_s=round(position.wall_time_s, 1))
    save_model_file(run.model_path, run.model, run.network_kwargs, run.nets, facts)


def train_step(run: Run, rt: Runtime, step: int, autocast) -> dict[str, float]:
    """One optimizer step of every phase the objective declares, on the global batch of ``step``
    (this rank's share of it); returns the logged losses, "<phase>/<name>"."""
    tp = run.train
    indices = batch_indices(tp.seed, step, len(run.data), tp.batch_size)
    torch.manual_seed(derive_seed(tp.seed, STEP_NOISE, step, rt.rank))
    layout, image = run.data.batch(indices[rt.rank :: rt.world_size], rt.device, run.reads)
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    batch = (layout.contiguous(memory_format=memory_format), image.contiguous(memory_format=memory_format))
    logged = {}
    for phase in run.objective.phases:
        with autocast:
            losses = run.objective(phase, run.nets, batch)
        run.optimizers[phase].zero_grad(set_to_none=True)
        losses["total"].backward()
        run.optimizers[phase].step()
        for name, value in losses.items():
            logged[f"{phase}/{name}"] = float(value.detach())
    run.objective.after_step(step + 1)
    return logged


def run_steps(run: Run, rt: Runtime, position: Position, stop: int, live, console: Console) -> Position:
    """The loop: steps from ``position`` up to ``stop``, logging every step and checkpointing every
    ``checkpoint_every_steps`` and at ``stop``. A non-finite loss stops every rank together."""
    tp = run.train
    autocast = (
        torch.autocast(rt.device.type, dtype=rt.autocast_dtype) if rt.autocast_dtype else contextlib.nullcontext()
    )
    last = position.last_losses  # kept in the state, so a finished run's summary keeps them
    started = time.perf_counter()
    step = position.step
    progress = Progress(
        TextColumn(f"train {run.model}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not rt.is_main,
    )
    with progress:
        task = progress.add_task("train", total=tp.total_steps, completed=step, status="")
        for net in run.nets.values():
            net.train()
        run.objective.train()
        while step < stop:
            t0 = time.perf_counter()
            last.update(train_step(run, rt, step, autocast))
            step += 1
            finite = torch.tensor(float(all(math.isfinite(v) for v in last.values())))
            if rt.world_size > 1:  # every rank stops together, none waits in an all-reduce
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not finite:
                raise CrnError(f"{run.model}: loss became non-finite at step {step} ({last}); lower the learning rate")
            images_per_s = tp.batch_size / max(time.perf_counter() - t0, 1e-9)
            if live is not None:
                live.step = step
                for name, value in last.items():
                    live.log_metric(f"train/{name}", value)
                live.log_metric("train/images_per_s", images_per_s)
                live.next_step()
            total = last.get(run.objective.phases[-1] + "/total", 0)
            progress.update(task, completed=step, status=f"loss {total:.4g}  {images_per_s:.1f} img/s")
            if rt.is_main and (step % tp.checkpoint_every_steps == 0 or step == stop):
                save_checkpoint(run, Position(step, position.wall_time_s + time.perf_counter() - started, last))
    return Position(step, position.wall_time_s + time.perf_counter() - started, last)


def finish(run: Run, rt: Runtime, params: Params, position: Position, live) -> dict:
    """The run's summary (written to summary.json by rank 0), with the objective's held-out
    validation figures once training has reached ``total_steps``."""
    total = run.train.total_steps
    summary = dict(
        run.facts, steps=position.step, wall_time_s=round(position.wall_time_s, 1), final_losses=position.last_losses,
        finished=position.step >= total,
    )
    if rt.world_size > 1:
        dist.barrier()  # all ranks finished training before rank 0 validates
    if rt.is_main and position.step >= total:
        for net in run.nets.values():
            net.eval()
        run.objective.eval()
        plain = {name: unwrap(net) for name, net in run.nets.items()}
        val = PreparedSplit(Path(params.paths.prepared), "val")
        with torch.no_grad():
            summary["validation"] = run.objective.validation_metrics(plain, val, rt.device)
        if live is not None:
            for name, value in summary["validation"].items():
                if isinstance(value, (int, float)):
                    live.summary[f"val/{name}"] = value
    if live is not None:
        live.end()
    if rt.is_main:
        atomic_write_json(run.run_dir / "summary.json", summary)
    return summary


def _initialise(model: str, nets: dict, tp: TrainParams, console: Console | None) -> None:
    """A fresh run's start: copy what fits from ``train.init_from`` (the progressive schedule), and
    make sure no module frozen by ``train.train_last_modules`` keeps its random initialisation."""
    if not tp.init_from:
        if tp.train_last_modules is not None:
            raise CrnError(
                f"{model}.train.train_last_modules: the frozen modules would keep random weights; "
                f"set {model}.train.init_from to the lower-resolution model file"
            )
        return
    if not Path(tp.init_from).is_file():
        raise CrnError(f"{tp.init_from}: {model}.train.init_from file not found; train the lower-resolution run first")
    copied = init_from_model_file(Path(tp.init_from), nets)
    for name, net in nets.items():
        frozen = {key for key, p in net.named_parameters() if not p.requires_grad}
        missing = sorted(frozen - set(copied[name]["copied"]))
        if missing:
            raise CrnError(
                f"{tp.init_from}: does not initialise the frozen {', '.join(sorted({k.rsplit('.', 2)[0] for k in missing}))} "
                f"of {model}.{name} (shapes differ); raise {model}.train.train_last_modules or use a matching model file"
            )
    if console is not None:
        for name, r in copied.items():
            fresh = sorted({k.rsplit(".", 1)[0] for k in r["fresh"]})
            console.print(
                f"{model}.{name}: initialised {len(r['copied'])} tensors from {tp.init_from}; fresh: {', '.join(fresh) or 'none'}"
            )


def _open_live(run_dir: Path, resume: bool, start_step: int):
    """dvclive logger writing per-step metrics under <run>/live (declared as DVC plots). On resume,
    rows logged after the checkpoint (by a run that was then killed) are cut, so no step repeats."""
    os.environ.setdefault("DVCLIVE_LOGLEVEL", "WARNING")
    from dvclive import Live

    if resume:
        for tsv in (run_dir / "live" / "plots" / "metrics").rglob("*.tsv"):
            lines = tsv.read_text().splitlines()
            kept = lines[:1] + [line for line in lines[1:] if int(line.split("\t", 1)[0]) <= start_step]
            atomic_write_text(tsv, "\n".join(kept) + "\n")

    return Live(str(run_dir / "live"), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
