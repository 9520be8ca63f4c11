"""A guard against host reads of device tensors: inside ``no_host_reads(device)``, any operation that
makes the host wait for ``device`` raises ``HostReadError`` naming the operation and the line of this
project that asked for it.

What counts as a host read (each one, on a GPU, waits for every kernel queued before it):
- a tensor's value in Python: ``.item()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``int()``, ``float()``,
  ``if tensor:``, printing it (``Tensor`` methods, caught by a ``TorchFunctionMode``);
- every aten operation whose output depends on the data on the host: the operators torch tags
  ``data_dependent_output`` or ``dynamic_output_shape`` (``_local_scalar_dense``, ``nonzero``,
  ``masked_select``, ``unique``, ``equal``, ``allclose``, ``bincount``, ``repeat_interleave`` without
  ``output_size`` ...), indexing with a boolean mask, and ``one_hot`` without ``num_classes``
  (caught by a ``TorchDispatchMode``, so also when torch's own Python code calls them);
- a copy from the device to the host (``.cpu()``, ``.to("cpu")``, ``copy_`` into a host tensor).

Tensors on the host (e.g. Adam's step counters, which torch keeps on the CPU unless fused or capturable)
may be read: only tensors on ``device`` are guarded. On a machine without a GPU, run the guarded code on
the ``meta`` device (a device whose data the host cannot read): tests/test_syncguard.py runs every
registered model's training step so. Tags are torch's own, so operators torch adds are covered as torch
tags them.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_PROJECT = str(Path(__file__).resolve().parents[1])
_TORCH = str(Path(torch.__file__).resolve().parent)

# Tensor methods that hand a tensor's value to Python
PYTHON_READS = frozenset({
    "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__", "__array__",
    "__repr__", "__str__", "__format__", "cpu",
})
_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default}


class HostReadError(RuntimeError):
    """An operation inside ``no_host_reads`` made the host read a device tensor."""


def _where() -> str:
    """The innermost line on the stack outside torch, installed packages and this module (the code that
    asked for the read), relative to the repository where it is inside."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_TORCH) or "site-packages" in name or name == __file__ or name.startswith("<")):
            return f"{Path(name).relative_to(_PROJECT) if name.startswith(_PROJECT) else name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _on(device_type: str, values) -> bool:
    return any(isinstance(t, torch.Tensor) and t.device.type == device_type for t in tree_leaves(values))


def _to_host(func, args, kwargs) -> bool:
    """A copy whose destination is the host."""
    if func is torch.ops.aten._to_copy.default:
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu"
    if func is torch.ops.aten.copy_.default:
        return args[0].device.type == "cpu"
    return False


def reads_host(func, args, kwargs, device_type: str) -> bool:
    """Whether the aten operation ``func`` on these arguments reads a ``device_type`` tensor on the host."""
    if not _on(device_type, (args, kwargs)):
        return False
    if _to_host(func, args, kwargs):
        return True
    if func in _INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if func is torch.ops.aten.one_hot.default:
        num_classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        return num_classes == -1
    return any(tag in func.tags for tag in _TAGS)


class _DispatchGuard(TorchDispatchMode):
    def __init__(self, device_type: str, found: list[str]):
        super().__init__()
        self.device_type, self.found = device_type, found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_host(func, args, kwargs, self.device_type):
            self.found.append(f"{func} at {_where()}")
            raise HostReadError(f"host read of a {self.device_type} tensor: {self.found[-1]}")
        return func(*args, **kwargs)


class _FunctionGuard(TorchFunctionMode):
    def __init__(self, device_type: str, found: list[str]):
        super().__init__()
        self.device_type, self.found = device_type, found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in PYTHON_READS and args and isinstance(args[0], torch.Tensor) and args[0].device.type == self.device_type:
            self.found.append(f"Tensor.{name} at {_where()}")
            raise HostReadError(f"host read of a {self.device_type} tensor: {self.found[-1]}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_reads(device: torch.device | str) -> Iterator[list[str]]:
    """Inside the block, a host read of a tensor on ``device`` (see the module docstring) raises
    ``HostReadError``; the list yielded collects what was caught (also reads whose error the code
    inside swallowed)."""
    device_type = torch.device(device).type
    found: list[str] = []
    with _FunctionGuard(device_type, found), _DispatchGuard(device_type, found):
        yield found
