"""Noise drawn per image of the global batch, so that N processes at batch b draw what one process at batch
N x b draws (docs/multi-gpu.md, "What a batch is").

The trainer opens ``per_image_noise(seed, positions)`` around each training step, where ``positions`` are
the places in the step's global batch of the images this process holds (rank r of N holds r, r + N, ...).
Inside it, ``Dropout`` draws the mask of the image at position p for its c-th call in the step from
(seed, p, c): the same mask whichever process holds the image, and whatever the number of processes.
Outside such a block (synthesis, a network called on its own) it is torch's dropout.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

_STATE = threading.local()


@contextlib.contextmanager
def per_image_noise(seed: int, positions: Sequence[int]) -> Iterator[None]:
    """Within the block, ``Dropout`` draws each image's mask from (seed, its position, the call)."""
    previous = getattr(_STATE, "current", None)
    _STATE.current = {"seed": int(seed), "positions": tuple(int(p) for p in positions), "calls": 0}
    try:
        yield
    finally:
        _STATE.current = previous


def _image_seed(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (zeroes each element with probability p, scales the rest by 1 / (1 - p)) whose masks,
    inside ``per_image_noise``, are drawn per image of the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = getattr(_STATE, "current", None)
        if not self.training or self.p == 0 or state is None or x.device.type == "meta":  # meta: shapes only (bench)
            return super().forward(x)
        if len(state["positions"]) != x.shape[0]:
            raise RuntimeError(f"per_image_noise holds {len(state['positions'])} images, the batch {x.shape[0]}")
        call = state["calls"]
        state["calls"] += 1
        keep = torch.empty((x.shape[0], *x.shape[1:]), device=x.device, dtype=torch.float32)
        for i, position in enumerate(state["positions"]):
            generator = torch.Generator(device=x.device)
            generator.manual_seed(_image_seed(state["seed"], position, call))
            keep[i].bernoulli_(1.0 - self.p, generator=generator)
        return x * (keep / (1.0 - self.p)).to(x.dtype)
