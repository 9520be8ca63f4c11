"""The release's progressive schedule (docs/facts.md §3): initialise a higher-resolution CRN from a
lower-resolution model file, optionally training only the last modules."""

from __future__ import annotations

import copy

import pytest
import torch

from crn_repro.registry import load_model
from crn_repro.errors import CrnError
from crn_repro.params import parse_params
from crn_repro.prepare import prepare
from crn_repro.trainer import train


def _raw(raw, tmp_path, name, size_hw, widths, **train_overrides):
    raw = copy.deepcopy(raw)
    raw["paths"] = {k: str(tmp_path / name / k) for k in raw["paths"]}
    raw["data"]["image_size_hw"] = list(size_hw)
    raw["crn"]["network"]["widths"] = widths
    raw["crn"]["train"] = train_overrides
    return raw


def _run(raw, tmp_path, name, size_hw, widths, **train_overrides):
    params = parse_params(_raw(raw, tmp_path, name, size_hw, widths, **train_overrides))
    prepare(params)
    return params


@pytest.mark.slow
def test_512p_from_256p_then_last_modules_only(tmp_path, tiny_raw):
    low = _run(tiny_raw, tmp_path, "low", (16, 32), [8, 8, 6])
    train(low, "crn")
    low_file = tmp_path / "low/runs/crn/model.pt"
    low_state = load_model(low_file)[0]["G"].state_dict()

    # 32x64: one more module. Every module but the new one and the output layer come from 16x32;
    # with train_last_modules = 1 only the new module and the output layer train.
    frozen = _run(tiny_raw, tmp_path, "frozen", (32, 64), [8, 8, 6, 4], init_from=str(low_file), train_last_modules=1)
    frozen_raw = _raw(tiny_raw, tmp_path, "frozen", (32, 64), [8, 8, 6, 4], init_from=str(low_file), train_last_modules=1)
    summary = train(frozen, "crn")
    assert summary["init_from"] == str(low_file)
    nets, data = load_model(tmp_path / "frozen/runs/crn/model.pt")
    state = nets["G"].state_dict()
    for key, value in low_state.items():
        if key.startswith(("cascade.0.", "cascade.1.", "cascade.2.")):
            assert torch.equal(state[key], value), key  # copied, then frozen: unchanged by training
    assert state["cascade.3.conv1.weight"].shape[0] == 4
    trainable = data["facts"]["trainable_parameters"]["G"]
    assert trainable == sum(v.numel() for k, v in state.items() if k.startswith(("cascade.3.", "to_rgb.")))
    assert data["facts"]["parameters"]["G"] == sum(p.numel() for p in nets["G"].parameters())  # the model's size

    # Resuming needs neither the initialisation file nor a re-read of it: it only matters at step 0.
    low_file.rename(low_file.with_suffix(".moved"))
    frozen = parse_params({**frozen_raw, "train": {**frozen_raw["train"], "total_steps": 6}})
    assert train(frozen, "crn")["steps"] == 6


def test_init_from_and_freezing_errors(tmp_path, tiny_raw):
    params = _run(tiny_raw, tmp_path, "a", (16, 32), [8, 8, 8], init_from=str(tmp_path / "none.pt"))
    with pytest.raises(CrnError, match="none.pt: crn.train.init_from file not found"):
        train(params, "crn")
    params = _run(tiny_raw, tmp_path, "b", (16, 32), [8, 8, 8], train_last_modules=4)
    with pytest.raises(CrnError, match="train_last_modules must be in 1..3"):
        train(params, "crn")
    params = _run(tiny_raw, tmp_path, "b2", (16, 32), [8, 8, 8], train_last_modules=1)
    with pytest.raises(CrnError, match="frozen modules would keep random weights; set crn.train.init_from"):
        train(params, "crn")
    # A model file of other widths is refused (only the output layer may differ) ...
    other = _run(tiny_raw, tmp_path, "other", (16, 32), [4, 4, 4])
    train(other, "crn")
    params = _run(tiny_raw, tmp_path, "b3", (32, 64), [8, 8, 6, 4], init_from=str(tmp_path / "other/runs/crn/model.pt"),
                  train_last_modules=1)
    with pytest.raises(CrnError, match="tensors of network G have other shapes.*cascade.0.conv1.weight"):
        train(params, "crn")
    # ... and one with too few modules cannot initialise every frozen module.
    short = _run(tiny_raw, tmp_path, "short", (16, 32), [8, 8, 6])
    train(short, "crn")
    params = _run(tiny_raw, tmp_path, "b4", (64, 128), [8, 8, 6, 4, 4], init_from=str(tmp_path / "short/runs/crn/model.pt"),
                  train_last_modules=1)
    with pytest.raises(CrnError, match="does not initialise the frozen cascade.3"):
        train(params, "crn")
    raw = copy.deepcopy(tiny_raw)
    raw["pix2pix"]["train"] = {"train_last_modules": 1}
    raw["pix2pix"]["network"].update(num_downs=5, ngf=4, ndf=4)
    raw["data"]["image_size_hw"] = [32, 64]
    params = parse_params(raw)
    prepare(params)
    with pytest.raises(CrnError, match="only CRN-architecture models have refinement modules"):
        train(params, "pix2pix")
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "not-ours"}, foreign)
    params = _run(tiny_raw, tmp_path, "c", (16, 32), [8, 8, 8], init_from=str(foreign))
    with pytest.raises(CrnError, match="foreign.pt: not a crn-repro model file"):
        train(params, "crn")
