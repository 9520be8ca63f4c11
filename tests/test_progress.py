"""Progress outside a terminal: plain lines at a steady interval, in one format for every command."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import yaml
from rich.console import Console

from crn_repro.progress import StageProgress

LINE = re.compile(r"^(?P<what>[\w@ -]+): (?P<done>\d+)/(?P<total>\d+) \(\d+%\)(?: \| [^|]+)* \| \d+:\d\d:\d\d elapsed \| (ETA [\d:?]+|done)$")


def test_plain_lines_outside_a_terminal():
    out = io.StringIO()
    with StageProgress(Console(file=out, force_terminal=False), interval_s=0) as progress:
        task = progress.add_task("train crn", total=4)
        for step in range(1, 5):
            progress.update(task, completed=step, status=f"loss {10 - step} | 2.0 img/s")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(LINE.match(line) for line in lines), lines
    assert lines[0].startswith("train crn: 1/4 (25%) | loss 9 | 2.0 img/s | ")
    assert lines[-1].endswith("| done")


def test_steady_interval_and_one_final_line():
    out = io.StringIO()
    with StageProgress(Console(file=out, force_terminal=False), interval_s=3600) as progress:
        task = progress.add_task("synthesize crn", total=100)
        for _ in range(100):
            progress.advance(task)
        progress.advance(task, 0)  # nothing more after the final line
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("synthesize crn: 100/100 (100%) | ")


def test_a_terminal_gets_bars_and_a_disabled_progress_says_nothing():
    out = io.StringIO()
    with StageProgress(Console(file=out, force_terminal=True), interval_s=0) as progress:
        progress.update(progress.add_task("train crn", total=2), completed=2)
    assert not any(LINE.match(line) for line in out.getvalue().splitlines())
    quiet = io.StringIO()
    with StageProgress(Console(file=quiet, force_terminal=False), disable=True, interval_s=0) as progress:
        progress.update(progress.add_task("train crn", total=2), completed=2)
    assert quiet.getvalue() == ""


def test_every_long_command_prints_the_same_lines_into_a_log(tiny_raw, tmp_path):
    """prepare, train, synthesize and evaluate, run as a batch job would (output to a file)."""
    params = tmp_path / "params.yaml"
    tiny_raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    params.write_text(yaml.safe_dump(tiny_raw))
    env = {"CRN_PROGRESS_INTERVAL_S": "0"}
    seen, train_lines = set(), []
    for args in (["prepare"], ["train", "-m", "segmenter"], ["train", "-m", "crn"], ["synthesize", "-m", "crn"], ["evaluate"]):
        log = tmp_path / "log.txt"
        with log.open("w") as out:
            subprocess.run([sys.executable, "-m", "crn_repro", "-p", str(params), *args], stdout=out, stderr=out, check=True,
                           env={**__import__("os").environ, **env})
        lines = [line for line in log.read_text().splitlines() if LINE.match(line)]
        assert lines, (args, log.read_text())
        assert "\x1b[" not in log.read_text()  # no terminal control sequences in a log
        seen |= {LINE.match(line)["what"] for line in lines}
        train_lines += [line for line in lines if line.startswith("train crn")]
    assert {"prepare train", "train crn", "synthesize crn", "evaluate"} <= seen
    assert re.match(r"train crn: 4/4 \(100%\) \| loss [\d.]+ \| [\d.]+ img/s \| .* \| done$", train_lines[-1]), train_lines
