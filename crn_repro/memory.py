"""Activation memory of a generator: the paper's argument against the full-resolution network.

Sec. 4: "all intermediate feature layers are at full image resolution and have a high memory
footprint. Thus the ratio of capacity (number of parameters) to memory footprint is much lower than
in the CRN ... with 10 layers and 256 feature maps per layer, the maximal resolution that could be
trained with available GPU memory is 256x512." What limits training is the activations autograd
keeps for the backward pass, so that is what is measured here: the tensors saved during one
forward pass, each storage once, parameters and buffers excluded. Run it on the ``meta`` device to
size networks far too large to execute (only shapes are computed).
"""

from __future__ import annotations

import contextlib
import copy
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn


def activation_bytes(
    module: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> int:
    """Bytes of the tensors autograd saves for backward during one forward ``module(*inputs)``.

    Every saved tensor is charged the full size of its storage, and a storage saved several times
    (e.g. through views) counts once; storages of the module's parameters and buffers are not
    activations and are excluded. The input counts when an operation saves it. With ``device`` or
    ``dtype`` the measurement runs on a converted copy; ``module`` itself is never changed.
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if device is not None or dtype is not None:
        module = copy.deepcopy(module).to(device=device, dtype=dtype)
        inputs = tuple(x.to(device=device, dtype=dtype if x.is_floating_point() else None) for x in inputs)
    # Storages are keyed by the identity of their Python object (PyTorch keeps one per storage for
    # as long as it is referenced, and both dicts keep theirs referenced), which also works on the
    # meta device, where every data_ptr is 0.
    excluded = {id(s): s for s in (t.untyped_storage() for t in chain(module.parameters(), module.buffers()))}
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if id(storage) not in excluded:
            saved[id(storage)] = storage
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(*inputs)
    return sum(s.nbytes() for s in saved.values())


# --- the memory of one training step ----------------------------------------------------------------


class _AutocastLike(torch.overrides.TorchFunctionMode):
    """The dtypes ``torch.autocast(dtype=torch.bfloat16)`` gives the tensors a step saves, on the meta
    device (where autocast itself does not apply): convolutions and matrix products run in bf16 (their
    inputs and weights cast, as autocast does), normalisations and losses in fp32."""

    LOW = {torch.conv2d, torch.conv_transpose2d, torch.matmul, torch.mm, torch.bmm, torch.addmm, F.linear}
    FP32 = {F.group_norm, torch.group_norm, F.layer_norm, F.batch_norm, F.cross_entropy, F.binary_cross_entropy_with_logits}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = torch.bfloat16 if func in self.LOW else torch.float32 if func in self.FP32 else None
        if dtype is not None:
            cast = lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
            args = tuple(cast(a) for a in args)
            kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def training_step_memory(
    nets: dict[str, nn.Module], phase: str, objective: nn.Module, layout: torch.Tensor, image: torch.Tensor, *,
    bf16: bool, checkpointing: bool,
) -> dict:
    """Bytes one training step holds at its peak, from shapes on the meta device: for every network,
    its weights and, for every trainable parameter, a gradient and Adam's two moments (fp32); the
    activations autograd saves in the forward pass of ``phase`` (the generator's; with ``bf16``, in the
    dtypes autocast gives them, plus autocast's bf16 copies of the weights); and, with ``checkpointing``,
    only each refinement module's input instead of its activations, plus one module's activations at a
    time while the backward pass recomputes it. ``workspace`` allows for the gradient buffers of the
    backward pass (twice the largest saved tensor). Everything must be on the meta device."""
    generator = nets[phase]
    modules = list(getattr(generator, "cascade", []))
    region: list[int | None] = [None]
    saved: dict[int, tuple[int, int | None]] = {}  # storage id -> (bytes, module index or None)
    inputs: dict[int, int] = {}
    keep = []  # storages referenced, so that ids stay unique

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        keep.append(storage)
        saved.setdefault(id(storage), (storage.nbytes(), region[0]))
        return tensor

    def enter(index):
        def hook(module, args):
            region[0] = index
            storage = args[0].untyped_storage()
            keep.append(storage)
            inputs[id(storage)] = storage.nbytes()
        return hook

    handles = [m.register_forward_pre_hook(enter(i)) for i, m in enumerate(modules)]
    handles += [m.register_forward_hook(lambda module, args, out: region.__setitem__(0, None)) for m in modules]
    parameters = [p for net in nets.values() for p in net.parameters()]
    excluded = {id(t.untyped_storage()) for t in chain(parameters, objective.parameters(), objective.buffers())}
    context = _AutocastLike() if bf16 else contextlib.nullcontext()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), context:
            objective(phase, nets, (layout, image))
    finally:
        for handle in handles:
            handle.remove()
    saved = {k: v for k, v in saved.items() if k not in excluded}
    if checkpointing and modules:
        outside = {k: n for k, (n, where) in saved.items() if where is None} | inputs
        inside = [sum(n for k, (n, where) in saved.items() if where == i and k not in outside) for i in range(len(modules))]
        activations = sum(outside.values()) + max(inside)
    else:
        activations = sum(n for n, _ in saved.values())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    weights = sum(p.numel() for p in parameters) * (4 + (2 if bf16 else 0))  # fp32, and autocast's bf16 copies
    held = {"weights": weights, "gradients": trainable * 4, "adam_moments": trainable * 8}
    workspace = 2 * max((n for n, _ in saved.values()), default=0)
    return {
        **held,
        "activations": activations,
        "workspace": workspace,
        "total": sum(held.values()) + activations + workspace,
        "trainable_parameters": trainable,
    }
