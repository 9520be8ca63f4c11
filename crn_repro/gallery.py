"""The report's gallery: every validation layout with every model's images, two ways.

- one page per model (``<model>.html``): each validation layout, the images the model synthesized for it
  and the reference image, one row each (the page pix2pix users know from its ``index.html``);
- one page per layout (``layouts/<name>.html``): the layout, every model's image side by side and the
  reference, as papers compare methods, then every output of the models with several;
- ``index.html`` links them all.

Everything a page shows lies in the gallery folder, so the committed report is whole in a clone: the
layouts, references and synthesized images are copied beside the pages as JPEG (at most 512 pixels wide;
the synthesized ones at most 256, as shown). The full-size PNGs stay where the synthesize stage writes
them (``paths.synth``, a DVC output that git does not hold); each page says so and how to make them.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crn_repro.files import atomic_write_bytes, atomic_write_text, read_image

THUMB_WIDTH = 512  # layouts and references
SYNTH_WIDTH = 256  # synthesized images: the width a page shows them at

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ddd;padding:4px;vertical-align:top;font-size:0.8em}img{display:block;width:256px}"
    "th{background:#f4f4f4;position:sticky;top:0}nav{margin:0.5em 0}"
)


@dataclass(frozen=True)
class ModelImages:
    """A model's synthesized validation images: ``images[i]`` are the k files of layout i, under ``source``."""

    model: str
    k: int
    images: list[list[Path]]
    source: str


def _jpeg(array: np.ndarray, width: int = THUMB_WIDTH) -> bytes:
    image = Image.fromarray(array)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_inputs(folder: Path, names: list[str], layouts: list[np.ndarray], references: list[np.ndarray]) -> None:
    """The coloured layout and the reference image of every validation frame, under ``folder/inputs``."""
    for name, layout, reference in zip(names, layouts, references):
        atomic_write_bytes(folder / "inputs" / f"{name}_layout.jpg", _jpeg(layout))
        atomic_write_bytes(folder / "inputs" / f"{name}_reference.jpg", _jpeg(reference))


def copy_synthesized(folder: Path, model: ModelImages) -> list[list[str]]:
    """Every synthesized image of ``model`` as a JPEG under ``folder/images/<model>/``; their paths relative
    to ``folder``, per layout."""
    fix = f"run `crn-repro synthesize --model {model.model}` (or dvc repro) again"
    out = []
    for files in model.images:
        row = []
        for file in files:
            relative = f"images/{model.model}/{Path(file).stem}.jpg"
            atomic_write_bytes(folder / relative, _jpeg(read_image(file, fix), SYNTH_WIDTH))
            row.append(relative)
        out.append(row)
    return out


def _img(src: str, alt: str, prefix: str = "") -> str:
    return f'<img src="{html.escape(prefix + src)}" alt="{html.escape(alt)}">'


def _full_size_note(models: list[ModelImages]) -> str:
    parents = sorted({str(Path(m.source).parent) for m in models})
    where = ", ".join(f"{parent}/<model>/" for parent in parents)
    return (f"The synthesized images are JPEG copies kept with the report; the full-size PNGs are the synthesize "
            f"stage's output ({where}), a DVC output that git does not hold: dvc repro (or dvc pull from your DVC "
            f"remote) writes them.")


def model_page(model: ModelImages, names: list[str], shown: list[list[str]], note: str) -> str:
    """One model's page: per validation frame its layout, name, the k synthesized images and the reference."""
    k = model.k
    head = "<tr><th>layout</th><th>name</th>" + "".join(
        f"<th>synthesized{'' if k == 1 else f' u = {u}'}</th>" for u in range(k)) + "<th>reference</th></tr>"
    rows = []
    for name, images in zip(names, shown):
        cells = [f"<td>{_img(f'inputs/{name}_layout.jpg', 'layout')}</td>",
                 f'<td><a href="layouts/{html.escape(name)}.html">{html.escape(name)}</a></td>']
        cells += [f"<td>{_img(src, 'synthesized')}</td>" for src in images]
        cells.append(f"<td>{_img(f'inputs/{name}_reference.jpg', 'reference')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _page(f"{model.model}: every validation layout", f"<p>{html.escape(note)}</p><table>{head}{''.join(rows)}</table>")


def layout_page(i: int, names: list[str], models: list[ModelImages], shown: dict[str, list[list[str]]], note: str) -> str:
    """Layout ``i``'s page (written in ``layouts/``): the layout, every model's first image side by side and
    the reference; then every output of each model with several."""
    name, up = names[i], "../"
    nav = " | ".join(filter(None, [
        f'<a href="{html.escape(names[i - 1])}.html">previous</a>' if i > 0 else "",
        '<a href="../index.html">index</a>',
        f'<a href="{html.escape(names[i + 1])}.html">next</a>' if i + 1 < len(names) else ""]))
    head = "<tr><th>layout</th>" + "".join(
        f'<th><a href="../{html.escape(m.model)}.html">{html.escape(m.model)}</a></th>' for m in models) + "<th>reference</th></tr>"
    row = (f"<tr><td>{_img(f'inputs/{name}_layout.jpg', 'layout', up)}</td>"
           + "".join(f"<td>{_img(shown[m.model][i][0], m.model, up)}</td>" for m in models)
           + f"<td>{_img(f'inputs/{name}_reference.jpg', 'reference', up)}</td></tr>")
    body = f"<nav>{nav}</nav><p>{html.escape(note)}</p><table>{head}{row}</table>"
    for m in models:
        if m.k > 1:
            cells = "".join(f"<th>u = {u}</th>" for u in range(m.k))
            images = "".join(f"<td>{_img(src, f'{m.model} u = {u}', up)}</td>" for u, src in enumerate(shown[m.model][i]))
            body += f"<h2>{html.escape(m.model)}: all {m.k} outputs</h2><table><tr>{cells}</tr><tr>{images}</tr></table>"
    return _page(f"{name}: every model", body)


def index_page(title: str, models: list[ModelImages], names: list[str]) -> str:
    """Links to the model pages and to the layout pages."""
    pages = "".join(f'<li><a href="{html.escape(m.model)}.html">{html.escape(m.model)}</a> '
                    f'({m.k} image{"s" if m.k > 1 else ""} per layout)</li>' for m in models)
    layouts = "".join(f'<li><a href="layouts/{html.escape(n)}.html">{html.escape(n)}</a></li>' for n in names)
    return _page(title, f"<h2>Per model</h2><ul>{pages}</ul><h2>Per layout: every model side by side</h2><ul>{layouts}</ul>")


def write_gallery(folder: Path, names: list[str], layouts: list[np.ndarray], references: list[np.ndarray],
                  models: list[ModelImages], dataset: str) -> None:
    """The whole gallery under ``folder`` (module docstring)."""
    folder = Path(folder)
    write_inputs(folder, names, layouts, references)
    shown = {m.model: copy_synthesized(folder, m) for m in models}
    note = f"{len(names)} validation layouts of {dataset}. " + _full_size_note(models)
    for m in models:
        atomic_write_text(folder / f"{m.model}.html", model_page(m, names, shown[m.model], note))
    for i, name in enumerate(names):
        atomic_write_text(folder / "layouts" / f"{name}.html", layout_page(i, names, models, shown, note))
    atomic_write_text(folder / "index.html", index_page("crn-repro gallery: every validation layout", models, names))


def _page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
