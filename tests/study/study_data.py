"""A fake pipeline for the study tests: the shared tiny prepared split plus hand-made synthesized
images and per-image realism scores, so `study make` runs without training anything."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from crn_repro.datasets import PreparedSplit
from crn_repro.params import Params, parse_params
from crn_repro.synthesize import output_names

# realism score per model (the observer prefers higher ones); crn-diverse has k = 2 outputs
SCORES = {"crn": 1.0, "crn-diverse": 0.8, "fullres": 0.7, "unet": 0.6, "pix2pix": 0.5, "gan-semseg": 0.3, "image-space": 0.1}
MODELS = ("crn", "crn-diverse", "pix2pix", "image-space")  # the default fake pipeline's


def fake_image(real: np.ndarray, model: str, u: int) -> np.ndarray:
    """A model's stand-in output for one layout: the real image, tinted per model and output."""
    shift = (sorted(SCORES).index(model) + 1) * 20 + 7 * u
    return ((real.astype(int) + shift) % 256).astype(np.uint8)


def fake_pipeline(root: Path, tiny_raw: dict, prepared: Path, models=MODELS, adjust=None) -> Params:
    """Params under ``root`` with the prepared split copied from ``prepared``, and for every model
    synth/<model>/ (index.json + PNGs) and reports/per_image/<model>.csv; ``adjust(study)`` changes the
    small study settings made here."""
    raw = copy.deepcopy(tiny_raw)
    raw["paths"] = {k: str(root / k) for k in raw["paths"]}
    raw["models"] = list(models)
    study = raw["study"]
    study.update(dir=str(root / "studies" / "demo"), jobs=3, image_size_wh=[64, 32], bootstrap_resamples=50)
    study["paper"].update(models=None, test_pairs_per_job=4, sentinels_per_job=2, jobs_per_model=None)
    study["mixed"].update(models=None, test_pairs_per_job=6, sentinels_per_job=2)
    study["timed"].update(durations_ms=[125, 1000], pairs=[["real", "crn"], ["crn", "pix2pix"]], test_pairs_per_job=8,
                          sentinels_per_job=2)
    study["hype"].update(models=["crn", "pix2pix"], real_per_job=3, fake_per_job=3, sentinels_per_job=1, jobs_per_model=None)
    if adjust is not None:
        adjust(study)
    params = parse_params(raw, "study test params")
    shutil.copytree(prepared, params.paths.prepared)
    val = PreparedSplit(Path(params.paths.prepared), "val")
    for model in models:
        k = 2 if model == "crn-diverse" else 1
        folder = Path(params.paths.synth) / model
        folder.mkdir(parents=True)
        for i, name in enumerate(val.names):
            for u, file in enumerate(output_names(name, k)):
                Image.fromarray(fake_image(np.asarray(val.images[i]), model, u)).save(folder / file)
        (folder / "index.json").write_text(json.dumps({"model": model, "k": k, "names": val.names, "facts": {}}))
        per_image = Path(params.paths.reports) / "per_image"
        per_image.mkdir(parents=True, exist_ok=True)
        scores = [SCORES[model] + 0.01 * i for i in range(len(val))]
        pd.DataFrame({"model": model, "image": val.names, "realism_score": scores}).to_csv(per_image / f"{model}.csv", index=False)
    return params
