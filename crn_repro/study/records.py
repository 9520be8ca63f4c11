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

from crn_repro.files import atomic_write_text, read_table
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
# crn-repro-study/2 (minimal acceptance by study-web, to be reconciled with study-stats): the web app's
# records also carry these; kept where present. Hype trials (one image): left_model/left_sha256 describe
# the image, right_* are empty, chosen_side is "real" | "fake", chosen_model is the image's model when it
# was called real (else empty). Practice answers have kind "practice" and are never analysed.
EXTRA_COLUMNS: tuple[str, ...] = ("frame_ms", "left_sha256", "right_sha256", "prolific_pid", "prolific_study_id",
                                  "prolific_session_id")
KINDS = ("test", "sentinel", "practice")
HYPE_SIDES = ("real", "fake")
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
    df = df.loc[:, list(RESPONSE_COLUMNS) + [c for c in EXTRA_COLUMNS if c in df.columns]].copy()
    for column, allowed in (("source", SOURCES), ("chosen_side", SIDES + HYPE_SIDES), ("kind", KINDS)):
        bad = df[~df[column].isin(allowed)]
        if len(bad):
            raise CrnError(f"{where}: row {bad.index[0]}: {column} {bad[column].iloc[0]!r} is not one of {', '.join(allowed)}")
    chosen = df.left_model.where(df.chosen_side.isin(("left", "real")), df.right_model)
    agree = (chosen == df.chosen_model) | (chosen.isna() & df.chosen_model.isna())
    if len(df) and not agree.all():
        row = df.index[(~agree).to_numpy()][0]
        raise CrnError(f"{where}: row {row}: chosen_model disagrees with chosen_side")
    for column in ("trial", "duration_ms", "measured_ms", "response_ms", "frame_ms"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column], errors="coerce")
    df["trial"] = df["trial"].astype(int)
    for column in ("participant", "job", "layout"):
        df[column] = df[column].astype(str)
    return df.reset_index(drop=True)


def read_responses_csv(path: Path) -> pd.DataFrame:
    """Canonical records from a CSV (e.g. ``<study>/analysis/responses.csv``)."""
    df = read_table(path, missing="responses file not found", fix="export the responses again (or fix the file)", dtype={"participant": str, "job": str, "layout": str})
    return check_responses(df, str(path))


def write_responses_csv(df: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    df.loc[:, list(RESPONSE_COLUMNS)].to_csv(buffer, index=False)
    atomic_write_text(Path(path), buffer.getvalue())
