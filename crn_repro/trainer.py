"""The one trainer (STYLE convention 4): builds a registry model's networks, optimizers and
objective, and runs the objective's phases every step. It never branches on the model.

Resuming is running the same command again: the training state holds step, networks, optimizers
and the objective's state, and every random choice at step s derives from (seed, s), so an
interrupted run continues exactly as an uninterrupted one. Multi-GPU runs use torchrun (DDP); a
step's global batch is split over the processes, so N processes with ``batch_size_per_process`` b
compute what one process with N b would.

The loop keeps a GPU busy: batches are read ahead in a background thread (pinned, copied
asynchronously, expanded on the device), and the host waits for the device only every
``log_every_steps`` steps, when the losses accumulated on the device are logged and checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console

from crn_repro.checkpoint import (
    STATE_FORMAT,
    atomic_torch_save,
    init_from_model_file,
    load_training_state,
    save_model_file,
    unwrap,
)
from crn_repro.config import to_dict
from crn_repro.datasets import Batch, PreparedSplit, read_prepared_meta, tensor_to_image
from crn_repro.errors import CrnError, one_line
from crn_repro.files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from crn_repro.labels import colorize_channels
from crn_repro.losses import Objective
from crn_repro.noise import per_image_noise
from crn_repro.params import Params, TrainParams
from crn_repro.progress import StageProgress
from crn_repro.stats import significant
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

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def setup_runtime(tp: TrainParams) -> Runtime:
    """Device, DDP process group (under torchrun), precision, memory format and CPU threads."""
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
        if tp.cpu_threads is not None:
            torch.set_num_threads(tp.cpu_threads)
    use_bf16 = tp.precision == "bf16" or (tp.precision == "auto" and cuda)
    channels_last = tp.channels_last == "on" or (tp.channels_last == "auto" and cuda)
    return Runtime(device, rank, world_size, torch.bfloat16 if use_bf16 else None, channels_last)


def run_fingerprint(model: str, network_kwargs: dict, params: Params, objective_identity: dict, global_batch: int) -> str:
    """Hash of every setting that makes a saved state incompatible with the current params: the
    networks, objective, optimizers, the training data (the prepared cache's dataset, size, label
    space, how labels were read, and its training split's count and class frequencies), seed and
    global batch size (which fix the batch of every step), the initialisation file and frozen modules,
    and what the objective itself depends on (e.g. the VGG weights, a frozen segmenter's file). Other
    paths, validation-only settings, step counts and how the step is computed (processes for the
    same global batch, precision, compilation, checkpointing) are left out, so changing them resumes
    instead of starting over. (The initialisation file only matters at step 0: a resumed run neither
    rereads nor needs it.)"""
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
        "batch_size": global_batch,
        "init_from": mp.train.init_from,
        "train_last_modules": mp.train.train_last_modules,
    }
    if mp.train.adam_epsilon != "pytorch":  # the default leaves earlier fingerprints as they were
        identity["adam_epsilon"] = mp.train.adam_epsilon
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Run:
    """Everything one training run is made of, built once by ``build_run``."""

    model: str
    spec: ModelSpec
    train: TrainParams  # the global `train` section with this model's overrides
    global_batch: int  # images per step over all processes
    data: PreparedSplit
    reads: str  # what the networks read of a layout (datasets.READS)
    network_kwargs: dict[str, dict]
    nets: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    objective: Objective
    fingerprint: str  # run_fingerprint: a saved state with another one is not resumed
    run_dir: Path
    facts: dict  # what the model file and summary say about the run
    validation: PreparedSplit | None = None  # the val split, for the checkpoints' validation (rank 0)

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
    if rt.is_main and run.run_dir.is_dir():  # the one writer of this folder: what a killed writer left is garbage
        for leftover in remove_stale_temporaries(run.run_dir):
            console.print(f"removed {leftover}, left by an interrupted write")
    position = resume(run, rt, console)
    if position.step == 0:
        _initialise(model, run.nets, run.train, console if rt.is_main else None)
    run.nets = prepare_networks(run.nets, run.train, rt)
    stop = run.train.total_steps if until_step is None else min(run.train.total_steps, until_step)
    live = _open_live(run.run_dir, resume=position.step > 0, start_step=position.step) if rt.is_main else None
    if rt.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.run_dir / "params.json", params.to_dict())
    position = run_steps(run, rt, position, stop, live, console)
    return finish(run, rt, params, position, live)


def launch_under_torchrun(processes: int, argv: list[str]) -> int:
    """Run this command again as ``torchrun --standalone --nproc_per_node processes`` (one machine; several
    machines start torchrun themselves, see docs/multi-gpu.md) and return its exit status. SIGINT and
    SIGTERM are passed on to torchrun, which stops its workers."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "crn_repro", *argv]
    child = subprocess.Popen(command)
    forward = {sig: signal.signal(sig, lambda number, frame: child.send_signal(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)


def build_networks(model: str, mp, ctx: BuildContext, rt: Runtime, notes: list[str]):
    """A model's networks (initialised from (seed, INIT), frozen or checkpointed where asked), its
    objective and its optimizers, on the runtime's device and memory format. Returns (network
    constructor kwargs, networks, objective, optimizers); ``notes`` collects what to tell the user."""
    spec = get_spec(model)
    tp = mp.train
    network_kwargs = {}
    for name, (_, resolve) in spec.networks.items():
        try:
            network_kwargs[name] = resolve(mp.network, ctx)
        except ValueError as error:
            raise CrnError(f"{model}.network: {error}") from None
    torch.manual_seed(derive_seed(tp.seed, INIT))
    nets = {name: cls(**network_kwargs[name]) for name, (cls, _) in spec.networks.items()}
    generator = nets[spec.main_network]
    if tp.train_last_modules is not None:
        if not spec.cascade:
            raise CrnError(f"{model}.train.train_last_modules: only CRN-architecture models have refinement modules; set it to null")
        try:
            generator.freeze_all_but_last(tp.train_last_modules)
        except ValueError as error:
            raise CrnError(f"{model}.train.train_last_modules: {error}") from None
    if tp.activation_checkpointing:
        if spec.cascade:
            generator.activation_checkpointing = True
        else:
            notes.append(f"{model}: train.activation_checkpointing applies to CRN models only; training without it")
    objective = spec.objective(mp.objective, ctx)
    objective.set_reference_cache(tp.cache_reference_features)
    for net in nets.values():
        net.to(rt.device, memory_format=rt.memory_format)
    objective.to(rt.device)
    optimizers = {
        name: torch.optim.Adam(
            [p for p in nets[name].parameters() if p.requires_grad], lr=opt.lr, betas=tuple(opt.betas),
            fused=True if tp.fused_adam else None,
        )
        for name, opt in mp.optimizer.items()
    }
    return network_kwargs, nets, objective, optimizers


def build_run(params: Params, model: str, rt: Runtime, console: Console) -> Run:
    """The run's data, networks (initialised from (seed, INIT), frozen where asked), objective and
    optimizers, on the runtime's device and memory format, and the facts its files record."""
    spec = get_spec(model)
    mp = params.model(model)
    tp = mp.train
    global_batch = tp.batch_size_per_process * rt.world_size
    notes: list[str] = []
    if rt.world_size > 1 and int(os.environ.get("LOCAL_WORLD_SIZE", rt.world_size)) != tp.processes:
        notes.append(
            f"{model}: {os.environ.get('LOCAL_WORLD_SIZE')} processes per node from torchrun (train.processes: "
            f"{tp.processes} only says how many `crn-repro train` launches by itself)"
        )

    data = PreparedSplit(Path(params.paths.prepared), "train")
    if data.size_hw != tuple(params.data.image_size_hw):
        raise CrnError(
            f"{params.paths.prepared}: prepared at {data.size_hw}, but data.image_size_hw is "
            f"{tuple(params.data.image_size_hw)}; run `crn-repro prepare` again"
        )
    steps_per_epoch = math.ceil(len(data) / global_batch)
    space = data.label_space
    ctx = BuildContext(
        tuple(params.data.image_size_hw), space.num_classes, params.vgg, steps_per_epoch, Path(params.paths.runs),
        space.colors, data.dataset, data.label_ids is not None, notes.append,
    )
    network_kwargs, nets, objective, optimizers = build_networks(model, mp, ctx, rt, notes)
    if rt.is_main:
        for note in dict.fromkeys(notes):  # networks resolved alike say it once
            console.print(note, highlight=False, markup=False)
    reads = spec.reads(network_kwargs)
    data.require(reads)
    facts = {
        "model": model,
        "dataset": params.data.dataset,
        "image_size_hw": list(params.data.image_size_hw),
        "train_images": len(data),
        "batch_size": global_batch,
        "batch_size_per_process": tp.batch_size_per_process,
        "processes": rt.world_size,
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
    fingerprint = run_fingerprint(model, network_kwargs, params, objective.identity(), global_batch)
    validation = PreparedSplit(Path(params.paths.prepared), "val") if rt.is_main else None
    return Run(
        model, spec, tp, global_batch, data, reads, network_kwargs, nets, optimizers, objective, fingerprint,
        Path(params.paths.runs) / model, facts, validation,
    )


def resume(run: Run, rt: Runtime, console: Console) -> Position:
    """Load the run folder's training state if its fingerprint matches; a state saved with other
    settings, or beyond the current total_steps, is kept aside as ``state.stale-<fingerprint>-step<N>.pt``
    and training starts afresh."""
    if not run.state_path.is_file():
        return Position()
    state = load_training_state(run.state_path)
    missing = [key for key in ("fingerprint", "step", "wall_time_s", "nets", "optimizers", "objective") if key not in state]
    if missing:
        raise CrnError(f"{run.state_path}: training state without {', '.join(missing)}; move it away to start afresh")
    beyond = int(state["step"]) > run.train.total_steps  # a shorter schedule: the longer-trained weights are not its result
    if state["fingerprint"] != run.fingerprint or beyond:
        stale = run.run_dir / f"state.stale-{state['fingerprint']}-step{int(state['step'])}.pt"
        why = f"at step {int(state['step'])}, beyond total_steps {run.train.total_steps}" if beyond else "saved with other settings"
        if rt.is_main:
            os.replace(run.state_path, stale)
            console.print(f"[yellow]{run.state_path}: {why}; kept as {stale.name}, starting afresh[/]")
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


def prepare_networks(nets: dict[str, torch.nn.Module], tp: TrainParams, rt: Runtime) -> dict[str, torch.nn.Module]:
    """The networks as the loop runs them: with SyncBatchNorm (``train.sync_batchnorm``, several CUDA
    processes; same state_dict), compiled (``train.compile``), then, under torchrun, every network with
    trainable parameters in DistributedDataParallel. ``checkpoint.unwrap`` undoes the last two."""
    if tp.sync_batchnorm and rt.world_size > 1:
        if rt.device.type != "cuda":
            raise CrnError(f"train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA only (this run: {rt.device.type} x "
                           f"{rt.world_size}); set it false (each process then normalises its own images)")
        nets = {name: torch.nn.SyncBatchNorm.convert_sync_batchnorm(net) for name, net in nets.items()}
    if tp.compile:
        nets = {name: torch.compile(net) for name, net in nets.items()}
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        nets = {
            name: DDP(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
            if any(p.requires_grad for p in net.parameters())
            else net
            for name, net in nets.items()
        }
    return nets


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


class BatchPrefetcher:
    """The batches of steps start, start + 1, ... read ahead in a background thread: this process's
    share of each global batch, as uint8 arrays from the memory-mapped cache (pinned on CUDA, so the
    copy to the GPU overlaps compute). ``get(step)`` returns them on the device, expanded there."""

    def __init__(self, run: Run, rt: Runtime, start: int, stop: int, depth: int):
        self.run, self.rt = run, rt
        self.pin = rt.device.type == "cuda"
        self.depth = depth
        self.next_step = start
        if depth > 0:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.stopped = threading.Event()
            self.thread = threading.Thread(target=self._produce, args=(start, stop), daemon=True)
            self.thread.start()

    def _read(self, step: int):
        tp, rt = self.run.train, self.rt
        indices = batch_indices(tp.seed, step, len(self.run.data), self.run.global_batch)[rt.rank :: rt.world_size]
        return tuple(int(i) for i in indices), self.run.data.read(indices, self.run.reads, pin=self.pin)

    def _produce(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            try:
                item = (step, self._read(step), None)
            except BaseException as error:  # handed to the loop, which raises it
                item = (step, (None, None), error)
            while not self.stopped.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stopped.is_set() or item[2] is not None:
                return

    def get(self, step: int) -> Batch:
        if self.depth > 0:
            ready, (keys, raw), error = self.queue.get()
            if error is not None:
                raise error
            assert ready == step, (ready, step)
        else:
            keys, raw = self._read(step)
        layout, image = self.run.data.to_device(raw, self.rt.device, self.run.reads)
        fmt = self.rt.memory_format
        return Batch(layout.contiguous(memory_format=fmt), image.contiguous(memory_format=fmt), keys)

    def close(self) -> None:
        if self.depth > 0:
            self.stopped.set()
            self.thread.join(timeout=5)


@contextlib.contextmanager
def _no_parameter_gradients(nets: list[torch.nn.Module]):
    """The trainable parameters of ``nets`` require no gradient inside the block (then again)."""
    params = [p for net in nets for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _without_ddp(net: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return net.module if isinstance(net, DDP) else net


def train_step(run: Run, rt: Runtime, step: int, batch, autocast) -> dict[str, torch.Tensor]:
    """One optimizer step of every phase the objective declares, on this rank's share of the global
    batch of ``step``; returns the losses as detached device tensors, "<phase>/<name>" (no host sync).

    A network already updated in this step (a GAN's D in the G phase) takes part in later phases
    without parameter gradients and outside DDP: the G phase then back-propagates through D to the
    image only, not into D's weights."""
    torch.manual_seed(derive_seed(run.train.seed, STEP_NOISE, step, rt.rank))
    positions = range(rt.rank, run.global_batch, rt.world_size)  # this process's images in the global batch
    with per_image_noise(derive_seed(run.train.seed, STEP_NOISE, step), positions):  # dropout: per image, not per rank
        losses_out = _phases(run, step, batch, autocast)
    run.objective.after_step(step + 1)
    return losses_out


def _phases(run: Run, step: int, batch, autocast) -> dict[str, torch.Tensor]:
    """Each phase of the objective in turn: forward, backward (DDP averages the gradients), optimizer step."""
    losses_out = {}
    for i, phase in enumerate(run.objective.phases):
        stepped = run.objective.phases[:i]
        nets = {name: _without_ddp(net) if name in stepped else net for name, net in run.nets.items()}
        with _no_parameter_gradients([run.nets[name] for name in stepped]):
            with autocast:
                losses = run.objective(phase, nets, batch)
            run.optimizers[phase].zero_grad(set_to_none=True)
            losses["total"].backward()
        if run.train.adam_epsilon == "tensorflow":
            tensorflow_epsilon(run.optimizers[phase], step + 1)
        run.optimizers[phase].step()
        for name, value in losses.items():
            losses_out[f"{phase}/{name}"] = value.detach().float()
    return losses_out


ADAM_EPSILON = 1e-8  # paper and release (docs/facts.md §3); torch.optim.Adam's default


def tensorflow_epsilon(optimizer: torch.optim.Optimizer, t: int, eps: float = ADAM_EPSILON) -> None:
    """Make ``torch.optim.Adam``'s step ``t`` (1-based) the step TensorFlow 1's Adam takes, as the
    release trained (``train.adam_epsilon: tensorflow``, docs/facts.md §3): TensorFlow adds epsilon to
    sqrt(v) after folding the bias corrections into the step size, which is PyTorch's update with
    epsilon / sqrt(1 - beta2^t)."""
    for group in optimizer.param_groups:
        group["eps"] = eps / math.sqrt(1.0 - group["betas"][1] ** t)


class LossLog:
    """Losses summed on the device between log steps, with the first step at which any was not
    finite; ``flush`` synchronises once, averages over the interval and checks finiteness, the same
    answer on every rank (so all ranks stop together)."""

    NONE = torch.iinfo(torch.int64).max

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.first_bad = torch.full((), self.NONE, dtype=torch.int64, device=rt.device)

    def add(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        finite = torch.stack([torch.isfinite(v).all() for v in losses.values()]).all()
        self.first_bad = torch.minimum(self.first_bad, torch.where(finite, self.NONE, step))
        for key, value in losses.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def flush(self) -> tuple[dict[str, float], int | None]:
        """(mean of each loss over the interval, the first step with a non-finite loss or None)."""
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).double() / max(self.count, 1)
        if self.rt.world_size > 1:
            dist.all_reduce(self.first_bad, op=dist.ReduceOp.MIN)
        host = values.tolist()
        first_bad = int(self.first_bad)
        self.sums, self.count = {}, 0
        return dict(zip(keys, host)), (None if first_bad == self.NONE else first_bad)


def run_steps(run: Run, rt: Runtime, position: Position, stop: int, live, console: Console) -> Position:
    """The loop: steps from ``position`` up to ``stop``. Every ``log_every_steps`` (and at ``stop``)
    the host reads the averaged losses, logs and checks them (a non-finite loss stops every rank with
    an error naming the first such step), and every ``checkpoint_every_steps`` (and at ``stop``) it
    writes the checkpoint, always after a check, so no checkpoint holds a diverged run."""
    tp = run.train
    autocast = (
        torch.autocast(rt.device.type, dtype=rt.autocast_dtype) if rt.autocast_dtype else contextlib.nullcontext()
    )
    last = position.last_losses  # kept in the state, so a finished run's summary keeps them
    started = time.perf_counter()
    step = position.step
    progress = StageProgress(console, disable=not rt.is_main)
    log = LossLog(rt)
    batches = BatchPrefetcher(run, rt, step, stop, tp.prefetch_batches)
    try:
        with progress:
            task = progress.add_task(f"train {run.model}", total=tp.total_steps, completed=step)
            for net in run.nets.values():
                net.train()
            run.objective.train()
            interval_start, interval_steps = time.perf_counter(), 0
            while step < stop:
                log.add(step + 1, train_step(run, rt, step, batches.get(step), autocast))
                step += 1
                interval_steps += 1
                progress.update(task, completed=step)
                if step % tp.log_every_steps and step != stop:
                    continue
                means, first_bad = log.flush()
                if first_bad is not None:
                    raise CrnError(
                        f"{run.model}: loss became non-finite at step {first_bad} (mean losses of steps {step - interval_steps + 1}"
                        f"-{step}: {means}); lower the learning rate"
                    )
                last.update(means)
                images_per_s = run.global_batch * interval_steps / max(time.perf_counter() - interval_start, 1e-9)
                checkpoint = step % tp.checkpoint_every_steps == 0 or step == stop
                if live is not None:
                    live.step = step
                    for name, value in last.items():
                        live.log_metric(f"train/{name}", value)
                    live.log_metric("train/images_per_s", images_per_s)
                    if checkpoint:
                        log_validation(run, rt, live)
                    live.next_step()
                total = last.get(run.objective.phases[-1] + "/total", 0)
                progress.update(task, status=f"loss {total:.4g} | {images_per_s:.1f} img/s")
                if rt.is_main and checkpoint:
                    save_checkpoint(run, Position(step, position.wall_time_s + time.perf_counter() - started, last))
                interval_start, interval_steps = time.perf_counter(), 0
    finally:
        batches.close()
    return Position(step, position.wall_time_s + time.perf_counter() - started, last)


VALIDATION_SAMPLES = 4  # validation frames scored (and, for generators, drawn) at every checkpoint


@torch.no_grad()
def log_validation(run: Run, rt: Runtime, live) -> None:
    """At a checkpoint (rank 0): the objective's losses on the first validation frames, in eval mode,
    as dvclive metrics ``val/<phase>/<name>``, and for a generator the images it synthesizes for the
    first two of them as dvclive images ``samples/val_<i>.png`` (with the layout and the reference),
    so `dvc plots show` follows training as it goes."""
    val = run.validation
    if val is None:
        return
    batch = val.batch(range(min(VALIDATION_SAMPLES, len(val))), rt.device, run.reads)
    nets = {name: unwrap(net) for name, net in run.nets.items()}
    for net in run.nets.values():
        net.eval()
    run.objective.eval()
    try:
        for name, value in run.objective(run.spec.main_network, nets, batch).items():
            live.log_metric(f"val/{run.spec.main_network}/{name}", float(value))
        if run.spec.role == "generator":
            generated = nets[run.spec.main_network](batch[0][:2]).float()
            reference = tensor_to_image(batch[1][:2])
            for i, image in enumerate(tensor_to_image(generated[:, :3])):
                layout = colorize_channels(np.asarray(val.labels[i]), val.label_space.palette)
                live.log_image(f"samples/val_{i}.png", np.concatenate([layout, image, reference[i]], axis=1))
    finally:
        for net in run.nets.values():
            net.train()
        run.objective.train()


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
        atomic_write_json(run.run_dir / "metrics.json", headline_metrics(run, summary))
    return summary


def headline_metrics(run: Run, summary: dict) -> dict:
    """The few numbers of a run that `dvc metrics show` and `dvc exp show` print (metrics.json): steps,
    the loss that shows progress (``ModelSpec.progress_loss``, averaged over the last log interval),
    minutes (``min``), images/s (``img_s``), and a segmenter's scores on the validation split (``miou``,
    ``acc``); summary.json has everything else."""
    wall = summary["wall_time_s"]
    out = {  # short keys: `dvc metrics show` prints one column each, all files in one table
        "steps": summary["steps"],
        "loss": significant(summary["final_losses"].get(run.spec.progress_loss)),
        "min": round(wall / 60, 2),
        "img_s": significant(run.global_batch * summary["steps"] / wall) if wall > 0 else None,
    }
    for name, short in (("mean_iou", "miou"), ("pixel_accuracy", "acc")):  # the segmenter's, on the validation split
        if isinstance(summary.get("validation", {}).get(name), float):
            out[short] = significant(summary["validation"][name])
    return out


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
