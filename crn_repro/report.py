"""The `report` stage: reports/report.md and the qualitative figure (paper Fig. 4/5 style: semantic
layout | reference | each model, one row per validation layout).

Plotting functions are pure (data in, Figure out); ``write_report`` does the file I/O.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from crn_repro.checkpoint import atomic_write_text  # noqa: E402
from crn_repro.datasets import PreparedSplit, read_prepared_meta  # noqa: E402
from crn_repro.errors import CrnError  # noqa: E402
from crn_repro.labels import colorize_channels  # noqa: E402
from crn_repro.params import Params  # noqa: E402
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


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CrnError(f"{path}: synthesized image missing; run `crn-repro synthesize` for this model")
    return np.asarray(Image.open(path).convert("RGB"))


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_report(params: Params) -> Path:
    """Write ``reports/report.md`` and ``reports/figures/qualitative.png``; returns the report path."""
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
        "Semantic layout": [colorize_channels(np.asarray(val.labels[i])) for i in rows],
        "Reference": [np.asarray(val.images[i]) for i in rows],
    }
    for model in params.models:
        folder = Path(params.paths.synth) / model
        columns[model.upper() if model == "crn" else model] = [
            _read_png(folder / output_names(val.names[i], indexes[model]["k"])[0]) for i in rows
        ]
    fig = qualitative_grid(columns, [val.names[i] for i in rows])
    qualitative = figures / "qualitative.png"
    fig.savefig(qualitative, dpi=150)
    plt.close(fig)

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
        f"- Resolution: {h}x{w}",
        "",
        "| model | parameters | steps | batch | wall time | device | precision | VGG-19 weights | VGG pooling | loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    random_vgg = False
    for model, s in summaries.items():
        objective = s["objective"]
        loss = ", ".join(f"{k}={v}" for k, v in objective.items())
        params_count = ", ".join(f"{name} {n:,}" for name, n in s["parameters"].items())
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
    lines += [
        "",
        "## Qualitative results",
        "",
        "Validation layouts: semantic layout (Cityscapes colours), reference image, and each model's synthesis.",
        "",
        f"![qualitative](figures/{qualitative.name})",
        "",
    ]
    report = reports / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report
