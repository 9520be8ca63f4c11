"""The batches of a training run: which training images step s reads (``batch_indices``, drawn from
(seed, epoch), so that a resumed run reads what an uninterrupted one does), and ``BatchPrefetcher``,
which reads them ahead of the loop."""

from __future__ import annotations

import math
import queue
import threading

import numpy as np

from crn_repro.datasets import Batch, PreparedSplit
from crn_repro.runtime import Runtime
from crn_repro.seeds import BATCHES, derive_seed


def batch_indices(seed: int, step: int, num_items: int, batch_size: int) -> np.ndarray:
    """The global batch of step ``step``: epoch e = step // steps_per_epoch walks a permutation drawn
    from (seed, e); the last batch of an epoch wraps around so every batch is full."""
    steps_per_epoch = math.ceil(num_items / batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng(derive_seed(seed, BATCHES, epoch)).permutation(num_items)
    return order[(position * batch_size + np.arange(batch_size)) % num_items]


class BatchPrefetcher:
    """The batches of steps start, start + 1, ... read ahead in a background thread: this process's
    share of each global batch of ``data`` (what the networks ``reads``), as uint8 arrays from the
    memory-mapped cache (pinned on CUDA, so the copy to the GPU overlaps compute). ``get(step)``
    returns them on the device, expanded there. ``depth`` 0 reads each batch when asked for it."""

    def __init__(self, data: PreparedSplit, reads: str, seed: int, global_batch: int, rt: Runtime,
                 start: int, stop: int, depth: int):
        self.data, self.reads, self.seed, self.global_batch, self.rt = data, reads, seed, global_batch, rt
        self.pin = rt.device.type == "cuda"
        self.depth = depth
        if depth > 0:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.stopped = threading.Event()
            self.thread = threading.Thread(target=self._produce, args=(start, stop), daemon=True)
            self.thread.start()

    def _read(self, step: int):
        rt = self.rt
        indices = batch_indices(self.seed, step, len(self.data), self.global_batch)[rt.rank :: rt.world_size]
        return tuple(int(i) for i in indices), self.data.read(indices, self.reads, pin=self.pin)

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
        layout, image = self.data.to_device(raw, self.rt.device, self.reads)
        fmt = self.rt.memory_format
        return Batch(layout.contiguous(memory_format=fmt), image.contiguous(memory_format=fmt), keys)

    def close(self) -> None:
        if self.depth > 0:
            self.stopped.set()
            self.thread.join(timeout=5)
