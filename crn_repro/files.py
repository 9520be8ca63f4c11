"""Files the suite writes and reads back: atomic writes, checked readers (CSV, JSON, arrays, images) and
the YAML reader of params and presets (as DVC reads them).

No torch and no model code here, so that every module (the study server too) can write its outputs
atomically without importing the networks. Checkpoints (``checkpoint.py``) build on these writers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from crn_repro.errors import CrnError, one_line


def atomic_write(path: Path, write: Callable) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``: a kill at
    any moment leaves either the old file or the new one, never a torn one. The file gets the
    permissions a plain write would give it (``plain_write_mode``), not the temporary file's 0600."""
    atomic_write_together([(path, write)])


def atomic_write_together(files: list[tuple[Path, Callable]]) -> None:
    """Files that belong together (a checkpoint: model file, summary, training state), each given as
    ``(path, write)``: every one is written to its temporary file and fsynced first, and only then are
    they renamed over their paths, in the order given (so the last one, e.g. the training state, is the
    commit point). A failed write (a full disk) changes none of them; a kill can only fall between two
    renames, where the files before the last one are ahead of it."""
    staged: list[tuple[str, Path]] = []
    path = None
    try:
        for path, write in files:
            staged.append((_write_temporary(Path(path), write), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException as error:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        if is_write_failure(error):
            raise write_error(Path(path), error) from None
        raise


def _write_temporary(path: Path, write: Callable) -> str:
    """``write(file)`` into a new temporary file beside ``path`` (``.<name>.*.tmp``), flushed and fsynced,
    with the mode a plain write of ``path`` would have; returns its name (removed again on any error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, plain_write_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def plain_write_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave ``path`` with: those of the file it replaces,
    or for a new file 0666 less the process's umask (so reports and figures are readable by the group
    or everyone where the umask says so, as any other file the user writes)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read from /proc without changing it (``os.umask`` can only be read by
    setting it, which would race with other threads creating files); elsewhere by setting it back."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


_WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full; free space and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded; free space and run the same command again",
    errno.EROFS: "the file system is read-only; point paths.* in params.yaml at a writable folder",
    errno.EACCES: "no permission to write there; make the folder writable or point paths.* elsewhere",
    errno.EPERM: "no permission to write there; make the folder writable or point paths.* elsewhere",
}


def is_write_failure(error: BaseException) -> bool:
    """An error of the file system (full, read-only, no permission), not of the program: torch's
    serializer reports a failed write as a RuntimeError of its C++ stream writer."""
    if isinstance(error, OSError):
        return True
    return isinstance(error, RuntimeError) and ("PytorchStreamWriter" in str(error) or "file write failed" in str(error))


def write_error(path: Path, error: BaseException) -> CrnError:
    """The one line for a failed write of ``path``: what the file system said and what to do."""
    code = getattr(error, "errno", None)
    if code is None and isinstance(error, RuntimeError):  # torch's writer hides errno: ask the disk
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(path).parent).free < 64 * 2**20:
                code = errno.ENOSPC
    advice = _WRITE_ADVICE.get(code, "check the disk and the folder's permissions, then run the same command again")
    reason = os.strerror(code) if code else one_line(error)
    return CrnError(f"{path}: cannot be written ({reason}); the previous version is untouched; {advice}")


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A folder written aside (``<out>.partial``) and swapped in for ``out`` only when the block ends
    without error; on any error, interruption included, the partial folder is removed and ``out``
    stays as it was. A failed write of the file system becomes a one-line CrnError."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        atomic_replace_dir(tmp, out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, CrnError) or not is_write_failure(error):
            raise
        raise write_error(Path(getattr(error, "filename", None) or tmp), error) from None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.*.tmp``) left in ``folder`` or below it by a killed
    process (a kill -9 skips every cleanup); call where a single writer starts, e.g. a training run."""
    removed = []
    for tmp in sorted(Path(folder).rglob(".*.tmp")):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def require_writable(folder: Path) -> None:
    """Fail before the work, not after it, where ``folder`` cannot take a write (full, read-only, no
    permission): a probe of 64 KiB is written there, synced and removed (named as a temporary, so
    ``remove_stale_temporaries`` clears one a kill left)."""
    folder = Path(folder)
    probe = folder / f".write-probe.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(65536))
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise write_error(folder, error) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


@contextlib.contextmanager
def library_writes(where: Path) -> Iterator[None]:
    """A library's own writes inside the block (e.g. dvclive's appends): a failed one is the same one
    line as a failed write of ours, naming the file it names (else ``where``)."""
    try:
        yield
    except OSError as error:
        raise write_error(Path(error.filename) if error.filename else Path(where), error) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_text(obj: Any) -> str:
    """The suite's JSON files: indented, keys sorted, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def bytes_writer(data: bytes) -> Callable:
    """``data`` as a writer for ``atomic_write_together``."""
    return lambda f: f.write(data)


def json_writer(obj: Any) -> Callable:
    """``obj`` as JSON (``json_text``), a writer for ``atomic_write_together``."""
    return bytes_writer(json_text(obj).encode())


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
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as error:  # UnicodeDecodeError too
        raise CrnError(f"{path}: not a readable CSV ({one_line(error)}){then}") from None
    if not set(required) <= set(table.columns):
        raise CrnError(f"{path}: needs columns {', '.join(sorted(required))}{then}")
    return table


def read_json(path: Path, fix: str) -> Any:
    """A JSON file the suite wrote, parsed; a missing, unreadable or corrupt (e.g. truncated) file is a
    one-line error naming it, with ``fix`` saying what to do (which stage to run again)."""
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: missing; {fix}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CrnError(f"{path}: not readable JSON ({one_line(error)}); {fix}") from None


def parse_yaml(text: str, source: str, fix: str) -> Any:
    """YAML text parsed exactly as DVC parses params files (``dvc.utils.serialize.parse_yaml``: ruamel.yaml's
    safe loader, YAML 1.2), so that the suite, `dvc params diff` and `dvc exp run -S` agree on every value:
    ``2e-4`` and ``1e4`` are floats, ``yes`` is a string. A syntax error or a repeated key is one line naming
    ``source`` and, where known, its line and column; ``fix`` says what to do."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(error, "problem", None) or one_line(error)
        raise CrnError(f"{source}: not valid YAML{where} ({what.strip().splitlines()[0]}); {fix}") from None


def read_yaml(path: Path, fix: str) -> Any:
    """A YAML file (params, presets) read as DVC reads it (``parse_yaml``), with one-line errors naming the
    file; ``fix`` says what to do."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CrnError(f"{path}: not UTF-8 text (byte {error.start}); {fix}") from None
    except OSError as error:
        raise CrnError(f"{path}: cannot be read ({error.strerror}); {fix}") from None
    return parse_yaml(text, str(path), fix)


def read_array(path: Path, fix: str, shape_tail: tuple | None = None, dtype: str | None = None):
    """A ``.npy`` array the suite wrote, memory-mapped; missing, truncated or corrupt files, and arrays
    whose dtype or trailing shape differ from what is expected, are one-line errors naming the file."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: missing; {fix}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # a truncated file fails the mmap size check
        raise CrnError(f"{path}: not a readable .npy array ({one_line(error)}); {fix}") from None
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise CrnError(f"{path}: dtype {array.dtype}, expected {dtype}; {fix}")
    if shape_tail is not None and tuple(array.shape[-len(shape_tail):]) != tuple(shape_tail):
        raise CrnError(f"{path}: shape {tuple(array.shape)}, expected (..., {', '.join(map(str, shape_tail))}); {fix}")
    return array


def allocated_memmap(path: Path, dtype, shape: tuple[int, ...]):
    """A new ``.npy`` file of ``shape`` and ``dtype``, memory-mapped for writing, whose disk space is
    reserved before the first byte is written. A full disk is then an OSError naming ``path`` here
    (``posix_fallocate``: ENOSPC), the same one-line error as every other write, instead of the SIGBUS
    that kills a process writing through a map into pages the file system cannot allocate."""
    import numpy as np
    from numpy.lib import format as npy

    path = Path(path)
    header = {"descr": npy.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(int(n) for n in shape)}
    size = int(np.prod(header["shape"], dtype=np.int64)) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, header)
        f.flush()
        _reserve(f.fileno(), f.tell() + size, path)
    return npy.open_memmap(path, mode="r+")


def _reserve(fd: int, size: int, path: Path) -> None:
    """Allocate the first ``size`` bytes of the open file ``fd`` on disk (zeros where nothing is yet)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(error.errno, error.strerror, str(path)) from None
    # a file system without fallocate: write the zeros (the allocation then fails here, as a write)
    length = os.fstat(fd).st_size
    block = bytes(1 << 20)
    os.lseek(fd, length, os.SEEK_SET)
    try:
        while length < size:
            length += os.write(fd, block[: min(len(block), size - length)])
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def read_image(path: Path, fix: str, size_wh: tuple[int, int] | None = None):
    """An RGB image file the suite wrote, fully decoded (a truncated PNG fails here, not later), as a
    uint8 array (H, W, 3); one-line errors name the file, and a size other than ``size_wh``."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: missing; {fix}")
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise CrnError(f"{path}: not a readable image ({one_line(error)}); {fix}") from None
    if size_wh is not None and (pixels.shape[1], pixels.shape[0]) != tuple(size_wh):
        raise CrnError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, expected {size_wh[0]}x{size_wh[1]}; {fix}")
    return pixels
