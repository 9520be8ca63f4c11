"""Self-describing checkpoints (STYLE convention 7) with atomic writes: the file formats only.

Two artifacts per run: the model file (model name, each network's constructor arguments and
state_dict of the unwrapped module, and the run's facts) that rebuilds the networks without
params.yaml, and the training state (step, networks, optimizers, objective state, RNG) for resume.
Both hold only tensors and plain data and load with ``weights_only=True``, through
``read_torch_file``, the one reader of torch files (weights files of other origins included) that
turns any failure into a one-line error naming the file and what to do. Rebuilding networks from
a model file needs the registry of models: ``registry.load_model``, which imports this module (never
the other way round).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crn_repro.errors import CrnError, one_line
from crn_repro.files import atomic_write

MODEL_FORMAT = "crn-repro-model/1"
STATE_FORMAT = "crn-repro-state/1"


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_torch_file(path: str | Path, what: str, fix: str, missing: str | None = None) -> Any:
    """What a torch file holds, read onto the CPU with ``weights_only=True`` (tensors and plain data,
    never code). A missing file, or one torch cannot read (corrupt, truncated, foreign, pickled code),
    is a one-line CrnError naming the file and ``what`` it should be and saying what to do: ``fix``
    (``missing`` instead, where given, for a file that is not there)."""
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: {what} not found; {missing or fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise CrnError(f"{path}: not a readable {what} ({one_line(error)}); {fix}") from None


def read_state_dict(path: str | Path, what: str, fix: str, missing: str | None = None) -> dict:
    """``read_torch_file`` of a weights file that holds one state_dict; anything else is a one-line CrnError."""
    state_dict = read_torch_file(path, what, fix, missing)
    if not isinstance(state_dict, dict):
        raise CrnError(f"{path}: expected a state_dict (dict of tensors), got {type(state_dict).__name__}; {fix}")
    return state_dict


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers, so state_dict keys carry no prefixes."""
    while True:
        if unwrap_ddp(module) is not module:
            module = unwrap_ddp(module)
        elif hasattr(module, "_orig_mod"):  # torch.compile
            module = module._orig_mod
        else:
            return module


def model_file_contents(model: str, network_kwargs: dict[str, dict], nets: dict[str, nn.Module], facts: dict,
                        run: dict | None = None) -> dict:
    """What a model file holds. ``run`` ({"fingerprint", "step"}) names the training state it was
    exported from, so that a resumed run can tell a model file that is not its state's (a kill between
    the checkpoint's files) and export it again; files imported from elsewhere have none."""
    contents = {
        "format": MODEL_FORMAT,
        "model": model,
        "network_kwargs": network_kwargs,
        "state_dicts": {name: unwrap(net).state_dict() for name, net in nets.items()},
        "facts_json": json.dumps(facts, sort_keys=True),
    }
    if run is not None:
        contents["run"] = {"fingerprint": str(run["fingerprint"]), "step": int(run["step"])}
    return contents


def save_model_file(path: Path, model: str, network_kwargs: dict[str, dict], nets: dict[str, nn.Module], facts: dict) -> None:
    atomic_torch_save(model_file_contents(model, network_kwargs, nets, facts), path)


def torch_writer(obj: Any):
    """``obj`` as a writer for ``files.atomic_write_together`` (a checkpoint's files are written together)."""
    return lambda f: torch.save(obj, f)


def read_model_run(path: Path) -> dict | None:
    """The training state a model file says it was exported from ({"fingerprint", "step"}), read
    without loading its weights (memory-mapped); None for a missing or unreadable file or one without."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, torn by hand, foreign: not this state's model file either way
        return None
    run = data.get("run") if isinstance(data, dict) and data.get("format") == MODEL_FORMAT else None
    return run if isinstance(run, dict) else None


def _load(path: Path, kind: str, expected_format: str) -> dict:
    data = read_torch_file(path, kind, "delete it and train again", missing="run `crn-repro train` for this model first")
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise CrnError(f"{path}: not a crn-repro {kind} (format {expected_format} expected)")
    return data


def read_model_file(path: Path) -> dict:
    """A model file's contents (model name, network_kwargs, state_dicts, facts), checked for its
    format; ``registry.load_model`` rebuilds the networks from it."""
    data = _load(path, "model file", MODEL_FORMAT)
    data["facts"] = json.loads(data.pop("facts_json"))
    return data


def load_training_state(path: Path) -> dict:
    return _load(path, "training state", STATE_FORMAT)


def init_from_model_file(path: Path, nets: dict[str, nn.Module]) -> dict[str, dict[str, list[str]]]:
    """Initialise ``nets`` from a model file: every tensor whose network, name and shape match is
    copied; the rest keep their fresh initialisation. This is the release's progressive schedule
    (docs/facts.md §3): a 512p CRN from a 256p one gets every module but the new last one and the
    output layer. Returns, per network, the copied and the kept-fresh tensor names."""
    data = _load(path, "model file", MODEL_FORMAT)
    report = {}
    for name, net in nets.items():
        source = data["state_dicts"].get(name, {})
        target = unwrap(net).state_dict()
        children = [child for child, _ in unwrap(net).named_children()]
        last = children[-1] + "." if children else None  # the output layer may differ (k = 9 -> k = 1 outputs)
        clash = [k for k, v in source.items() if k in target and tuple(v.shape) != tuple(target[k].shape)
                 and not (last and k.startswith(last))]
        if clash:
            raise CrnError(
                f"{path}: {len(clash)} tensors of network {name} have other shapes than the network being trained "
                f"(first: {clash[0]} {tuple(source[clash[0]].shape)} vs {tuple(target[clash[0]].shape)}); "
                f"train.init_from needs a model of the same widths"
            )
        copied = {k: v for k, v in source.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
        unwrap(net).load_state_dict(copied, strict=False)
        report[name] = {"copied": sorted(copied), "fresh": sorted(set(target) - set(copied))}
    if not any(r["copied"] for r in report.values()):
        raise CrnError(f"{path}: no tensor of this {data.get('model')!r} model file fits the networks being trained; check train.init_from")
    return report


def unwrap_ddp(module: nn.Module) -> nn.Module:
    """The module under a DistributedDataParallel wrapper, if any; a compiled module stays compiled
    (``unwrap`` removes both)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
