import pytest
import torch

from crn_repro.losses import AUTHORS_LAMBDAS, TERMS, FeatureMatchingLoss, FeatureMatchingObjective, FeatureMatchingParams, VggParams

VGG = VggParams(weights="random", path=None, allow_download=False, pooling="max", seed=0)


def _images(seed=0, n=2, hw=(32, 64)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *hw, generator=g) * 255


@pytest.mark.parametrize("mode", ["paper", "authors-256p", "authors-512p"])
def test_zero_for_identical_images_positive_otherwise(mode):
    loss = FeatureMatchingLoss(FeatureMatchingParams("all", mode, 100, "hindsight", 0.0), VGG, steps_per_epoch=10)
    a, b = _images(0), _images(1)
    same = loss.weighted(loss.errors(a, a.clone()))
    diff = loss.weighted(loss.errors(a, b))
    assert same.shape == (2, len(TERMS))
    assert torch.all(same == 0)
    assert torch.all(diff > 0)


def test_image_space_loss_is_mean_absolute_error():
    loss = FeatureMatchingLoss(FeatureMatchingParams("image", "paper", 100, "hindsight", 0.0), VGG, steps_per_epoch=10)
    assert loss.vgg is None
    a, b = _images(0), _images(1)
    torch.testing.assert_close(loss.errors(a, b)[:, 0], (a - b).abs().flatten(1).mean(1))


def test_authors_constants():
    loss = FeatureMatchingLoss(FeatureMatchingParams("all", "authors-512p", 100, "hindsight", 0.0), VGG, steps_per_epoch=10)
    assert loss.lambdas.tolist() == pytest.approx([1, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5])
    assert AUTHORS_LAMBDAS["authors-256p"][5] == pytest.approx(12.5)
    assert loss.rescale_at_step is None


def test_paper_rescaling_equalises_terms_on_a_fixed_batch():
    steps_per_epoch = 3
    loss = FeatureMatchingLoss(FeatureMatchingParams("all", "paper", 2, "hindsight", 0.0), VGG, steps_per_epoch=steps_per_epoch)
    assert loss.rescale_at_step == 6
    a, b = _images(0), _images(1)
    before = loss.weighted(loss.errors(a, b)).mean(0)
    assert before.max() / before.min() > 2  # unequal at 1/numel
    for step in range(1, 7):
        loss.observe(loss.errors(a, b))
        loss.after_step(step)
    assert bool(loss.rescaled)
    after = loss.weighted(loss.errors(a, b)).mean(0)
    torch.testing.assert_close(after, torch.full_like(after, float(after.mean())), rtol=1e-4, atol=0)
    torch.testing.assert_close(after.sum(), before.sum(), rtol=1e-4, atol=0)  # total scale kept
    lambdas = loss.lambdas.clone()
    loss.observe(loss.errors(a, _images(2)))
    loss.after_step(7)
    assert torch.equal(lambdas, loss.lambdas)  # rescaled once only


def test_rescaling_state_round_trips_through_state_dict():
    params = FeatureMatchingParams("all", "paper", 1, "hindsight", 0.0)
    loss = FeatureMatchingLoss(params, VGG, steps_per_epoch=2)
    a, b = _images(0), _images(1)
    for step in (1, 2):
        loss.observe(loss.errors(a, b))
        loss.after_step(step)
    fresh = FeatureMatchingLoss(params, VGG, steps_per_epoch=2)
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.lambdas, loss.lambdas) and bool(fresh.rescaled)


def test_objective_returns_named_terms_and_total():
    from crn_repro.crn import CRN

    objective = FeatureMatchingObjective(FeatureMatchingParams("all", "paper", 100, "hindsight", 0.0), VGG, steps_per_epoch=4)
    assert objective.phases == ("G",)
    net = CRN(20, [8, 8, 8])
    layout = torch.nn.functional.one_hot(torch.randint(0, 20, (2, 16, 32)), 20).permute(0, 3, 1, 2).float()
    out = objective("G", {"G": net}, (layout, _images(0, hw=(16, 32))))
    assert set(out) == set(TERMS) | {"total"}
    out["total"].backward()
    assert sum(float(v) for k, v in out.items() if k != "total") == pytest.approx(float(out["total"].detach()), rel=1e-5)


def _two_class_case():
    """Layout: left half class 0, right half class 1. Output 0 is exact on the left, output 1 on
    the right, each wrong by 100 on the other half."""
    layout = torch.zeros(1, 2, 4, 8)
    layout[:, 0, :, :4] = 1
    layout[:, 1, :, 4:] = 1
    image = torch.full((1, 3, 4, 8), 100.0)
    out0, out1 = image.clone(), image.clone()
    out0[..., 4:] += 100
    out1[..., :4] -= 100
    return layout, image, torch.cat([out0, out1], dim=1)


def test_per_class_loss_assembles_best_output_per_class():
    from crn_repro.losses import hindsight_loss, per_class_errors, per_class_loss

    loss = FeatureMatchingLoss(FeatureMatchingParams("image", "paper", 100, "per-class", 0.0), VGG, 10)
    layout, image, generated = _two_class_case()
    maps = loss.error_maps(image, generated)
    class_errors = per_class_errors(maps, layout, loss.lambdas)
    assert class_errors.shape == (1, 2, 2)
    # output 0: 0 on class 0, 100 * (half the pixels) on class 1; averaged over all pixels
    torch.testing.assert_close(class_errors[0], torch.tensor([[0.0, 50.0], [50.0, 0.0]]))
    assert float(per_class_loss(class_errors, 0.0)) == 0.0  # Eq. 3: the virtual image is perfect
    weighted = loss.weighted(loss.errors(image, generated))
    assert float(hindsight_loss(weighted, 0.0)) == 50.0  # Eq. 2: best single output is off by half
    # release variant: (1 - w) min + w mean keeps every output in the gradient
    assert float(per_class_loss(class_errors, 0.001)) == pytest.approx(0.001 * (25 + 25))


def test_collection_objective_gives_gradient_to_the_winner_only():
    from crn_repro.crn import CRN

    torch.manual_seed(0)
    params = FeatureMatchingParams("image", "paper", 100, "hindsight", 0.0)
    objective = FeatureMatchingObjective(params, VGG, steps_per_epoch=4)
    net = CRN(20, [8, 8, 8], num_outputs=3)
    layout = torch.nn.functional.one_hot(torch.randint(0, 20, (1, 16, 32)), 20).permute(0, 3, 1, 2).float()
    out = objective("G", {"G": net}, (layout, _images(0, n=1, hw=(16, 32))))
    out["total"].backward()
    grad = net.to_rgb.weight.grad.view(3, 3, -1).abs().sum((1, 2))
    assert (grad > 0).sum() == 1  # min over u: only the best output learns (mean_term_weight 0)
