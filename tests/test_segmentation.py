import math

import pytest
import torch

from crn_repro.checkpoint import save_model_file
from crn_repro.crn import CRN
from crn_repro.datasets import PreparedSplit, channels_to_layout
from crn_repro.errors import CrnError
from crn_repro.labels import VOID_CHANNEL
from crn_repro.registry import load_segmenter
from crn_repro.segmentation import (
    SegmentationObjective,
    SegmentationObjectiveParams,
    Segmenter,
    SegmenterNetworkParams,
    confusion_matrix,
    evaluate_segmenter,
    pixelwise_cross_entropy,
    segmentation_scores,
    segmenter_kwargs,
)

TINY = SegmenterNetworkParams(base_width=8, depth=2, max_width=16)


def _tiny_segmenter(seed=0) -> Segmenter:
    torch.manual_seed(seed)
    return Segmenter(**segmenter_kwargs(TINY, (16, 32), 20))


def _colour_scene(n=2, hw=(16, 32), seed=0):
    """Layouts of 3 vertical bands in random classes (one of them void), each class with its own colour."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.tensor([0, 2, 13, VOID_CHANNEL])
    channels = torch.empty(n, *hw, dtype=torch.long)
    for i in range(n):
        cuts = sorted(torch.randint(4, hw[1] - 4, (2,), generator=g).tolist())
        picks = classes[torch.randperm(4, generator=g)[:3]]
        channels[i, :, : cuts[0]], channels[i, :, cuts[0] : cuts[1]], channels[i, :, cuts[1] :] = picks
    palette = torch.rand(20, 3, generator=g) * 255
    image = palette[channels].permute(0, 3, 1, 2)
    return channels_to_layout(channels), image


@pytest.mark.parametrize("hw", [(16, 32), (15, 30)])
def test_forward_backward_shapes_and_finite(hw):
    net = _tiny_segmenter()
    image = torch.rand(2, 3, *hw) * 255
    logits = net(image)
    assert logits.shape == (2, 20, *hw)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_output_does_not_depend_on_train_mode():
    # A frozen S inside another objective is put in train mode by the trainer; it must not matter.
    net = _tiny_segmenter()
    image = torch.rand(2, 3, 16, 32) * 255
    with torch.no_grad():
        train_out = net.train()(image)
        eval_out = net.eval()(image)
    torch.testing.assert_close(train_out, eval_out)


def test_params_validation_and_kwargs():
    assert list(SegmenterNetworkParams(8, -1, 4).validate()) == [
        ("depth", "must be >= 0"),
        ("max_width", "must be >= base_width"),
    ]
    kwargs = segmenter_kwargs(SegmenterNetworkParams(16, 4, 128), (64, 128), 20)
    assert kwargs == {"num_classes": 20, "base_width": 16, "depth": 4, "max_width": 128}
    with pytest.raises(ValueError, match="depth"):
        segmenter_kwargs(SegmenterNetworkParams(16, 5, 128), (16, 32), 20)


def test_confusion_matrix_rows_are_targets():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 0, 2])
    expected = torch.tensor([[2, 1, 0], [0, 1, 1], [1, 0, 1]])
    assert torch.equal(confusion_matrix(pred, target, 3), expected)
    assert confusion_matrix(pred.view(1, 7), target.view(1, 7), 3).dtype == torch.long
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, target + 1, 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(pred[:3], target, 3)


def test_scores_by_hand_with_ignore_index():
    confusion = torch.tensor([[2, 1, 0], [0, 1, 1], [1, 0, 1]])
    # Ignoring class 2 drops its target row: class 0: TP 2, FN 1, FP 0 -> 2/3; class 1: TP 1,
    # FN 1 (predicted as the ignored class still counts), FP 1 -> 1/3.
    s = segmentation_scores(confusion, ignore_index=2)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["per_class_iou"] == pytest.approx([2 / 3, 1 / 3, None])
    assert s["mean_iou"] == pytest.approx(0.5)
    assert s["num_pixels"] == 5
    # Without ignoring: IoU = 2/4, 1/3, 1/3.
    s = segmentation_scores(confusion, ignore_index=None)
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3) / 3)


def test_scores_skip_classes_absent_from_target():
    # Class 2 never occurs; class 3 is only predicted (a false positive), so it is absent too.
    confusion = confusion_matrix(torch.tensor([0, 3, 1]), torch.tensor([0, 0, 1]), 4)
    s = segmentation_scores(confusion, ignore_index=None)
    assert s["per_class_iou"] == pytest.approx([0.5, 1.0, None, None])
    assert s["mean_iou"] == pytest.approx(0.75)
    assert not any(isinstance(v, float) and math.isnan(v) for v in s["per_class_iou"])
    with pytest.raises(ValueError, match="no pixels"):
        segmentation_scores(torch.zeros(3, 3, dtype=torch.long), ignore_index=None)
    with pytest.raises(ValueError, match="ignore_index 5"):
        segmentation_scores(confusion, ignore_index=5)
    assert segmentation_scores(confusion)["ignore_index"] == confusion.shape[0] - 1  # default: void, the last class
    with pytest.raises(ValueError, match="no pixels"):
        segmentation_scores(confusion_matrix(torch.tensor([0]), torch.tensor([2]), 3), ignore_index=2)


@pytest.mark.parametrize("ignore_void", [False, True])
def test_objective_prefers_correct_logits(ignore_void):
    layout, image = _colour_scene()
    objective = SegmentationObjective(SegmentationObjectiveParams(ignore_void=ignore_void))
    assert objective.phases == ("S",)
    perfect = objective("S", {"S": lambda _: layout * 20.0}, (layout, image))
    random = objective("S", {"S": lambda _: torch.randn_like(layout) * 5}, (layout, image))
    assert set(perfect) == {"cross_entropy", "total"}
    assert float(perfect["total"]) < 1e-6 < float(random["total"])


def test_all_void_ignored_gives_zero_not_nan():
    layout = channels_to_layout(torch.full((1, 4, 8), VOID_CHANNEL))
    logits = torch.randn(1, 20, 4, 8, requires_grad=True)
    loss = pixelwise_cross_entropy(logits, layout, ignore_void=True)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(logits.grad).all()


def test_ignored_void_averages_over_the_counted_pixels_only():
    """From the definition: -log softmax(logits)[target] averaged over the non-void pixels; the same
    value as torch's mean reduction with ignore_index (the loss computes it without a host read)."""
    torch.manual_seed(0)
    channels = torch.randint(0, 20, (2, 4, 8))
    channels[0, :2] = VOID_CHANNEL
    logits = torch.randn(2, 20, 4, 8)
    loss = pixelwise_cross_entropy(logits, channels_to_layout(channels), ignore_void=True)
    log_p = torch.log_softmax(logits.double(), 1).gather(1, channels.unsqueeze(1)).squeeze(1)
    counted = channels != VOID_CHANNEL
    assert counted.sum() < channels.numel()
    torch.testing.assert_close(loss.double(), -log_p[counted].mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, channels, ignore_index=VOID_CHANNEL),
                               rtol=2e-7, atol=0)


def test_adam_steps_lower_the_loss():
    net = _tiny_segmenter()
    objective = SegmentationObjective(SegmentationObjectiveParams(ignore_void=False))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    batch = _colour_scene()
    losses = []
    for _ in range(30):
        total = objective("S", {"S": net}, batch)["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_evaluate_segmenter_on_prepared_split(prepared_tiny):
    _, params = prepared_tiny
    val = PreparedSplit(params.paths.prepared, "val")
    net = _tiny_segmenter().train()
    scores = evaluate_segmenter(net, val, batch_size=2, device="cpu")
    assert net.training  # mode restored
    assert 0 <= scores["pixel_accuracy"] <= 1 and 0 <= scores["mean_iou"] <= 1
    assert len(scores["per_class_iou"]) == 20 and scores["per_class_iou"][VOID_CHANNEL] is None
    assert scores["num_images"] == len(val) and scores["image_size_hw"] == [16, 32]
    assert scores["ignore_index"] == VOID_CHANNEL


def test_load_segmenter_round_trip_frozen(tmp_path):
    net = _tiny_segmenter()
    path = tmp_path / "model.pt"
    kwargs = segmenter_kwargs(TINY, (16, 32), 20)
    save_model_file(path, "segmenter", {"S": kwargs}, {"S": net}, {"image_size_hw": [16, 32]})
    loaded = load_segmenter(path, "cpu")
    assert isinstance(loaded, Segmenter) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    image = torch.rand(1, 3, 16, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), net.eval()(image))
    assert load_segmenter(path, image_size_hw=(16, 32)) is not None
    with pytest.raises(CrnError, match="trained at 16x32"):
        load_segmenter(path, image_size_hw=(64, 128))


def test_load_segmenter_errors(tmp_path):
    missing = tmp_path / "nothing.pt"
    with pytest.raises(CrnError, match="nothing.pt: segmenter model file not found; train one"):
        load_segmenter(missing)
    crn_file = tmp_path / "crn.pt"
    save_model_file(crn_file, "crn", {"G": {"num_classes": 20, "widths": [4, 4]}}, {"G": CRN(20, [4, 4])}, {})
    with pytest.raises(CrnError, match="crn.pt: holds a 'crn' model, not a segmenter"):
        load_segmenter(crn_file)
    unknown = tmp_path / "other.pt"
    save_model_file(unknown, "no-such-model", {"X": {}}, {"X": torch.nn.Identity()}, {})
    with pytest.raises(CrnError, match="other.pt: unknown model"):
        load_segmenter(unknown)
