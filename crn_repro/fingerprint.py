"""The run fingerprint: which saved training states the current params may resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from crn_repro.config import to_dict
from crn_repro.datasets import read_prepared_meta
from crn_repro.params import Params


def run_fingerprint(model: str, network_kwargs: dict, params: Params, objective_identity: dict, global_batch: int) -> str:
    """Hash of every setting that makes a saved state incompatible with the current params: the
    networks, objective, optimizers, the training data (the prepared cache's dataset, size, label
    space, how labels were read, and its training split's count and class frequencies), seed and
    global batch size (which fix the batch of every step), the initialisation file and frozen modules,
    and what the objective itself depends on (e.g. the VGG weights, a frozen segmenter's file). Other
    paths, validation-only settings, step counts and how the step is computed (processes for the
    same global batch, precision, compilation, checkpointing) are left out, so changing them resumes
    instead of starting over. (The initialisation file only matters at step 0: a resumed run neither
    rereads nor needs it.)"""
    mp = params.model(model)
    data = params.data
    meta = read_prepared_meta(Path(params.paths.prepared))
    # Kept labelIds (label_id_colors) only matter to the models that read them, whose network_kwargs say so.
    skip = ("source", "splits", "label_id_colors")
    meta = {k: v for k, v in meta.items() if k not in skip} | {"train": meta["splits"]["train"]}
    identity = {
        "model": model,
        "network_kwargs": network_kwargs,
        "objective": to_dict(mp.objective),
        "objective_inputs": objective_identity,
        "optimizer": to_dict(mp.optimizer),
        "data": [data.dataset, list(data.image_size_hw), data.max_train_images],
        "prepared": meta,
        "seed": mp.train.seed,
        "batch_size": global_batch,
        "init_from": mp.train.init_from,
        "train_last_modules": mp.train.train_last_modules,
    }
    if mp.train.adam_epsilon != "pytorch":  # the default leaves earlier fingerprints as they were
        identity["adam_epsilon"] = mp.train.adam_epsilon
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
