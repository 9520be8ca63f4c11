"""The `prepare` stage's writer: frames decode in a thread pool with a bounded number in flight,
are written in order, and an error cancels the frames not yet started."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from crn_repro import prepare as prepare_module
from crn_repro.labels import CITYSCAPES_SPACE
from crn_repro.prepare import Source, _write_split


class CountingProgress:
    """Stands in for rich's Progress: counts the frames the writer has consumed."""

    def __init__(self):
        self.consumed = 0

    def add_task(self, *args, **kwargs):
        return 0

    def advance(self, task, n=1):
        self.consumed += n


def counting_source(progress: CountingProgress, num_frames: int, fail_at: int | None = None):
    """A source whose loader records, at each call, how many frames are started but not yet written.
    Frame 0 is slow, so a pool with no bound runs ahead on every other frame meanwhile."""
    started, in_flight = [], []
    lock = threading.Lock()

    def load(i):
        with lock:
            started.append(i)
            in_flight.append(len(started) - progress.consumed)
        if i == 0:
            time.sleep(0.3)
        if i == fail_at:
            raise RuntimeError(f"frame {i} is corrupt")
        return np.full((2, 4, 3), i % 256, np.uint8), np.full((2, 4), i % 20, np.uint8)

    names = {"train": [f"frame_{i:04d}" for i in range(num_frames)]}
    return Source(CITYSCAPES_SPACE, names, {"train": load}, {}), started, in_flight


def test_frames_in_flight_are_bounded_and_written_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "DECODE_WORKERS", 4)
    monkeypatch.setattr(prepare_module, "FRAMES_IN_FLIGHT", 8)
    progress = CountingProgress()
    source, started, in_flight = counting_source(progress, 100)
    out = _write_split(tmp_path / "train", source, "train", None, (2, 4), progress)
    assert out["count"] == 100 and progress.consumed == 100 and sorted(started) == list(range(100))
    assert max(in_flight) <= 8  # pool.map would have started all 100 while frame 0 slept
    images = np.load(tmp_path / "train/images.npy")
    labels = np.load(tmp_path / "train/labels.npy")
    assert (images[:, 0, 0, 0] == np.arange(100)).all() and (labels[:, 0, 0] == np.arange(100) % 20).all()


def test_an_error_cancels_the_frames_not_yet_started(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "DECODE_WORKERS", 2)
    monkeypatch.setattr(prepare_module, "FRAMES_IN_FLIGHT", 4)
    progress = CountingProgress()
    source, started, _ = counting_source(progress, 100, fail_at=10)
    with pytest.raises(RuntimeError, match="frame 10 is corrupt"):
        _write_split(tmp_path / "train", source, "train", None, (2, 4), progress)
    assert progress.consumed == 10 and max(started) < 10 + 4
