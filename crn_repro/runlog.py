"""What a training run logs: the losses averaged on the device between log steps (``LossLog``), the
dvclive files under ``<run>/live`` (``open_live``, which cuts what a killed run logged after its last
checkpoint; ``log_losses``; ``log_validation`` at checkpoints), and the headline metrics.json."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from crn_repro.checkpoint import unwrap
from crn_repro.datasets import PreparedSplit, tensor_to_image
from crn_repro.files import atomic_write_text
from crn_repro.labels import colorize_channels
from crn_repro.losses import Objective
from crn_repro.registry import ModelSpec
from crn_repro.runtime import Runtime
from crn_repro.stats import significant


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


def open_live(run_dir: Path, resume: bool, start_step: int):
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


def log_losses(live, step: int, losses: dict[str, float], images_per_s: float) -> None:
    """The interval's mean losses as dvclive metrics ``train/<phase>/<name>`` at ``step``, and the speed."""
    live.step = step
    for name, value in losses.items():
        live.log_metric(f"train/{name}", value)
    live.log_metric("train/images_per_s", images_per_s)


VALIDATION_SAMPLES = 4  # validation frames scored (and, for generators, drawn) at every checkpoint


@torch.no_grad()
def log_validation(live, nets: dict[str, torch.nn.Module], objective: Objective, spec: ModelSpec,
                   val: PreparedSplit | None, reads: str, device: torch.device) -> None:
    """At a checkpoint (rank 0): the objective's losses on the first validation frames, in eval mode,
    as dvclive metrics ``val/<phase>/<name>``, and for a generator the images it synthesizes for the
    first two of them as dvclive images ``samples/val_<i>.png`` (with the layout and the reference),
    so `dvc plots show` follows training as it goes."""
    if val is None:
        return
    batch = val.batch(range(min(VALIDATION_SAMPLES, len(val))), device, reads)
    plain = {name: unwrap(net) for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    objective.eval()
    try:
        for name, value in objective(spec.main_network, plain, batch).items():
            live.log_metric(f"val/{spec.main_network}/{name}", float(value))
        if spec.role == "generator":
            generated = plain[spec.main_network](batch[0][:2]).float()
            reference = tensor_to_image(batch[1][:2])
            for i, image in enumerate(tensor_to_image(generated[:, :3])):
                layout = colorize_channels(np.asarray(val.labels[i]), val.label_space.palette)
                live.log_image(f"samples/val_{i}.png", np.concatenate([layout, image, reference[i]], axis=1))
    finally:
        for net in nets.values():
            net.train()
        objective.train()


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
