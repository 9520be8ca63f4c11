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

This module is the loop; what it uses lives in modules named for their job: ``runtime`` (device,
DDP, compilation, the torchrun relaunch), ``seeds``, ``batches`` (which images a step reads, read
ahead), ``fingerprint`` (which saved state may be resumed), ``runlog`` (losses, dvclive, metrics.json)
and ``checkpoint`` (the files).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console

from crn_repro.batches import BatchPrefetcher
from crn_repro.checkpoint import (
    STATE_FORMAT,
    atomic_torch_save,
    init_from_model_file,
    load_training_state,
    model_file_contents,
    read_model_run,
    torch_writer,
    unwrap,
    unwrap_ddp,
)
from crn_repro.config import to_dict
from crn_repro.datasets import PreparedSplit
from crn_repro.errors import CrnError, one_line
from crn_repro.files import atomic_write_together, bytes_writer, json_writer, remove_stale_temporaries, require_writable
from crn_repro.fingerprint import run_fingerprint
from crn_repro.losses import Objective
from crn_repro.noise import per_image_noise
from crn_repro.params import Params, TrainParams
from crn_repro.progress import StageProgress
from crn_repro.registry import BuildContext, ModelSpec, count_parameters, get_spec
from crn_repro.runlog import (
    LIVE_DIR,
    LossLog,
    Record,
    RunLog,
    checkpoint_validation,
    headline_metrics,
    images_folder,
    log_losses,
    open_run_log,
    sample_images,
)
from crn_repro.runtime import Runtime, prepare_networks, setup_runtime
from crn_repro.seeds import INIT, STEP_NOISE, derive_seed


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
    params: dict  # the resolved params, written as params.json with every checkpoint
    validation: PreparedSplit | None = None  # the val split, for the checkpoints' validation (rank 0)

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.pt"


@dataclass
class Position:
    """Where training stands: the steps done, the wall time they took, the last logged losses, and
    the record of everything logged (None for a state saved before states held it)."""

    step: int = 0
    wall_time_s: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    record: Record | None = field(default_factory=list)


def train(params: Params, model: str, until_step: int | None = None, console: Console | None = None) -> dict:
    """Train ``model`` up to ``train.total_steps`` (or stop after ``until_step``), resuming from the
    run folder's training state if it matches the current params. Returns the run summary."""
    console = console or Console(stderr=True)
    rt = setup_runtime(params.model(model).train)
    run = build_run(params, model, rt, console)
    if rt.is_main and run.run_dir.is_dir():  # the one writer of this folder: what a killed writer left is garbage
        for leftover in remove_stale_temporaries(run.run_dir):
            console.print(f"removed {leftover}, left by an interrupted write")
    if rt.is_main:  # a full or read-only disk fails now, not at the first log after minutes of training
        require_writable(run.run_dir)
    position = resume(run, rt, console)
    if position.step == 0:
        _initialise(model, run.nets, run.train, console if rt.is_main else None)
    run_log = None
    if rt.is_main:
        if position.step > 0:
            reconcile_model_file(run, position, console)
        samples = lambda: sample_images(run.nets, run.objective, run.spec, run.validation, run.reads, rt.device)  # noqa: E731
        note = lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
        run_log = open_run_log(run.run_dir, position.step, position.record, samples, note)
    run.nets = prepare_networks(run.nets, run.train, rt)
    stop = run.train.total_steps if until_step is None else min(run.train.total_steps, until_step)
    try:
        position = run_steps(run, rt, position, stop, run_log, console)
        return finish(run, rt, params, position, run_log)
    except BaseException:  # failed or interrupted: the dvclive files go back to the last checkpoint
        if run_log is not None:
            run_log.rollback()
        raise


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
        Path(params.paths.runs) / model, facts, params.to_dict(), validation,
    )


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
    return Position(int(state["step"]), float(state["wall_time_s"]), dict(state.get("last_losses", {})), state.get("logged"))


def reconcile_model_file(run: Run, position: Position, console: Console) -> None:
    """A resumed run's model file is the one its training state says: a model file that names another
    state (a kill fell between the checkpoint's files, or it was replaced or removed) is exported again
    from the state's networks, with a one-line note."""
    expected = {"fingerprint": run.fingerprint, "step": position.step}
    found = read_model_run(run.model_path)
    if found == expected:
        return
    if found is None:
        why = "missing, unreadable or not exported by a training run" if not run.model_path.is_file() else "not exported from this training state"
    else:
        why = f"exported at step {found['step']}" + ("" if found["fingerprint"] == run.fingerprint else " of other settings")
    atomic_torch_save(model_file_contents(run.model, run.network_kwargs, run.nets, _model_facts(run, position), expected),
                      run.model_path)
    console.print(f"{run.model_path}: {why}; exported again from the training state at step {position.step}",
                  highlight=False, markup=False, soft_wrap=True)


def _model_facts(run: Run, position: Position) -> dict:
    return dict(run.facts, steps=position.step, wall_time_s=round(position.wall_time_s, 1))


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


def run_steps(run: Run, rt: Runtime, position: Position, stop: int, run_log: RunLog | None, console: Console) -> Position:
    """The loop: steps from ``position`` up to ``stop``. Every ``log_every_steps`` (and at ``stop``)
    the host reads the averaged losses, logs and checks them (a non-finite loss stops every rank with
    an error naming the first such step), and every ``checkpoint_every_steps`` (and at ``stop``) it
    writes the checkpoint, always after a check, so no checkpoint holds a diverged run."""
    if position.step >= stop:  # nothing to do: the position (and its wall time) stays what the state says
        return position
    tp = run.train
    autocast = (
        torch.autocast(rt.device.type, dtype=rt.autocast_dtype) if rt.autocast_dtype else contextlib.nullcontext()
    )
    last = position.last_losses  # kept in the state, so a finished run's summary keeps them
    started = time.perf_counter()
    step = position.step
    progress = StageProgress(console, disable=not rt.is_main)
    log = LossLog(rt)
    batches = BatchPrefetcher(run.data, run.reads, tp.seed, run.global_batch, rt, step, stop, tp.prefetch_batches)
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
                samples: dict[str, bytes] = {}
                if run_log is not None:
                    log_losses(run_log, step, last, images_per_s)
                    if checkpoint:
                        val_losses, samples = checkpoint_validation(
                            run.nets, run.objective, run.spec, run.validation, run.reads, rt.device)
                        run_log.log(step, val_losses)
                    run_log.next_step()
                total = last.get(run.objective.phases[-1] + "/total", 0)
                progress.update(task, status=f"loss {total:.4g} | {images_per_s:.1f} img/s")
                if run_log is not None and checkpoint:
                    wall = position.wall_time_s + time.perf_counter() - started
                    save_checkpoint(run, Position(step, wall, last, run_log.record), samples)
                    run_log.commit()
                interval_start, interval_steps = time.perf_counter(), 0
    finally:
        batches.close()
    return Position(step, position.wall_time_s + time.perf_counter() - started, last, run_log.record if run_log else None)


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
        nets = {name: unwrap_ddp(net) if name in stepped else net for name, net in run.nets.items()}
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


ADAM_EPSILON = 1e-8  # paper and release (docs/facts.md §3); torch.optim.Adam's default


def tensorflow_epsilon(optimizer: torch.optim.Optimizer, t: int, eps: float = ADAM_EPSILON) -> None:
    """Make ``torch.optim.Adam``'s step ``t`` (1-based) the step TensorFlow 1's Adam takes, as the
    release trained (``train.adam_epsilon: tensorflow``, docs/facts.md §3): TensorFlow adds epsilon to
    sqrt(v) after folding the bias corrections into the step size, which is PyTorch's update with
    epsilon / sqrt(1 - beta2^t)."""
    for group in optimizer.param_groups:
        group["eps"] = eps / math.sqrt(1.0 - group["betas"][1] ** t)


def save_checkpoint(run: Run, position: Position, samples: dict[str, bytes]) -> None:
    """The checkpoint at ``position`` (rank 0), its files written together (``files.atomic_write_together``):
    the validation samples, the model file, summary.json, metrics.json and params.json, and last the
    training state, the commit point. A full disk changes none of them; a kill between two renames leaves
    files ahead of the state, which the next resume puts right (``reconcile_model_file``, ``open_run_log``)."""
    state = {
        "format": STATE_FORMAT,
        "fingerprint": run.fingerprint,
        "step": position.step,
        "wall_time_s": position.wall_time_s,
        "nets": {name: unwrap(net).state_dict() for name, net in run.nets.items()},
        "optimizers": {name: opt.state_dict() for name, opt in run.optimizers.items()},
        "objective": run.objective.state_dict(),
        "last_losses": position.last_losses,
        "logged": position.record,
    }
    stamp = {"fingerprint": run.fingerprint, "step": position.step}
    model_file = model_file_contents(run.model, run.network_kwargs, run.nets, _model_facts(run, position), stamp)
    summary = run_summary(run, position)
    images = images_folder(run.run_dir / LIVE_DIR)
    atomic_write_together([
        *[(images / name, bytes_writer(data)) for name, data in samples.items()],
        (run.model_path, torch_writer(model_file)),
        (run.run_dir / "summary.json", json_writer(summary)),
        (run.run_dir / "metrics.json", json_writer(headline_metrics(summary, run.spec.progress_loss, run.global_batch))),
        (run.run_dir / "params.json", json_writer(run.params)),
        (run.state_path, torch_writer(state)),
    ])


def run_summary(run: Run, position: Position, finished: bool = False, validation: dict | None = None) -> dict:
    """summary.json: the run's facts and where it stands; ``finished`` once it has reached total_steps
    (and, on rank 0, been validated: ``validation``). A checkpoint's summary is never finished."""
    summary = dict(_model_facts(run, position), final_losses=position.last_losses, finished=finished)
    if validation is not None:
        summary["validation"] = validation
    return summary


def finish(run: Run, rt: Runtime, params: Params, position: Position, run_log: RunLog | None) -> dict:
    """The run's summary (written to summary.json by rank 0), with the objective's held-out
    validation figures once training has reached ``total_steps``."""
    validation = None
    finished = position.step >= run.train.total_steps
    if rt.world_size > 1:
        dist.barrier()  # all ranks finished training before rank 0 validates
    if rt.is_main and finished:
        for net in run.nets.values():
            net.eval()
        run.objective.eval()
        plain = {name: unwrap(net) for name, net in run.nets.items()}
        val = PreparedSplit(Path(params.paths.prepared), "val")
        with torch.no_grad():
            validation = run.objective.validation_metrics(plain, val, rt.device)
        run_log.add_to_summary({f"val/{name}": value for name, value in validation.items() if isinstance(value, (int, float))})
    summary = run_summary(run, position, finished, validation)
    if run_log is not None:
        atomic_write_together([  # params.json too: `dvc repro` removes a stage's outputs before a rerun that resumes at the end
            (run.run_dir / "summary.json", json_writer(summary)),
            (run.run_dir / "metrics.json", json_writer(headline_metrics(summary, run.spec.progress_loss, run.global_batch))),
            (run.run_dir / "params.json", json_writer(run.params)),
        ])
        run_log.end()
    return summary
