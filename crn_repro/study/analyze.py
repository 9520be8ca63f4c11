"""`crn-repro study analyze` (paper Sec. 5.1, Table 1, Fig. 3; docs/facts.md §6): from the answers of
web participants and MTurk workers to the numbers the paper reports, and the ones reviewers now ask for.

1. Gather canonical records from ``<study>/responses.sqlite`` (the web app) and MTurk batch results,
   each answer bound to the SHA-256s of the images it judged (taken from the manifest where the
   record has none; a record whose hash disagrees with the manifest is refused). Practice answers
   are kept in ``responses.csv`` and never analysed. Simulated participants (sources
   "simulated-web", "simulated-mturk") never pass as people: where any real answers exist the
   simulated ones are dropped (and the CLI says so); where only simulated answers exist they are
   analysed, and ``judgments.csv``'s ``source`` column says so.
2. Exclude inattentive participants: a participant (per source) whose fraction of sentinels right
   is below ``study.min_sentinel_accuracy``, or who answered no sentinel, is excluded with all their
   answers; so is one whose Prolific submission was returned (``--prolific``: a withdrawal).
3. Leave out mistimed trials: a timed test trial of an included participant whose measured on-screen
   time differs from its target by more than ``study.timing_tolerance_frames`` frames of the participant's display, or was not measured.
   Sentinels are kept: they test attention. Unlimited-time trials have no target.
4. For each comparison (pair type, and duration in the timed design): the preference rate of the
   first model (``judgments.pair_order``: real, then crn), its Wilson interval, the exact binomial
   p against 50%, 95% cluster-bootstrap intervals resampling workers and resampling images, the
   crossed bootstrap resampling both, and the logistic mixed model with crossed random intercepts
   (``judgments.MIXED_FORMULA``): odds ratio, preference probability, Wald p, and the participant
   and layout standard deviations; ``significant`` at ``study.alpha``.
5. A Bradley-Terry ranking of real images and every model from all analysed pairs (test pairs and
   sentinels of included participants: ``judgments.csv`` holds both, with their ``kind``), with
   bootstrap intervals over participants (``judgments.ranking``); a comparison graph that does not
   connect every item gives no ranking and says why.
6. HYPE studies: per model the fool rate (synthesized images called real) with the same intervals,
   the error on real images, and the HYPE-infinity score (all errors) with a bootstrap interval.
7. ``--prolific EXPORT``: ``payments.csv`` (``prolific.payments``), apart from the exclusions.
8. Pre-registration: whether the analysis ran as ``preregistration.json`` says (``registration``).

Writes ``<study>/analysis/`` whole (swapped in, never half-written): ``responses.csv``,
``exclusions.csv``, ``mistimed.csv``, ``judgments.csv`` (the input of ``evaluate.human_judgments``),
``summary.csv``, ``time_curves.csv``, ``ranking.csv``, ``hype.csv`` (HYPE), ``payments.csv``
(Prolific) and ``registration.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from crn_repro import stats
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_text, staged_dir
from crn_repro.judgments import MIXED_COLUMNS, judgment_summary, pair_order, ranking
from crn_repro.study.manifest import MANIFEST, is_hype, load_manifest, trials_by_key
from crn_repro.study.mturk import import_results
from crn_repro.study.records import (
    REAL,
    RESPONSE_COLUMNS,
    check_responses,
    is_simulated,
    write_responses_csv,
)

EXCLUSION_COLUMNS = ["source", "participant", "prolific_pid", "prolific_status", "sentinels", "sentinels_right", "accuracy",
                     "test_judgments", "excluded", "reason"]
MISTIMED_COLUMNS = ["source", "participant", "job", "trial", "layout", "left_model", "right_model", "duration_ms",
                    "measured_ms", "frame_ms", "error_ms", "reason"]
JUDGMENT_COLUMNS = ["model_a", "model_b", "winner", "duration_ms", "participant", "layout", "source", "job", "measured_ms",
                    "kind", "sha256_a", "sha256_b", "source_a", "source_b", "study_build"]
SUMMARY_COLUMNS = ["first", "second", "duration_ms", "wins", "n", "rate", "ci_low", "ci_high", "p_value",
                   "boot_workers_low", "boot_workers_high", "boot_images_low", "boot_images_high", *MIXED_COLUMNS,
                   "significant", "participants", "layouts", "mistimed"]
HYPE_COLUMNS = ["model", "fakes", "fooled", "fool_rate", "ci_low", "ci_high", "boot_workers_low", "boot_workers_high",
                "boot_images_low", "boot_images_high", *MIXED_COLUMNS, "reals", "real_errors", "real_error_rate", "hype_score",
                "hype_low", "hype_high", "participants"]
_TRIAL_KEY = ["source", "participant", "job", "trial"]


def study_build(study_dir: Path, manifest: dict) -> str:
    """Which build of the study a number comes from: ``<study_id>@<created_utc>/<manifest SHA-256, 12 digits>``."""
    digest = hashlib.sha256((Path(study_dir) / MANIFEST).read_bytes()).hexdigest()[:12]
    return f"{manifest['study_id']}@{manifest['created_utc']}/{digest}"


def bind_images(responses: pd.DataFrame, manifest: dict, where: str) -> pd.DataFrame:
    """Every record with the SHA-256s of the images its trial showed (the manifest's, where the record
    has none); CrnError where a record's hash is not the manifest's."""
    trials = trials_by_key(manifest)
    hype = is_hype(manifest)
    expected = {"left_sha256": [], "right_sha256": []}
    for job, index in zip(responses.job, responses.trial):
        trial = trials.get((job, int(index)))
        if trial is None:
            raise CrnError(f"{where}: an answer to {job} trial {index}, which manifest.json does not have")
        expected["left_sha256"].append(trial["image" if hype else "left"]["sha256"])
        expected["right_sha256"].append(None if hype else trial["right"]["sha256"])
    out = responses.copy()
    for column, values in expected.items():
        values = pd.Series(values, index=out.index, dtype=object)
        recorded = out[column]
        clash = recorded.notna() & (recorded != values)
        if clash.any():
            row = out[clash].iloc[0]
            raise CrnError(f"{where}: {row.job} trial {row.trial} ({row.source}:{row.participant}) judged an image with "
                           f"{column} {row[column][:12]}..., which is not this manifest's; the answers belong to another build")
        out[column] = recorded.where(recorded.notna(), values)
    return out


def gather_responses(study_dir: Path, mturk_csvs: list[Path] = (), include_web: bool = True) -> pd.DataFrame:
    """Every canonical record of the study: the web app's database and the given MTurk results, bound
    to their images (``bind_images``)."""
    study_dir = Path(study_dir)
    manifest = load_manifest(study_dir)
    frames = []
    if include_web and (study_dir / "responses.sqlite").exists():
        from crn_repro.study.store import read_responses

        frames.append(read_responses(study_dir))
    if mturk_csvs:
        frames.append(import_results(study_dir, list(mturk_csvs)))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise CrnError(f"{study_dir}: no responses yet; collect some with `crn-repro study serve` or pass --mturk results.csv")
    responses = check_responses(pd.concat(frames, ignore_index=True), str(study_dir))
    return bind_images(responses, manifest, str(study_dir))


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


def _sentinel_right(sentinels: pd.DataFrame) -> pd.Series:
    """Whether each sentinel was answered right: the real image of a pair, "fake" for a HYPE image."""
    hype = sentinels.chosen_side.isin(("real", "fake"))
    return (hype & (sentinels.chosen_side == "fake")) | (~hype & (sentinels.chosen_model == REAL))


def sentinel_exclusions(responses: pd.DataFrame, min_accuracy: float, withdrawn: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per participant (per source): sentinels answered and right, and whether excluded (by
    their sentinels, or because ``withdrawn`` lists their PROLIFIC_PID: a returned submission)."""
    withdrawn = withdrawn or {}
    rows = []
    for (source, participant), g in responses.groupby(["source", "participant"], sort=True):
        sentinels = g[g.kind == "sentinel"]
        right = int(_sentinel_right(sentinels).sum())
        accuracy = right / len(sentinels) if len(sentinels) else float("nan")
        pid = next((p for p in g.prolific_pid if isinstance(p, str)), "")
        reason = ""
        if pid in withdrawn:
            reason = f"Prolific submission {withdrawn[pid]} (withdrawn)"
        elif not len(sentinels):
            reason = "answered no sentinel"
        elif accuracy < min_accuracy - 1e-12:
            reason = f"sentinel accuracy {accuracy:.0%} < {min_accuracy:.0%}"
        rows.append({"source": source, "participant": participant, "prolific_pid": pid, "prolific_status": withdrawn.get(pid, ""),
                     "sentinels": len(sentinels), "sentinels_right": right, "accuracy": accuracy,
                     "test_judgments": int((g.kind == "test").sum()), "excluded": bool(reason), "reason": reason})
    return pd.DataFrame(rows, columns=EXCLUSION_COLUMNS)


def _included(responses: pd.DataFrame, exclusions: pd.DataFrame, kinds: tuple[str, ...] = ("test",)) -> pd.DataFrame:
    """The trials of ``kinds`` of the participants ``exclusions`` does not exclude."""
    excluded = set(map(tuple, exclusions.loc[exclusions.excluded, ["source", "participant"]].to_numpy()))
    keep = responses.kind.isin(kinds) & ~responses[["source", "participant"]].apply(tuple, axis=1).isin(excluded)
    return responses[keep]


ASSUMED_FRAME_MS = 1000 / 60  # the frame interval of an answer that recorded none (older HITs): a 60 Hz display


def mistimed_trials(responses: pd.DataFrame, exclusions: pd.DataFrame, tolerance_frames: float) -> pd.DataFrame:
    """Timed test trials of the included participants whose measured on-screen time is more than
    ``tolerance_frames`` frames of their own display (the ``frame_ms`` the page measured with the answer;
    60 Hz where none was recorded) from the target, or was not measured: one row each, with ``error_ms``
    (measured - target), ``frame_ms`` and the reason. Sentinels, practice and unlimited-time trials are
    never listed."""
    tests = _included(responses, exclusions)
    timed = tests[tests.duration_ms.notna()]
    frame = (timed.frame_ms if "frame_ms" in timed.columns else pd.Series(float("nan"), index=timed.index)).astype(float)
    timed = timed.assign(error_ms=timed.measured_ms - timed.duration_ms, frame_ms=frame)
    tolerance = tolerance_frames * frame.fillna(ASSUMED_FRAME_MS)
    off = timed[timed.error_ms.isna() | (timed.error_ms.abs() > tolerance)]
    reason = [("no measured on-screen time" if pd.isna(e) else
               f"on screen {e:+.1f} ms from the target (tolerance {tolerance_frames:g} frame"
               f"{'' if tolerance_frames == 1 else 's'} = {tolerance_frames * (ASSUMED_FRAME_MS if pd.isna(f) else f):.1f} ms"
               f"{' at an assumed 60 Hz' if pd.isna(f) else ''})")
              for e, f in zip(off.error_ms, off.frame_ms)]
    return off.assign(reason=reason).loc[:, MISTIMED_COLUMNS].reset_index(drop=True)


def _without(rows: pd.DataFrame, mistimed: pd.DataFrame | None) -> pd.DataFrame:
    if mistimed is None or not len(mistimed):
        return rows
    left_out = set(map(tuple, mistimed[_TRIAL_KEY].astype(str).to_numpy()))
    return rows[~rows[_TRIAL_KEY].astype(str).apply(tuple, axis=1).isin(left_out)]


def to_judgments(responses: pd.DataFrame, exclusions: pd.DataFrame, mistimed: pd.DataFrame | None = None,
                 manifest: dict | None = None, build: str = "") -> pd.DataFrame:
    """Pair test and sentinel trials of the included participants, less the ``mistimed`` ones, as
    pairwise judgments (participant = "source:id", ``kind`` test or sentinel: Table 1 and the time
    curves count the tests, the ranking both), each with the SHA-256s of the two images, of their
    sources (from the ``manifest``) and the study build."""
    keep = _without(_included(responses, exclusions, ("test", "sentinel")), mistimed)
    keep = keep[keep.chosen_side.isin(("left", "right"))]
    sources = (manifest or {}).get("sources", {})
    return pd.DataFrame({
        "model_a": keep.left_model, "model_b": keep.right_model, "winner": keep.chosen_model,
        "duration_ms": keep.duration_ms, "participant": keep.source + ":" + keep.participant,
        "layout": keep.layout, "source": keep.source, "job": keep.job, "measured_ms": keep.measured_ms, "kind": keep.kind,
        "sha256_a": keep.left_sha256, "sha256_b": keep.right_sha256,
        "source_a": keep.left_sha256.map(sources), "source_b": keep.right_sha256.map(sources), "study_build": build,
    }, columns=JUDGMENT_COLUMNS).reset_index(drop=True)


def _cell(model_a: pd.Series, model_b: pd.Series, duration_ms: pd.Series) -> pd.Series:
    """(first, second, duration or -1 for unlimited time) of each trial: its comparison."""
    frame = pd.DataFrame({"a": model_a.to_numpy(), "b": model_b.to_numpy(), "d": duration_ms.fillna(-1).to_numpy()})
    return frame.apply(lambda r: (*pair_order(r.a, r.b), int(r.d)), axis=1)


def significant(row: dict, alpha: float) -> bool:
    """Whether a comparison is significant at ``alpha``: by the mixed model's Wald p, or, where the model
    has no finite estimate (every judgment one way), by the exact binomial p."""
    p = row["mixed_p_value"] if row["mixed_p_value"] == row["mixed_p_value"] else row["p_value"]
    return bool(p == p and p < alpha)


def summarize(judgments: pd.DataFrame, num_resamples: int, seed: int, mistimed: pd.DataFrame | None = None,
              alpha: float = 1e-3) -> pd.DataFrame:
    """Per comparison (pair type x duration; unlimited time has no duration) as ``judgments.judgment_summary``,
    with ``significant`` at ``alpha`` and the number of its trials left out as ``mistimed`` (a comparison
    whose every trial was left out still gets a row, with n = 0)."""
    mistimed = mistimed if mistimed is not None else pd.DataFrame(columns=MISTIMED_COLUMNS)
    if "kind" in judgments.columns:
        judgments = judgments[judgments.kind == "test"]
    cells = _cell(judgments.model_a, judgments.model_b, judgments.duration_ms) if len(judgments) else pd.Series(dtype=object)
    left_out = (_cell(mistimed.left_model, mistimed.right_model, mistimed.duration_ms).value_counts()
                if len(mistimed) else pd.Series(dtype=int))
    rows = []
    for first, second, duration in sorted(set(cells) | set(left_out.index), key=lambda c: (c[0], c[1], c[2])):
        g = judgments[[cell == (first, second, duration) for cell in cells]] if len(judgments) else judgments
        row = dict(first=first, second=second, duration_ms=float("nan") if duration < 0 else duration,
                   **judgment_summary(g, first, num_resamples, seed),
                   participants=g.participant.nunique(), layouts=g.layout.nunique(),
                   mistimed=int(left_out.get((first, second, duration), 0)))
        rows.append(dict(row, significant=significant(row, alpha)))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def hype_summary(responses: pd.DataFrame, exclusions: pd.DataFrame, manifest: dict, num_resamples: int, seed: int) -> pd.DataFrame:
    """HYPE-infinity per model: the fool rate (its images called real) as ``judgment_summary``, the
    error on the real images of its jobs, and the HYPE score (all errors) with a bootstrap interval
    over participants."""
    tests = _included(responses, exclusions)
    model_of_job = {job["job"]: next(t["image"]["model"] for t in job["trials"] if t["kind"] == "test" and t["truth"] == "fake")
                    for job in manifest["jobs"]}
    rows = []
    for model in sorted(set(model_of_job.values())):
        mine = tests[tests.job.map(model_of_job) == model]
        fakes, reals = mine[mine.left_model != REAL], mine[mine.left_model == REAL]
        fooled = pd.DataFrame({"winner": fakes.chosen_side, "participant": fakes.source + ":" + fakes.participant,
                               "layout": fakes.layout})
        summary = judgment_summary(fooled, "real", num_resamples, seed)
        errors = np.concatenate([(fakes.chosen_side == "real").to_numpy(float), (reals.chosen_side == "fake").to_numpy(float)])
        people = np.concatenate([(fakes.source + ":" + fakes.participant).to_numpy(), (reals.source + ":" + reals.participant).to_numpy()])
        low, high = stats.cluster_bootstrap_ci(errors, people, num_resamples=num_resamples, seed=seed) if len(errors) else (np.nan,) * 2
        rows.append({"model": model, "fakes": summary["n"], "fooled": summary["wins"], "fool_rate": summary["rate"],
                     **{k: summary[k] for k in ("ci_low", "ci_high", "boot_workers_low", "boot_workers_high", "boot_images_low",
                                                "boot_images_high", *MIXED_COLUMNS)},
                     "reals": len(reals), "real_errors": int((reals.chosen_side == "fake").sum()),
                     "real_error_rate": float((reals.chosen_side == "fake").mean()) if len(reals) else np.nan,
                     "hype_score": float(errors.mean()) if len(errors) else np.nan, "hype_low": low, "hype_high": high,
                     "participants": len(set(people))})
    return pd.DataFrame(rows, columns=HYPE_COLUMNS)


def _csv(df: pd.DataFrame) -> str:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    return buffer.getvalue()


def _tables(study_dir: Path, manifest: dict, analysed: pd.DataFrame, exclusions: pd.DataFrame, num_resamples: int, seed: int,
            timing_tolerance_frames: float, alpha: float) -> tuple[dict, str]:
    """The analysis tables of the included answers; and a note where no ranking could be made."""
    mistimed = mistimed_trials(analysed, exclusions, timing_tolerance_frames)
    judgments = to_judgments(analysed, exclusions, mistimed, manifest, study_build(study_dir, manifest))
    summary = summarize(judgments, num_resamples, seed, mistimed, alpha)
    tables = {"exclusions": exclusions, "mistimed": mistimed, "judgments": judgments, "summary": summary,
              "time_curves": summary.dropna(subset=["duration_ms"]).drop(columns=["participants", "layouts"])}
    note = ""
    if is_hype(manifest):
        tables["hype"] = hype_summary(analysed, exclusions, manifest, num_resamples, seed)
        note = "no Bradley-Terry ranking: the hype design shows no pairs (hype.csv has each model's fool rate)"
    else:
        try:
            tables["ranking"] = ranking(judgments, num_resamples, seed) if len(judgments) else None
        except ValueError as error:
            note = str(error)
        if tables.get("ranking") is None:
            tables.pop("ranking", None)
            note = note or "no Bradley-Terry ranking: no pairs to rank"
    return tables, note


def analyze_study(
    study_dir: Path, mturk_csvs: list[Path] = (), include_web: bool = True, min_accuracy: float = 1.0,
    num_resamples: int = 1000, seed: int = 0, timing_tolerance_frames: float = 1.0, *, alpha: float = 1e-3,
    prolific_csv: Path | None = None, reject_min_failed_sentinels: int = 2, study_params: dict | None = None,
) -> dict:
    """Run the analysis and write ``<study>/analysis/`` whole; returns the tables (``exclusions``,
    ``mistimed``, ``judgments``, ``summary``, ``time_curves``, and where made ``ranking``, ``hype``,
    ``payments``), ``paths``, the records (``responses``; ``analysed``: real participants' if any, else
    simulated ones), ``simulated``, ``note`` (what happened to simulated answers, or ""),
    ``ranking_note`` (why there is no ranking, or ""), ``registration`` (``registration.check_registration``
    with ``study_params``, the ``study`` section of the params) and ``build`` (``study_build``). The CLI
    passes every setting from params.yaml's ``study`` section; the defaults here serve tests."""
    from crn_repro.study import prolific, registration

    study_dir = Path(study_dir)
    manifest = load_manifest(study_dir)
    export = prolific.read_prolific_export(prolific_csv) if prolific_csv else None  # a bad export stops before any work
    responses = gather_responses(study_dir, mturk_csvs, include_web)
    analysed, simulated, note = real_or_simulated(responses)
    exclusions = sentinel_exclusions(analysed, min_accuracy, prolific.withdrawn(export) if export is not None else None)
    tables, ranking_note = _tables(study_dir, manifest, analysed, exclusions, num_resamples, seed, timing_tolerance_frames, alpha)
    people = responses[~is_simulated(responses.source)]
    if export is not None:
        tables["payments"] = prolific.payments(export, people, manifest, reject_min_failed_sentinels)
    checked = registration.check_registration(study_dir, study_params, people.answered_utc)
    out = study_dir / "analysis"
    paths = {name: out / f"{name}.csv" for name in ("responses", *tables)}
    paths["registration"] = out / "registration.json"
    with staged_dir(out) as tmp:  # every file of one analysis, or the previous analysis untouched
        write_responses_csv(responses.loc[:, list(RESPONSE_COLUMNS)], tmp / "responses.csv")
        for name, table in tables.items():
            atomic_write_text(tmp / f"{name}.csv", _csv(table))
        atomic_write_text(tmp / "registration.json", json.dumps(checked, indent=2) + "\n")
    return {"responses": responses, "analysed": analysed, "simulated": simulated, "note": note, "ranking_note": ranking_note,
            "registration": checked, "build": study_build(study_dir, manifest), "paths": paths, **tables}


# --------------------------------------------------------------------------------------------
# What `crn-repro study analyze` prints
# --------------------------------------------------------------------------------------------


def _interval(low, high, percent: bool = True) -> str:
    """"a-b" (n/a: no judgments, or too few workers or images to bootstrap)."""
    if pd.isna(low):
        return "n/a"
    return f"{low:.0%}-{high:.0%}" if percent else f"{low:.2g}-{high:.2g}"


def summary_table(summary: pd.DataFrame, alpha: float):
    """The comparisons as a rich Table, every column shown."""
    from rich.table import Table

    table = Table("pair", "time", "rate", "Wilson 95%", "workers 95%", "images 95%", "crossed 95%", "mixed model 95%",
                  "odds ratio 95%", "sd participant", "sd layout", "p", "mixed p", f"p < {alpha:g}", "n",
                  title="preference of the first model (bootstraps resample workers, images, both; mixed model: "
                        "crossed random intercepts)")
    for r in summary.itertuples():
        table.add_row(
            f"{r.first} > {r.second}", "-" if pd.isna(r.duration_ms) else f"{int(r.duration_ms)} ms",
            "n/a" if pd.isna(r.rate) else f"{r.rate:.0%}", _interval(r.ci_low, r.ci_high),
            _interval(r.boot_workers_low, r.boot_workers_high), _interval(r.boot_images_low, r.boot_images_high),
            _interval(r.crossed_low, r.crossed_high),
            "n/a" if pd.isna(r.mixed_rate) else f"{r.mixed_rate:.0%} ({_interval(r.mixed_low, r.mixed_high)})",
            "n/a" if pd.isna(r.odds_ratio) else f"{r.odds_ratio:.3g} ({_interval(r.odds_ratio_low, r.odds_ratio_high, False)})",
            "n/a" if pd.isna(r.participant_sd) else f"{r.participant_sd:.2f}",
            "n/a" if pd.isna(r.layout_sd) else f"{r.layout_sd:.2f}",
            "n/a" if pd.isna(r.p_value) else f"{r.p_value:.1g}", "n/a" if pd.isna(r.mixed_p_value) else f"{r.mixed_p_value:.1g}",
            "yes" if r.significant else "no", str(r.n),
        )
    return table


def ranking_table(ranked: pd.DataFrame):
    from rich.table import Table

    table = Table("rank", "item", "strength", "95% (participants)", "rank 95%", "wins", "pairs",
                  title="Bradley-Terry ranking from all analysed pairs (strength: log scale, mean 0)")
    for r in ranked.itertuples():
        table.add_row(str(r.rank), r.item, f"{r.strength:+.2f}",
                      "n/a" if pd.isna(r.strength_low) else f"{r.strength_low:+.2f} to {r.strength_high:+.2f}",
                      "n/a" if pd.isna(r.rank_low) else f"{int(r.rank_low)}-{int(r.rank_high)}", str(r.wins), str(r.comparisons))
    return table


def hype_table(hype: pd.DataFrame):
    from rich.table import Table

    table = Table("model", "fool rate", "Wilson 95%", "workers 95%", "crossed 95%", "mixed model 95%", "real images called fake",
                  "HYPE score 95%", "n", title="HYPE-infinity: synthesized images called real (fool rate), and all errors")
    for r in hype.itertuples():
        table.add_row(r.model, "n/a" if pd.isna(r.fool_rate) else f"{r.fool_rate:.1%}", _interval(r.ci_low, r.ci_high),
                      _interval(r.boot_workers_low, r.boot_workers_high), _interval(r.crossed_low, r.crossed_high),
                      "n/a" if pd.isna(r.mixed_rate) else f"{r.mixed_rate:.0%} ({_interval(r.mixed_low, r.mixed_high)})",
                      "n/a" if pd.isna(r.real_error_rate) else f"{r.real_error_rate:.1%}",
                      "n/a" if pd.isna(r.hype_score) else f"{r.hype_score:.1%} ({_interval(r.hype_low, r.hype_high)})",
                      f"{r.fakes} + {r.reals}")
    return table


def print_whole(console, renderable) -> None:
    """Print a table at its full width, also into a log or pipe (where rich would otherwise cut it to 80
    columns); a terminal keeps its own width."""
    from rich.measure import Measurement

    if console.is_terminal:
        console.print(renderable)
        return
    width = Measurement.get(console, console.options.update_width(100_000), renderable).maximum
    before = console.width
    console.width = max(width, before)  # rich caps print(width=...) at the console's width
    try:
        console.print(renderable)
    finally:
        console.width = before
