"""Pairwise judgments and their statistics (paper Sec. 5.1, Table 1, Fig. 3; docs/facts.md §6): the
one place that turns "which image of a pair won" into preference rates, Wilson intervals, exact
binomial p-values and cluster-bootstrap intervals, for the evaluate stage (Table 1 and Fig. 3 from
human judgments, or from the automatic judge) and for `crn-repro study analyze` alike.

Numbers in, tables out: pandas and ``stats`` only (no torch), so the study tools stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from crn_repro import stats
from crn_repro.errors import CrnError
from crn_repro.files import read_table
from crn_repro.study.records import REAL, is_simulated

BOOTSTRAP_COLUMNS = ["boot_workers_low", "boot_workers_high", "boot_images_low", "boot_images_high"]
# the crossed analyses (docs/facts.md §6): a two-way bootstrap, and the logistic mixed model with crossed
# random intercepts for participant and layout (``stats.crossed_logit``)
MIXED_COLUMNS = ["crossed_low", "crossed_high", "odds_ratio", "odds_ratio_low", "odds_ratio_high", "mixed_rate", "mixed_low",
                 "mixed_high", "mixed_p_value", "participant_sd", "layout_sd"]
MIXED_FORMULA = "first_won ~ 1 + (1 | participant) + (1 | layout)"
TIME_CURVE_COLUMNS = ["first", "second", "duration_ms", "wins", "n", "rate", "ci_low", "ci_high", "p_value", *BOOTSTRAP_COLUMNS,
                      *MIXED_COLUMNS]
PAIR_ORDER = {REAL: 0, "crn": 1}  # Fig. 3 names a pair type "Real > CRN", "CRN > pix2pix": real first, then crn


def pair_order(a: str, b: str) -> tuple[str, str]:
    """The pair (first, second) in display order: real images first, then crn, then by name."""
    return tuple(sorted((a, b), key=lambda m: (PAIR_ORDER.get(m, 2), m)))


def judgment_summary(group: pd.DataFrame, first: str, num_resamples: int = 1000, seed: int = 0, mixed: bool = True) -> dict:
    """One comparison: how often ``first`` won (columns winner, and optionally participant, layout),
    with Wilson interval, exact binomial p and, where the columns exist, 95% cluster-bootstrap
    intervals resampling whole participants (workers) and whole layouts (images); NaN where a column
    is missing or names fewer than ``stats.MIN_BOOTSTRAP_CLUSTERS`` workers (images). The two are
    separate one-way bootstraps, each ignoring the other source of variation. With ``mixed`` and both
    columns, also the crossed analyses (``MIXED_COLUMNS``): the two-way bootstrap resampling
    participants and layouts at once, and the logistic mixed model ``MIXED_FORMULA`` (its odds ratio
    against even odds, the preference probability of a typical participant on a typical layout, both
    with 95% intervals, its Wald p against no preference, and the two standard deviations)."""
    won = (group.winner == first).to_numpy(dtype=float)
    out = {"wins": int(won.sum()), **_summary(int(won.sum()), len(won))}
    clusters = {}
    for column, name in (("participant", "workers"), ("layout", "images")):
        low = high = float("nan")
        if column in group.columns and len(won) and group[column].notna().all():
            clusters[column] = group[column].astype(str).to_numpy()
            low, high = stats.cluster_bootstrap_ci(won, clusters[column], num_resamples=num_resamples, seed=seed)
        out[f"boot_{name}_low"], out[f"boot_{name}_high"] = low, high
    if mixed:
        out.update(_crossed(won, clusters, num_resamples, seed))
    return out


def _crossed(won: np.ndarray, clusters: dict, num_resamples: int, seed: int) -> dict:
    """The ``MIXED_COLUMNS`` of one comparison (NaN without both participant and layout labels)."""
    out = dict.fromkeys(MIXED_COLUMNS, float("nan"))
    if len(clusters) < 2:
        return out
    out["crossed_low"], out["crossed_high"] = stats.crossed_bootstrap_ci(
        won, clusters["participant"], clusters["layout"], num_resamples=num_resamples, seed=seed)
    fit = stats.crossed_logit(won, clusters["participant"], clusters["layout"])
    out.update({key: fit[key] for key in ("odds_ratio", "odds_ratio_low", "odds_ratio_high", "participant_sd", "layout_sd")})
    out.update(mixed_rate=fit["rate"], mixed_low=fit["rate_low"], mixed_high=fit["rate_high"])
    if fit["se"] == fit["se"]:  # not NaN
        out["mixed_p_value"] = float(2 * scipy.stats.norm.sf(abs(fit["log_odds"]) / fit["se"]))
    return out


def time_curves(judgments: pd.DataFrame, num_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paper Fig. 3: for each pair type (``pair_order``: Real > CRN, Real > pix2pix, CRN > pix2pix) and
    exposure time, the fraction of judgments preferring ``first``, as ``judgment_summary``. Needs
    columns model_a, model_b, winner, duration_ms (rows without a duration are skipped)."""
    rows = []
    timed = judgments.dropna(subset=["duration_ms"])
    pair = timed[["model_a", "model_b"]].apply(lambda r: pair_order(r.model_a, r.model_b), axis=1)
    for (first, second), group in timed.groupby(pair):
        for duration, g in group.groupby("duration_ms"):
            rows.append(dict(first=first, second=second, duration_ms=int(duration), **judgment_summary(g, first, num_resamples, seed)))
    return pd.DataFrame(rows, columns=TIME_CURVE_COLUMNS)


PREFERENCE_COLUMNS = ["reference", "baseline", "wins", "source", "n", "rate", "ci_low", "ci_high", "p_value", *BOOTSTRAP_COLUMNS,
                      *MIXED_COLUMNS, "study_build", "dropped"]


def human_source(judgments: pd.DataFrame, paths: list[Path]) -> str:
    """"human judgments", with participants counted where the study analysis says who they were; or
    "simulated participants (N, M excluded), not human judgments" when the study's ``source`` column
    says every judgment came from simulated participants (`crn-repro study simulate`). Where the
    analysis left out mistimed trials (``mistimed.csv`` beside ``judgments.csv``), the counts end with
    ", K mistimed trials left out"."""

    tables = []  # exclusions.csv, written next to judgments.csv by `crn-repro study analyze`
    for path in paths:
        try:
            table = pd.read_csv(path.parent / "exclusions.csv")
            table["excluded"] = table["excluded"].astype(bool)
            tables.append(table)
        except (OSError, KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            tables = None  # who was excluded is not known here
            break
    if "source" in judgments.columns and len(judgments):
        simulated = bool(is_simulated(judgments.source).all())
    else:  # no judgment left (all excluded, say): the exclusions say who answered
        sources = [t.source for t in tables or () if "source" in t.columns and len(t)]
        simulated = bool(sources) and all(is_simulated(s).all() for s in sources)

    if "participant" not in judgments.columns:
        return "simulated participants, not human judgments" if simulated else "human judgments"
    included = judgments.participant.nunique()
    excluded = None if tables is None else sum(
        int((t.excluded & (is_simulated(t.source) == simulated)).sum()) if "source" in t.columns else int(t.excluded.sum())
        for t in tables
    )
    mistimed = _mistimed_count(paths, simulated)
    left_out = f", {mistimed} mistimed trials left out" if mistimed else ""
    if simulated:
        counts = f"{included}" if excluded is None else f"{included}, {excluded} excluded"
        return f"simulated participants ({counts}{left_out}), not human judgments"
    if excluded is None:
        return f"human judgments ({included} participants{left_out})"
    return f"human judgments ({included} participants, {excluded} excluded{left_out})"


def _mistimed_count(paths: list[Path], simulated: bool) -> int:
    """Timed trials `crn-repro study analyze` left out for their measured on-screen time (its
    ``mistimed.csv`` beside each ``judgments.csv``; 0 where there is none), of the sources analysed."""
    count = 0
    for path in paths:
        try:
            table = pd.read_csv(path.parent / "mistimed.csv")
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue  # an older analysis, or judgments from elsewhere: nothing known to be left out
        count += int((is_simulated(table.source) == simulated).sum()) if "source" in table.columns else len(table)
    return count


RANKING_COLUMNS = ["rank", "item", "strength", "strength_low", "strength_high", "rank_low", "rank_high", "wins", "comparisons"]


def ranking(judgments: pd.DataFrame, num_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A Bradley-Terry ranking of every item (real images and models) of ``judgments`` (model_a,
    model_b, winner, participant), with 95% bootstrap intervals over participants of each strength
    and rank (``stats.bradley_terry_bootstrap``). ValueError naming the groups of items that no chain
    of judged pairs links."""
    items = sorted(set(judgments.model_a) | set(judgments.model_b), key=lambda m: (PAIR_ORDER.get(m, 2), m))
    index = {m: i for i, m in enumerate(items)}
    who = judgments.participant.astype(str).to_numpy()
    people = {p: k for k, p in enumerate(sorted(set(who)))}
    loser = judgments.model_a.where(judgments.winner != judgments.model_a, judgments.model_b)
    wins = np.zeros((len(people), len(items), len(items)))
    np.add.at(wins, ([people[p] for p in who], judgments.winner.map(index).to_numpy(), loser.map(index).to_numpy()), 1.0)
    try:
        fit = stats.bradley_terry_bootstrap(wins, num_resamples=num_resamples, seed=seed)
    except ValueError as error:
        groups = [[items[i] for i in component] for component in stats.comparison_components(wins.sum(axis=0))]
        named = " and ".join("{" + ", ".join(group) + "}" for group in groups)
        raise ValueError(f"no Bradley-Terry ranking: no chain of compared pairs links {named}, so they have no common scale; "
                         "a pair type or sentinel that joins them would") from error
    total = wins.sum(axis=0)
    table = pd.DataFrame({"item": items, "strength": fit["strength"], "strength_low": fit["strength_low"],
                          "strength_high": fit["strength_high"], "rank_low": fit["rank_low"], "rank_high": fit["rank_high"],
                          "wins": total.sum(axis=1).astype(int), "comparisons": (total + total.T).sum(axis=1).astype(int)})
    table = table.sort_values("strength", ascending=False, kind="stable").reset_index(drop=True)
    return table.assign(rank=np.arange(1, len(table) + 1)).loc[:, RANKING_COLUMNS]


def bind_to_current(judgments: pd.DataFrame, current_source: Callable[[str, str], str | None], where: str,
                    rerun: str) -> tuple[pd.DataFrame, dict]:
    """The judgments whose two images were made from the current sources (``current_source(model,
    layout)``: the SHA-256 of the synthesized file, or of the prepared real image; None where there
    is none), and what happened: ``dropped`` (judgments of other images), ``unbound`` (judgments
    without image hashes, from elsewhere or an older analysis: kept, and labelled so) and ``builds``
    (the study builds they come from). CrnError, with ``rerun`` (the commands that rebuild and rerun
    the study), when every judgment with hashes judged other images."""
    if not {"source_a", "source_b"} <= set(judgments.columns):
        return judgments, {"dropped": 0, "unbound": len(judgments), "builds": []}
    bound = judgments.source_a.notna() & judgments.source_b.notna()
    cache: dict[tuple[str, str], str | None] = {}

    def current(model: str, layout: str):
        if (model, layout) not in cache:
            cache[(model, layout)] = current_source(model, str(layout))
        return cache[(model, layout)]

    same = pd.Series([bool(b) and current(a_model, layout) == a and current(b_model, layout) == b_source
                      for b, a_model, b_model, layout, a, b_source in zip(bound, judgments.model_a, judgments.model_b,
                                                                          judgments.layout, judgments.source_a,
                                                                          judgments.source_b)], index=judgments.index)
    kept = judgments[same | ~bound]
    dropped = int((bound & ~same).sum())
    if bound.any() and not same.any():
        raise CrnError(f"{where}: all {dropped} judgments judged images that are no longer the synthesized ones (the models "
                       f"were retrained or synthesized again since the study was built); {rerun}")
    builds = sorted(set(kept.study_build.dropna().astype(str))) if "study_build" in kept.columns else []
    return kept.reset_index(drop=True), {"dropped": dropped, "unbound": int((~bound).sum()), "builds": builds}


def preference_tables(
    reference: str, baselines: list[str], realism: dict[str, np.ndarray], judgment_files: tuple[str, ...] = (),
    num_resamples: int = 1000, seed: int = 0, current_source: Callable[[str, str], str | None] | None = None,
    rerun: str = "rerun the study",
) -> dict:
    """Table 1 and Fig. 3's data: ``reference`` against each of ``baselines``. From the human judgments
    in ``judgment_files`` if any (their test rows give Table 1 and, timed, the time curves; test and
    sentinel rows together the Bradley-Terry ``ranking``), else from the automatic judge (per layout,
    the higher realism score wins; ties are dropped; no time curves, no ranking). With
    ``current_source``, only judgments of the current images count (``bind_to_current``).
    Returns ``preference``, ``curves``, ``ranking`` (None where there is none, and ``ranking_note``
    says why) and ``binding`` (dropped, unbound, builds)."""
    if not judgment_files:
        rows = []
        for other in baselines:
            a, b = realism[reference], realism[other]
            decided = a != b
            wins, n = int((a[decided] > b[decided]).sum()), int(decided.sum())
            rows.append(dict(reference=reference, baseline=other, wins=wins, source="automatic proxy, not human judgments",
                             **_summary(wins, n)))
        return {"preference": pd.DataFrame(rows, columns=PREFERENCE_COLUMNS), "curves": pd.DataFrame(columns=TIME_CURVE_COLUMNS),
                "ranking": None, "ranking_note": "no human judgments: no ranking", "binding": None}
    paths = [Path(f) for f in judgment_files]
    judgments = read_judgments(paths)
    binding = {"dropped": 0, "unbound": len(judgments), "builds": []}
    if current_source is not None:
        judgments, binding = bind_to_current(judgments, current_source, ", ".join(map(str, paths)), rerun)
    tests = judgments[judgments.kind == "test"] if "kind" in judgments.columns else judgments
    curves = time_curves(tests, num_resamples, seed) if "duration_ms" in tests.columns else pd.DataFrame(columns=TIME_CURVE_COLUMNS)
    source = human_source(tests, paths)
    build = "; ".join(binding["builds"]) if binding["builds"] else "not bound to images (no image hashes)"
    rows = []
    for other in baselines:
        pair = tests[((tests.model_a == reference) & (tests.model_b == other)) | ((tests.model_a == other) & (tests.model_b == reference))]
        if "duration_ms" in pair.columns:  # Table 1 is the unlimited-time experiment
            pair = pair[pair.duration_ms.isna()]
        rows.append(dict(reference=reference, baseline=other, source=source, study_build=build, dropped=binding["dropped"],
                         **judgment_summary(pair, reference, num_resamples, seed)))
    ranked, note = None, ""
    try:
        ranked = ranking(judgments, num_resamples, seed) if "participant" in judgments.columns and len(judgments) else None
        note = "" if ranked is not None else "no ranking: the judgments name no participants"
    except ValueError as error:
        note = str(error)
    return {"preference": pd.DataFrame(rows, columns=PREFERENCE_COLUMNS), "curves": curves, "ranking": ranked,
            "ranking_note": note, "binding": binding}


def preference_table(
    reference: str, baselines: list[str], realism: dict[str, np.ndarray], judgment_files: tuple[str, ...] = (),
    num_resamples: int = 1000, seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(preference table, time curves) of ``preference_tables``, the judgments not checked against images."""
    tables = preference_tables(reference, baselines, realism, judgment_files, num_resamples, seed)
    return tables["preference"], tables["curves"]


def read_judgments(paths: list[Path]) -> pd.DataFrame:
    """The human judgment CSVs, concatenated (columns model_a, model_b, winner, and optionally
    duration_ms, participant, layout, source); one-line errors name the file. Judgments of simulated
    participants (source "simulated-...") are dropped where real ones exist."""
    frames = []
    for path in paths:
        judgments = read_table(
            path, ("model_a", "model_b", "winner"),
            missing="evaluate.human_judgments file not found; run `crn-repro study analyze` or set it to null",
            fix="fix the file or write it again with `crn-repro study analyze`",
        )
        bad = judgments[(judgments.winner != judgments.model_a) & (judgments.winner != judgments.model_b)]
        if len(bad):  # a winner that is neither side would count as a loss of both
            row = bad.index[0]
            raise CrnError(
                f"{path}: row {row + 2}: winner {bad.winner.iloc[0]!r} is neither model_a {bad.model_a.iloc[0]!r} nor "
                f"model_b {bad.model_b.iloc[0]!r} ({len(bad)} such rows); fix the file or run `crn-repro study analyze` again"
            )
        frames.append(judgments)
    judgments = pd.concat(frames, ignore_index=True)
    if "source" in judgments.columns:  # `crn-repro study analyze`'s: simulated participants never pass as people
        simulated = is_simulated(judgments.source)
        if simulated.any() and not simulated.all():  # real judgments exist: use only them
            judgments = judgments[~simulated].reset_index(drop=True)
    return judgments


def _summary(wins: int, n: int) -> dict:
    if n == 0:
        return {"n": 0, "rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    s = stats.preference_summary(wins, n)
    return {"n": n, "rate": s["rate"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "p_value": s["p_value"]}
