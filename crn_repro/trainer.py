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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from crn_repro.checkpoint import (
    STATE_FORMAT,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    init_from_model_file,
    load_training_state,
    save_model_file,
    unwrap,
)
from crn_repro.config import to_dict
from crn_repro.datasets import PreparedSplit, read_prepared_meta
from crn_repro.errors import CrnError, one_line
from crn_repro.params import Params, TrainParams
from crn_repro.registry import BuildContext, count_parameters, get_spec


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


def train(params: Params, model: str, until_step: int | None = None, console: Console | None = None) -> dict:
    """Train ``model`` up to ``train.total_steps`` (or stop after ``until_step``), resuming from the
    run folder's training state if it matches the current params. Returns the run summary."""
    console = console or Console(stderr=True)
    spec = get_spec(model)
    mp = params.model(model)
    tp = mp.train  # global `train` with this model's overrides
    rt = setup_runtime(tp)
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
        generator = next(iter(nets.values()))
        if not hasattr(generator, "freeze_all_but_last"):
            raise CrnError(f"{model}.train.train_last_modules: only CRN-architecture models have refinement modules; set it to null")
        try:
            generator.freeze_all_but_last(tp.train_last_modules)
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

    run_dir = Path(params.paths.runs) / model
    state_path, model_path = run_dir / "state.pt", run_dir / "model.pt"
    fingerprint = run_fingerprint(model, network_kwargs, params, objective.identity())
    start_step, wall_before, last_losses = 0, 0.0, {}
    if state_path.is_file():
        state = load_training_state(state_path)
        if state["fingerprint"] != fingerprint:
            stale = run_dir / f"state.stale-{state['fingerprint']}.pt"
            if rt.is_main:
                os.replace(state_path, stale)
                console.print(f"[yellow]{state_path}: saved with other settings; kept as {stale.name}, starting afresh[/]")
        else:
            try:
                for name, net in nets.items():
                    net.load_state_dict(state["nets"][name])
                for name, opt in optimizers.items():
                    opt.load_state_dict(state["optimizers"][name])
                objective.load_state_dict(state["objective"])
            except (KeyError, RuntimeError, ValueError) as error:
                raise CrnError(
                    f"{state_path}: does not fit the current code ({one_line(error)}); move it away to start afresh"
                ) from None
            start_step, wall_before = int(state["step"]), float(state["wall_time_s"])
            last_losses = dict(state.get("last_losses", {}))
            if rt.is_main:
                console.print(f"resuming {model} from {state_path} at step {start_step}")
    if start_step == 0:
        _initialise(model, nets, tp, console if rt.is_main else None)

    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        nets = {
            name: DDP(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
            if any(p.requires_grad for p in net.parameters())
            else net
            for name, net in nets.items()
        }

    total = tp.total_steps
    stop = min(total, until_step) if until_step is not None else total
    facts = {
        "model": model,
        "dataset": params.data.dataset,
        "image_size_hw": list(params.data.image_size_hw),
        "train_images": len(data),
        "batch_size": tp.batch_size,
        "total_steps": total,
        "vgg": getattr(getattr(getattr(objective, "loss", None), "vgg", None), "source_description", "not used"),
        "vgg_pooling": params.vgg.pooling,
        "objective": to_dict(mp.objective),
        "parameters": {name: sum(p.numel() for p in unwrap(net).parameters()) for name, net in nets.items()},
        "trainable_parameters": {name: count_parameters(unwrap(net)) for name, net in nets.items()},
        "init_from": tp.init_from,
        "num_classes": space.num_classes,
        "device": str(rt.device) + (f" x{rt.world_size}" if rt.world_size > 1 else ""),
        "precision": "bf16 autocast" if rt.autocast_dtype else "fp32",
    }
    live = _open_live(run_dir, resume=start_step > 0, start_step=start_step) if rt.is_main else None
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "params.json", params.to_dict())

    def checkpoint(step: int, wall: float) -> None:
        if not rt.is_main:
            return
        atomic_torch_save(
            {
                "format": STATE_FORMAT,
                "fingerprint": fingerprint,
                "step": step,
                "wall_time_s": wall,
                "nets": {name: unwrap(net).state_dict() for name, net in nets.items()},
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "objective": objective.state_dict(),
                "last_losses": last,
            },
            state_path,
        )
        save_model_file(model_path, model, network_kwargs, nets, dict(facts, steps=step, wall_time_s=round(wall, 1)))

    autocast = (
        torch.autocast(rt.device.type, dtype=rt.autocast_dtype) if rt.autocast_dtype else contextlib.nullcontext()
    )
    last: dict[str, float] = last_losses  # kept in the state, so a finished run's summary keeps them
    started = time.perf_counter()
    step = start_step
    progress = Progress(
        TextColumn(f"train {model}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not rt.is_main,
    )
    with progress:
        task = progress.add_task("train", total=total, completed=start_step, status="")
        for net in nets.values():
            net.train()
        objective.train()
        while step < stop:
            t0 = time.perf_counter()
            indices = batch_indices(tp.seed, step, len(data), tp.batch_size)
            torch.manual_seed(derive_seed(tp.seed, STEP_NOISE, step, rt.rank))
            layout, image = data.batch(indices[rt.rank :: rt.world_size], rt.device, reads)
            layout = layout.contiguous(memory_format=memory_format)
            image = image.contiguous(memory_format=memory_format)
            for phase in objective.phases:
                with autocast:
                    losses = objective(phase, nets, (layout, image))
                optimizers[phase].zero_grad(set_to_none=True)
                losses["total"].backward()
                optimizers[phase].step()
                for name, value in losses.items():
                    last[f"{phase}/{name}"] = float(value.detach())
            objective.after_step(step + 1)
            step += 1
            finite = torch.tensor(float(all(math.isfinite(v) for v in last.values())))
            if rt.world_size > 1:  # every rank stops together, none waits in an all-reduce
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not finite:
                raise CrnError(f"{model}: loss became non-finite at step {step} ({last}); lower the learning rate")
            images_per_s = tp.batch_size / max(time.perf_counter() - t0, 1e-9)
            if live is not None:
                live.step = step
                for name, value in last.items():
                    live.log_metric(f"train/{name}", value)
                live.log_metric("train/images_per_s", images_per_s)
                live.next_step()
            progress.update(task, completed=step, status=f"loss {last.get(objective.phases[-1] + '/total', 0):.4g}  {images_per_s:.1f} img/s")
            if step % tp.checkpoint_every_steps == 0 or step == stop:
                checkpoint(step, wall_before + time.perf_counter() - started)
    wall = wall_before + time.perf_counter() - started
    summary = dict(facts, steps=step, wall_time_s=round(wall, 1), final_losses=last, finished=step >= total)
    if rt.world_size > 1:
        dist.barrier()  # all ranks finished training before rank 0 validates
    if rt.is_main and step >= total:
        for net in nets.values():
            net.eval()
        objective.eval()
        plain = {name: unwrap(net) for name, net in nets.items()}
        val = PreparedSplit(Path(params.paths.prepared), "val")
        with torch.no_grad():
            summary["validation"] = objective.validation_metrics(plain, val, rt.device)
        if live is not None:
            for name, value in summary["validation"].items():
                if isinstance(value, (int, float)):
                    live.summary[f"val/{name}"] = value
    if live is not None:
        live.end()
    if rt.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
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
