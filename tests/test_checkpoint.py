"""checkpoint.py's helpers: read_torch_file / read_state_dict, the one reader of torch files (model files,
training states and the weights files of DRN-D-105, LPIPS, Inception and VGG-19), whose every failure is one
line naming the file, what it should be, and what to do; and ``unwrap_ddp`` (removes DistributedDataParallel
only: the trainer runs a network already stepped in this step without DDP, still compiled) vs ``unwrap``
(removes DDP and torch.compile: what checkpoints save)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed as dist
from torch import nn

from crn_repro.checkpoint import read_state_dict, read_torch_file, unwrap, unwrap_ddp
from crn_repro.errors import CrnError


def error_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_reads_tensors_and_plain_data(tmp_path):
    torch.save({"w": torch.arange(3), "note": "x"}, tmp_path / "ok.pt")
    data = read_torch_file(tmp_path / "ok.pt", "weights file", "fix it")
    assert data["note"] == "x" and torch.equal(data["w"], torch.arange(3))
    assert set(read_state_dict(tmp_path / "ok.pt", "weights file", "fix it")) == {"w", "note"}


def test_a_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(CrnError) as excinfo:
        read_torch_file(tmp_path / "nope.pt", "X weights file", "download X")
    assert error_line(excinfo) == f"{tmp_path / 'nope.pt'}: X weights file not found; download X"
    with pytest.raises(CrnError) as excinfo:
        read_torch_file(tmp_path / "nope.pt", "model file", "delete it", missing="train first")
    assert error_line(excinfo) == f"{tmp_path / 'nope.pt'}: model file not found; train first"


class Code:  # a pickled object: weights_only refuses to run its code
    pass


@pytest.mark.parametrize("kind", ["junk", "truncated", "pickled code"])
def test_an_unreadable_file_is_one_line_naming_it_and_the_fix(tmp_path, kind):
    path = tmp_path / "bad.pt"
    if kind == "junk":
        path.write_bytes(b"not a torch file")
    elif kind == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:500])
    else:
        with open(path, "wb") as f:
            pickle.dump(Code(), f, protocol=2)
    with pytest.raises(CrnError) as excinfo:
        read_torch_file(path, "X weights file", "download X again")
    message = error_line(excinfo)
    assert message.startswith(f"{path}: not a readable X weights file (") and message.endswith("); download X again")


def test_a_state_dict_must_be_a_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CrnError) as excinfo:
        read_state_dict(tmp_path / "list.pt", "X weights file", "download X")
    assert error_line(excinfo) == f"{tmp_path / 'list.pt'}: expected a state_dict (dict of tensors), got list; download X"


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
