"""The `report` stage: the comparison as a researcher hands it to co-authors.

Writes under ``paths.reports``:
- ``report.md`` and the self-contained ``report.html``: provenance (git revision, params digest), the
  runs, the preference table (paper Table 1 shape) and time curves (Fig. 3) with the paper's own
  numbers beside this run's, the automatic metrics with their protocols, published automatic scores
  kept apart, the figures, and the memory table;
- ``tables/<name>.csv`` and ``.tex``: every table, for a paper;
- ``figures/``: PNG and PDF of every figure (``figures.py``), written so that unchanged results give
  byte-identical files;
- ``gallery/``: a page per model with every validation layout and a page per layout with every model, the
  images copied beside them (``gallery.py``);
- ``params.json``: the params that produced it.

Tables are built by pure functions (data in, DataFrame out); ``write_report`` does the file I/O.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from crn_repro import figures as F
from crn_repro import gallery, published, stats
from crn_repro.datasets import PreparedSplit, read_prepared_meta
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_image, read_json, read_table, read_yaml
from crn_repro.labels import colorize_channels
from crn_repro.params import Params
from crn_repro.registry import SEGMENTERS, display_name, get_spec
from crn_repro.synthesize import output_names, read_index

METRIC_TITLES = {
    "segmentation_miou": "Segmentation mIoU (higher is better)",
    "segmentation_pixel_accuracy": "Segmentation pixel accuracy (higher is better)",
    "frechet_distance_segmenter": "Frechet distance, segmenter features (lower is better)",
    "fid": "FID (lower is better)",
    "kid": "KID (lower is better)",
    "realism_score": "Mean realism score (higher is better)",
    "colour_distance": "Class-conditional colour distance (lower is better)",
    "diversity": "Diversity within collections (higher = more diverse)",
    "diversity_lpips": "Diversity, LPIPS (higher = more diverse)",
    "drn_miou": "DRN-D-105 mIoU, synthesis-size (higher is better)",
    "drn_pixel_accuracy": "DRN-D-105 pixel accuracy, synthesis-size (higher is better)",
    "drn_pixel_accuracy_void": "DRN-D-105 pixel accuracy, synthesis-size, void counted (higher is better)",
    "drn_miou_upsampled": "DRN-D-105 mIoU, upsampled (higher is better)",
    "drn_pixel_accuracy_upsampled": "DRN-D-105 pixel accuracy, upsampled (higher is better)",
    "drn_pixel_accuracy_void_upsampled": "DRN-D-105 pixel accuracy, upsampled, void counted (higher is better)",
}


# --- tables (pure) ----------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "n/a" if x != x else (f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}")


def _p(p: float) -> str:
    return "n/a" if p != p else ("< 1e-3" if p < 1e-3 else f"{p:.3f}")


def _interval(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"{low:.1%} - {high:.1%}"


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def runs_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per trained model: parameters, steps, batch (global = per process x processes), wall
    time, device, precision, perception network and loss settings (from each model file's facts)."""
    rows = []
    for model, s in summaries.items():
        trainable = s.get("trainable_parameters", s["parameters"])
        count = ", ".join(f"{name} {n:,}" + ("" if trainable.get(name, n) == n else f" ({trainable[name]:,} trained)")
                          for name, n in s["parameters"].items())
        processes = s.get("processes", 1)
        batch = f"{s['batch_size']}" + (f" ({s['batch_size_per_process']} x {processes})" if processes > 1 else "")
        steps = f"{s['steps']}" + ("" if s["steps"] >= s["total_steps"] else f" of {s['total_steps']} (unfinished)")
        rows.append({
            "model": model, "parameters": count, "steps": steps, "batch": batch, "wall time": _fmt_time(s["wall_time_s"]),
            "device": s["device"], "precision": s["precision"], "VGG-19 weights": s["vgg"], "VGG pooling": s["vgg_pooling"],
            "loss": ", ".join(f"{k}={v}" for k, v in s["objective"].items()),
        })
    return pd.DataFrame(rows)


def preference_table(preference: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 1 as measured, and the paper's Table 1 row for the closest dataset beside it (a separate
    column: other data, other judges)."""
    row_name, paper = published.table_1_row(dataset)
    boot = any(c in preference.columns and preference[c].notna().any() for c in ("boot_workers_low", "boot_images_low"))
    mixed = any(c in preference.columns and preference[c].notna().any() for c in ("crossed_low", "odds_ratio"))
    rows = []
    for r in preference.itertuples():
        row = {"baseline": r.baseline, "preferred": "n/a" if pd.isna(r.rate) else f"{r.rate:.1%}",
               "95% Wilson": _interval(r.ci_low, r.ci_high)}
        if boot:
            row["95% bootstrap, workers"] = _interval(r.boot_workers_low, r.boot_workers_high)
            row["95% bootstrap, images"] = _interval(r.boot_images_low, r.boot_images_high)
        if mixed:  # the crossed analyses (docs/facts.md §6.3)
            row["95% bootstrap, both"] = _interval(r.crossed_low, r.crossed_high)
            row["mixed model [95%]"] = "n/a" if pd.isna(r.mixed_rate) else f"{r.mixed_rate:.1%} [{_interval(r.mixed_low, r.mixed_high)}]"
            row["odds ratio [95%]"] = ("n/a" if pd.isna(r.odds_ratio) else
                                       f"{r.odds_ratio:.3g} [{r.odds_ratio_low:.3g} - {r.odds_ratio_high:.3g}]")
            row["sd participant, layout"] = "n/a" if pd.isna(r.participant_sd) else f"{r.participant_sd:.2f}, {r.layout_sd:.2f}"
        row.update({"p": _p(r.p_value), "n": str(r.n),
                    f"paper ({row_name})": f"{paper[r.baseline]:.1%}" if r.baseline in paper else "-"})
        rows.append(row)
    return pd.DataFrame(rows)


def ranking_table(ranking: pd.DataFrame) -> pd.DataFrame:
    """The Bradley-Terry ranking of real images and the models, with bootstrap intervals over participants."""
    return pd.DataFrame([{"rank": str(int(r.rank)), "item": r.item, "strength (log)": f"{r.strength:+.2f}",
                          "95% bootstrap, participants": "n/a" if pd.isna(r.strength_low) else
                          f"{r.strength_low:+.2f} - {r.strength_high:+.2f}",
                          "rank 95%": "n/a" if pd.isna(r.rank_low) else f"{int(r.rank_low)} - {int(r.rank_high)}",
                          "wins": str(int(r.wins)), "pairs": str(int(r.comparisons))} for r in ranking.itertuples()])


def time_curves_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3's rates per pair type and exposure time, with the paper's rates where its text gives them."""
    rows = []
    for r in curves.itertuples():
        paper = published.FIGURE_3.get((r.first, r.second), {}).get(int(r.duration_ms))
        rows.append({"comparison": f"{r.first} > {r.second}", "duration": f"{int(r.duration_ms)} ms",
                     "preferred": "n/a" if pd.isna(r.rate) else f"{r.rate:.1%}", "95% Wilson": _interval(r.ci_low, r.ci_high),
                     "95% bootstrap, workers": _interval(r.boot_workers_low, r.boot_workers_high),
                     "95% bootstrap, images": _interval(r.boot_images_low, r.boot_images_high),
                     "p": _p(r.p_value), "n": str(r.n), "paper": "-" if paper is None else f"{paper:.1%}"})
    return pd.DataFrame(rows)


def metrics_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Every automatic metric of every model: value [95% interval]."""
    names = [m for m in METRIC_TITLES if any(m in entry for entry in metrics.values())]
    return pd.DataFrame([
        {"model": model, **{m: (f"{_fmt(e[m]['value'])} [{_fmt(e[m]['ci_low'])}, {_fmt(e[m]['ci_high'])}]" if m in e else "-")
                            for m in names}}
        for model, e in metrics.items()
    ])


def published_table() -> pd.DataFrame:
    """Automatic scores of CRN published by later papers, with their protocols (never this run's)."""
    return pd.DataFrame([{"model": r["model"], "metric": r["metric"], "value": r["value"], "protocol": r["protocol"],
                          "source": r["source"]} for r in published.AUTOMATIC])


def memory_table() -> pd.DataFrame:
    """Activation memory (batch 1, fp32) of the paper's CRN presets and the full-resolution network
    with 10 layers x 256 maps (Sec. 4) at the same resolutions, sized on the meta device, for
    Cityscapes' c = 20 layout channels (the paper's scale, whatever this run's dataset)."""
    from baselines.fullres import FullResNetworkParams, FullResolutionNetwork, fullres_kwargs
    from crn_repro.crn import CRN, PRESETS, CRNNetworkParams, crn_kwargs
    from crn_repro.memory import activation_bytes
    from crn_repro.registry import count_parameters

    rows = []
    for preset, spec in PRESETS.items():
        size = spec["image_size_hw"]
        with torch.device("meta"):
            nets = {
                f"CRN ({preset})": CRN(**crn_kwargs(CRNNetworkParams(preset, None, 1), size, 20)),
                "Full-resolution (10 x 256)": FullResolutionNetwork(**fullres_kwargs(FullResNetworkParams(10, 256, None), size, 20)),
            }
            layout = torch.zeros(1, 20, *size)
        for name, net in nets.items():
            parameters = count_parameters(net)
            gib = activation_bytes(net, layout) / 2**30
            rows.append({"resolution": f"{size[0]}x{size[1]}", "network": name, "parameters": f"{parameters:,}",
                         "activation memory": f"{gib:.2f} GiB", "bytes per parameter": f"{gib * 2**30 / parameters:.0f}"})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> list[str]:
    columns = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return lines


def provenance(params: Params) -> dict:
    """What produced the report: the code's git revision (and whether the code or params differ from it:
    ``changed_sources``) and a digest of the params."""
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    try:
        revision = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "-z"], capture_output=True,
                                 text=True, check=True).stdout
        dirty = changed_sources([entry[3:] for entry in changed.split("\0") if len(entry) > 3], params)
        code = revision + (" with uncommitted changes to " + ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
                           if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        code = "not a git checkout"
    return {"code": code, "params_sha256": digest}


def changed_sources(changed: list[str], params: Params, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """The changed tracked files (paths relative to the repository root) that are code or params: every
    one but what the pipeline itself writes (the outs, metrics and plots of ``dvc_yaml``'s stages, with
    ``${paths.*}`` filled in from ``params`` and any foreach ``${item}``), ``dvc.lock`` and the
    ``.gitignore`` files DVC keeps its outputs in. A run of the committed code and params reads clean."""
    outputs = pipeline_outputs(dvc_yaml, params)
    return [path for path in changed if path != "dvc.lock" and Path(path).name != ".gitignore"
            and not any(fnmatch.fnmatch(path, out) or fnmatch.fnmatch(path, out + "/*") for out in outputs)]


def pipeline_outputs(dvc_yaml: Path, params: Params) -> list[str]:
    """Every stage's outs, metrics and plots in ``dvc_yaml`` as glob patterns relative to the repository
    root (``${item}`` of a foreach stage: ``*``); none when the file is missing."""
    if not dvc_yaml.is_file():
        return []
    paths = {f"${{paths.{key}}}": str(value).rstrip("/") for key, value in params.to_dict()["paths"].items()}
    stages = (read_yaml(dvc_yaml, "fix dvc.yaml") or {}).get("stages") or {}
    found = []
    for stage in stages.values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section) or []:
                for out in (entry if isinstance(entry, dict) else {entry: None}):
                    for var, value in paths.items():
                        out = out.replace(var, value)
                    found.append(str(out).replace("${item}", "*").rstrip("/"))
    return found


# --- files ------------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    """The figure as PNG and PDF, each written atomically and byte-identical for the same figure (the
    PDF carries no creation date), so a rerun with unchanged results changes no file."""
    for target, options in ((path, {"dpi": 150}), (path.with_suffix(".pdf"), {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=target.suffix[1:], **options)
        atomic_write_bytes(target, buffer.getvalue())
    plt.close(fig)


def _read_png(path: Path) -> np.ndarray:
    return read_image(path, f"run `crn-repro synthesize --model {path.parent.name}` again")


def _label_source(meta: dict) -> str:
    """How the layout channels were made, in words, from the prepared cache's meta.json."""
    if meta["dataset"] == "nyu":
        grouping = f"classes of {meta['class_mapping']}" if meta.get("class_mapping") else "the most frequent raw classes"
        return f"NYU {grouping}, frames fitted by {meta.get('fit')}"
    if meta.get("labels") == "color":
        return "Cityscapes gtFine_color matched by colour, as the release"
    return "Cityscapes labelIds through the official table"


def _short(name: str) -> str:
    """A validation frame's name for a figure's row: the city's name and the frame, without prefixes."""
    parts = name.split("_")
    return f"{parts[0].removeprefix('synth')} {'_'.join(parts[1:])}" if len(parts) > 1 else name


def write_report(params: Params) -> Path:
    """Write the report, its tables, figures, gallery and params (module docstring); returns the
    path of report.md."""
    reports = Path(params.paths.reports)
    figures, tables = reports / "figures", reports / "tables"
    meta = read_prepared_meta(Path(params.paths.prepared))
    val = PreparedSplit(Path(params.paths.prepared), "val")
    indexes = {model: read_index(Path(params.paths.synth) / model, model) for model in params.models}
    origin = provenance(params)  # before params.json is written: a tracked reports/ would read as changed
    atomic_write_json(reports / "params.json", params.to_dict())

    lines = _run_section(meta, origin, {model: index["facts"] for model, index in indexes.items()}, tables)
    lines += _evaluation_section(params, reports, figures, tables, meta["dataset"])
    lines += _qualitative_section(params, val, indexes, figures)
    lines += _training_curves_section(params, figures)
    lines += _memory_section(tables)
    _write_gallery(params, reports / "gallery", val, indexes, val.label_space.palette)
    report = reports / "report.md"
    text = "\n".join(lines) + "\n"
    atomic_write_text(report, text)
    atomic_write_text(reports / "report.html", to_html(text, reports))
    return report


def _table(table: pd.DataFrame, tables: Path, name: str) -> list[str]:
    """A table's markdown lines for the report, the table written beside it for a paper as
    ``tables/<name>.csv`` and a LaTeX tabular (booktabs) ``tables/<name>.tex``."""
    atomic_write_text(tables / f"{name}.csv", table.to_csv(index=False))
    atomic_write_text(tables / f"{name}.tex", table.to_latex(index=False, escape=True))
    return markdown(table)


def _run_section(meta: dict, origin: dict, summaries: dict[str, dict], tables: Path) -> list[str]:
    """Title, provenance, the data and the runs (from each model file's facts, ``summaries``)."""
    h, w = meta["image_size_hw"]
    lines = [
        "# crn-repro report",
        "",
        "Reproduction of *Photographic Image Synthesis with Cascaded Refinement Networks* (Chen & Koltun, ICCV 2017).",
        "",
        f"Produced by the code at git revision `{origin['code']}` from the params in [params.json](params.json) "
        f"(sha256 `{origin['params_sha256']}`); every table is also in [tables/](tables/) as CSV and LaTeX, and "
        "every validation image of every model is in the [gallery](gallery/index.html).",
        "",
        "## Run",
        "",
        f"- Dataset: **{meta['dataset']}** ({meta['source']}); {meta['splits']['train']['count']} training and "
        f"{meta['splits']['val']['count']} validation frames",
        f"- Layout: c = {len(meta['channel_names'])} channels ({_label_source(meta)}; void last)",
        f"- Resolution: {h}x{w}",
        "",
    ]
    lines += _table(runs_table(summaries), tables, "runs")
    if any(s["vgg"].startswith("random") for s in summaries.values()):
        lines += [
            "",
            "> **The VGG-19 perception network has random weights** (`vgg.weights: random`, the offline default). "
            "The feature-matching loss is then not the paper's perceptual loss, and these images demonstrate the "
            "pipeline, not the paper's results. Set `vgg.weights` to `torchvision` or `matconvnet` with a weights "
            "file for a faithful run (see README).",
        ]
    if meta["dataset"] == "synthetic":
        lines += ["", f"> The data is the built-in **synthetic city** (generated from seed {meta.get('synthetic_seed')}), not Cityscapes."]
    return lines


def _qualitative_section(params: Params, val: PreparedSplit, indexes: dict, figures: Path) -> list[str]:
    """The qualitative grid (paper Fig. 4/5), the layout colours, and each k > 1 model's diversity panel (Fig. 6)."""
    palette = val.label_space.palette
    rows = np.linspace(0, len(val) - 1, min(params.report.figure_rows, len(val))).round().astype(int)
    layouts = [colorize_channels(np.asarray(val.labels[i]), palette) for i in rows]
    columns = {"Semantic layout": layouts, "Reference": [np.asarray(val.images[i]) for i in rows]}
    for model in params.models:
        folder = Path(params.paths.synth) / model
        columns[display_name(model)] = [_read_png(folder / output_names(val.names[i], indexes[model]["k"])[0]) for i in rows]
    _save(F.qualitative_grid(columns, [_short(val.names[i]) for i in rows]), figures / "qualitative.png")
    _save(F.class_legend(list(val.label_space.names), [tuple(c) for c in palette]), figures / "legend.png")
    lines = ["", "## Qualitative results", "",
             "Qualitative comparison (paper Fig. 4/5 style): semantic layout, reference image, and the first output of each model.",
             "", "![qualitative](figures/qualitative.png)", "", "Layout colours:", "", "![legend](figures/legend.png)", ""]
    for model in params.models:
        k = indexes[model]["k"]
        if k > 1:
            folder = Path(params.paths.synth) / model
            collections = [[_read_png(folder / name) for name in output_names(val.names[i], k)] for i in rows]
            path = figures / f"diversity_{model}.png"
            _save(F.diversity_panel(layouts, collections, f"{model}: the k = {k} images synthesized for each layout"), path)
            lines += [f"Diversity (paper Fig. 6 style): the {k} images {model} synthesizes for each layout.", "",
                      f"![{path.name}](figures/{path.name})", ""]
    return lines


def _training_curves_section(params: Params, figures: Path) -> list[str]:
    """Every trained model's total loss per logged step (from its dvclive files), where there are any."""
    curves = {}
    for model in [*SEGMENTERS, *params.models]:
        spec = get_spec(model)
        tsv = Path(params.paths.runs) / model / "live" / "plots" / "metrics" / "train" / spec.main_network / "total.tsv"
        if tsv.is_file():
            df = pd.read_csv(tsv, sep="\t")
            curves[model] = (f"{spec.main_network}/total loss", df.rename(columns={df.columns[-1]: "value"}))
    if not curves:
        return []
    _save(F.training_curves(curves), figures / "training_curves.png")
    return ["## Training curves", "",
            "Each model's total training loss (its generator's; the segmenter's cross-entropy) per logged step, "
            "averaged over `train.log_every_steps`; red: running mean.", "", "![training curves](figures/training_curves.png)", ""]


def _memory_section(tables: Path) -> list[str]:
    """The activation memory table (paper Sec. 4)."""
    return ["## Memory: why the full-resolution network does not scale (Sec. 4)", "",
            "Activations autograd keeps for the backward pass, one image, fp32, measured by shape on the meta device "
            "(the paper trained the full-resolution network only up to 256x512 on a 12 GB GPU):", "",
            *_table(memory_table(), tables, "memory")]


def _evaluation_section(params: Params, reports: Path, figures: Path, tables: Path, dataset: str) -> list[str]:
    """Preference table, time curves, automatic metrics and published scores, from the evaluate stage's files."""
    metrics, missing, preference = _read_evaluation(params, reports)
    source = preference["source"].iloc[0] if len(preference) else "none"
    lines = _preference_section(params, preference, source, dataset, tables)
    if source.startswith(("human judgments", "simulated participants")):
        lines += _ranking_section(reports, tables)
        lines += _time_curves_section(reports / "time_curves.csv", source, figures, tables)
    lines += _metrics_section(metrics, missing, figures, tables)
    stored = read_json(reports / "metrics.json", "run `crn-repro evaluate` again")
    lines += judge_lines(metrics, stored.get("judge") or {})
    lines += calibration_lines(stored.get("proxy_calibration") or {})
    lines += _published_section(tables)
    return lines


def _read_evaluation(params: Params, reports: Path) -> tuple[dict[str, dict], list[dict], pd.DataFrame]:
    """The evaluate stage's metrics (in the params' model order: crn first), its missing metrics and
    its preference table, each checked."""
    metrics_path, preference_path = reports / "metrics.json", reports / "preference.csv"
    again = "run `crn-repro evaluate` again"
    stored = read_json(metrics_path, again)
    if not isinstance(stored, dict) or not isinstance(stored.get("models"), dict):
        raise CrnError(f"{metrics_path}: no `models` mapping; {again}")
    missing = [m for m in stored.get("missing", []) if isinstance(m, dict)]
    stored = stored["models"]
    metrics = {m: stored[m] for m in [*params.models, *stored] if m in stored}
    preference = read_table(preference_path, ("baseline", "rate", "source"), missing=f"missing; {again}", fix=again)
    return metrics, missing, preference


def _preference_section(params: Params, preference: pd.DataFrame, source: str, dataset: str, tables: Path) -> list[str]:
    """Table 1's shape, with what its source is (automatic proxy, simulated participants or people)."""
    row_name, _ = published.table_1_row(dataset)
    lines = [
        "",
        "## Pairwise preference (paper Table 1 shape)",
        "",
        f"Fraction of comparisons (same layout) in which **{params.evaluate.reference_model}** was preferred over each "
        f"baseline, with its 95% Wilson interval and the two-sided exact binomial test against 50%. Source: **{source}**. "
        f"The last column is the paper's ({published.TABLE_1_SOURCE}, {row_name}): other data and other judges, for "
        "orientation, not a measurement of this run.",
        "",
    ]
    if source.startswith("automatic"):
        lines += [
            "> These are **automatic proxy judgments, not human judgments**: for each layout, the image with the higher "
            "realism score (Kynkaenniemi et al. 2019) wins. The paper (Sec. 5.1) warns that automatic measures can be "
            "gamed; only a human study (`crn-repro study`) reproduces its Table 1.",
            "",
        ]
    human = source.startswith("human judgments")
    simulated = source.startswith("simulated participants")  # `crn-repro study simulate`'s observer models
    if simulated:
        lines += [
            "> These are **simulated participants, not human judgments**: seeded observer models "
            "(`crn-repro study simulate`) that choose by the realism score plus noise. They test the study "
            "machinery and help plan a study; they are not evidence, and only a study with people reproduces "
            "the paper's Table 1 and Fig. 3.",
            "",
        ]
    if human or simulated:
        lines += [
            "Unlimited viewing time (paper Table 1). Participants whose sentinel answers fell "
            "below `study.min_sentinel_accuracy` are excluded (`crn-repro study analyze`). The bootstrap intervals "
            "resample whole workers, whole images, and both at once (crossed), so correlated judgments are not counted "
            "as independent; the one-way ones each ignore the other source of variation, and all read n/a where a "
            f"comparison has fewer than {stats.MIN_BOOTSTRAP_CLUSTERS} workers (images). The mixed model, logit "
            "`first_won ~ 1 + (1 | participant) + (1 | layout)` (docs/facts.md §6.3), gives the preference of a typical "
            "participant on a typical layout and its odds ratio against even odds, with the standard deviations of "
            "participants and layouts on the log-odds scale.",
            "",
            *_study_build(preference),
        ]
    return lines + _table(preference_table(preference, dataset), tables, "preference")


def _study_build(preference: pd.DataFrame) -> list[str]:
    """Which study build the human numbers come from, and how many judgments of earlier images were left out."""
    if "study_build" not in preference.columns or not len(preference):
        return []
    build, dropped = preference.study_build.iloc[0], preference.dropped.iloc[0] if "dropped" in preference.columns else 0
    left_out = (f"; {int(dropped)} judgments of images that are no longer the synthesized ones were left out"
                if dropped == dropped and dropped else "")
    return [f"Study build: **{build}**{left_out}.", ""]


def _ranking_section(reports: Path, tables: Path) -> list[str]:
    """The Bradley-Terry ranking of the evaluate stage's ``ranking.csv`` (or why there is none)."""
    path = reports / "ranking.csv"
    if not path.is_file():
        return []
    ranking = read_table(path, ("item", "note"), fix="run `crn-repro evaluate` again")
    lines = ["", "### Ranking (Bradley-Terry)", ""]
    if ranking.item.isna().all():
        return lines + [f"No ranking: {ranking.note.iloc[0] if len(ranking) else 'no judgments'}."]
    return lines + ["Real images and every model on one scale from all judged pairs (sentinels included), strengths on "
                    "the log-odds scale (mean 0); intervals from the bootstrap over participants.", ""] + _table(
        ranking_table(ranking), tables, "ranking")


def _time_curves_section(curves_path: Path, source: str, figures: Path, tables: Path) -> list[str]:
    """Fig. 3: preference rates of timed judgments against exposure time, where the study has any."""
    if not curves_path.is_file():
        return []
    curves = pd.read_csv(curves_path)
    if not len(curves):
        return []
    _save(F.time_curve_figure(curves, source, published.FIGURE_3), figures / "time_curves.png")
    return [
        "",
        "### Time-limited judgments (paper Fig. 3)",
        "",
        f"Source: **{source}**. Preference rate of the first image type against exposure time, with 95% Wilson "
        f"intervals; hollow points and the last column: the paper's rates ({published.FIGURE_3_SOURCE}). Trials whose "
        "measured on-screen time missed the target by more than `study.timing_tolerance_frames` frames of the participant's display were left out by "
        "`crn-repro study analyze` (the source says how many, where any were).",
        "",
        "![time curves](figures/time_curves.png)",
        "",
        *_table(time_curves_table(curves), tables, "time_curves"),
    ]


def _metrics_section(metrics: dict[str, dict], missing: list[dict], figures: Path, tables: Path) -> list[str]:
    """Every automatic metric with its interval and protocol, their figure, and the metrics that could not
    be computed (with the file each needs)."""
    names = [m for m in METRIC_TITLES if any(m in entry for entry in metrics.values())]
    lines = [
        "",
        "## Automatic metrics",
        "",
        "Each value with its bootstrap 95% interval over validation images. These measure other things than realism "
        "to a person and are reported apart from the human evidence.",
        "",
        *_table(metrics_table(metrics), tables, "metrics"),
        "", "Protocols:", "",
    ]
    for m in names:
        protocol = next(entry[m]["protocol"] for entry in metrics.values() if m in entry)
        lines.append(f"- **{m}**: {protocol}")
    panels = {m: pd.DataFrame([{"model": model, **{k: entry[m][k] for k in ("value", "ci_low", "ci_high")}}
                               for model, entry in metrics.items() if m in entry]) for m in names}
    _save(F.metrics_figure(panels, METRIC_TITLES), figures / "metrics.png")
    lines += ["", "![automatic metrics](figures/metrics.png)", ""]
    if missing:
        lines += ["**Missing metrics** (not computed, and not replaced by another number):", ""]
        lines += [f"- {m.get('metric')}: needs {m.get('needs')}; from {m.get('from')}" for m in missing]
        lines += [""]
    return lines


def judge_lines(metrics: dict[str, dict], judge: dict) -> list[str]:
    """Which segmenter judged the segmenter-based scores (its weights' digest), flagged in bold where the
    models' scores came from different judges: such scores are not comparable."""
    judged = {}
    for model, entry in metrics.items():
        for name, metric in entry.items():
            if isinstance(metric, dict) and metric.get("judge"):
                judged.setdefault(metric["judge"], set()).add(model)
    if not judged:
        return []
    if len(judged) > 1:
        which = "; ".join(f"`{j}`: {', '.join(sorted(models))}" for j, models in sorted(judged.items()))
        return [f"**Scored by different judges, not comparable**: the segmenter-based scores come from segmenters with "
                f"different weights ({which}); run `crn-repro evaluate` again to score every model with one.", ""]
    (only,) = judged
    where = f" (`{judge['file']}`, weights SHA-256 `{judge['weights_sha256']}`)" if judge.get("id") == only else ""
    return [f"**Judge**: every segmenter-based score above (mIoU, pixel accuracy, Frechet distance in its features and, "
            f"without Inception, realism) was computed by one segmenter, `{only}`{where}. `train.schedule_scale` does "
            "not change its schedule; compare these scores with another experiment's only where the `judge` column of "
            "`dvc exp show` is the same.", ""]


def calibration_lines(calibration: dict) -> list[str]:
    """The realism proxy's agreement with the known order real > slight > blurred > noise, and whether it
    was allowed to decide the automatic Table 1."""
    if not calibration:
        return []
    if calibration.get("passes") is None:
        return [f"**Realism proxy**: {calibration.get('note', 'not calibrated')}.", ""]
    pairs = ", ".join(f"{pair} {value:.2f}" for pair, value in calibration["pairs"].items())
    verdict = ("passes: it may decide the automatic Table 1" if calibration["passes"] else
               "**fails: the automatic Table 1 is withheld**, because a judge that misorders obvious cases cannot be "
               "trusted on subtle ones")
    return [f"**Realism proxy calibration**: the fraction of correctly ordered pairs is {calibration['overall']:.3f} "
            f"(threshold {calibration['threshold']}; {verdict}). Per pair: {pairs}. Protocol: {calibration['protocol']}.", ""]


def _published_section(tables: Path) -> list[str]:
    """Automatic scores of CRN that later papers published, kept apart from this run's."""
    return ["### Published automatic scores (other data and protocols)", "",
            "What later papers measured on Cityscapes (CRN, and pix2pixHD and SPADE as SPADE scored them), with their own segmenters and protocols. Not comparable "
            "with this run's numbers unless the protocol matches; listed so that a reader can place them.", "",
            *_table(published_table(), tables, "published_automatic")]


def _write_gallery(params: Params, folder: Path, val: PreparedSplit, indexes: dict, palette) -> None:
    """Every validation frame of every model: a page per model and a page per layout (``gallery.py``)."""
    layouts = [colorize_channels(np.asarray(val.labels[i]), palette) for i in range(len(val))]
    models = []
    for model, index in indexes.items():
        synth = Path(params.paths.synth) / model
        images = [[synth / name for name in output_names(stem, index["k"])] for stem in val.names]
        models.append(gallery.ModelImages(model, index["k"], images, str(synth)))
    dataset = next(iter(indexes.values()))["facts"].get("dataset") if indexes else ""
    gallery.write_gallery(folder, val.names, layouts, [np.asarray(val.images[i]) for i in range(len(val))], models, dataset)


def to_html(markdown_text: str, base: Path) -> str:
    """The report as one self-contained HTML file: figures embedded as data URIs."""
    import base64
    import re

    import markdown as md

    body = md.markdown(markdown_text, extensions=["tables"])

    def embed(match):
        path = base / match.group(1)
        data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%}blockquote{background:#fff4e5;border-left:4px solid #f0a020;margin:1em 0;padding:0.5em 1em}"
    )
    return f"<!doctype html>\n<html><head><meta charset='utf-8'><title>crn-repro report</title><style>{style}</style></head><body>\n{body}\n</body></html>\n"
