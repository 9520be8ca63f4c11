"""The `synthesize` stage: run a trained model's generator on every validation layout and write
its images as PNG (clipped to 0..255). A model with k outputs writes all k images per layout.
The generator reads the layout as it did in training (the model file's kwargs say how, e.g. pix2pix's
official colour label map).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from crn_repro.datasets import PreparedSplit, tensor_to_image
from crn_repro.files import atomic_write_json
from crn_repro.params import Params
from crn_repro.progress import StageProgress
from crn_repro.registry import get_spec, load_model


def output_names(stem: str, k: int) -> list[str]:
    """File names of the k images synthesized for the layout ``stem``."""
    return [f"{stem}.png"] if k == 1 else [f"{stem}_k{u}.png" for u in range(k)]


@torch.no_grad()
def synthesize(params: Params, model: str, console: Console | None = None) -> dict:
    """Write ``paths.synth/<model>/*.png`` and ``index.json``; returns the index."""
    console = console or Console(stderr=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nets, info = load_model(Path(params.paths.runs) / model / "model.pt", device)
    generator = nets["G"]
    val = PreparedSplit(Path(params.paths.prepared), "val")
    reads = get_spec(info["model"]).reads(info["network_kwargs"])
    val.require(reads)
    out = Path(params.paths.synth) / model
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return index
