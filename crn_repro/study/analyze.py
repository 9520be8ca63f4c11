"""`crn-repro study analyze` (paper Sec. 5.1, Table 1, Fig. 3; docs/facts.md §6): from the answers of
web participants and MTurk workers to the numbers the paper reports.

1. Gather canonical records from ``<study>/responses.sqlite`` (the web app) and MTurk batch results.
   Simulated participants (sources "simulated-web", "simulated-mturk") never pass as people: where
   any real answers exist the simulated ones are dropped (and the CLI says so); where only simulated
   answers exist they are analysed, and ``judgments.csv``'s ``source`` column says so, which
   ``evaluate`` turns into the label "simulated participants (...), not human judgments".
2. Exclude inattentive participants: a participant (per source) whose fraction of sentinels right
   is below ``study.min_sentinel_accuracy`` (default 1.0: all of them), or who answered no
   sentinel, is excluded with all their answers.
3. Leave out mistimed trials: a timed test trial of an included participant whose measured on-screen
   time (``measured_ms``) differs from its target by more than ``study.timing_tolerance_ms``, or was
   not measured, did not show what Fig. 3's duration says. Sentinels are kept: they test attention,
   and a frame more or less of a 4 s pair does not change that (dropping one could also spare a
   participant the sentinel check). Unlimited-time trials have no target and are never left out.
4. For each comparison (pair type, and duration in the timed design): the preference rate of the
   first model (``judgments.pair_order``: real, then crn), its Wilson interval, the exact binomial
   p against 50%, and 95% cluster-bootstrap intervals resampling workers and resampling images.

Writes ``<study>/analysis/``: ``responses.csv`` (every record, simulated ones included and labelled by
their source), ``exclusions.csv``, ``mistimed.csv`` (the trials left out in step 3, and why),
``judgments.csv`` (the other test trials of included participants, the input of
``evaluate.human_judgments``), ``summary.csv`` (with a ``mistimed`` count per comparison) and
``time_curves.csv`` (the timed rows).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from crn_repro.files import atomic_write_text
from crn_repro.errors import CrnError
from crn_repro.judgments import judgment_summary, pair_order
from crn_repro.study.manifest import load_manifest
from crn_repro.study.mturk import import_results
from crn_repro.study.records import (
    REAL,
    RESPONSE_COLUMNS,
    check_responses,
    is_simulated,
    write_responses_csv,
)

EXCLUSION_COLUMNS = ["source", "participant", "sentinels", "sentinels_right", "accuracy", "test_judgments", "excluded", "reason"]
MISTIMED_COLUMNS = ["source", "participant", "job", "trial", "layout", "left_model", "right_model", "duration_ms",
                    "measured_ms", "error_ms", "reason"]
JUDGMENT_COLUMNS = ["model_a", "model_b", "winner", "duration_ms", "participant", "layout", "source", "job", "measured_ms"]
SUMMARY_COLUMNS = ["first", "second", "duration_ms", "wins", "n", "rate", "ci_low", "ci_high", "p_value",
                   "boot_workers_low", "boot_workers_high", "boot_images_low", "boot_images_high", "participants", "layouts",
                   "mistimed"]
_TRIAL_KEY = ["source", "participant", "job", "trial"]


def gather_responses(study_dir: Path, mturk_csvs: list[Path] = (), include_web: bool = True) -> pd.DataFrame:
    """Every canonical record of the study: the web app's database and the given MTurk results."""
    study_dir = Path(study_dir)
    load_manifest(study_dir)
    frames = []
    if include_web and (study_dir / "responses.sqlite").exists():
        from crn_repro.study.store import read_responses

        frames.append(read_responses(study_dir))
    if mturk_csvs:
        frames.append(import_results(study_dir, list(mturk_csvs)))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise CrnError(f"{study_dir}: no responses yet; collect some with `crn-repro study serve` or pass --mturk results.csv")
    return check_responses(pd.concat(frames, ignore_index=True), str(study_dir))


def real_or_simulated(responses: pd.DataFrame) -> tuple[pd.DataFrame, bool, str]:
    """The records to analyse: the real participants' where there are any (simulated ones dropped),
    else the simulated ones. Returns them, whether they are simulated, and a one-line note (or "")."""
    simulated = is_simulated(responses.source)
    if not simulated.any():
        return responses, False, ""
    sim = responses[simulated]
    who = f"{len(sim)} answers of {sim[['source', 'participant']].drop_duplicates().shape[0]} simulated participants"
    if simulated.all():
        return responses, True, (f"only simulated participants answered ({who}): analysed as simulated, "
                                 "labelled so in judgments.csv, never as human judgments")
    return (responses[~simulated].reset_index(drop=True), False,
            f"dropped {who} (`study simulate`): real participants answered, and only their answers are analysed")


def sentinel_exclusions(responses: pd.DataFrame, min_accuracy: float) -> pd.DataFrame:
    """One row per participant (per source): sentinels answered and right, and whether excluded."""
    rows = []
    for (source, participant), g in responses.groupby(["source", "participant"], sort=True):
        sentinels = g[g.kind == "sentinel"]
        right = int((sentinels.chosen_model == REAL).sum())
        accuracy = right / len(sentinels) if len(sentinels) else float("nan")
        reason = ""
        if not len(sentinels):
            reason = "answered no sentinel"
        elif accuracy < min_accuracy - 1e-12:
            reason = f"sentinel accuracy {accuracy:.0%} < {min_accuracy:.0%}"
        rows.append({"source": source, "participant": participant, "sentinels": len(sentinels), "sentinels_right": right,
                     "accuracy": accuracy, "test_judgments": int((g.kind == "test").sum()), "excluded": bool(reason),
                     "reason": reason})
    return pd.DataFrame(rows, columns=EXCLUSION_COLUMNS)


def _included_tests(responses: pd.DataFrame, exclusions: pd.DataFrame) -> pd.DataFrame:
    """The test trials of the participants ``exclusions`` does not exclude."""
    excluded = set(map(tuple, exclusions.loc[exclusions.excluded, ["source", "participant"]].to_numpy()))
    return responses[(responses.kind == "test") & ~responses[["source", "participant"]].apply(tuple, axis=1).isin(excluded)]


def mistimed_trials(responses: pd.DataFrame, exclusions: pd.DataFrame, tolerance_ms: float) -> pd.DataFrame:
    """Timed test trials of the included participants whose measured on-screen time is more than
    ``tolerance_ms`` from the target, or was not measured: one row each, with ``error_ms`` (measured -
    target) and the reason. Sentinels and unlimited-time trials are never listed."""
    tests = _included_tests(responses, exclusions)
    timed = tests[tests.duration_ms.notna()]
    timed = timed.assign(error_ms=timed.measured_ms - timed.duration_ms)
    off = timed[timed.error_ms.isna() | (timed.error_ms.abs() > tolerance_ms)]
    reason = [("no measured on-screen time" if pd.isna(e) else f"on screen {e:+.1f} ms from the target (tolerance {tolerance_ms:g} ms)")
              for e in off.error_ms]
    return off.assign(reason=reason).loc[:, MISTIMED_COLUMNS].reset_index(drop=True)


def to_judgments(responses: pd.DataFrame, exclusions: pd.DataFrame, mistimed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test trials of the included participants, less the ``mistimed`` ones, as pairwise judgments
    (participant = "source:id")."""
    keep = _included_tests(responses, exclusions)
    if mistimed is not None and len(mistimed):
        left_out = set(map(tuple, mistimed[_TRIAL_KEY].astype(str).to_numpy()))
        keep = keep[~keep[_TRIAL_KEY].astype(str).apply(tuple, axis=1).isin(left_out)]
    return pd.DataFrame({
        "model_a": keep.left_model, "model_b": keep.right_model, "winner": keep.chosen_model,
        "duration_ms": keep.duration_ms, "participant": keep.source + ":" + keep.participant,
        "layout": keep.layout, "source": keep.source, "job": keep.job, "measured_ms": keep.measured_ms,
    }, columns=JUDGMENT_COLUMNS).reset_index(drop=True)


def _cell(model_a: pd.Series, model_b: pd.Series, duration_ms: pd.Series) -> pd.Series:
    """(first, second, duration or -1 for unlimited time) of each trial: its comparison."""
    frame = pd.DataFrame({"a": model_a.to_numpy(), "b": model_b.to_numpy(), "d": duration_ms.fillna(-1).to_numpy()})
    return frame.apply(lambda r: (*pair_order(r.a, r.b), int(r.d)), axis=1)


def summarize(judgments: pd.DataFrame, num_resamples: int, seed: int, mistimed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per comparison (pair type x duration; unlimited time has no duration) as ``judgments.judgment_summary``,
    with the number of its trials left out as ``mistimed`` (a comparison whose every trial was left out
    still gets a row, with n = 0)."""
    mistimed = mistimed if mistimed is not None else pd.DataFrame(columns=MISTIMED_COLUMNS)
    cells = _cell(judgments.model_a, judgments.model_b, judgments.duration_ms) if len(judgments) else pd.Series(dtype=object)
    left_out = (_cell(mistimed.left_model, mistimed.right_model, mistimed.duration_ms).value_counts()
                if len(mistimed) else pd.Series(dtype=int))
    rows = []
    for first, second, duration in sorted(set(cells) | set(left_out.index), key=lambda c: (c[0], c[1], c[2])):
        g = judgments[[cell == (first, second, duration) for cell in cells]] if len(judgments) else judgments
        rows.append(dict(first=first, second=second, duration_ms=float("nan") if duration < 0 else duration,
                         **judgment_summary(g, first, num_resamples, seed),
                         participants=g.participant.nunique(), layouts=g.layout.nunique(),
                         mistimed=int(left_out.get((first, second, duration), 0))))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())


def analyze_study(
    study_dir: Path, mturk_csvs: list[Path] = (), include_web: bool = True, min_accuracy: float = 1.0,
    num_resamples: int = 1000, seed: int = 0, timing_tolerance_ms: float = 17.0,
) -> dict:
    """Run the analysis and write ``<study>/analysis/*.csv``; returns the tables and paths, the analysed
    records (``analysed``: real participants' if any, else simulated ones), ``simulated`` (whether
    they are simulated), ``note`` (a line saying what happened to simulated answers, or "") and
    ``mistimed`` (the timed test trials left out, ``mistimed_trials``). The CLI passes every setting
    from params.yaml's ``study`` section; the defaults here serve tests."""
    study_dir = Path(study_dir)
    responses = gather_responses(study_dir, mturk_csvs, include_web)
    analysed, simulated, note = real_or_simulated(responses)
    exclusions = sentinel_exclusions(analysed, min_accuracy)
    mistimed = mistimed_trials(analysed, exclusions, timing_tolerance_ms)
    judgments = to_judgments(analysed, exclusions, mistimed)
    summary = summarize(judgments, num_resamples, seed, mistimed)
    out = study_dir / "analysis"
    paths = {name: out / f"{name}.csv" for name in ("responses", "exclusions", "mistimed", "judgments", "summary", "time_curves")}
    write_responses_csv(responses.loc[:, list(RESPONSE_COLUMNS)], paths["responses"])
    _write_csv(exclusions, paths["exclusions"])
    _write_csv(mistimed, paths["mistimed"])
    _write_csv(judgments, paths["judgments"])
    _write_csv(summary, paths["summary"])
    _write_csv(summary.dropna(subset=["duration_ms"]).drop(columns=["participants", "layouts"]), paths["time_curves"])
    return {"responses": responses, "analysed": analysed, "simulated": simulated, "note": note,
            "exclusions": exclusions, "mistimed": mistimed, "judgments": judgments, "summary": summary, "paths": paths}
