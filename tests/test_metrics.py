"""Automatic scores (crn_repro/metrics.py) against closed forms and hand-made cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crn_repro.errors import CrnError
from crn_repro.metrics import (
    class_colour_distance,
    colour_moments,
    frechet_distance,
    frechet_distance_from_statistics,
    full_fp32,
    gaussian_statistics,
    KernelReference,
    kernel_inception_distance,
    pairwise_diversity,
    perceptual_distance,
    realism_scores,
    segmentation_feature_extractor,
)
from crn_repro.segmentation import Segmenter
from crn_repro.stats import bootstrap_ci


def whitened(n: int, d: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is exactly 0 and sample covariance exactly I."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    z -= z.mean(axis=0)
    return z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T


# --- Fréchet distance -----------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).standard_normal((200, 8)) * 3 + 1
    assert abs(frechet_distance(feats, feats)) < 1e-9
    assert abs(frechet_distance(torch.from_numpy(feats).float(), torch.from_numpy(feats).float())) < 1e-4


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    mu_a, s_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 4.0, 0.25, 2.0])
    mu_b, s_b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([2.0, 1.0, 1.0, 0.5])
    a = whitened(300, 4, seed=0) * np.sqrt(s_a) + mu_a  # sample statistics exactly (mu_a, diag s_a)
    b = whitened(200, 4, seed=1) * np.sqrt(s_b) + mu_b
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(s_a + s_b - 2 * np.sqrt(s_a * s_b))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_statistics(mu_a, np.diag(s_a), mu_b, np.diag(s_b)) == pytest.approx(expected, rel=1e-12)


def test_gaussian_statistics_are_mean_and_unbiased_covariance():
    feats = np.random.default_rng(0).standard_normal((50, 3))
    mu, sigma = gaussian_statistics(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.T, ddof=1))


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    # The usual FID situation with few images (e.g. 500 in 2048-d): rank-deficient covariances.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 32)), rng.standard_normal((6, 32)) + 1.0
    assert abs(frechet_distance(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))  # sqrtm of a singular matrix
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 32 * 0.5


def test_frechet_distance_rejects_bad_input():
    rng = np.random.default_rng(0)
    for a, b, match in [
        (rng.standard_normal((1, 4)), rng.standard_normal((5, 4)), "at least 2"),
        (rng.standard_normal((5, 4)), rng.standard_normal((5, 3)), "dimension"),
        (rng.standard_normal(5), rng.standard_normal(5), r"\(n, d\)"),
        (np.full((5, 4), np.nan), rng.standard_normal((5, 4)), "NaN"),
    ]:
        with pytest.raises(CrnError, match=match) as excinfo:
            frechet_distance(a, b)
        assert "\n" not in str(excinfo.value)


# --- kernel distance ------------------------------------------------------------------------------


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3 (Binkowski et al. 2018), by loops."""
    m, d = x.shape
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return within - 2 * across


def brute_force_mmd2_unequal(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of sets of different sizes m, n, by loops."""
    (m, d), n = x.shape, len(y)
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return within_x + within_y - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)


def test_kid_is_the_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((7, 3)) + 0.5
    assert kernel_inception_distance(x, y[:6]) == pytest.approx(brute_force_mmd2(x, y[:6]), rel=1e-10)
    assert kernel_inception_distance(x, y) == pytest.approx(brute_force_mmd2_unequal(x, y), rel=1e-10)


def clean_fid_kid(x: np.ndarray, y: np.ndarray, num_subsets: int = 100, subset_size: int = 1000) -> float:
    """clean-fid's kernel_distance: the mean over subsets of min(subset_size, n_x, n_y) rows of each set
    (drawn without replacement) of the unbiased MMD^2 of the two subsets."""
    rng = np.random.default_rng(0)
    m, d = min(subset_size, len(x), len(y)), x.shape[1]
    estimates = []
    for _ in range(num_subsets):  # after clean-fid's kernel_distance (cleanfid/fid.py)
        a, b = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        t = ((a @ a.T / d + 1) ** 3).sum() - np.diag((a @ a.T / d + 1) ** 3).sum()
        t += ((b @ b.T / d + 1) ** 3).sum() - np.diag((b @ b.T / d + 1) ** 3).sum()
        estimates.append(t / (m * (m - 1)) - 2 * ((a @ b.T / d + 1) ** 3).sum() / m**2)
    return float(np.mean(estimates))


def test_kid_equals_clean_fids_subset_mean_for_sets_of_one_size_and_estimates_it_otherwise():
    """The README's statement: for two sets of one size up to 1000, clean-fid's subsets are the sets
    themselves (permuted), so the two protocols agree; with subsets smaller than the sets, the subset mean
    is an estimate of the same quantity."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 3)) + 0.4
    assert clean_fid_kid(x, y, num_subsets=5) == pytest.approx(kernel_inception_distance(x, y), rel=1e-10)
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((40, 3)) + 0.4
    assert clean_fid_kid(x, y, num_subsets=4000, subset_size=10) == pytest.approx(kernel_inception_distance(x, y), rel=0.05)


def test_kid_resamples_leave_out_pairs_of_an_image_with_its_copy():
    """A bootstrap resample holds images twice; its within-set mean is over pairs of different images, each
    pair weighted by how often both were drawn (by loops here), and the identity resample is the estimate."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.3
    reference = KernelReference(x)
    index = np.array([[0, 1, 2, 3], [0, 0, 1, 3], [2, 2, 2, 1]])
    k = lambda u, v: (u @ v / 3 + 1.0) ** 3  # noqa: E731
    expected = []
    for row in index:
        pairs = [(a, b) for a in row for b in row]
        distinct = [(a, b) for a, b in pairs if a != b]  # positions holding different images
        within_y = sum(k(y[a], y[b]) for a, b in distinct) / len(distinct)
        within_x = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
        expected.append(within_x + within_y - 2 * sum(k(x[i], y[b]) for i in range(5) for b in row) / (5 * len(row)))
    np.testing.assert_allclose(reference.resampled(y, index), expected, rtol=1e-10)
    assert reference.resampled(y, index[:1])[0] == pytest.approx(reference(y), rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same, shifted = kernel_inception_distance(a, b), kernel_inception_distance(a, b + 0.5)
    assert abs(same) < 0.05 * shifted and shifted > 0


def test_kid_interval_at_500_images_has_width_and_covers_the_value():
    """At n = 500 (Cityscapes val), the old protocol's 100 "subsets" of min(1000, n) images were all the whole
    set, so its interval had zero width. The bootstrap's has the spread of the estimate: over 40 synthesized
    sets drawn afresh (the real set fixed, as the interval assumes), it covers the value the estimate has on
    average (its expectation, from 400 draws) about 95% of the time, and its width matches the estimate's
    spread across draws."""
    rng = np.random.default_rng(0)
    reference = KernelReference(rng.standard_normal((500, 8)))

    def draw():
        return rng.standard_normal((500, 8)) * 1.1 + 0.15

    estimates = np.array([reference(draw()) for _ in range(400)])
    expected = estimates.mean()
    covered, widths = 0, []
    for repeat in range(40):
        fake = draw()
        low, high = bootstrap_ci(500, lambda idx: reference.resampled(fake, idx), num_resamples=400, seed=repeat,
                                 vectorized=True)
        covered += low <= expected <= high
        widths.append(high - low)
    assert min(widths) > 0
    assert covered >= 33, covered  # 95% nominal; P(<= 32 of 40 | 0.95) < 0.1%
    assert np.median(widths) == pytest.approx(2 * 1.96 * estimates.std(), rel=0.3)


# --- realism score --------------------------------------------------------------------------------

# Four corners of the unit square, its centre, and an outlier far away. With k = 1 every inlier's
# radius is the corner-centre distance sqrt(0.5); the outlier's is its distance to (1, 1).
SQUARE = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5], [10, 10]], dtype=np.float64)
R_INLIER = np.sqrt(0.5)


def test_realism_score_on_a_hand_made_example():
    queries = np.array([[1.0, 0.0], [0.25, 0.25], [5.0, 5.0]])
    scores = realism_scores(SQUARE, queries, k=1)
    assert scores[0] > 1e3  # at a real point
    assert scores[1] == pytest.approx(R_INLIER / np.sqrt(0.125), rel=1e-4)  # = 2: halfway to the corner
    assert scores[2] == pytest.approx(R_INLIER / np.sqrt(32), rel=1e-4)  # nearest kept real: (1, 1)
    assert scores[2] < 1
    # Without pruning, the outlier's huge sphere swallows the far query.
    unpruned = realism_scores(SQUARE, queries[2:], k=1, prune_fraction=0.0)
    assert unpruned[0] == pytest.approx(np.hypot(9, 9) / np.hypot(5, 5), rel=1e-4) and unpruned[0] > 1


def test_realism_score_default_k_and_chunking():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((50, 2))
    distances = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radii = np.sort(distances, axis=1)[:, 3]  # k = 3; column 0 is the point itself
    dense, sparse = real[radii < np.median(radii)][:3], real[radii > np.median(radii)][:1]
    queries = np.concatenate([dense, [[100.0, 100.0]], sparse])
    scores = realism_scores(real, queries)
    assert (scores[:3] > 1).all() and scores[3] < 1
    assert scores[4] < 1e3  # its own sphere was pruned: only the neighbours' spheres count
    np.testing.assert_allclose(realism_scores(torch.from_numpy(real), queries, chunk_size=7), scores, rtol=1e-12)


def test_realism_needs_more_reals_than_k():
    with pytest.raises(CrnError, match="at least 4"):
        realism_scores(np.zeros((3, 2)), np.zeros((1, 2)), k=3)


# --- diversity ------------------------------------------------------------------------------------


def test_perceptual_distance_by_hand():
    x1, y1 = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1), torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    x2 = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2)
    y2 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    # layer 1: |(1, -1)|^2 = 2; layer 2: two of four pixels differ by 2, spatial mean 1.
    torch.testing.assert_close(perceptual_distance([x1, x2], [y1, y2]), torch.tensor([3.0]))
    torch.testing.assert_close(perceptual_distance([x1, x2], [5 * x1, 0.1 * x2]), torch.tensor([0.0]))  # scale-free


def test_pairwise_diversity_is_zero_for_identical_outputs_and_grows_with_spread():
    g = torch.Generator().manual_seed(0)
    base = [torch.rand(3, 8, 4, 4, generator=g) + 0.5, torch.rand(3, 16, 2, 2, generator=g) + 0.5]
    noise = [[torch.randn(b.shape, generator=g) for b in base] for _ in range(4)]
    assert pairwise_diversity([base] * 4).abs().max() < 1e-6
    spreads = [0.05, 0.2, 0.5]
    diversity = [pairwise_diversity([[b + s * n for b, n in zip(base, ns)] for ns in noise]) for s in spreads]
    assert diversity[0].shape == (3,)
    assert (diversity[0] < diversity[1]).all() and (diversity[1] < diversity[2]).all()


def test_pairwise_diversity_is_the_mean_over_pairs():
    g = torch.Generator().manual_seed(1)
    outputs = [[torch.randn(2, 4, 3, 3, generator=g)] for _ in range(3)]
    pairs = [perceptual_distance(outputs[u], outputs[v]) for u, v in itertools.combinations(range(3), 2)]
    torch.testing.assert_close(pairwise_diversity(outputs), sum(pairs) / 3)
    with pytest.raises(CrnError, match="k >= 2"):
        pairwise_diversity(outputs[:1])


# --- per-class colour distance --------------------------------------------------------------------


def layouts_of(ids: torch.Tensor, num_classes: int = 20) -> torch.Tensor:
    return F.one_hot(ids, num_classes).permute(0, 3, 1, 2).float()


def colour_scene(seed: int = 0):
    """2 images 8x16: left half class 0, right half class 2, 5 pixels of class 5 (too few)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(2, 8, 16, dtype=torch.long)
    ids[:, :, 8:] = 2
    ids[0, 0, :5] = 5
    images = torch.rand(2, 3, 8, 16, generator=g) * 100 + 50
    return images, layouts_of(ids), ids


def test_class_colour_distance_of_identical_images_is_zero():
    images, layouts, _ = colour_scene()
    distances = class_colour_distance(images, images.clone(), layouts)
    assert set(distances) == {0, 2}  # class 5 has 5 < 10 pixels; absent classes are left out
    assert all(abs(v) < 1e-9 for v in distances.values())


def test_class_colour_distance_matches_the_frechet_formula():
    images, layouts, ids = colour_scene()
    fake = images.clone()
    shift = torch.tensor([10.0, -5.0, 3.0]).reshape(1, 3, 1, 1)
    is_0, is_2 = (ids == 0).unsqueeze(1), (ids == 2).unsqueeze(1)
    fake = torch.where(is_0, images + shift, fake)  # class 0: same covariance, mean shifted
    colours_2 = images.permute(0, 2, 3, 1)[ids == 2].double().numpy()  # (pixels, 3)
    mean_2 = torch.from_numpy(colours_2.mean(0)).float().reshape(1, 3, 1, 1)
    fake = torch.where(is_2, mean_2 + 2 * (images - mean_2), fake)  # class 2: covariance x4, same mean
    distances = class_colour_distance(images, fake, layouts)
    assert distances[0] == pytest.approx(100 + 25 + 9, rel=1e-6)
    # Tr(S + 4S - 2 (4 S^2)^(1/2)) = Tr(S)
    assert distances[2] == pytest.approx(np.trace(np.cov(colours_2, rowvar=False)), rel=1e-5)


def test_colour_moments_of_images_add_up():
    images, layouts, _ = colour_scene()
    merged = colour_moments(images[:1], layouts[:1]) + colour_moments(images[1:], layouts[1:])
    whole = colour_moments(images, layouts)
    torch.testing.assert_close(merged.total_outer, whole.total_outer)
    torch.testing.assert_close(merged.count, whole.count)


def test_class_colour_distance_checks_shapes():
    images, layouts, _ = colour_scene()
    with pytest.raises(CrnError, match="layouts"):
        class_colour_distance(images, images, layouts[:, :19])


# --- segmenter features ---------------------------------------------------------------------------


def test_segmentation_features_are_the_pooled_bottleneck():
    torch.manual_seed(0)
    segmenter = Segmenter(num_classes=20, base_width=4, depth=2, max_width=8).eval()
    images = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(0)) * 255
    features = segmentation_feature_extractor(segmenter)(images)
    assert features.shape == (2, 8) and not features.requires_grad

    with torch.no_grad():  # the encoder pass, spelled out
        x = segmenter.normalise(images)
        for level, block in enumerate(segmenter.encoder):
            x = block(F.max_pool2d(x, 2, ceil_mode=True) if level > 0 else x)
    torch.testing.assert_close(features, x.mean(dim=(2, 3)))
    assert not segmenter.encoder[-1]._forward_hooks  # the hook is gone again


def test_frechet_reference_matches_frechet_distance():
    from crn_repro.metrics import FrechetReference, frechet_distance

    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(150, 8)) @ rng.normal(size=(8, 8)) + 0.5
    reference = FrechetReference(a)
    assert reference(b) == pytest.approx(frechet_distance(a, b), rel=1e-6, abs=1e-8)
    assert reference(a) == pytest.approx(0.0, abs=1e-6)


def test_vectorised_resamples_equal_one_distance_per_resample():
    """The bootstrap's vectorised statistics (every resample at once) give, resample by resample, the
    distance the scalar functions compute on the resampled set."""
    from crn_repro.evaluate import stack_moments, sum_moments
    from crn_repro.metrics import FrechetReference, colour_moment_distance, resampled_colour_distance

    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 5))
    b = rng.normal(size=(40, 5)) * 1.5 + 0.3
    reference = FrechetReference(a)
    index = rng.integers(0, len(b), size=(7, len(b)))
    expected = [reference(b[row]) for row in index]
    np.testing.assert_allclose(reference.resampled(b, index, chunk=3), expected, rtol=1e-9, atol=1e-12)

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 4, (6, 8, 8), generator=g)
    ids[:3, :2] = 7  # a class only some images have: absent from resamples without them
    layouts = layouts_of(ids)
    real = torch.rand(6, 3, 8, 8, generator=g) * 255
    fake = torch.rand(6, 3, 8, 8, generator=g) * 200
    real_m = stack_moments([colour_moments(real[i : i + 1], layouts[i : i + 1]) for i in range(6)])
    fake_m = stack_moments([colour_moments(fake[i : i + 1], layouts[i : i + 1]) for i in range(6)])
    index = np.array([[0, 1, 2, 3, 4, 5], [3, 3, 4, 5, 5, 4], [0, 0, 0, 0, 0, 0]])
    vectorised = resampled_colour_distance(real_m, fake_m, index)
    for row, value in zip(index, vectorised):
        per_class = colour_moment_distance(sum_moments(real_m, row), sum_moments(fake_m, row))
        assert value == pytest.approx(np.mean(list(per_class.values())), rel=1e-9)


def test_lpips_reads_a_torchvision_alexnet_file_and_matches_its_definition(tmp_path):
    """LPIPS v0.1 (Zhang et al. 2018, Eq. 1): per AlexNet ReLU tap l, unit-normalise the features over
    channels, weight the squared difference per channel by the learned w_l, average over space, sum
    over l. The backbone comes from a torchvision AlexNet file the test writes; w_l from the package."""
    import os

    import lpips
    import torchvision

    from crn_repro.metrics import Lpips

    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet.state_dict(), path)
    metric = Lpips(path)
    a = torch.rand(2, 3, 64, 64) * 255
    b = torch.rand(2, 3, 64, 64) * 255
    linear = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/alex.pth"), map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = ((x / 127.5 - 1) - shift) / scale
        out = []
        for i, layer in enumerate(alexnet.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):  # after each ReLU
                out.append(x)
        return out

    with torch.no_grad():
        expected = sum(
            (linear[f"lin{l}.model.1.weight"].view(1, -1, 1, 1)
             * (fa / (fa.norm(dim=1, keepdim=True) + 1e-10) - fb / (fb.norm(dim=1, keepdim=True) + 1e-10)) ** 2).sum(1).mean((1, 2))
            for l, (fa, fb) in enumerate(zip(taps(a), taps(b)))
        )
    torch.testing.assert_close(metric.distance(a, b), expected, rtol=1e-4, atol=1e-6)
    assert metric.distance(a, a).abs().max() < 1e-6
    diversity = metric.pairwise_diversity([a, b, a])
    torch.testing.assert_close(diversity, (2 * expected) / 3, rtol=1e-4, atol=1e-6)


def test_lpips_backbone_file_problems_are_one_line_errors(tmp_path):
    from crn_repro.metrics import Lpips

    with pytest.raises(CrnError, match=r"nowhere\.pth: LPIPS backbone not found.*download\.pytorch\.org"):
        Lpips(tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CrnError, match=r"junk\.pth: not a readable LPIPS backbone \(.*\); it is torchvision's AlexNet weights, "
                                       r".*alexnet-owt-7be5be79\.pth \(evaluate\.lpips_backbone\)"):
        Lpips(tmp_path / "junk.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CrnError, match=r"list\.pth: expected a state_dict .*got list; it is torchvision's AlexNet"):
        Lpips(tmp_path / "list.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CrnError, match="no features.0.weight of the expected shape"):
        Lpips(tmp_path / "other.pth")


# --- evaluation numerics --------------------------------------------------------------------------


def tf32_settings() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("trained", [(True, True), (True, False), (False, True)])
def test_full_fp32_turns_tf32_off_inside_and_restores_it_after_also_on_an_exception(trained):
    before = tf32_settings()
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = trained  # as training may leave them
        with full_fp32():
            assert tf32_settings() == (False, False)
        assert tf32_settings() == trained
        with pytest.raises(ZeroDivisionError):
            with full_fp32():
                assert tf32_settings() == (False, False)
                1 / 0
        assert tf32_settings() == trained
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
