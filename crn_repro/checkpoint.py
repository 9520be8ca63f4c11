"""Self-describing checkpoints (STYLE convention 7) with atomic writes.

Two artifacts per run: the model file (model name, each network's constructor arguments and
state_dict of the unwrapped module, and the run's facts) that rebuilds the networks without
params.yaml, and the training state (step, networks, optimizers, objective state, RNG) for resume.
Both hold only tensors and plain data and load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crn_repro.errors import CrnError, one_line
from crn_repro.registry import build_network

MODEL_FORMAT = "crn-repro-model/1"
STATE_FORMAT = "crn-repro-state/1"


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``: a kill at
    any moment leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_replace_dir(tmp: Path, out: Path) -> None:
    """Swap a finished folder ``tmp`` in for ``out``: the old one is renamed aside first and removed
    only after the new one is in place, so an interruption never leaves ``out`` half-written."""
    tmp, out = Path(tmp), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def read_table(path: Path, required: tuple[str, ...] = (), missing: str = "not found", fix: str = "", **read_csv_kwargs):
    """A CSV as a pandas DataFrame, with one-line errors that name the file: missing (``missing``
    says what to do), unreadable, or lacking one of the ``required`` columns (``fix`` says what to do)."""
    import pandas as pd

    path = Path(path)
    then = f"; {fix}" if fix else ""
    if not path.is_file():
        raise CrnError(f"{path}: {missing}")
    try:
        table = pd.read_csv(path, **read_csv_kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CrnError(f"{path}: not a readable CSV ({one_line(error)}){then}") from None
    if not set(required) <= set(table.columns):
        raise CrnError(f"{path}: needs columns {', '.join(sorted(required))}{then}")
    return table


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers, so state_dict keys carry no prefixes."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):  # DDP
            module = module.module
        elif hasattr(module, "_orig_mod"):  # torch.compile
            module = module._orig_mod
        else:
            return module


def save_model_file(path: Path, model: str, network_kwargs: dict[str, dict], nets: dict[str, nn.Module], facts: dict) -> None:
    atomic_torch_save(
        {
            "format": MODEL_FORMAT,
            "model": model,
            "network_kwargs": network_kwargs,
            "state_dicts": {name: unwrap(net).state_dict() for name, net in nets.items()},
            "facts_json": json.dumps(facts, sort_keys=True),
        },
        path,
    )


def _load(path: Path, kind: str, expected_format: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: {kind} not found; run `crn-repro train` for this model first")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise CrnError(f"{path}: not a readable {kind} ({type(error).__name__}); delete it and train again") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise CrnError(f"{path}: not a crn-repro {kind} (format {expected_format} expected)")
    return data


def load_model_file(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict]:
    """Rebuild every network of a model file; returns (networks in eval mode, file contents)."""
    data = _load(path, "model file", MODEL_FORMAT)
    nets = {}
    for name, kwargs in data["network_kwargs"].items():
        try:
            net = build_network(data["model"], name, kwargs)
            net.load_state_dict(data["state_dicts"][name])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise CrnError(f"{path}: does not fit the current code ({one_line(error)}); train this model again") from None
        nets[name] = net.to(device).eval()
    data["facts"] = json.loads(data.pop("facts_json"))
    return nets, data


def load_training_state(path: Path) -> dict:
    return _load(path, "training state", STATE_FORMAT)


def init_from_model_file(path: Path, nets: dict[str, nn.Module]) -> dict[str, dict[str, list[str]]]:
    """Initialise ``nets`` from a model file: every tensor whose network, name and shape match is
    copied; the rest keep their fresh initialisation. This is the release's progressive schedule
    (crn-facts §3): a 512p CRN from a 256p one gets every module but the new last one and the
    output layer. Returns, per network, the copied and the kept-fresh tensor names."""
    data = _load(path, "model file", MODEL_FORMAT)
    report = {}
    for name, net in nets.items():
        source = data["state_dicts"].get(name, {})
        target = unwrap(net).state_dict()
        copied = {k: v for k, v in source.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
        unwrap(net).load_state_dict(copied, strict=False)
        report[name] = {"copied": sorted(copied), "fresh": sorted(set(target) - set(copied))}
    if not any(r["copied"] for r in report.values()):
        raise CrnError(f"{path}: no tensor of this {data.get('model')!r} model file fits the networks being trained; check train.init_from")
    return report

