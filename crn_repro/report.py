"""The `report` stage: reports/report.md and the qualitative figure (paper Fig. 4/5 style: semantic
layout | reference | each model, one row per validation layout).

Plotting functions are pure (data in, Figure out); ``write_report`` does the file I/O.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from crn_repro import stats  # noqa: E402
from crn_repro.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from crn_repro.datasets import PreparedSplit, read_prepared_meta  # noqa: E402
from crn_repro.errors import CrnError  # noqa: E402
from crn_repro.labels import colorize_channels  # noqa: E402
from crn_repro.params import Params  # noqa: E402
from crn_repro.registry import SEGMENTERS, display_name, get_spec  # noqa: E402
from crn_repro.synthesize import output_names  # noqa: E402


def qualitative_grid(columns: dict[str, list[np.ndarray]], row_labels: list[str] | None = None) -> Figure:
    """A grid of images: one column per entry of ``columns`` (title -> images, all the same length)."""
    titles = list(columns)
    rows = len(columns[titles[0]])
    h, w = columns[titles[0]][0].shape[:2]
    cell_w = 2.6
    fig, axes = plt.subplots(rows, len(titles), figsize=(cell_w * len(titles), cell_w * h / w * rows + 0.4), squeeze=False)
    for c, title in enumerate(titles):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(columns[title][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=6)
    fig.tight_layout(pad=0.3)
    return fig


def diversity_panel(layouts: list[np.ndarray], collections: list[list[np.ndarray]], title: str) -> Figure:
    """Paper Fig. 6 style: per row a semantic layout and the k images of its synthesized collection."""
    k = len(collections[0])
    h, w = layouts[0].shape[:2]
    cell_w = 1.8
    fig, axes = plt.subplots(
        len(layouts), k + 1, figsize=(cell_w * (k + 1), cell_w * h / w * len(layouts) + 0.6), squeeze=False
    )
    for r, (layout, images) in enumerate(zip(layouts, collections)):
        for c, image in enumerate([layout] + list(images)):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("Semantic layout" if c == 0 else f"u = {c - 1}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig


def metric_chart(table: pd.DataFrame, title: str) -> Figure:
    """Horizontal bars of one metric per model with their intervals; ``table`` has columns
    model, value, ci_low, ci_high."""
    fig, ax = plt.subplots(figsize=(5.0, 0.35 * len(table) + 0.9))
    y = np.arange(len(table))
    err = np.vstack([table["value"] - table["ci_low"], table["ci_high"] - table["value"]]).clip(min=0)
    ax.barh(y, table["value"], xerr=err, color="#4c72b0", ecolor="black", capsize=3)
    ax.set_yticks(y, table["model"], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def time_curve_figure(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Paper Fig. 3: preference rate against exposure time (log scale), one line per pair type,
    with 95% Wilson intervals; ``curves`` as written by ``judgments.time_curves``; ``title`` says
    whose judgments they are."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    if title:
        ax.set_title(title, fontsize=8)
    for (first, second), g in curves.groupby(["first", "second"]):
        g = g.sort_values("duration_ms")
        ax.errorbar(
            g["duration_ms"], g["rate"], yerr=[g["rate"] - g["ci_low"], g["ci_high"] - g["rate"]],
            marker="o", ms=3, capsize=2, label=f"{first} > {second}",
        )
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    durations = sorted(curves["duration_ms"].unique())
    ax.set_xticks(durations, [str(int(d)) for d in durations])
    ax.minorticks_off()
    ax.set_xlabel("exposure time (ms)", fontsize=8)
    ax.set_ylabel("preference rate", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def training_curves(curves: dict[str, pd.DataFrame]) -> Figure:
    """One panel per model: its generator's (or segmenter's) total loss per step; columns step, value."""
    n = len(curves)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    for ax, (name, df) in zip(axes.flat, curves.items()):
        ax.plot(df["step"], df["value"], lw=0.6, color="#999999")
        window = max(1, len(df) // 20)
        ax.plot(df["step"], df["value"].rolling(window, min_periods=1).mean(), lw=1.2, color="#c44e52")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def paper_scale_memory() -> list[dict]:
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
                "Full-resolution (10 x 256)": FullResolutionNetwork(
                    **fullres_kwargs(FullResNetworkParams(10, 256, None), size, 20)
                ),
            }
            layout = torch.zeros(1, 20, *size)
        for name, net in nets.items():
            rows.append(
                {
                    "resolution": f"{size[0]}x{size[1]}",
                    "network": name,
                    "parameters": count_parameters(net),
                    "activation_gib": activation_bytes(net, layout) / 2**30,
                }
            )
    return rows


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CrnError(f"{path}: synthesized image missing; run `crn-repro synthesize` for this model")
    return np.asarray(Image.open(path).convert("RGB"))


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _save(fig: Figure, path: Path) -> None:
    """The figure as PNG and PDF, each written atomically and byte-identical for the same figure (the
    PDF carries no creation date), so a rerun with unchanged results changes no file."""
    for target, options in ((path, {"dpi": 150}), (path.with_suffix(".pdf"), {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=target.suffix[1:], **options)
        atomic_write_bytes(target, buffer.getvalue())
    plt.close(fig)


def _fmt(x: float) -> str:
    return "n/a" if x != x else (f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}")


def _p(p: float) -> str:
    return "n/a" if p != p else ("< 1e-3" if p < 1e-3 else f"{p:.3f}")


def _interval(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"{low:.1%} - {high:.1%}"


def _preference_rows(table: pd.DataFrame, keys: tuple[str, ...]) -> list[str]:
    """A markdown table of preference rates: the ``keys`` columns, rate, Wilson interval and, where the
    judgments name participants and layouts, the bootstrap intervals over workers and over images ("n/a"
    where a comparison has too few workers or images to resample, ``stats.MIN_BOOTSTRAP_CLUSTERS``)."""
    boot = any(column in table.columns and table[column].notna().any() for column in ("boot_workers_low", "boot_images_low"))
    head = [*keys, "preferred", "95% Wilson"] + (["95% bootstrap, workers", "95% bootstrap, images"] if boot else []) + ["p", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.itertuples():
        cells = [str(getattr(row, k)) for k in keys] + ["n/a" if pd.isna(row.rate) else f"{row.rate:.1%}", _interval(row.ci_low, row.ci_high)]
        if boot:
            cells += [_interval(row.boot_workers_low, row.boot_workers_high), _interval(row.boot_images_low, row.boot_images_high)]
        lines.append("| " + " | ".join(cells + [_p(row.p_value), str(row.n)]) + " |")
    return lines


def _label_source(meta: dict) -> str:
    """How the layout channels were made, in words, from the prepared cache's meta.json."""
    if meta["dataset"] == "nyu":
        grouping = f"classes of {meta['class_mapping']}" if meta.get("class_mapping") else "the most frequent raw classes"
        return f"NYU {grouping}, frames fitted by {meta.get('fit')}"
    if meta.get("labels") == "color":
        return "Cityscapes gtFine_color matched by colour, as the release"
    return "Cityscapes labelIds through the official table"


def write_report(params: Params) -> Path:
    """Write ``reports/report.md``, the self-contained ``reports/report.html`` and the figures
    (PNG and PDF); returns the report path."""
    reports = Path(params.paths.reports)
    figures = reports / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    meta = read_prepared_meta(Path(params.paths.prepared))
    val = PreparedSplit(Path(params.paths.prepared), "val")
    rows = np.linspace(0, len(val) - 1, min(params.report.figure_rows, len(val))).round().astype(int)

    indexes = {}
    for model in params.models:
        index_path = Path(params.paths.synth) / model / "index.json"
        if not index_path.is_file():
            raise CrnError(f"{index_path}: missing; run `crn-repro synthesize --model {model}` first")
        indexes[model] = json.loads(index_path.read_text())
    summaries = {model: index["facts"] for model, index in indexes.items()}  # the model file's facts

    columns = {
        "Semantic layout": [colorize_channels(np.asarray(val.labels[i]), val.label_space.palette) for i in rows],
        "Reference": [np.asarray(val.images[i]) for i in rows],
    }
    for model in params.models:
        folder = Path(params.paths.synth) / model
        columns[display_name(model)] = [
            _read_png(folder / output_names(val.names[i], indexes[model]["k"])[0]) for i in rows
        ]
    figure_files = []
    fig = qualitative_grid(columns, [val.names[i] for i in rows])
    qualitative = figures / "qualitative.png"
    _save(fig, qualitative)
    figure_files.append(("Qualitative comparison (paper Fig. 4/5 style): semantic layout, reference image, "
                         "and the first output of each model.", qualitative.name))
    for model in params.models:
        k = indexes[model]["k"]
        if k == 1:
            continue
        folder = Path(params.paths.synth) / model
        collections = [[_read_png(folder / name) for name in output_names(val.names[i], k)] for i in rows]
        fig = diversity_panel(columns["Semantic layout"], collections, f"{display_name(model)}: k = {k} outputs per layout")
        path = figures / f"diversity_{model}.png"
        _save(fig, path)
        figure_files.append((f"Diversity (paper Fig. 6 style): the {k} images {model} synthesizes for each layout.", path.name))

    h, w = meta["image_size_hw"]
    lines = [
        "# crn-repro report",
        "",
        "Reproduction of *Photographic Image Synthesis with Cascaded Refinement Networks* (Chen & Koltun, ICCV 2017).",
        "",
        "## Run",
        "",
        f"- Dataset: **{meta['dataset']}** ({meta['source']}); {meta['splits']['train']['count']} training and "
        f"{meta['splits']['val']['count']} validation frames",
        f"- Layout: c = {len(meta['channel_names'])} channels ({_label_source(meta)}; void last)",
        f"- Resolution: {h}x{w}",
        "",
        "| model | parameters | steps | batch | wall time | device | precision | VGG-19 weights | VGG pooling | loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    random_vgg = False
    for model, s in summaries.items():
        objective = s["objective"]
        loss = ", ".join(f"{k}={v}" for k, v in objective.items())
        trainable = s.get("trainable_parameters", s["parameters"])
        params_count = ", ".join(
            f"{name} {n:,}" + ("" if trainable.get(name, n) == n else f" ({trainable[name]:,} trained)")
            for name, n in s["parameters"].items()
        )
        lines.append(
            f"| {model} | {params_count} | {s['steps']}{'' if s['steps'] >= s['total_steps'] else ' (unfinished)'} | {s['batch_size']} | "
            f"{_fmt_time(s['wall_time_s'])} | {s['device']} | {s['precision']} | {s['vgg']} | {s['vgg_pooling']} | {loss} |"
        )
        random_vgg |= s["vgg"].startswith("random")
    if random_vgg:
        lines += [
            "",
            "> **The VGG-19 perception network has random weights** (`vgg.weights: random`, the offline default). "
            "The feature-matching loss is then not the paper's perceptual loss, and these images demonstrate the "
            "pipeline, not the paper's results. Set `vgg.weights` to `torchvision` or `matconvnet` with a weights "
            "file for a faithful run (see README).",
        ]
    if meta["dataset"] == "synthetic":
        lines += [
            "",
            "> The data is the built-in **synthetic city** (generated from seed "
            f"{meta.get('synthetic_seed')}), not Cityscapes.",
        ]
    lines += _evaluation_section(params, figures)
    curves = {}
    for model in [*SEGMENTERS, *params.models]:
        run = Path(params.paths.runs) / model / "live" / "plots" / "metrics" / "train"
        tsv = run / get_spec(model).main_network / "total.tsv"
        if tsv.is_file():
            df = pd.read_csv(tsv, sep="\t")
            curves[model] = df.rename(columns={df.columns[-1]: "value"})
    if curves:
        _save(training_curves(curves), figures / "training_curves.png")
        lines += [
            "",
            "## Training curves",
            "",
            "Total loss of each model's generator (the segmenter's cross-entropy for `segmenter`) per step; red: running mean.",
            "",
            "![training curves](figures/training_curves.png)",
        ]
    memory = paper_scale_memory()
    lines += [
        "",
        "## Memory: why the full-resolution network does not scale (Sec. 4)",
        "",
        "Activations autograd keeps for the backward pass, one image, fp32, measured by shape on the meta "
        "device (the paper trained the full-resolution network only up to 256x512 on a 12 GB GPU):",
        "",
        "| resolution | network | parameters | activation memory | bytes per parameter |",
        "|---|---|---|---|---|",
    ]
    for row in memory:
        lines.append(
            f"| {row['resolution']} | {row['network']} | {row['parameters']:,} | {row['activation_gib']:.2f} GiB | "
            f"{row['activation_gib'] * 2**30 / row['parameters']:.0f} |"
        )
    lines += [
        "",
        "## Qualitative results",
        "",
    ]
    for caption, name in figure_files:
        lines += [caption, "", f"![{name}](figures/{name})", ""]
    report = reports / "report.md"
    text = "\n".join(lines)
    atomic_write_text(report, text)
    atomic_write_text(reports / "report.html", to_html(text, reports))
    return report


def to_html(markdown_text: str, base: Path) -> str:
    """The report as one self-contained HTML file: figures embedded as data URIs."""
    import base64
    import re

    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])

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


METRIC_TITLES = {
    "segmentation_miou": "Segmentation mIoU (higher is better)",
    "segmentation_pixel_accuracy": "Segmentation pixel accuracy (higher is better)",
    "frechet_distance_segmenter": "Frechet distance, segmenter features (lower is better)",
    "fid": "FID (lower is better)",
    "kid": "KID (lower is better)",
    "realism_score": "Mean realism score (higher is better)",
    "colour_distance": "Class-conditional colour distance (lower is better)",
    "diversity": "Diversity within collections (higher = more diverse)",
}


def _evaluation_section(params: Params, figures: Path) -> list[str]:
    """Tables and charts of reports/metrics.json and reports/preference.csv."""
    reports = Path(params.paths.reports)
    metrics_path, preference_path = reports / "metrics.json", reports / "preference.csv"
    for path in (metrics_path, preference_path):
        if not path.is_file():
            raise CrnError(f"{path}: missing; run `crn-repro evaluate` first")
    metrics = json.loads(metrics_path.read_text())["models"]
    preference = pd.read_csv(preference_path)
    source = preference["source"].iloc[0] if len(preference) else "none"
    lines = [
        "",
        "## Pairwise preference (paper Table 1 shape)",
        "",
        f"Fraction of comparisons (same layout) in which **{params.evaluate.reference_model}** was preferred over each "
        f"baseline, with its 95% Wilson interval and the two-sided exact binomial test against 50%. Source: **{source}**.",
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
            "resample whole workers and whole images, so correlated judgments are not counted as independent; they "
            "are two separate bootstraps, not a crossed one, so each is somewhat too narrow, and they read n/a "
            f"where a comparison has fewer than {stats.MIN_BOOTSTRAP_CLUSTERS} workers (images).",
            "",
        ]
    lines += _preference_rows(preference, ("baseline",))
    curves_path = reports / "time_curves.csv"
    if (human or simulated) and curves_path.is_file():
        curves = pd.read_csv(curves_path)
        if len(curves):
            _save(time_curve_figure(curves, source), figures / "time_curves.png")
            lines += [
                "",
                "### Time-limited judgments (paper Fig. 3)",
                "",
                f"Source: **{source}**. Preference rate of the first image type against exposure time, with 95% Wilson "
                "intervals (paper at 125 ms: Real > pix2pix 72.5%, CRN > pix2pix 73.4%, Real > CRN 52.6%). Trials whose "
                "measured on-screen time missed the target by more than `study.timing_tolerance_ms` were left out by "
                "`crn-repro study analyze` (the source says how many, where any were).",
                "",
                "![time curves](figures/time_curves.png)",
                "",
            ]
            curves = curves.assign(comparison=curves["first"] + " > " + curves["second"], duration=curves.duration_ms.astype(int).astype(str) + " ms")
            lines += _preference_rows(curves, ("comparison", "duration"))
    names = sorted({m for entry in metrics.values() for m in entry}, key=list(METRIC_TITLES).index)
    lines += [
        "",
        "## Automatic metrics",
        "",
        "Each value with its bootstrap 95% interval over validation images. These measure other things than realism "
        "to a person and are reported apart from the human evidence.",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for model, entry in metrics.items():
        cells = [
            f"{_fmt(entry[m]['value'])} [{_fmt(entry[m]['ci_low'])}, {_fmt(entry[m]['ci_high'])}]" if m in entry else "-"
            for m in names
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Protocols:", ""]
    for m in names:
        protocol = next(entry[m]["protocol"] for entry in metrics.values() if m in entry)
        lines.append(f"- **{m}**: {protocol}")
    lines.append("")
    for m in names:
        table = pd.DataFrame(
            [{"model": model, **{k: entry[m][k] for k in ("value", "ci_low", "ci_high")}} for model, entry in metrics.items() if m in entry]
        )
        _save(metric_chart(table, METRIC_TITLES[m]), figures / f"metric_{m}.png")
        lines += [f"![{m}](figures/metric_{m}.png)", ""]
    return lines
