"""The host-read guard, and every registered model's training step run under it (README: "the host
waits for the GPU only every log_every_steps")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crn_repro import trainer
from crn_repro.bench import build_run_without_data, synthetic_batch
from crn_repro.datasets import Batch
from crn_repro.params import parse_params
from crn_repro.registry import MODELS
from crn_repro.runtime import Runtime
from crn_repro.segmentation import pixelwise_cross_entropy
from crn_repro.syncguard import HostReadError, no_host_reads

META = torch.device("meta")

READS = {
    "item": lambda t: t.sum().item(),
    "bool": lambda t: bool((t > 0).any()),
    "if": lambda t: 1 if t.sum() else 0,
    "float": lambda t: float(t.sum()),
    "int": lambda t: int(t.sum()),
    "tolist": lambda t: t.tolist(),
    "numpy": lambda t: t.numpy(),
    "cpu": lambda t: t.cpu(),
    "to cpu": lambda t: t.to("cpu"),
    "copy into a host tensor": lambda t: torch.empty(t.shape).copy_(t),
    "nonzero": lambda t: t.nonzero(),
    "where with one argument": lambda t: torch.where(t > 0),
    "boolean mask": lambda t: t[t > 0],
    "masked_select": lambda t: t.masked_select(t > 0),
    "unique": lambda t: t.unique(),
    "equal": lambda t: torch.equal(t, t),
    "one_hot without num_classes": lambda t: torch.nn.functional.one_hot(t.long().clamp(0, 3)),
    "repr": lambda t: repr(t),
}


@pytest.mark.parametrize("read", READS)
def test_the_guard_catches_every_kind_of_host_read(read):
    t = torch.zeros(3, 4, device=META)
    with pytest.raises(HostReadError, match="host read of a meta tensor"), no_host_reads(META):
        READS[read](t)


def test_the_guard_names_the_line_that_read_and_leaves_host_tensors_and_device_work_alone():
    host = torch.ones(3)
    with no_host_reads(META) as found:
        assert host.sum().item() == 3.0 and bool(host.any())  # host tensors: no wait for a device
        t = torch.zeros(2, 5, device=META)
        y = (t @ torch.zeros(5, 2, device=META)).relu().sum() / (t != 0).sum().clamp(min=1)  # stays on the device
        host_to_device = torch.ones(2).to(META)
        try:
            y.item()
        except HostReadError as error:
            assert "tests/test_syncguard.py:" in str(error)
    assert y.device == META and host_to_device.device == META
    assert len(found) == 1 and found[0].startswith("Tensor.item at tests/test_syncguard.py:")


def test_the_guard_catches_the_old_void_check_of_the_segmenter_loss():
    """The segmenter's loss used to branch on ``(target != void).any()``: a host read every step."""
    logits, layout = torch.zeros(1, 3, 4, 4, device=META), torch.zeros(1, 3, 4, 4, device=META)
    with pytest.raises(HostReadError), no_host_reads(META):
        if not (layout.argmax(1) != 2).any():
            pass
    with no_host_reads(META) as found:
        pixelwise_cross_entropy(logits, layout, ignore_void=True)
    assert found == []


@pytest.mark.parametrize("model", MODELS)
def test_no_model_reads_the_device_in_its_training_step(model, tiny_raw, tmp_path):
    """Every registered model's ``trainer.train_step`` (every phase, its optimizer steps, the
    reference-feature cache, activation checkpointing and the segmenter's ignored void on) on the
    meta device, whose data the host cannot read: any host read
    raises. Adam's step counters stay on the host, as torch keeps them unless fused."""
    tiny_raw["train"].update(cache_reference_features=True, activation_checkpointing=True)
    tiny_raw["segmenter"]["objective"]["ignore_void"] = True  # as every real preset sets it
    tiny_raw["data"]["image_size_hw"] = [32, 64]
    tiny_raw["pix2pix"]["network"].update(num_downs=5, ngf=4, ndf=4)  # the U-Net halves 32x64 five times
    for section in tiny_raw.values():
        if isinstance(section, dict) and "widths" in section.get("network", {}):
            section["network"].update(preset=None, widths=[8, 8, 8, 8])  # 4 modules from 4x8 to 32x64
    params = parse_params(tiny_raw)
    rt = Runtime(META, 0, 1, None, False)
    mp = params.model(model)
    mp = dataclasses.replace(mp, train=dataclasses.replace(mp.train, fused_adam=False, compile=False))
    run = build_run_without_data(params, model, mp, rt, tmp_path)
    layout, image = synthetic_batch(run, params, mp.train.batch_size_per_process, META)
    batch = Batch(layout, image, tuple(range(mp.train.batch_size_per_process)))
    with no_host_reads(META) as found:
        for step in range(2):  # the second step reads the cached reference features
            losses = trainer.train_step(run, rt, step, batch, torch.autocast("cpu", enabled=False))
    assert found == [] and all(v.device == META for v in losses.values())
