"""The run's random streams: every random choice of a training run derives from (seed, purpose, ...),
so that resuming at step s draws what an uninterrupted run draws there, and no two streams coincide."""

from __future__ import annotations

import numpy as np

# Purposes of derived seeds: network initialisation, the batch order of an epoch, a step's noise.
INIT, BATCHES, STEP_NOISE = 0, 1, 2


def derive_seed(*values: int) -> int:
    """A 63-bit seed derived from non-negative integers, e.g. (seed, STEP_NOISE, step)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))
