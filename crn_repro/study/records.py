"""Canonical response records of the perceptual study (paper Sec. 5.1, docs/facts.md §6).

Both sources, the web app and MTurk, produce exactly these columns, one row per answered trial, so
one analysis reads them all. CSV on disk, written atomically.

Answers of simulated participants (`crn-repro study simulate`) carry their own sources,
"simulated-web" and "simulated-mturk", and never pass as a person's: `study analyze` drops them
where real answers exist and otherwise labels everything it writes as simulated.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from crn_repro.files import atomic_write_text
from crn_repro.errors import CrnError

REAL = "real"  # the model name of the dataset's own images in a study
RESPONSE_COLUMNS: tuple[str, ...] = (
    "source",  # "web" | "mturk" (people) | "simulated-web" | "simulated-mturk" (observer models)
    "participant",  # web participant id ("sim-..." when simulated) or MTurk WorkerId
    "job",
    "trial",  # index in the job
    "kind",  # "test" | "sentinel"
    "layout",  # validation frame stem: both images of a pair show it
    "left_model",
    "right_model",
    "chosen_side",  # "left" | "right"
    "chosen_model",
    "duration_ms",  # target presentation time; empty for unlimited time
    "measured_ms",  # measured on-screen duration (requestAnimationFrame); empty where not measured
    "response_ms",  # stimulus onset to answer, where known
    "answered_utc",
)
HUMAN_SOURCES = ("web", "mturk")
SIMULATED_SOURCES = ("simulated-web", "simulated-mturk")
SOURCES = HUMAN_SOURCES + SIMULATED_SOURCES
SIDES = ("left", "right")


def is_simulated(source: pd.Series) -> pd.Series:
    """Which records come from simulated participants (by their ``source``)."""
    return source.astype(str).isin(SIMULATED_SOURCES)


def empty_responses() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in RESPONSE_COLUMNS})


def check_responses(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate canonical records (columns, sources, sides, chosen model); returns them with typed
    numbers. Raises CrnError naming ``where``."""
    missing = [c for c in RESPONSE_COLUMNS if c not in df.columns]
    if missing:
        raise CrnError(f"{where}: not canonical study responses, missing columns {', '.join(missing)}")
    df = df.loc[:, list(RESPONSE_COLUMNS)].copy()
    for column, allowed in (("source", SOURCES), ("chosen_side", SIDES), ("kind", ("test", "sentinel"))):
        bad = df[~df[column].isin(allowed)]
        if len(bad):
            raise CrnError(f"{where}: row {bad.index[0]}: {column} {bad[column].iloc[0]!r} is not one of {', '.join(allowed)}")
    chosen = df.left_model.where(df.chosen_side == "left", df.right_model)
    if len(df) and not (chosen == df.chosen_model).all():
        row = df.index[(chosen != df.chosen_model).to_numpy()][0]
        raise CrnError(f"{where}: row {row}: chosen_model disagrees with chosen_side")
    for column in ("trial", "duration_ms", "measured_ms", "response_ms"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["trial"] = df["trial"].astype(int)
    for column in ("participant", "job", "layout"):
        df[column] = df[column].astype(str)
    return df.reset_index(drop=True)


def write_responses_csv(df: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    df.loc[:, list(RESPONSE_COLUMNS)].to_csv(buffer, index=False)
    atomic_write_text(Path(path), buffer.getvalue())
