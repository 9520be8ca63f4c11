"""The report's gallery: one HTML page per model with every validation layout, the images the model
synthesized for it and the reference image, one row each (the page pix2pix users know from its
``index.html``), and an index of the pages.

The synthesized images are linked where the synthesize stage wrote them (``paths.synth``), not copied;
the layouts and references are written once beside the pages, as JPEG at most 512 pixels wide.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from crn_repro.files import atomic_write_bytes, atomic_write_text

THUMB_WIDTH = 512

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ddd;padding:4px;vertical-align:top;font-size:0.8em}img{display:block;width:256px}"
    "th{background:#f4f4f4;position:sticky;top:0}"
)


def _jpeg(array: np.ndarray) -> bytes:
    image = Image.fromarray(array)
    if image.width > THUMB_WIDTH:
        image = image.resize((THUMB_WIDTH, round(image.height * THUMB_WIDTH / image.width)), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_inputs(folder: Path, names: list[str], layouts: list[np.ndarray], references: list[np.ndarray]) -> None:
    """The coloured layout and the reference image of every validation frame, under ``folder/inputs``."""
    for name, layout, reference in zip(names, layouts, references):
        atomic_write_bytes(folder / "inputs" / f"{name}_layout.jpg", _jpeg(layout))
        atomic_write_bytes(folder / "inputs" / f"{name}_reference.jpg", _jpeg(reference))


def model_page(title: str, names: list[str], synthesized: list[list[Path]], folder: Path, note: str) -> str:
    """One model's page: per validation frame its name, layout, the k synthesized images (linked
    relative to ``folder``, where the page is written) and the reference image."""
    k = len(synthesized[0]) if synthesized else 1
    head = "<tr><th>layout</th><th>name</th>" + "".join(
        f"<th>synthesized{'' if k == 1 else f' u = {u}'}</th>" for u in range(k)) + "<th>reference</th></tr>"
    rows = []
    for name, images in zip(names, synthesized):
        cells = [f'<td><img src="inputs/{html.escape(name)}_layout.jpg" alt="layout"></td>', f"<td>{html.escape(name)}</td>"]
        cells += [f'<td><a href="{html.escape(_relative(p, folder))}"><img src="{html.escape(_relative(p, folder))}" alt="synthesized"></a></td>'
                  for p in images]
        cells.append(f'<td><img src="inputs/{html.escape(name)}_reference.jpg" alt="reference"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _page(title, f"<p>{html.escape(note)}</p><table>{head}{''.join(rows)}</table>")


def index_page(title: str, pages: list[tuple[str, str, int]]) -> str:
    """Links to the model pages: (file name, the model's name, images per frame)."""
    items = "".join(f'<li><a href="{html.escape(file)}">{html.escape(name)}</a> ({k} image{"s" if k > 1 else ""} per layout)</li>'
                    for file, name, k in pages)
    return _page(title, f"<ul>{items}</ul>")


def write_page(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
