"""checkpoint's wrapper helpers: ``unwrap_ddp`` removes DistributedDataParallel only (the trainer runs a
network already stepped in this step without DDP, still compiled), ``unwrap`` removes DDP and
torch.compile (what checkpoints save)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from crn_repro.checkpoint import unwrap, unwrap_ddp


def test_unwrap_ddp_keeps_compilation_and_unwrap_removes_both(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain = nn.Linear(2, 2)
        compiled = torch.compile(plain)
        wrapped = nn.parallel.DistributedDataParallel(compiled)
        assert unwrap_ddp(wrapped) is compiled
        assert unwrap_ddp(compiled) is compiled and unwrap_ddp(plain) is plain
        assert unwrap(wrapped) is plain and unwrap(compiled) is plain and unwrap(plain) is plain
    finally:
        dist.destroy_process_group()
