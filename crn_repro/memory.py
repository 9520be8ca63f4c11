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

import copy
from itertools import chain

import torch
from torch import nn

from crn_repro.registry import count_parameters


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


def compare_activation_memory(networks: dict[str, nn.Module], layout: torch.Tensor) -> dict[str, dict]:
    """Per network: trainable parameters, activation bytes for one forward on ``layout``, and
    activation bytes per parameter (low capacity per byte of memory is the paper's point)."""
    table = {}
    for name, net in networks.items():
        parameters = count_parameters(net)
        nbytes = activation_bytes(net, layout)
        table[name] = {
            "parameters": parameters,
            "activation_bytes": nbytes,
            "activation_bytes_per_parameter": nbytes / parameters if parameters else float("inf"),
        }
    return table
