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
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from crn_repro.checkpoint import atomic_write_text  # noqa: E402
from crn_repro.datasets import PreparedSplit, read_prepared_meta  # noqa: E402
from crn_repro.errors import CrnError  # noqa: E402
from crn_repro.labels import colorize_channels  # noqa: E402
from crn_repro.params import Params  # noqa: E402
from crn_repro.synthesize import output_names  # noqa: E402


DISPLAY_NAMES = {
    "crn": "CRN",
    "crn-diverse": "CRN (diverse, u=0)",
    "image-space": "Image-space loss",
    "fullres": "Full-resolution net",
    "unet": "Encoder-decoder",
    "pix2pix": "pix2pix",
    "gan-semseg": "GAN+SemSeg",
}


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


def paper_scale_memory() -> list[dict]:
    """Activation memory (batch 1, fp32) of the paper's CRN presets and the full-resolution network
    with 10 layers x 256 maps (Sec. 4) at the same resolutions, sized on the meta device."""
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
        columns[DISPLAY_NAMES.get(model, model)] = [
            _read_png(folder / output_names(val.names[i], indexes[model]["k"])[0]) for i in rows
        ]
    figure_files = []
    fig = qualitative_grid(columns, [val.names[i] for i in rows])
    qualitative = figures / "qualitative.png"
    fig.savefig(qualitative, dpi=150)
    fig.savefig(qualitative.with_suffix(".pdf"))
    plt.close(fig)
    figure_files.append(("Qualitative comparison (paper Fig. 4/5 style): semantic layout, reference image, "
                         "and the first output of each model.", qualitative.name))
    for model in params.models:
        k = indexes[model]["k"]
        if k == 1:
            continue
        folder = Path(params.paths.synth) / model
        collections = [[_read_png(folder / name) for name in output_names(val.names[i], k)] for i in rows]
        fig = diversity_panel(columns["Semantic layout"], collections, f"{DISPLAY_NAMES.get(model, model)}: k = {k} outputs per layout")
        path = figures / f"diversity_{model}.png"
        fig.savefig(path, dpi=150)
        fig.savefig(path.with_suffix(".pdf"))
        plt.close(fig)
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
    atomic_write_text(report, "\n".join(lines))
    return report
