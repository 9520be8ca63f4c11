"""Files the suite writes and reads back: atomic writes and a checked CSV reader.

No torch and no model code here, so that every module (the study server too) can write its outputs
atomically without importing the networks. Checkpoints (``checkpoint.py``) build on these writers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from crn_repro.errors import CrnError, one_line


def atomic_write(path: Path, write: Callable) -> None:
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


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
