"""What a training run logs: the losses averaged on the device between log steps (``LossLog``), the
dvclive files under ``<run>/live`` (``RunLog``), the validation at checkpoints (``checkpoint_validation``)
and the headline metrics.json.

The dvclive files never decide anything on resume. Every value logged is also kept in the run's record
(per logged step, the metrics in the order they were logged), which the training state holds, and the
files are a function of it: dvclive appends its metric rows in place (a kill can tear the last one),
``RunLog`` writes dvclive's summary (``live/metrics.json``) atomically, and the validation samples are
written together with the checkpoint. On resume (``open_run_log``) every file is checked against the
state's record and rebuilt where it differs, with a one-line note; when a run fails or is interrupted,
what it logged after its last checkpoint is cut again (``RunLog.rollback``). The folder therefore always
agrees with the training state, whatever instant a run was stopped at."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
from typing import Callable

os.environ.setdefault("DVCLIVE_LOGLEVEL", "WARNING")

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from dvclive.plots import NumpyEncoder
from PIL import Image

from crn_repro.checkpoint import unwrap
from crn_repro.datasets import PreparedSplit, tensor_to_image
from crn_repro.files import atomic_write_bytes, atomic_write_text, library_writes
from crn_repro.labels import colorize_channels
from crn_repro.losses import Objective
from crn_repro.registry import ModelSpec
from crn_repro.runtime import Runtime
from crn_repro.stats import significant

LIVE_DIR = "live"  # <run>/live: dvclive's folder (dvc.yaml declares its metrics plots and images)
Record = list  # [[step, [[metric name, value], ...]], ...]: every logged step, in order


class LossLog:
    """Losses summed on the device between log steps, with the first step at which any was not
    finite. ``flush`` averages them over the interval and, under DDP, over the processes (each
    process's losses are means over its share of the batch, so this is the loss of the global batch,
    what one process with the whole batch logs), finds the first non-finite step of any process, and
    only then makes the host wait for the device: every rank gets the same answer (so all ranks log
    the same losses and stop together)."""

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
        """(mean of each loss over the interval and the processes, the first step with a non-finite
        loss or None)."""
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).double() / max(self.count, 1)
        if self.rt.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)  # every rank has the same keys: one objective
            values /= self.rt.world_size
            dist.all_reduce(self.first_bad, op=dist.ReduceOp.MIN)
        host = values.tolist()
        first_bad = int(self.first_bad)
        self.sums, self.count = {}, 0
        return dict(zip(keys, host)), (None if first_bad == self.NONE else first_bad)


def metrics_folder(live_dir: Path) -> Path:
    return Path(live_dir) / "plots" / "metrics"


def images_folder(live_dir: Path) -> Path:
    return Path(live_dir) / "plots" / "images"


def tsv_text(name: str, rows: list[tuple[int, float]]) -> str:
    """dvclive's history file of metric ``name`` (``dvclive.plots.Metric``: a header, one tab-separated
    row per logged step) holding ``rows``, byte for byte as dvclive writes it."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, ["step", os.path.basename(name)], delimiter="\t", lineterminator=os.linesep)
    writer.writeheader()
    for step, value in rows:
        writer.writerow({"step": step, os.path.basename(name): value})
    return out.getvalue()


def metric_rows(record: Record) -> dict[str, list[tuple[int, float]]]:
    """The record's rows per metric name."""
    rows: dict[str, list] = {}
    for step, metrics in record:
        for name, value in metrics:
            rows.setdefault(name, []).append((int(step), value))
    return rows


def summary_of(record: Record) -> dict:
    """dvclive's summary after logging ``record`` (``Live.summary``: each metric's latest value, nested by
    the parts of its name, in the order they were first logged, and the last step)."""
    summary: dict = {}
    for step, metrics in record:
        for name, value in metrics:
            *parents, leaf = os.path.normpath(name).split(os.sep)
            node = summary
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        summary["step"] = int(step)
    return summary


def summary_text(summary: dict) -> str:
    """``live/metrics.json`` as dvclive writes it."""
    return json.dumps(summary, indent=4, cls=NumpyEncoder) + "\n"


def _agrees(found, expected: dict) -> bool:
    """Whether a parsed summary holds every value of ``expected`` (keys dvclive's end added, e.g. the
    final validation figures, may be there too)."""
    if not isinstance(found, dict):
        return False
    return all(_agrees(found.get(k), v) if isinstance(v, dict) else found.get(k) == v for k, v in expected.items())


def record_from_files(live_dir: Path, step: int) -> Record:
    """The record of a training state saved before states held one: the dvclive rows up to ``step``
    (rows a killed run logged after it, and torn ones, left out)."""
    folder = metrics_folder(live_dir)
    steps: dict[int, list] = {}
    for tsv in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        name = tsv.relative_to(folder).with_suffix("").as_posix()
        for line in tsv.read_text(errors="replace").splitlines()[1:]:
            fields = line.split("\t")
            with contextlib.suppress(ValueError, IndexError):
                if len(fields) == 2 and int(fields[0]) <= step:
                    steps.setdefault(int(fields[0]), []).append([name, float(fields[1])])
    return [[s, steps[s]] for s in sorted(steps)]


class _Live(Live):
    """dvclive's logger, with its summary (``live/metrics.json``) written atomically: dvclive writes
    it in place at every step, where a kill leaves it empty or torn."""

    def make_summary(self):
        if self._step is not None:
            self.summary["step"] = self.step
        atomic_write_text(Path(self.metrics_file), summary_text(self.summary))


class RunLog:
    """The run's dvclive logger and its record. ``log`` logs a step's metrics (to dvclive and the
    record), ``next_step`` ends the step, ``commit`` marks what the checkpoint just saved, and
    ``rollback`` cuts the dvclive files back to it (a failed or interrupted run)."""

    def __init__(self, live_dir: Path, record: Record, resume: bool):
        self.live_dir = Path(live_dir)
        with library_writes(self.live_dir):
            self.live = _Live(str(self.live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
        self.record: Record = [list(entry) for entry in record]
        self.commit()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.live.step = step
        if not self.record or self.record[-1][0] != step:
            self.record.append([step, []])
        for name, value in metrics.items():
            value = float(value)
            with library_writes(self.live_dir):
                self.live.log_metric(name, value)
            self.record[-1][1].append([name, value])

    def next_step(self) -> None:
        with library_writes(self.live_dir):
            self.live.next_step()

    def commit(self) -> None:
        """The files as they are now are what the training state just saved: remember their sizes
        (dvclive only appends to the history files) and the summary's bytes."""
        folder = metrics_folder(self.live_dir)
        self._sizes = {p: p.stat().st_size for p in folder.rglob("*.tsv")} if folder.is_dir() else {}
        summary = Path(self.live.metrics_file)
        self._summary = summary.read_bytes() if summary.is_file() else None

    def rollback(self) -> None:
        """Cut what was logged after the last commit (best effort, never raising: what it cannot put
        right, e.g. on a full disk, the next resume rebuilds)."""
        folder = metrics_folder(self.live_dir)
        for tsv in folder.rglob("*.tsv") if folder.is_dir() else []:
            with contextlib.suppress(OSError):
                if tsv not in self._sizes:
                    tsv.unlink()
                elif tsv.stat().st_size != self._sizes[tsv]:
                    os.truncate(tsv, self._sizes[tsv])
        summary = Path(self.live.metrics_file)
        with contextlib.suppress(Exception):
            current = summary.read_bytes() if summary.is_file() else None
            if current != self._summary:
                if self._summary is None:
                    summary.unlink()
                else:
                    atomic_write_bytes(summary, self._summary)

    def add_to_summary(self, values: dict[str, float]) -> None:
        """Figures for dvclive's summary only (no history): the final validation, before ``end``."""
        self.live.summary.update(values)

    def end(self) -> None:
        with library_writes(self.live_dir):
            self.live.end()


def open_run_log(run_dir: Path, step: int, record: Record | None, samples: Callable[[], dict[str, bytes]],
                 note: Callable[[str], None]) -> RunLog:
    """The run's ``RunLog``. A fresh run (``step`` 0) starts with an empty folder (dvclive removes what
    an earlier run logged); a resumed one first checks every dvclive file against the training state's
    ``record`` and the validation ``samples`` of its networks (name -> PNG bytes) and rebuilds those that
    differ (a killed run left them torn or ahead of the state), telling ``note`` which."""
    live_dir = Path(run_dir) / LIVE_DIR
    if step == 0:
        return RunLog(live_dir, [], resume=False)
    if record is None:  # a state saved before states held their record
        record = record_from_files(live_dir, step)
    rebuilt = _rebuild(live_dir, record, step, samples)
    if rebuilt:
        note(f"{live_dir}: rebuilt {', '.join(rebuilt)} from the training state at step {step} "
             f"(they were missing, as `dvc repro` leaves them before a rerun, or an interrupted run had left them "
             f"torn or ahead of it)")
    return RunLog(live_dir, record, resume=True)


def _rebuild(live_dir: Path, record: Record, step: int, samples: Callable[[], dict[str, bytes]]) -> list[str]:
    """Make every dvclive file what ``record`` and ``samples`` say; returns the rewritten files' names."""
    rebuilt = []
    expected = {name: tsv_text(name, rows).encode() for name, rows in metric_rows(record).items()}
    folder = metrics_folder(live_dir)
    for tsv in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        if tsv.relative_to(folder).with_suffix("").as_posix() not in expected:
            tsv.unlink()
            rebuilt.append(str(tsv.relative_to(live_dir)))
    files = {folder / f"{name}.tsv": data for name, data in expected.items()}
    files.update({images_folder(live_dir) / name: data for name, data in samples().items()})
    for path, data in files.items():
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
            rebuilt.append(str(path.relative_to(live_dir)))
    summary_path = live_dir / "metrics.json"
    summary = summary_of(record)
    try:
        found = json.loads(summary_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        found = None
    if not _agrees(found, summary):
        atomic_write_text(summary_path, summary_text(summary))
        rebuilt.append(summary_path.name)
    return rebuilt


def log_losses(run_log: RunLog, step: int, losses: dict[str, float], images_per_s: float) -> None:
    """The interval's mean losses as dvclive metrics ``train/<phase>/<name>`` at ``step``, and the speed."""
    run_log.log(step, {**{f"train/{name}": value for name, value in losses.items()}, "train/images_per_s": images_per_s})


VALIDATION_SAMPLES = 4  # validation frames scored (and, for generators, drawn) at every checkpoint


@contextlib.contextmanager
def _evaluating(nets: dict[str, torch.nn.Module], objective: Objective):
    """The networks and the objective in eval mode inside the block, in train mode again after it."""
    for net in nets.values():
        net.eval()
    objective.eval()
    try:
        with torch.no_grad():
            yield {name: unwrap(net) for name, net in nets.items()}
    finally:
        for net in nets.values():
            net.train()
        objective.train()


def checkpoint_validation(nets: dict[str, torch.nn.Module], objective: Objective, spec: ModelSpec,
                          val: PreparedSplit | None, reads: str, device: torch.device) -> tuple[dict[str, float], dict[str, bytes]]:
    """At a checkpoint (rank 0): the objective's losses on the first validation frames, in eval mode, as
    metrics ``val/<phase>/<name>``, and for a generator the images it synthesizes for the first two of
    them (``sample_images``), so `dvc plots show` follows training as it goes."""
    if val is None:
        return {}, {}
    batch = val.batch(range(min(VALIDATION_SAMPLES, len(val))), device, reads)
    with _evaluating(nets, objective) as plain:
        losses = {f"val/{spec.main_network}/{name}": float(value) for name, value in objective(spec.main_network, plain, batch).items()}
    return losses, sample_images(nets, objective, spec, val, reads, device)


def sample_images(nets: dict[str, torch.nn.Module], objective: Objective, spec: ModelSpec,
                  val: PreparedSplit | None, reads: str, device: torch.device) -> dict[str, bytes]:
    """A generator's validation samples as dvclive image names -> PNG bytes (``samples/val_<i>.png``: the
    layout, the synthesized image and the reference side by side); none for other networks."""
    if val is None or spec.role != "generator":
        return {}
    layouts, references = val.batch(range(min(2, len(val))), device, reads)
    with _evaluating(nets, objective) as plain:
        generated = plain[spec.main_network](layouts).float()
    out = {}
    for i, (image, reference) in enumerate(zip(tensor_to_image(generated[:, :3]), tensor_to_image(references))):
        layout = colorize_channels(np.asarray(val.labels[i]), val.label_space.palette)
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate([layout, image, reference], axis=1)).save(buffer, format="PNG")
        out[f"samples/val_{i}.png"] = buffer.getvalue()
    return out


def headline_metrics(summary: dict, progress_loss: str, global_batch: int) -> dict:
    """The few numbers of a run that `dvc metrics show` and `dvc exp show` print (metrics.json): steps,
    the loss that shows progress (``ModelSpec.progress_loss``, averaged over the last log interval),
    minutes (``min``), images/s (``img_s``), and a segmenter's scores on the validation split (``miou``,
    ``acc``); summary.json has everything else."""
    wall = summary["wall_time_s"]
    out = {  # short keys: `dvc metrics show` prints one column each, all files in one table
        "steps": summary["steps"],
        "loss": significant(summary["final_losses"].get(progress_loss)),
        "min": round(wall / 60, 2),
        "img_s": significant(global_batch * summary["steps"] / wall) if wall > 0 else None,
    }
    for name, short in (("mean_iou", "miou"), ("pixel_accuracy", "acc")):  # the segmenter's, on the validation split
        if isinstance(summary.get("validation", {}).get(name), float):
            out[short] = significant(summary["validation"][name])
    return out
