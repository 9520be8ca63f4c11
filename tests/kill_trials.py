"""kill -9 at chosen instants of a tiny training run, then the same command again (the catalog's
``test_kill_at_any_instant_then_resume_matches_an_uninterrupted_run``).

    python tests/kill_trials.py PARAMS OUT SEED TRIALS    (PARAMS: a params.yaml; paths.runs is set per run)

imports the suite once and forks every run from this process (a fresh interpreter per run would cost
more than the training): ``OUT/reference`` trains uninterrupted while counting the *events* below;
then, for TRIALS instants drawn from SEED across the event kinds, ``OUT/trial-<i>`` trains until its
chosen event kills it with SIGKILL and trains again without a kill. ``OUT/trials.json`` says, per
trial, the event, how the killed run ended and the resume's exit status and stderr.

The events, counted in the order a run meets them (a kill lands exactly there, not near it):
- ``step``: before a training step;
- ``dvclive-row``: inside dvclive's in-place append of a metric row (half the row written);
- ``write``: inside one of our atomic writes (half of the temporary file written);
- ``rename``: before one of our renames; a checkpoint renames its files one after the other with
  ``state.pt`` last, so these fall between the checkpoint's files.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
from pathlib import Path

KINDS = ("step", "dvclive-row", "write", "rename")


def install_events(kill_at: int | None, seen: list[str]) -> None:
    """Count every event in ``seen``; SIGKILL this process at event number ``kill_at`` (0-based)."""
    import dvclive.plots.metric as metric

    import crn_repro.files as files
    import crn_repro.trainer as trainer

    def event(kind: str, torn=None) -> None:
        seen.append(kind)  # "<kind> <file name>" where a file is written
        if len(seen) - 1 == kill_at:
            if torn is not None:
                torn()
            os.kill(os.getpid(), signal.SIGKILL)

    train_step = trainer.train_step

    def step(*args, **kwargs):
        event("step")
        return train_step(*args, **kwargs)

    dump = metric.Metric.dump

    def row(self, val, **kwargs):
        def torn():
            with open(self.output_path, "a", encoding="utf-8") as f:
                f.write(f"{self.step}\t{str(val)[:4]}")

        event(f"dvclive-row {Path(self.output_path).name}", torn)
        return dump(self, val, **kwargs)

    write_temporary = files._write_temporary

    def write(path, writer):
        def half(f):
            buffer = io.BytesIO()
            writer(buffer)
            data = buffer.getvalue()
            event(f"write {Path(path).name}", lambda: (f.write(data[: len(data) // 2]), f.flush()))
            f.write(data)

        return write_temporary(path, half)

    replace = os.replace

    def rename(src, dst, *args, **kwargs):
        event(f"rename {Path(dst).name}")
        return replace(src, dst, *args, **kwargs)

    trainer.train_step = step
    metric.Metric.dump = row
    files._write_temporary = write
    os.replace = rename


def run_forked(raw: dict, runs: Path, kill_at: int | None, log: Path) -> tuple[int, list[str]]:
    """`crn-repro train -m crn` with the params ``raw`` and ``paths.runs`` = ``runs`` in a forked child;
    returns its exit status (negative: the signal that ended it) and the events it met (none if killed)."""
    import yaml

    events = log.with_suffix(".events")
    events.unlink(missing_ok=True)
    params = runs.with_suffix(".yaml")
    params.write_text(yaml.safe_dump(dict(raw, paths=dict(raw["paths"], runs=str(runs)))))
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            import torch

            torch.set_num_threads(1)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            seen: list[str] = []
            install_events(kill_at, seen)
            from crn_repro.cli import main

            sys.argv = ["crn-repro", "--params", str(params), "train", "-m", "crn"]
            try:
                main()
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            events.write_text(json.dumps(seen))
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, json.loads(events.read_text()) if events.exists() else []


def choose(events: list[str], seed: int, trials: int) -> list[int]:
    """``trials`` distinct event numbers: always the two instants of the issue (inside the last
    ``model.pt`` write, and after the last checkpoint's other renames, before ``state.pt``'s), then an
    equal share of each kind drawn from ``seed`` (the rest from any), so rare instants are aimed at."""
    rng = random.Random(seed)
    fixed = {max(i for i, e in enumerate(events) if e == "write model.pt"),
             max(i for i, e in enumerate(events) if e == "rename state.pt")}
    drawn: list[int] = []
    share = -(-(trials - len(fixed)) // len(KINDS))
    for kind in KINDS:
        of_kind = [i for i, e in enumerate(events) if e.split()[0] == kind and i not in fixed]
        drawn += rng.sample(of_kind, min(share, len(of_kind)))
    rest = [i for i in range(len(events)) if i not in fixed and i not in drawn]
    drawn += rng.sample(rest, max(0, trials - len(fixed) - len(drawn)))
    return sorted(fixed | set(rng.sample(drawn, trials - len(fixed))))


def main() -> None:
    import yaml

    import crn_repro.cli  # noqa: F401  everything a run imports, once, before the forks (no torch work here)
    import crn_repro.registry  # noqa: F401
    import crn_repro.trainer  # noqa: F401

    raw = yaml.safe_load(Path(sys.argv[1]).read_text())
    out, seed, trials = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    code, events = run_forked(raw, out / "reference", None, out / "reference.log")
    assert code == 0, (out / "reference.log").read_text()
    chosen = choose(events, seed, trials)
    jobs = max(1, min(2, os.cpu_count() or 1))  # one torch thread per run, two trials at once
    running: dict[int, int] = {}
    for i, kill_at in enumerate(chosen):
        if len(running) == jobs:
            _wait_one(running)
        pid = os.fork()
        if pid == 0:  # a trial: the killed run, then the same command again
            try:
                runs = out / f"trial-{i}"
                killed, _ = run_forked(raw, runs, kill_at, out / f"trial-{i}.killed.log")
                resumed, _ = run_forked(raw, runs, None, out / f"trial-{i}.log")
                (out / f"trial-{i}.json").write_text(json.dumps(
                    {"kill_at": kill_at, "event": events[kill_at], "killed": killed, "resumed": resumed,
                     "stderr": (out / f"trial-{i}.log").read_text()}))
            finally:
                os._exit(0)
        running[pid] = i
    while running:
        _wait_one(running)
    report = {"seed": seed, "events": events,
              "trials": [json.loads((out / f"trial-{i}.json").read_text()) for i in range(len(chosen))]}
    (out / "trials.json").write_text(json.dumps(report, indent=1))


def _wait_one(running: dict[int, int]) -> None:
    pid, _ = os.wait()
    running.pop(pid, None)


if __name__ == "__main__":
    main()
