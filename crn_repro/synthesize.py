"""The `synthesize` stage: run a trained model's generator on every validation layout and write
its images as PNG (clipped to 0..255). A model with k outputs writes all k images per layout.
The generator reads the layout as it did in training (the model file's kwargs say how, e.g. pix2pix's
official colour label map).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from crn_repro.datasets import PreparedSplit, channels_to_layout, tensor_to_image
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_json, read_json, staged_dir
from crn_repro.labels import colors_to_channels, label_ids_to_channels
from crn_repro.params import Params
from crn_repro.progress import StageProgress
from crn_repro.registry import get_spec, load_model


def output_names(stem: str, k: int) -> list[str]:
    """File names of the k images synthesized for the layout ``stem``."""
    return [f"{stem}.png"] if k == 1 else [f"{stem}_k{u}.png" for u in range(k)]


def read_index(folder: Path, model: str) -> dict:
    """The ``index.json`` of a model's synthesized set (``folder``): its layout names, k and the model
    file's facts, checked; a missing or foreign file is a one-line error saying to synthesize again."""
    index_path = Path(folder) / "index.json"
    again = f"run `crn-repro synthesize --model {model}` again"
    index = read_json(index_path, again)
    if not isinstance(index, dict) or not {"names", "k", "facts"} <= set(index):
        raise CrnError(f"{index_path}: not a synthesized set's index (names, k, facts); {again}")
    return index


@torch.no_grad()
def synthesize(params: Params, model: str, console: Console | None = None) -> dict:
    """Write ``paths.synth/<model>/*.png`` and ``index.json``; returns the index."""
    console = console or Console(stderr=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nets, info = load_model(Path(params.paths.runs) / model / "model.pt", device, expected=model)
    generator = nets["G"]
    val = PreparedSplit(Path(params.paths.prepared), "val")
    classes = info["facts"].get("num_classes")
    if classes is not None and classes != val.num_classes:
        raise CrnError(f"{Path(params.paths.runs) / model / 'model.pt'}: made for {classes} layout channels, the prepared "
                       f"data has {val.num_classes}; prepare the dataset the model was trained on")
    reads = get_spec(info["model"]).reads(info["network_kwargs"])
    val.require(reads)
    out = Path(params.paths.synth) / model
    with staged_dir(out) as tmp:  # swapped in whole, or removed on any error
        # the precision the model was trained in (bf16 autocast on CUDA by default)
        bf16 = device.type == "cuda" and info["facts"].get("precision", "").startswith("bf16")
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
        k = None
        with StageProgress(console) as progress:
            task = progress.add_task(f"synthesize {model}", total=len(val))
            for start in range(0, len(val), params.synthesize.batch_size):
                indices = np.arange(start, min(start + params.synthesize.batch_size, len(val)))
                layout, _ = val.batch(indices, device, reads)
                with autocast:
                    generated = generator(layout).float()
                k = generated.shape[1] // 3
                for u in range(k):
                    images = tensor_to_image(generated[:, 3 * u : 3 * u + 3])
                    for i, image in zip(indices, images):
                        Image.fromarray(image).save(tmp / output_names(val.names[i], k)[u])
                progress.advance(task, len(indices))
        index = {"model": model, "k": k, "names": val.names, "facts": info["facts"]}
        atomic_write_json(tmp / "index.json", index)
    return index


LABEL_FORMATS = ("label_ids", "color", "nyu")
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless: label ids survive
JPEG_SUFFIXES = (".jpg", ".jpeg")  # found and refused, not skipped silently
ASPECT_TOLERANCE = 0.01  # relative difference of width/height above which a layout is said to be stretched


def _jpeg_refused(path: Path) -> CrnError:
    return CrnError(f"{path}: a JPEG label image; JPEG compression invents label ids at every region edge, so "
                    f"give the labels as PNG (lossless)")


def read_label_map(path: Path, label_format: str, num_classes: int, size_hw: tuple[int, int]) -> np.ndarray:
    """One label image as layout channels (H, W) uint8 at ``size_hw`` (checked at full size, then resized
    nearest, as ``prepare`` resizes labels): ``label_ids`` a Cityscapes labelIds PNG, ``color`` a Cityscapes colour label PNG,
    ``nyu`` a class-index image with 0 = unlabeled (void) and 1..num_classes-1 the classes (the 40-class
    NYU images). Unknown labels or colours, and JPEG-compressed images whatever their name, are one-line
    errors naming the file."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG" or str(image.info.get("compression", "")).startswith(("jpeg", "tiff_jpeg")):
                raise _jpeg_refused(path)
            image.load()
            if label_format == "color":
                if image.mode not in ("RGB", "RGBA", "P"):
                    raise CrnError(f"{path}: expected an RGB colour label image, got mode {image.mode}; use --label-format")
                image = image.convert("RGB")
            elif image.mode not in ("L", "P", "I", "I;16"):
                raise CrnError(f"{path}: expected a single-channel label image, got mode {image.mode}; use --label-format color")
            values = np.asarray(image)  # checked at full size: a resize could drop the offending pixels
    except (OSError, SyntaxError, ValueError) as error:
        raise CrnError(f"{path}: not a readable image ({error})") from None
    if label_format == "color":
        try:
            channels = colors_to_channels(values)
        except ValueError as error:
            raise CrnError(f"{path}: {error}; give Cityscapes colour labels or another --label-format") from None
    else:
        channels = _index_channels(path, values.astype(np.int64), label_format, num_classes)
    if channels.max(initial=0) >= num_classes:
        raise CrnError(f"{path}: layout channel {int(channels.max())} beyond the model's {num_classes} channels; "
                       f"this model was trained on another label set")
    resized = Image.fromarray(channels.astype(np.uint8)).resize((size_hw[1], size_hw[0]), Image.NEAREST)  # as prepare resizes labels
    return np.asarray(resized)


def _index_channels(path: Path, values: np.ndarray, label_format: str, num_classes: int) -> np.ndarray:
    """Layout channels of a single-channel label image: Cityscapes labelIds or NYU class indices."""
    if label_format == "label_ids":
        try:
            return label_ids_to_channels(values)
        except ValueError as error:
            raise CrnError(f"{path}: {error}; give labelIds PNGs or another --label-format") from None
    # nyu: 0 is void (the last channel), 1.. the classes
    if values.max(initial=0) >= num_classes or values.min(initial=0) < 0:
        raise CrnError(f"{path}: class {int(values.max())} beyond the model's {num_classes - 1} classes (0 = unlabeled)")
    return np.where(values == 0, num_classes - 1, values - 1)


def release_grid(images: list[np.ndarray]) -> np.ndarray:
    """k images (H, W, 3) tiled row by row into a ceil(sqrt k) wide grid, as the release showed its 9 outputs."""
    k = len(images)
    columns = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / columns))
    h, w = images[0].shape[:2]
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for u, image in enumerate(images):
        grid[(u // columns) * h : (u // columns + 1) * h, (u % columns) * w : (u % columns + 1) * w] = image
    return grid


@torch.no_grad()
def synthesize_layouts(model_file: Path, labels: Path, out: Path, label_format: str = "label_ids",
                       release_layout: bool = False, batch_size: int = 4, console: Console | None = None,
                       expected: str | None = None) -> dict:
    """Run a model file's generator on every label image ``labels`` names (``label_files``: a folder, or one
    file; any size: resized to the model's resolution, at which every output is, with a warning for another
    aspect ratio) and write ``out/<stem>.png`` (k > 1: ``<stem>_k<u>.png``) and ``index.json``; with
    ``release_layout`` the release's files instead: ``<stem>_output.jpg``, k > 1 as one grid."""
    console = console or Console(stderr=True)
    if label_format not in LABEL_FORMATS:
        raise CrnError(f"--label-format {label_format!r}: one of {', '.join(LABEL_FORMATS)}")
    files = label_files(Path(labels))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CrnError(f"--out {out}: a file, not a folder; name a folder to write the images to")
    if out.exists() and not (out / "index.json").is_file() and any(out.iterdir()):
        raise CrnError(f"{out}: a folder that synthesize did not write; choose a new --out folder")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nets, info = load_model(Path(model_file), device, expected=expected)
    spec = get_spec(info["model"])
    if spec.reads(info["network_kwargs"]) != "layout":
        raise CrnError(f"{model_file}: this {info['model']} model reads colour label maps, not layouts; use the pipeline's synthesize")
    num_classes = info["facts"].get("num_classes") or info["network_kwargs"]["G"].get("num_classes")
    size_hw = tuple(info["facts"]["image_size_hw"])
    _say_stretched(files, size_hw, console)
    generator = nets["G"]
    names = []
    with staged_dir(Path(out)) as tmp, StageProgress(console) as progress:
        task = progress.add_task(f"synthesize {len(files)} layouts", total=len(files))
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            channels = np.stack([read_label_map(p, label_format, num_classes, size_hw) for p in chunk])
            generated = generator(channels_to_layout(torch.from_numpy(channels).to(device), num_classes)).float()
            k = generated.shape[1] // 3
            images = [tensor_to_image(generated[:, 3 * u : 3 * u + 3]) for u in range(k)]
            for i, path in enumerate(chunk):
                if release_layout:
                    picture = images[0][i] if k == 1 else release_grid([images[u][i] for u in range(k)])
                    Image.fromarray(picture).save(tmp / f"{path.stem}_output.jpg", quality=95)
                else:
                    for u, name in enumerate(output_names(path.stem, k)):
                        Image.fromarray(images[u][i]).save(tmp / name)
                names.append(path.stem)
            progress.advance(task, len(chunk))
        index = {"model": info["model"], "k": k, "names": names, "facts": info["facts"], "labels": str(labels),
                 "label_format": label_format, "release_layout": release_layout, "image_size_hw": list(size_hw)}
        atomic_write_json(tmp / "index.json", index)
    return index


def label_files(labels: Path) -> list[Path]:
    """The label images ``--labels`` names: one image file, or every lossless image in a folder. JPEG
    files are refused (one line), not skipped, and so is a folder without label images."""
    if labels.is_file():
        files = [labels]
    elif labels.is_dir():
        files = sorted(p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + JPEG_SUFFIXES)
    else:
        raise CrnError(f"{labels}: no such label image or folder of label images")
    jpeg = [p for p in files if p.suffix.lower() in JPEG_SUFFIXES]
    if jpeg:
        raise _jpeg_refused(jpeg[0] if len(jpeg) == 1 else labels / f"{jpeg[0].name} and {len(jpeg) - 1} more")
    if labels.is_file() and labels.suffix.lower() not in IMAGE_SUFFIXES:
        raise CrnError(f"{labels}: not a label image ({', '.join(IMAGE_SUFFIXES)})")
    if not files:
        raise CrnError(f"{labels}: no label images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _say_stretched(files: list[Path], size_hw: tuple[int, int], console: Console) -> None:
    """One line naming the layouts whose aspect ratio is not the model's: they are resized to the model's
    resolution all the same (every output is at it), so their images come out stretched."""
    h, w = size_hw
    stretched = []
    for path in files:
        with contextlib.suppress(OSError, SyntaxError, ValueError):  # unreadable files fail with their own line later
            with Image.open(path) as image:
                fw, fh = image.size
            if abs((fw / fh) / (w / h) - 1) > ASPECT_TOLERANCE:
                stretched.append(f"{path.name} ({fw}x{fh})")
    if stretched:
        more = f" and {len(stretched) - 3} more" if len(stretched) > 3 else ""
        console.print(f"warning: {', '.join(stretched[:3])}{more}: another aspect ratio than the model's {w}x{h} "
                      f"(width x height); resized to {w}x{h} all the same, so the images come out stretched; "
                      f"crop or pad the layouts to {w}:{h} for undistorted ones", highlight=False, markup=False, soft_wrap=True)
