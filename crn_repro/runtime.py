"""Where and how training runs: the device, the DDP process group under torchrun, precision, memory
format and CPU threads (``setup_runtime``); the networks as the loop runs them, compiled and in DDP
(``prepare_networks``); and the relaunch of a command under torchrun (``launch_under_torchrun``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from crn_repro.errors import CrnError
from crn_repro.params import TrainParams


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def setup_runtime(tp: TrainParams) -> Runtime:
    """Device, DDP process group (under torchrun), precision, memory format and CPU threads."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        if tp.cpu_threads is not None:
            torch.set_num_threads(tp.cpu_threads)
    use_bf16 = tp.precision == "bf16" or (tp.precision == "auto" and cuda)
    channels_last = tp.channels_last == "on" or (tp.channels_last == "auto" and cuda)
    return Runtime(device, rank, world_size, torch.bfloat16 if use_bf16 else None, channels_last)


def prepare_networks(nets: dict[str, torch.nn.Module], tp: TrainParams, rt: Runtime) -> dict[str, torch.nn.Module]:
    """The networks as the loop runs them: with SyncBatchNorm (``train.sync_batchnorm``, several CUDA
    processes; same state_dict), compiled (``train.compile``), then, under torchrun, every network with
    trainable parameters in DistributedDataParallel. ``checkpoint.unwrap`` undoes the last two,
    ``checkpoint.unwrap_ddp`` the DDP wrapper only."""
    if tp.sync_batchnorm and rt.world_size > 1:
        if rt.device.type != "cuda":
            raise CrnError(f"train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA only (this run: {rt.device.type} x "
                           f"{rt.world_size}); set it false (each process then normalises its own images)")
        nets = {name: torch.nn.SyncBatchNorm.convert_sync_batchnorm(net) for name, net in nets.items()}
    if tp.compile:
        nets = {name: torch.compile(net) for name, net in nets.items()}
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        nets = {
            name: DDP(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
            if any(p.requires_grad for p in net.parameters())
            else net
            for name, net in nets.items()
        }
    return nets


def launch_under_torchrun(processes: int, argv: list[str]) -> int:
    """Run this command again as ``torchrun --standalone --nproc_per_node processes`` (one machine; several
    machines start torchrun themselves, see docs/multi-gpu.md) and return its exit status. SIGINT and
    SIGTERM are passed on to torchrun, which stops its workers."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "crn_repro", *argv]
    child = subprocess.Popen(command)
    forward = {sig: signal.signal(sig, lambda number, frame: child.send_signal(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)
