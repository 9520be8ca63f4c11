"""Canonical response records of the perceptual study (paper Sec. 5.1, docs/facts.md §6).

Both sources, the web app and MTurk, produce exactly these columns, one row per answered trial, so
one analysis reads them all. CSV on disk, written atomically.

A pair trial's record names both sides (``left_model``, ``right_model`` and the SHA-256 of each image
shown) and the side chosen ("left" | "right") with its model. A HYPE trial (one image at a time)
records its image as the ``left_*`` side, leaves ``right_model``/``right_sha256`` empty, and its
``chosen_side`` is the answer, "real" or "fake"; its ``chosen_model`` is the image's model when it
was called real, else empty. Practice answers (kind "practice") may appear; the analysis drops them.
The SHA-256s, the display's frame interval (``frame_ms``) and the Prolific ids (``prolific_*``) are
optional: records without them (older exports, MTurk) get them empty, and the analysis fills the
hashes in from the manifest.

Answers of simulated participants (`crn-repro study simulate`) carry their own sources,
"simulated-web" and "simulated-mturk", and never pass as a person's: `study analyze` drops them
where real answers exist and otherwise labels everything it writes as simulated.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pandas as pd

from crn_repro.files import atomic_write_text, read_table
from crn_repro.errors import CrnError

REAL = "real"  # the model name of the dataset's own images in a study
DESIGNS = ("paper", "timed", "mixed", "hype")  # study designs (docs/facts.md §6.2; `study.params` describes them)
TIMED_DESIGNS = ("timed",)  # designs whose every trial has a presentation time
RESPONSE_COLUMNS: tuple[str, ...] = (
    "source",  # "web" | "mturk" (people) | "simulated-web" | "simulated-mturk" (observer models)
    "participant",  # web participant id ("sim-..." when simulated) or MTurk WorkerId
    "job",
    "trial",  # index in the job
    "kind",  # "test" | "sentinel" | "practice"
    "layout",  # validation frame stem: both images of a pair show it
    "left_model",  # HYPE: the image's model
    "right_model",  # HYPE: empty
    "chosen_side",  # "left" | "right"; HYPE: "real" | "fake"
    "chosen_model",  # HYPE: empty
    "duration_ms",  # target presentation time; empty for unlimited time
    "measured_ms",  # measured on-screen duration (requestAnimationFrame); empty where not measured
    "response_ms",  # stimulus onset to answer, where known
    "answered_utc",
    "frame_ms",  # the display's frame interval the page measured (web), where known
    "left_sha256",  # SHA-256 of the image shown (HYPE: the image)
    "right_sha256",  # HYPE: empty
    "prolific_pid",  # Prolific's ids of the session, empty when not from Prolific
    "prolific_study_id",
    "prolific_session_id",
)
OPTIONAL_COLUMNS = ("frame_ms", "left_sha256", "right_sha256", "prolific_pid", "prolific_study_id", "prolific_session_id")
HUMAN_SOURCES = ("web", "mturk")
SIMULATED_SOURCES = ("simulated-web", "simulated-mturk")
SOURCES = HUMAN_SOURCES + SIMULATED_SOURCES
SIDES = ("left", "right")
HYPE_ANSWERS = ("real", "fake")
KINDS = ("practice", "test", "sentinel")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes: the source hash of a synthesized image (docs/facts.md §6.2)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def real_image_sha256(pixels) -> str:
    """The source hash of a prepared real image: SHA-256 of its shape and uint8 RGB pixels."""
    import numpy as np

    pixels = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
    return hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()


def is_simulated(source: pd.Series) -> pd.Series:
    """Which records come from simulated participants (by their ``source``)."""
    return source.astype(str).isin(SIMULATED_SOURCES)


def empty_responses() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in RESPONSE_COLUMNS})


def check_responses(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate canonical records (columns, sources, kinds, sides, chosen model); returns them with typed
    numbers, the optional columns added (empty) where missing. Raises CrnError naming ``where``."""
    df = df.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in df.columns:
            df[column] = None
    missing = [c for c in RESPONSE_COLUMNS if c not in df.columns]
    if missing:
        raise CrnError(f"{where}: not canonical study responses, missing columns {', '.join(missing)}")
    df = df.loc[:, list(RESPONSE_COLUMNS)].reset_index(drop=True)
    for column, allowed in (("source", SOURCES), ("chosen_side", SIDES + HYPE_ANSWERS), ("kind", KINDS)):
        bad = df[~df[column].isin(allowed)]
        if len(bad):
            raise CrnError(f"{where}: row {bad.index[0]}: {column} {bad[column].iloc[0]!r} is not one of {', '.join(allowed)}")
    for column in ("right_model", "chosen_model", *OPTIONAL_COLUMNS):  # empty where not applicable
        df[column] = df[column].astype(object).where(df[column].notna() & (df[column].astype(str) != ""), None)
    chosen = df.left_model.where(df.chosen_side.isin(("left", "real")), df.right_model.where(df.chosen_side == "right"))
    wrong = ~((chosen == df.chosen_model) | (chosen.isna() & df.chosen_model.isna()))
    if wrong.any():
        raise CrnError(f"{where}: row {df.index[wrong.to_numpy()][0]}: chosen_model disagrees with chosen_side")
    for column in ("trial", "duration_ms", "measured_ms", "response_ms", "frame_ms"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["trial"] = df["trial"].astype(int)
    for column in ("participant", "job", "layout"):
        df[column] = df[column].astype(str)
    return df


def _where_not_utf8(data: bytes, error: UnicodeDecodeError) -> str:
    line = data[: error.start].count(b"\n") + 1
    return f"byte 0x{data[error.start]:02x} on line {line}"


def read_external_csv(path: Path, what: str) -> tuple[list[str], list[dict]]:
    """The header and rows of a CSV that another system wrote (an MTurk batch results file, a Prolific
    export), as ``what`` names it. MTurk and Prolific write UTF-8, and spreadsheets' "CSV UTF-8" adds a
    byte order mark; both are read. Anything else is a one-line CrnError that names the encoding it
    looks like and the command that converts it."""
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: {what} not found")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CrnError(f"{path}: UTF-16 text (a spreadsheet's 'Unicode Text'), but a {what} is read as UTF-8; convert it: "
                       f"iconv -f UTF-16 -t UTF-8 '{path}' > '{path.with_suffix('.utf8.csv')}' (or save it as 'CSV UTF-8')")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CrnError(f"{path}: not UTF-8 ({_where_not_utf8(data, error)}; probably Latin-1/Windows-1252, which a spreadsheet "
                       f"writes as plain 'CSV'), but a {what} is read as UTF-8, as MTurk and Prolific write it: download it again, "
                       f"or convert it: iconv -f WINDOWS-1252 -t UTF-8 '{path}' > '{path.with_suffix('.utf8.csv')}' "
                       f"(or save it as 'CSV UTF-8')") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as error:
        raise CrnError(f"{path}: not a readable CSV ({error}); download the {what} again") from None
    return list(reader.fieldnames or []), rows


def read_responses_csv(path: Path) -> pd.DataFrame:
    """Canonical records from a CSV (e.g. ``<study>/analysis/responses.csv``)."""
    df = read_table(path, missing="responses file not found", fix="export the responses again (or fix the file)",
                    dtype={"participant": str, "job": str, "layout": str, "prolific_pid": str, "prolific_study_id": str,
                           "prolific_session_id": str})
    return check_responses(df, str(path))


def write_responses_csv(df: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    df.loc[:, list(RESPONSE_COLUMNS)].to_csv(buffer, index=False)
    atomic_write_text(Path(path), buffer.getvalue())
