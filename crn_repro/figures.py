"""The report's figures: pure functions, data in and a matplotlib Figure out (the caller saves it).

- ``qualitative_grid``: paper Fig. 4/5 style, layout | reference | each model, one row per layout;
- ``diversity_panel``: paper Fig. 6 style, a layout and the k images synthesized for it;
- ``class_legend``: the colours of the layout classes;
- ``metrics_figure``: every automatic metric, one small panel each, with its intervals;
- ``time_curve_figure``: paper Fig. 3, preference against exposure time, with the paper's rates;
- ``training_curves``: each model's training loss per step.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

LABEL_SIZE = 8


def qualitative_grid(columns: dict[str, list[np.ndarray]], row_labels: list[str] | None = None) -> Figure:
    """A grid of images: one column per entry of ``columns`` (title -> images, all the same length);
    ``row_labels`` name the rows, written beside the first column."""
    titles = list(columns)
    rows = len(columns[titles[0]])
    h, w = columns[titles[0]][0].shape[:2]
    cell_w = 2.4
    label_w = 1.5 if row_labels else 0.0
    fig, axes = plt.subplots(
        rows, len(titles), figsize=(cell_w * len(titles) + label_w, cell_w * h / w * rows + 0.5), squeeze=False
    )
    for c, title in enumerate(titles):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(columns[title][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=LABEL_SIZE + 1)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=LABEL_SIZE, labelpad=6)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.2)
    return fig


def diversity_panel(layouts: list[np.ndarray], collections: list[list[np.ndarray]], title: str) -> Figure:
    """Paper Fig. 6 style: per row a semantic layout and the k images of its synthesized collection,
    the columns headed u = 0 .. k - 1 and the title above them (never over them)."""
    k = len(collections[0])
    h, w = layouts[0].shape[:2]
    cell_w = 1.7
    fig, axes = plt.subplots(
        len(layouts), k + 1, figsize=(cell_w * (k + 1), cell_w * h / w * len(layouts) + 1.0), squeeze=False
    )
    for r, (layout, images) in enumerate(zip(layouts, collections)):
        for c, image in enumerate([layout] + list(images)):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("Semantic layout" if c == 0 else f"u = {c - 1}", fontsize=LABEL_SIZE)
    fig.suptitle(title, fontsize=LABEL_SIZE + 2)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def class_legend(names: list[str], colors: list[tuple[int, int, int]], columns: int = 5) -> Figure:
    """The colour of every layout class, as the layouts in the figures draw them."""
    rows = int(np.ceil(len(names) / columns))
    fig = plt.figure(figsize=(2.2 * columns, 0.28 * rows + 0.3))
    handles = [Patch(facecolor=np.asarray(color) / 255, edgecolor="black", linewidth=0.4, label=name)
               for name, color in zip(names, colors)]
    fig.legend(handles=handles, loc="center", ncol=columns, fontsize=LABEL_SIZE, frameon=False, handlelength=1.4)
    return fig


def metrics_figure(tables: dict[str, pd.DataFrame], titles: dict[str, str]) -> Figure:
    """Small multiples: one panel per metric (``tables``: name -> columns model, value, ci_low, ci_high),
    horizontal bars with their 95% intervals, the models in the same order in every panel (each panel
    lists the models the metric applies to) and the title on two lines (name, direction)."""
    names = list(tables)
    columns = min(3, len(names))
    rows = int(np.ceil(len(names) / columns))
    order = list(dict.fromkeys(m for table in tables.values() for m in table["model"]))
    height = 0.22 * len(order) + 1.0
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, height * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        models = [m for m in order if m in set(tables[name]["model"])]  # the models this metric applies to
        table = tables[name].set_index("model").reindex(models)
        y = np.arange(len(models))
        err = np.vstack([table["value"] - table["ci_low"], table["ci_high"] - table["value"]]).clip(min=0)
        ax.barh(y, table["value"], xerr=np.nan_to_num(err), color="#4c72b0", ecolor="black", capsize=2, height=0.6)
        ax.set_yticks(y, models, fontsize=LABEL_SIZE - 1)
        ax.set_ylim(len(order) - 0.5, -0.5)  # the same scale in every panel: a bar is as tall everywhere
        title = titles.get(name, name)
        ax.set_title(title.replace(" (", "\n(", 1), fontsize=LABEL_SIZE)
        ax.tick_params(axis="x", labelsize=LABEL_SIZE - 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout(pad=0.4)
    return fig


def time_curve_figure(curves: pd.DataFrame, title: str | None = None, paper: dict | None = None) -> Figure:
    """Paper Fig. 3: preference rate against exposure time (log scale), one line per pair type, with
    95% Wilson intervals; ``curves`` as written by ``judgments.time_curves``; ``title`` says whose
    judgments they are; ``paper`` ((first, second) -> {ms: rate}) adds the paper's rates, hollow."""
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    if title:
        ax.set_title(title, fontsize=LABEL_SIZE)
    colors = {}
    for (first, second), g in curves.groupby(["first", "second"]):
        g = g.sort_values("duration_ms")
        line = ax.errorbar(
            g["duration_ms"], g["rate"], yerr=[g["rate"] - g["ci_low"], g["ci_high"] - g["rate"]],
            marker="o", ms=3, capsize=2, label=f"{first} > {second}",
        )
        colors[(first, second)] = line[0].get_color()
    for pair, points in (paper or {}).items():
        if pair in colors:
            ms = sorted(points)
            ax.plot(ms, [points[m] for m in ms], ls=":", marker="o", mfc="none", ms=5, color=colors[pair],
                    label=f"{pair[0]} > {pair[1]} (paper)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    durations = sorted(curves["duration_ms"].unique())
    ax.set_xticks(durations, [str(int(d)) for d in durations])
    ax.minorticks_off()
    ax.set_xlabel("exposure time (ms)", fontsize=LABEL_SIZE)
    ax.set_ylabel("preference rate", fontsize=LABEL_SIZE)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=LABEL_SIZE - 1)
    ax.tick_params(labelsize=LABEL_SIZE - 1)
    fig.tight_layout()
    return fig


def training_curves(curves: dict[str, tuple[str, pd.DataFrame]]) -> Figure:
    """One panel per model: a training loss per logged step (``curves``: model -> (the loss's name,
    columns step, value)), the values and their running mean."""
    n = len(curves)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows), squeeze=False)
    for ax, (model, (loss, df)) in zip(axes.flat, curves.items()):
        ax.plot(df["step"], df["value"], lw=0.6, color="#999999")
        window = max(1, len(df) // 10)
        ax.plot(df["step"], df["value"].rolling(window, min_periods=1).mean(), lw=1.2, color="#c44e52")
        ax.set_title(model, fontsize=LABEL_SIZE + 1)
        ax.set_xlabel("step", fontsize=LABEL_SIZE)
        ax.set_ylabel(loss, fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=LABEL_SIZE - 1)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
