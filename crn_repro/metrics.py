"""Automatic scores of synthesized images (docs/facts.md §7): pure functions of features or images.

- Distribution distances on features (e.g. Inception pool3, ``crn_repro.inception``): the Fréchet
  distance (FID, Heusel et al. 2017) and the kernel distance (KID, Binkowski et al. 2018), each with a
  fixed real reference whose bootstrap resamples of the synthesized set are computed at once.
- Per-image realism against a real feature manifold (Kynkäänniemi et al. 2019).
- Diversity of the k outputs a model makes for one layout (LPIPS-style, without learned weights).
- A score only the synthetic city allows, whose classes have known colours: per-class Fréchet
  distance between real and synthesized pixel colours over the same layouts.
- Features for a Fréchet distance in the feature space of the pipeline's own segmenter S.
- ``full_fp32``: the numerics evaluation networks run in (no TF32, whatever training turned on).

Every number depends on its protocol (feature network, image size, number of images): callers
record it next to the number. Features may be numpy arrays or torch tensors of shape (n, d).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from crn_repro.checkpoint import read_state_dict
from crn_repro.errors import CrnError
from crn_repro.labels import NUM_LAYOUT_CHANNELS

if TYPE_CHECKING:
    from crn_repro.segmentation import Segmenter

ArrayLike = np.ndarray | Tensor


# --- Fréchet distance -----------------------------------------------------------------------------


def gaussian_statistics(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features (n, d), float64: the Gaussian that the
    Fréchet distance fits to each set."""
    x = _features(feats, "features", min_rows=2)
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n_a, d), (n_b, d) (Heusel et
    al. 2017); on Inception pool3 features, FID."""
    a = _features(feats_a, "feats_a", min_rows=2)
    b = _features(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    return frechet_distance_from_statistics(*gaussian_statistics(a), *gaussian_statistics(b), eps=eps)


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """d^2 = ||mu_a - mu_b||^2 + Tr(sigma_a + sigma_b - 2 (sigma_a sigma_b)^(1/2)) (Heusel et al. 2017).

    As the reference implementations (TTUR, pytorch-fid) do: if the square root of the product is
    not finite (a near-singular product), eps is added to both diagonals and it is taken again; a
    small imaginary part from rounding is dropped, a large one is an error. Rank-deficient
    covariances (n <= d, e.g. 500 images in 2048-d) are normal and handled by scipy's sqrtm.
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (len(mu_a), len(mu_a)):
        raise CrnError(
            f"Fréchet distance: statistics disagree in shape (means {mu_a.shape}, {mu_b.shape}; "
            f"covariances {sigma_a.shape}, {sigma_b.shape})"
        )
    covmean = _sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(sigma_a.shape[0])
        covmean = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3):
            raise CrnError(
                f"Fréchet distance: sqrt of the covariance product has an imaginary part up to "
                f"{np.abs(covmean.imag).max():.3g}; the covariances are ill-conditioned, use more samples"
            )
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


class FrechetReference:
    """Fréchet distances of many feature sets to one fixed reference set, e.g. bootstrap resamples
    of synthesized features against the real ones. The reference's matrix square root is computed
    once; each distance then needs one symmetric eigendecomposition, using
    tr sqrtm(S_a S_b) = sum_i sqrt(lambda_i(S_a^1/2 S_b S_a^1/2)) (the two products are similar, the
    second is positive semi-definite). Same value as ``frechet_distance`` without its eps retry."""

    def __init__(self, feats: ArrayLike):
        self.mu, sigma = gaussian_statistics(feats)
        w, v = np.linalg.eigh(sigma)
        self.root = (v * np.sqrt(w.clip(min=0))) @ v.T
        self.trace = float(np.trace(sigma))

    def resampled(self, feats: np.ndarray, index: np.ndarray, chunk: int = 64) -> np.ndarray:
        """Distances of many resamples at once: ``index`` (R, n) rows of item indices into ``feats``
        (n, d) (the bootstrap's vectorised statistic), in chunks of ``chunk`` resamples."""
        feats = np.asarray(feats, np.float64)
        index = np.atleast_2d(np.asarray(index))
        out = []
        for start in range(0, len(index), chunk):
            x = feats[index[start : start + chunk]]  # (r, n, d)
            mu = x.mean(axis=1)
            centred = x - mu[:, None, :]
            sigma = np.einsum("rnd,rne->rde", centred, centred) / (x.shape[1] - 1)
            product = self.root @ sigma @ self.root
            eig = np.linalg.eigvalsh((product + np.swapaxes(product, -1, -2)) / 2).clip(min=0)
            out.append(((self.mu - mu) ** 2).sum(-1) + self.trace + np.trace(sigma, axis1=-2, axis2=-1) - 2 * np.sqrt(eig).sum(-1))
        return np.concatenate(out)

    def __call__(self, feats: ArrayLike) -> float:
        mu, sigma = gaussian_statistics(feats)
        if mu.shape != self.mu.shape:
            raise CrnError(f"Frechet distance: features differ in dimension ({self.mu.shape[0]} vs {mu.shape[0]})")
        product = self.root @ sigma @ self.root
        eig = np.linalg.eigvalsh((product + product.T) / 2).clip(min=0)
        return float(((self.mu - mu) ** 2).sum() + self.trace + np.trace(sigma) - 2 * np.sqrt(eig).sum())


def frechet_distances(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> np.ndarray:
    """Fréchet distances of stacks of Gaussians, means (..., d) and covariances (..., d, d), all at once:
    ||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 sum_i sqrt(lambda_i(S_a^1/2 S_b S_a^1/2)), the identity
    ``FrechetReference`` uses (the same value as ``frechet_distance`` up to rounding)."""
    w, v = np.linalg.eigh(sigma_a)
    root = (v * np.sqrt(w.clip(min=0))[..., None, :]) @ np.swapaxes(v, -1, -2)
    product = root @ sigma_b @ root
    eig = np.linalg.eigvalsh((product + np.swapaxes(product, -1, -2)) / 2).clip(min=0)
    trace = np.trace(sigma_a, axis1=-2, axis2=-1) + np.trace(sigma_b, axis1=-2, axis2=-1)
    return ((mu_a - mu_b) ** 2).sum(-1) + trace - 2 * np.sqrt(eig).sum(-1)


def resample_counts(index: np.ndarray, num_items: int) -> np.ndarray:
    """How often each item is drawn in each resample: (R, num_items) from bootstrap indices (R, n)."""
    index = np.atleast_2d(np.asarray(index))
    counts = np.zeros((len(index), num_items))
    np.add.at(counts, (np.arange(len(index))[:, None], index), 1.0)
    return counts


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # "matrix is singular": expected when n <= d, handled above
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(matrix)


# --- kernel distance ------------------------------------------------------------------------------


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the polynomial kernel of KID (Binkowski et al. 2018), for all pairs."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


class KernelReference:
    """KID (Binkowski et al. 2018, "Demystifying MMD GANs") of synthesized feature sets against one fixed
    real set: the unbiased estimator of MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3
    over all real and all synthesized features (within-set means leave out the diagonal, so it can be
    slightly negative). clean-fid's protocol, the mean over 100 pairs of random subsets of min(1000, n)
    features, estimates the same quantity and equals this value when both sets have the same number of
    features, at most 1000 (each subset is then the whole set in another order). The real set's within-set mean is
    computed once; ``resampled`` gives many bootstrap resamples of the synthesized set at once."""

    def __init__(self, real_feats: ArrayLike):
        self.real = _features(real_feats, "real features", min_rows=2)
        m = len(self.real)
        k_xx = _cubic_kernel(self.real, self.real)
        self.within_real = float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)))

    def __call__(self, feats: ArrayLike) -> float:
        y = _features(feats, "synthesized features", min_rows=2)
        _same_dim(self.real, y)
        n = len(y)
        k_yy = _cubic_kernel(y, y)
        within = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        return float(self.within_real + within - 2.0 * _cubic_kernel(self.real, y).mean())

    def resampled(self, feats: ArrayLike, index: np.ndarray) -> np.ndarray:
        """The estimate for each row of ``index`` (R, n), a resample (with replacement) of the synthesized
        features ``feats`` (n, d), the real set fixed. A resample holds some images twice; the within-set mean
        is then taken over the pairs of different images (weighted by how often each is drawn), as the
        estimator leaves out the pairs of an image with itself: pairing a drawn-twice image with its copy
        would add k(y, y) terms, pushing every resample above the estimate. Returns (R,)."""
        y = _features(feats, "synthesized features", min_rows=2)
        _same_dim(self.real, y)
        counts = resample_counts(index, len(y))  # (R, n)
        k_yy = _cubic_kernel(y, y)
        drawn = counts.sum(axis=1)
        same_image = (counts**2) @ np.diag(k_yy)
        within = (((counts @ k_yy) * counts).sum(axis=1) - same_image) / (drawn**2 - (counts**2).sum(axis=1))
        across = counts @ _cubic_kernel(self.real, y).mean(axis=0) / drawn
        return self.within_real + within - 2.0 * across


def kernel_inception_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """KID of two feature sets (n_a, d), (n_b, d): ``KernelReference(feats_a)(feats_b)``."""
    return KernelReference(feats_a)(feats_b)


# --- realism score --------------------------------------------------------------------------------


def realism_scores(
    real_feats: ArrayLike,
    query_feats: ArrayLike,
    k: int = 3,
    prune_fraction: float = 0.5,
    chunk_size: int = 1024,
    eps: float = 1e-5,
) -> np.ndarray:
    """Realism score of each query feature (Kynkäänniemi et al. 2019, "Improved precision and
    recall metric for assessing generative models"): R(q) = max_i r_i / ||q - real_i||, with r_i the distance of real_i to its k-th nearest other
    real feature, over the real features whose radius is not among the ``prune_fraction`` largest
    (radii above that percentile are dropped, as the authors' code does; it keeps outliers' large
    spheres from calling everything realistic). R >= 1 iff q lies inside a kept sphere, so a
    query at a real feature whose own sphere was pruned may still score below 1.

    Exact Euclidean distances (torch.cdist, float64, ``chunk_size`` rows at a time); eps keeps a
    query that coincides with a real feature finite. The authors' code divides squared distances,
    so its scores are the squares of these (same order, same threshold 1). Returns (n_query,).
    """
    real = _features_tensor(real_feats, "real_feats", min_rows=k + 1)
    query = _features_tensor(query_feats, "query_feats", min_rows=1).to(real.device)
    if real.shape[1] != query.shape[1]:
        raise CrnError(f"realism: real and query features differ in dimension ({real.shape[1]} vs {query.shape[1]})")
    if k < 1 or not 0.0 <= prune_fraction < 1.0 or chunk_size < 1:
        raise CrnError(
            f"realism: need k >= 1, 0 <= prune_fraction < 1, chunk_size >= 1 (got {k}, {prune_fraction}, {chunk_size})"
        )

    # k-th nearest neighbour among the reals; column 0 of the sorted distances is the point itself.
    radii = torch.cat(
        [torch.cdist(chunk, real).topk(k + 1, dim=1, largest=False).values[:, k] for chunk in real.split(chunk_size)]
    )
    threshold = torch.quantile(radii, 1.0 - prune_fraction)  # linear interpolation, as np.percentile
    kept = radii <= threshold
    real, radii = real[kept], radii[kept]

    scores = [(radii / (torch.cdist(chunk, real) + eps)).amax(dim=1) for chunk in query.split(chunk_size)]
    return torch.cat(scores).cpu().numpy()


# --- diversity of k outputs -----------------------------------------------------------------------


def perceptual_distance(feats_x: Sequence[Tensor], feats_y: Sequence[Tensor]) -> Tensor:
    """LPIPS-style distance without learned linear weights (Zhang et al. 2018, Eq. 1 with w_l = 1):
    per layer l, unit-normalise each feature vector over channels, take squared differences summed
    over channels, average over space; sum over layers. feats: one (N, C_l, H_l, W_l) tensor per
    layer (e.g. ``VGG19Features`` output). Returns (N,)."""
    if len(feats_x) != len(feats_y) or not feats_x:
        raise CrnError(f"perceptual distance: need the same number (> 0) of layers, got {len(feats_x)} and {len(feats_y)}")
    total = None
    for layer, (x, y) in enumerate(zip(feats_x, feats_y)):
        if x.shape != y.shape or x.ndim != 4:
            raise CrnError(
                f"perceptual distance: layer {layer} features must be equal-shape (N, C, H, W), "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        term = (_unit_normalise(x) - _unit_normalise(y)).square().sum(dim=1).mean(dim=(1, 2))
        total = term if total is None else total + term
    return total


def pairwise_diversity(features_per_output: Sequence[Sequence[Tensor]]) -> Tensor:
    """Diversity of a k-output model (docs/facts.md §2.3): for each layout, the mean
    ``perceptual_distance`` over the k(k-1)/2 pairs of its k outputs. features_per_output[u] is the
    per-layer feature list of output u for all N layouts. Returns (N,); 0 when the outputs agree."""
    k = len(features_per_output)
    if k < 2:
        raise CrnError(f"pairwise diversity: needs k >= 2 outputs per layout, got {k}")
    pairs = [
        perceptual_distance(features_per_output[u], features_per_output[v]) for u in range(k) for v in range(u + 1, k)
    ]
    return torch.stack(pairs).mean(dim=0)


def _unit_normalise(x: Tensor, eps: float = 1e-10) -> Tensor:
    x = x.float()
    return x / (x.norm(dim=1, keepdim=True) + eps)


# --- per-class colour distance (synthetic city) ---------------------------------------------------


@dataclass(frozen=True)
class ColourMoments:
    """Per-class RGB pixel moments of a set of images, float64: enough for one Gaussian per class.
    Add two to merge batches."""

    count: Tensor  # (C,) pixels per class
    total: Tensor  # (C, 3) sum of colours
    total_outer: Tensor  # (C, 3, 3) sum of colour outer products

    def __add__(self, other: ColourMoments) -> ColourMoments:
        return ColourMoments(self.count + other.count, self.total + other.total, self.total_outer + other.total_outer)

    def gaussian(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean (3,) and unbiased covariance (3, 3) of class c's colours (needs >= 2 pixels)."""
        n = float(self.count[c])
        mean = self.total[c].cpu().numpy() / n
        cov = (self.total_outer[c].cpu().numpy() - n * np.outer(mean, mean)) / (n - 1.0)
        return mean, cov


def colour_moments(images: Tensor, layouts: Tensor, num_classes: int = NUM_LAYOUT_CHANNELS) -> ColourMoments:
    """Moments of the colours of images (N, 3, H, W, 0..255) per class of one-hot layouts (N, C, H, W)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise CrnError(f"colour moments: expected (N, 3, H, W) images, got {tuple(images.shape)}")
    if layouts.shape != (images.shape[0], num_classes, *images.shape[2:]):
        raise CrnError(
            f"colour moments: layouts {tuple(layouts.shape)} do not match images {tuple(images.shape)} "
            f"with {num_classes} classes"
        )
    ids = layouts.argmax(dim=1).reshape(-1)
    rgb = images.detach().permute(0, 2, 3, 1).reshape(-1, 3).double().to(ids.device)
    count = torch.bincount(ids, minlength=num_classes).double()
    total = torch.stack([torch.bincount(ids, rgb[:, i], minlength=num_classes) for i in range(3)], dim=1)
    outer = [torch.bincount(ids, rgb[:, i] * rgb[:, j], minlength=num_classes) for i in range(3) for j in range(3)]
    return ColourMoments(count, total, torch.stack(outer, dim=1).reshape(num_classes, 3, 3))


def colour_moment_distance(real: ColourMoments, fake: ColourMoments, min_pixels: int = 10) -> dict[int, float]:
    """Per class, the Fréchet distance between 3-d Gaussians fitted to real and synthesized pixel
    colours; classes with fewer than ``min_pixels`` pixels in either set are left out."""
    distances = {}
    for c in range(len(real.count)):
        if real.count[c] >= max(min_pixels, 2) and fake.count[c] >= max(min_pixels, 2):
            distances[c] = frechet_distance_from_statistics(*real.gaussian(c), *fake.gaussian(c))
    return distances


def resampled_colour_distance(real: ColourMoments, fake: ColourMoments, index: np.ndarray, min_pixels: int = 10) -> np.ndarray:
    """``colour_moment_distance`` averaged over classes, for many resamples of images at once: ``real``
    and ``fake`` hold per-image moments stacked along a leading image axis, ``index`` (R, n) the
    resamples' image indices. Returns (R,), NaN where no class has enough pixels."""
    weights = resample_counts(index, len(real.count))

    def gaussians(m: ColourMoments):
        count = weights @ m.count.numpy()  # (R, C)
        total = np.einsum("rn,ncx->rcx", weights, m.total.numpy())
        outer = np.einsum("rn,ncxy->rcxy", weights, m.total_outer.numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count[..., None]
            cov = (outer - count[..., None, None] * mean[..., :, None] * mean[..., None, :]) / (count[..., None, None] - 1)
        return count, mean, cov

    count_r, mean_r, cov_r = gaussians(real)
    count_f, mean_f, cov_f = gaussians(fake)
    enough = (count_r >= max(min_pixels, 2)) & (count_f >= max(min_pixels, 2))
    eye = np.eye(3)
    distances = frechet_distances(np.where(enough[..., None], mean_r, 0), np.where(enough[..., None, None], cov_r, eye),
                                  np.where(enough[..., None], mean_f, 0), np.where(enough[..., None, None], cov_f, eye))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no class: NaN
        return np.nanmean(np.where(enough, distances, np.nan), axis=1)


def class_colour_distance(
    real_images: Tensor,
    fake_images: Tensor,
    layouts: Tensor,
    num_classes: int = NUM_LAYOUT_CHANNELS,
    min_pixels: int = 10,
) -> dict[int, float]:
    """Colour fidelity per class, a score only the synthetic city allows (its classes have known
    colour distributions): {class id: Fréchet distance between the RGB colour Gaussians of that
    class's pixels in real and synthesized images of the same layouts}, in (0..255 units)^2.
    The last class is void. For many images, accumulate ``colour_moments`` per batch and call
    ``colour_moment_distance``."""
    return colour_moment_distance(
        colour_moments(real_images, layouts, num_classes), colour_moments(fake_images, layouts, num_classes), min_pixels
    )


# --- features of the segmenter S ------------------------------------------------------------------


def segmentation_feature_extractor(segmenter: Segmenter) -> Callable[[Tensor], Tensor]:
    """images (N, 3, H, W, 0..255) -> (N, D): global average pool of S's bottleneck (the output of
    its deepest encoder block, D = its width), for a Fréchet distance in the feature space of the
    pipeline's own segmentation network. The features are tapped with a forward hook during S's own
    forward pass (the decoder runs too), so they cannot drift from S's encoder."""
    bottleneck = segmenter.encoder[-1]

    @torch.no_grad()
    def extract(images_0_255: Tensor) -> Tensor:
        captured = []
        handle = bottleneck.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            segmenter(images_0_255)
        finally:
            handle.remove()
        return captured[0].float().mean(dim=(2, 3))

    return extract


# --- evaluation numerics --------------------------------------------------------------------------


@contextmanager
def full_fp32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions inside, as DRN-D-105, Inception and LPIPS computed their
    published numbers: TF32 off for CUDA matmuls and cuDNN (training turns it on, ``runtime.setup_runtime``),
    and the previous settings restored on leaving, also when an exception leaves. On the CPU there is no
    TF32 and nothing changes the numerics."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# --- input checks ---------------------------------------------------------------------------------


def _features(feats: ArrayLike, what: str, min_rows: int) -> np.ndarray:
    """Features as a float64 (n, d) numpy array, checked (``_features_tensor``)."""
    return _features_tensor(feats, what, min_rows).cpu().numpy()


def _features_tensor(feats: ArrayLike, what: str, min_rows: int) -> Tensor:
    """Features as a float64 (n, d) tensor on their own device (numpy -> CPU), checked: two dimensions,
    at least ``min_rows`` rows, every value finite."""
    if isinstance(feats, Tensor):
        tensor = feats.detach().double()
    else:
        tensor = torch.as_tensor(np.asarray(feats, dtype=np.float64))
    if tensor.ndim != 2:
        raise CrnError(f"{what}: expected features of shape (n, d), got {tuple(tensor.shape)}")
    if tensor.shape[0] < min_rows:
        raise CrnError(f"{what}: needs at least {min_rows} feature vectors, got {tensor.shape[0]}; evaluate more images")
    if not torch.isfinite(tensor).all():
        raise CrnError(f"{what}: features hold NaN or inf")
    return tensor


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise CrnError(f"feature sets differ in dimension ({a.shape[1]} vs {b.shape[1]})")


# --- LPIPS (Zhang et al. 2018) through the lpips package --------------------------------------------


ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_WHERE = f"torchvision's AlexNet weights, https://download.pytorch.org/models/{ALEXNET_FILE}"


class Lpips:
    """LPIPS v0.1 with the AlexNet backbone: the `lpips` package's network and its learned linear weights
    (shipped inside the package), the backbone's weights read from a torchvision AlexNet file given by
    path (nothing is downloaded). ``distance(a, b)``: images (N, 3, H, W) in 0..255 -> (N,)."""

    MIN_SIZE = 32  # AlexNet's fifth layer needs at least this many pixels per side

    def __init__(self, backbone_path: str | Path, device: str | torch.device = "cpu"):
        import lpips

        path = Path(backbone_path)
        state = read_state_dict(path, "LPIPS backbone", f"it is {ALEXNET_WHERE} (evaluate.lpips_backbone)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for `pretrained`
            self.model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        backbone = {}
        for name in self.model.net.state_dict():  # slice<s>.<i>.weight <- features.<i>.weight
            index_and_kind = name.split(".", 1)[1]
            source = f"features.{index_and_kind}"
            if source not in state or tuple(state[source].shape) != tuple(self.model.net.state_dict()[name].shape):
                raise CrnError(f"{path}: no {source} of the expected shape; it is not {ALEXNET_WHERE}")
            backbone[name] = state[source]
        self.model.net.load_state_dict(backbone)
        self.model = self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        if min(a.shape[-2:]) < self.MIN_SIZE:
            raise CrnError(f"LPIPS (AlexNet) needs images of at least {self.MIN_SIZE}x{self.MIN_SIZE} pixels, got {a.shape[-2]}x{a.shape[-1]}")
        a = a.to(self.device, torch.float32) / 127.5 - 1.0  # the package's input range: [-1, 1]
        b = b.to(self.device, torch.float32) / 127.5 - 1.0
        return self.model(a, b).flatten().cpu()

    def pairwise_diversity(self, outputs: Sequence[Tensor]) -> Tensor:
        """Mean LPIPS over the k(k-1)/2 pairs of k outputs (each (N, 3, H, W) in 0..255) -> (N,)."""
        k = len(outputs)
        if k < 2:
            raise CrnError(f"LPIPS diversity: needs k >= 2 outputs per layout, got {k}")
        return torch.stack([self.distance(outputs[u], outputs[v]) for u in range(k) for v in range(u + 1, k)]).mean(0)
