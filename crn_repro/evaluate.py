"""The `evaluate` stage (paper Sec. 5.1, docs/facts.md §7): automatic metrics of every model's
synthesized validation set, each with a bootstrap interval over images and its protocol, and the
pairwise preference table in the shape of the paper's Table 1.

The paper's evidence is human judgment, and it warns that automatic measures can be gamed. The
preference table therefore comes from human study results when they exist (``evaluate.human_judgments``,
written by `crn-repro study analyze`: with participant and layout columns every rate also gets
cluster-bootstrap intervals over workers and over images, and timed judgments give Fig. 3's curves),
and otherwise from an automatic judge, labelled as such: for each layout, the image with the higher
realism score (Kynkäänniemi et al. 2019) in a feature space of real validation images wins.

Everything is computed from files (the prepared val split, the synthesized PNGs, the segmenter's
model file) and written as files: ``metrics.json``, ``per_image/<model>.csv``, ``preference.csv``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from crn_repro import metrics as M
from crn_repro import stats
from crn_repro.files import atomic_write_json, atomic_write_text, read_image, staged_dir
from crn_repro.judgments import RANKING_COLUMNS, preference_tables
from crn_repro.datasets import PreparedSplit, as_saved, channels_to_layout, image_to_tensor
from crn_repro.errors import CrnError
from crn_repro.params import EvaluateParams, Params
from crn_repro.progress import StageProgress
from crn_repro.registry import SEGMENTER, load_segmenter
from crn_repro.segmentation import confusion_matrix, predict, segmentation_scores
from crn_repro.study.records import REAL, file_sha256, real_image_sha256
from crn_repro.synthesize import output_names, read_index


SEG_PROTOCOL = (
    "segmenter S (this pipeline's, trained on the real training images) run on the synthesized image at the "
    "prepared resolution {h}x{w}; target = the input layout's channel ids; void pixels (channel {void}, the last) excluded "
    "from the target, a non-void pixel predicted void counts as an error; pixel accuracy over non-void pixels, "
    "mIoU over the classes present. Note: gan-semseg was trained against this same segmenter (unless "
    "gan-semseg.objective.segmenter names another), which favours it on this score"
)


def _read_images(folder: Path, names: list[str], k: int, model: str) -> np.ndarray:
    """(N, k, H, W, 3) uint8 of a model's synthesized validation set."""
    out = []
    for name in names:
        row = []
        for file in output_names(name, k):
            row.append(read_image(folder / file, f"run `crn-repro synthesize --model {model}` again"))
        out.append(row)
    return np.asarray(out, dtype=np.uint8)


def _safe(score) -> float:
    """A per-image score, NaN where it is undefined (e.g. an image whose target is all void)."""
    try:
        return float(score())
    except ValueError:
        return float("nan")


def _moments_per_image(images: torch.Tensor, ids: torch.Tensor, num_classes: int) -> list:
    """Per-image colour moments per class (for bootstrapping the colour distance over images)."""
    layouts = channels_to_layout(ids, num_classes)
    return [M.colour_moments(images[i : i + 1], layouts[i : i + 1], num_classes) for i in range(len(images))]


def stack_moments(moments: list) -> M.ColourMoments:
    """Per-image colour moments stacked along a leading image axis."""
    return M.ColourMoments(*(torch.stack([getattr(m, f) for m in moments]) for f in ("count", "total", "total_outer")))


def sum_moments(stacked: M.ColourMoments, indices) -> M.ColourMoments:
    """Colour moments of the images ``indices`` (repeats allowed, for the bootstrap)."""
    idx = torch.as_tensor(np.asarray(indices))
    return M.ColourMoments(stacked.count[idx].sum(0), stacked.total[idx].sum(0), stacked.total_outer[idx].sum(0))


def _interval(value: float, ci: tuple[float, float], protocol: str, **extra) -> dict:
    return {"value": float(value), "ci_low": float(ci[0]), "ci_high": float(ci[1]), "protocol": protocol, **extra}


@M.full_fp32()  # TF32 off (training may have turned it on): the scorers' published numbers are full fp32
def evaluate(params: Params, console: Console | None = None) -> dict:
    """Write ``paths.reports/{metrics.json, preference.csv, time_curves.csv, per_image/<model>.csv,
    headline/<model>.json}``; returns the metrics. Three steps: load the scorers, score each model, write."""
    console = console or Console(stderr=True)
    ep: EvaluateParams = params.evaluate
    if ep.reference_model not in params.models:
        raise CrnError(f"evaluate.reference_model: {ep.reference_model!r} is not in `models` ({', '.join(params.models)})")
    table_baselines(params)  # a wrong name fails before the long work
    val = PreparedSplit(Path(params.paths.prepared), "val")
    scorers = load_scorers(params, val)
    real = score_real_images(val, scorers, ep.batch_size)
    calibration = calibrate_proxy(val, scorers, real.realism_name)
    scores: dict[str, ModelScores] = {}
    with StageProgress(console) as progress:
        task = progress.add_task("evaluate", total=len(params.models) * len(val))
        for model in params.models:
            scores[model] = score_model(params, model, val, scorers, real, advance=lambda n: progress.advance(task, n))
    return write_outputs(params, val, scores, console, scorers.judge, calibration)


# --- the scorers ------------------------------------------------------------------------------------


@dataclass
class Scorers:
    """The measuring instruments of one evaluation, each loaded once: the pipeline's segmenter S (and
    its bottleneck features), and, where their weights are given, Inception-v3 (FID, KID and the realism
    space), DRN-D-105 (SPADE's segmenter, Cityscapes) and LPIPS. VGG-19 (diversity) is loaded on first
    use, by ``perception``: only a model with k > 1 outputs needs it. A metric whose weights file is
    missing is reported missing (``missing_metrics``, with the file and where to get it), not replaced."""

    params: Params
    device: torch.device
    segmenter: nn.Module
    seg_features: Callable[[torch.Tensor], torch.Tensor]
    inception: nn.Module | None
    drn: nn.Module | None
    lpips: M.Lpips | None
    vgg: nn.Module | None = None
    judge: dict = field(default_factory=dict)  # the segmenter's identity (``judge``), recorded with its scores

    def perception(self) -> nn.Module:
        """VGG-19 features (``vgg`` params), loaded on the first call."""
        if self.vgg is None:
            from crn_repro.vgg import load_vgg19

            pv = self.params.vgg
            self.vgg = load_vgg19(pv.weights, pv.path, pv.pooling, pv.allow_download, pv.seed).to(self.device)
        return self.vgg


def load_scorers(params: Params, val: PreparedSplit) -> Scorers:
    """The scorers of ``params.evaluate`` for images of the prepared size, on the GPU when there is one."""
    ep = params.evaluate
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    segmenter_path = Path(ep.segmenter) if ep.segmenter else Path(params.paths.runs) / SEGMENTER / "model.pt"
    segmenter = load_segmenter(segmenter_path, device, val.size_hw)
    inception = None  # a weights file that is not there: FID and KID are reported missing (``missing_metrics``)
    if ep.inception != "none":
        from crn_repro.inception import load_inception, weights_file

        if weights_file(ep.inception, ep.inception_path).is_file():
            inception = load_inception(ep.inception, ep.inception_path).to(device)
    drn = None  # the literature's Cityscapes segmenter (SPADE's), when its weights are given
    if params.data.dataset == "cityscapes" and ep.drn_weights and Path(ep.drn_weights).is_file():
        from crn_repro.drn import load_drn

        drn = load_drn(ep.drn_weights, device)
    lpips = None
    if ep.lpips_backbone and Path(ep.lpips_backbone).is_file() and min(val.size_hw) >= M.Lpips.MIN_SIZE:
        lpips = M.Lpips(ep.lpips_backbone, device)
    return Scorers(params, device, segmenter, M.segmentation_feature_extractor(segmenter), inception, drn, lpips,
                   judge=judge(segmenter, segmenter_path))


CALIBRATION_IMAGES = 64  # the first ones of the val split: enough pairs, little memory at 1024p


def calibrate_proxy(val: PreparedSplit, scorers: Scorers, space: str) -> dict:
    """The realism proxy's agreement with the known order real > slight > blurred > noise on the first
    ``CALIBRATION_IMAGES`` real validation images (``calibration.calibrate``), in the realism score's space."""
    from crn_repro.calibration import calibrate

    ep = scorers.params.evaluate
    n = min(len(val), CALIBRATION_IMAGES)
    images = image_to_tensor(np.array(val.images[:n])).round().to(torch.uint8)
    net = scorers.inception if scorers.inception is not None else scorers.seg_features
    return calibrate(images, lambda x: net(x.to(scorers.device)), ep.realism_k, space, seed=ep.seed, batch_size=ep.batch_size)


def weights_sha256(net: nn.Module) -> str:
    """SHA-256 of a network's weights: every state-dict entry's name, dtype, shape and bytes, in name order
    (the same weights give the same digest whatever file they were saved in)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def judge(segmenter: nn.Module, path: Path) -> dict:
    """The identity of the segmenter that scores every model (segmenter mIoU, Frechet distance and, without
    Inception, realism): ``id`` (the first 12 hex digits of its weights' SHA-256) goes with each of those
    scores, so that scores of different experiments are compared only when their judges are the same."""
    sha = weights_sha256(segmenter)
    return {"network": "segmenter", "file": str(path), "weights_sha256": sha, "id": sha[:12]}


def _val_batches(val: PreparedSplit, batch_size: int, device: torch.device):
    """(indices, real images (B,3,H,W) 0..255 on ``device``, layout channel ids (B,H,W)) streamed from the cache."""
    for start in range(0, len(val), batch_size):
        idx = np.arange(start, min(start + batch_size, len(val)))
        yield idx, image_to_tensor(np.array(val.images[idx])).to(device), torch.from_numpy(np.array(val.labels[idx])).long()


@dataclass
class RealImages:
    """The real validation images as the scores see them, computed once: segmenter features (and their
    Frechet reference), Inception features (with Inception), the realism score's feature space, and per-image
    colour moments (synthetic city only)."""

    seg: np.ndarray
    fd_seg: M.FrechetReference
    inc: np.ndarray | None
    fd_inc: M.FrechetReference | None
    kid_inc: M.KernelReference | None
    realism_space: np.ndarray
    realism_name: str
    moments: M.ColourMoments | None


def score_real_images(val: PreparedSplit, scorers: Scorers, batch_size: int) -> RealImages:
    """The real side of every score, in one streamed pass over the validation images."""
    synthetic = scorers.params.data.dataset == "synthetic"
    seg, inc, moments = [], [], []
    with torch.no_grad():
        for _, real, ids in _val_batches(val, batch_size, scorers.device):
            seg.append(scorers.seg_features(real).cpu())
            if scorers.inception is not None:
                inc.append(scorers.inception(real).cpu())
            if synthetic:
                moments += _moments_per_image(real.cpu(), ids, val.num_classes)
    seg = torch.cat(seg).numpy()
    inc = torch.cat(inc).numpy() if scorers.inception is not None else None
    return RealImages(
        seg=seg,
        fd_seg=M.FrechetReference(seg),
        inc=inc,
        fd_inc=M.FrechetReference(inc) if inc is not None else None,
        kid_inc=M.KernelReference(inc) if inc is not None else None,
        realism_space=inc if inc is not None else seg,
        realism_name="Inception pool3" if inc is not None else "segmenter bottleneck",
        moments=stack_moments(moments) if synthetic else None,
    )


# --- scoring one model ------------------------------------------------------------------------------


@dataclass
class ModelScores:
    """One model's results: its metrics.json entry, its per-image table and the realism score of each
    of its images (the automatic judge's input)."""

    entry: dict
    per_image: pd.DataFrame
    realism: np.ndarray


@dataclass
class Scored:
    """What one streamed pass over a model's images collects, per validation image (the first of a
    collection stands for the model; ``diversity*`` compare the k images of each collection)."""

    conf: list = field(default_factory=list)  # segmenter S confusion matrices
    seg: list = field(default_factory=list)  # S bottleneck features per batch
    inc: list = field(default_factory=list)  # Inception pool3 features per batch
    moments: list = field(default_factory=list)  # colour moments (synthetic city)
    diversity: list = field(default_factory=list)  # VGG-19 pairwise distance
    diversity_lpips: list = field(default_factory=list)
    drn_conf: list = field(default_factory=list)  # DRN-D-105 confusion matrices at the prepared size
    drn_conf_full: list = field(default_factory=list)  # ... of the images upsampled to the frames' size


def score_model(params: Params, model: str, val: PreparedSplit, scorers: Scorers, real: RealImages,
                advance: Callable[[int], None] = lambda n: None) -> ModelScores:
    """Score one model's synthesized validation set (``paths.synth/<model>``) against the real images."""
    ep = params.evaluate
    n_boot, seed = ep.bootstrap_resamples, ep.seed
    h, w = val.size_hw
    folder = Path(params.paths.synth) / model
    k = _synthesized_k(folder, model, val)
    got = _stream_model(folder, model, k, val, scorers, ep.batch_size, advance)
    conf = torch.stack(got.conf).numpy()
    fake_seg = torch.cat(got.seg).numpy()
    fake_inc = torch.cat(got.inc).numpy() if scorers.inception is not None else None

    entry = _segmentation_scores(conf, val, n_boot, seed)
    if scorers.drn is not None:
        entry.update(_drn_scores(got, val, Path(ep.drn_weights).name, n_boot, seed))
    entry.update(_frechet_scores(real, fake_seg, fake_inc, scorers.inception, val.size_hw, n_boot, seed))
    realism = M.realism_scores(real.realism_space, fake_inc if fake_inc is not None else fake_seg, k=ep.realism_k)
    entry["realism_score"] = _interval(
        float(np.mean(realism)),
        stats.bootstrap_mean_ci(realism, num_resamples=n_boot, seed=seed),
        f"mean realism score (Kynkaenniemi et al. 2019, k={ep.realism_k}) in {real.realism_name} features of real val images",
    )
    judged = ["segmentation_miou", "segmentation_pixel_accuracy", "frechet_distance_segmenter"]
    for name in judged + (["realism_score"] if fake_inc is None else []):
        entry[name]["judge"] = scorers.judge["id"]
    per_image = pd.DataFrame({"model": model, "image": val.names, "pixel_accuracy": _pixel_accuracy_per_image(conf, val),
                              "realism_score": realism, "judge": scorers.judge["id"]})
    if real.moments is not None:  # the score only the synthetic city allows
        entry["colour_distance"] = _colour_distance(real.moments, stack_moments(got.moments), val, n_boot, seed)
    if k > 1:
        for name, (values, protocol) in _diversity_measures(got, scorers, ep.lpips_backbone, (h, w)).items():
            values = np.asarray(values)
            entry[name] = _interval(float(values.mean()), stats.bootstrap_mean_ci(values, num_resamples=n_boot, seed=seed),
                                    f"{protocol} between the {k} images of each layout's collection")
            per_image[name] = values
    return ModelScores(entry, per_image, realism)


def _synthesized_k(folder: Path, model: str, val: PreparedSplit) -> int:
    """The number of images per layout of a synthesized set, after checking that its index matches
    the prepared val split (layouts and size)."""
    index = read_index(folder, model)
    if index["names"] != val.names:
        raise CrnError(f"{folder}: synthesized for other layouts than the prepared val split; synthesize again")
    h, w = val.size_hw
    synth_hw = tuple(index["facts"].get("image_size_hw", (h, w)))
    if synth_hw != (h, w):
        raise CrnError(f"{folder}: images are {synth_hw[0]}x{synth_hw[1]}, the prepared data {h}x{w}; train and synthesize again")
    return index["k"]


def _stream_model(folder: Path, model: str, k: int, val: PreparedSplit, scorers: Scorers, batch_size: int,
                  advance: Callable[[int], None]) -> Scored:
    """One streamed pass over a model's images, each batch through every scorer."""
    h, w = val.size_hw
    device = scorers.device
    got = Scored()
    with torch.no_grad():
        for idx, _, ids in _val_batches(val, batch_size, device):
            collection = image_to_tensor(
                _read_images(folder, [val.names[i] for i in idx], k, model).reshape(-1, h, w, 3)
            ).reshape(len(idx), k, 3, h, w)
            fake = collection[:, 0].to(device)
            preds = predict(scorers.segmenter, fake).cpu()
            got.conf += [confusion_matrix(p, t, val.num_classes) for p, t in zip(preds, ids)]
            got.seg.append(scorers.seg_features(fake).cpu())
            if scorers.drn is not None:
                _drn_confusions(scorers.drn, fake, ids, val, idx, got)
            if scorers.inception is not None:
                got.inc.append(scorers.inception(fake).cpu())
            if scorers.params.data.dataset == "synthetic":
                got.moments += _moments_per_image(fake.cpu(), ids, val.num_classes)
            if k > 1:
                vgg = scorers.perception()
                feats = [[f.cpu() for f in vgg(collection[:, u].to(device))] for u in range(k)]
                got.diversity += M.pairwise_diversity(feats).tolist()
                if scorers.lpips is not None:
                    got.diversity_lpips += scorers.lpips.pairwise_diversity([collection[:, u] for u in range(k)]).tolist()
            advance(len(idx))
    return got


def _drn_confusions(drn: nn.Module, fake: torch.Tensor, ids: torch.Tensor, val: PreparedSplit, idx: np.ndarray, got: Scored) -> None:
    """DRN-D-105's confusion matrices of a batch: at the prepared size and, where the prepared split keeps
    the frames' full-resolution labels, of the images upsampled bilinearly to the frames' size and rounded
    to 8-bit values, as the upsampled images would be if saved (``drn.VARIANTS``)."""
    from crn_repro.drn import confusion

    got.drn_conf += [confusion(p, t) for p, t in zip(drn(fake).argmax(1).cpu(), ids)]
    if val.labels_full is not None:
        full = torch.from_numpy(np.array(val.labels_full[idx]))
        up = as_saved(F.interpolate(fake, size=full.shape[-2:], mode="bilinear", align_corners=False))
        got.drn_conf_full += [confusion(p, t) for p, t in zip(drn(up).argmax(1).cpu(), full)]


def _segmentation_scores(conf: np.ndarray, val: PreparedSplit, n_boot: int, seed: int) -> dict:
    """S's mIoU and pixel accuracy from per-image confusion matrices, bootstrap over images."""
    void = val.label_space.void_channel
    h, w = val.size_hw
    protocol = SEG_PROTOCOL.format(h=h, w=w, void=void)

    def score(idx, key):
        return segmentation_scores(torch.from_numpy(conf[idx].sum(0)), void)[key]

    return {
        name: _interval(
            score(np.arange(len(conf)), key),
            stats.bootstrap_ci(len(conf), lambda idx, key=key: score(idx, key), num_resamples=n_boot, seed=seed),
            protocol,
        )
        for name, key in (("segmentation_miou", "mean_iou"), ("segmentation_pixel_accuracy", "pixel_accuracy"))
    }


def _pixel_accuracy_per_image(conf: np.ndarray, val: PreparedSplit) -> list[float]:
    """S's pixel accuracy of each image on its own; NaN where it is undefined (a target all void)."""
    void = val.label_space.void_channel
    return [_safe(lambda i=i: segmentation_scores(torch.from_numpy(conf[[i]].sum(0)), void)["pixel_accuracy"])
            for i in range(len(conf))]


def _drn_scores(got: Scored, val: PreparedSplit, weights_name: str, n_boot: int, seed: int) -> dict:
    """DRN-D-105's mIoU and pixel accuracies in the synthesis-size variant and, where the full-resolution
    labels are kept, the upsampled one (``drn.VARIANTS``); bootstrap over images."""
    from crn_repro.drn import VARIANTS
    from crn_repro.drn import scores as drn_scores

    h, w = val.size_hw
    variants = {"": (got.drn_conf, f"{h}x{w} synthesized images against the prepared {h}x{w} labels")}
    if got.drn_conf_full:
        fh, fw = val.labels_full.shape[1:]
        variants["_upsampled"] = (got.drn_conf_full, f"{h}x{w} synthesized images upsampled bilinearly to {fh}x{fw} "
                                                     f"and rounded to 8-bit values as saved images are, against the "
                                                     f"{fh}x{fw} labels")
    entry = {}
    for suffix, (counts, what) in variants.items():
        counts = np.stack(counts)
        for name, key, void in (("drn_miou", "miou", "ignored"), ("drn_pixel_accuracy", "pixel_accuracy", "ignored"),
                                ("drn_pixel_accuracy_void", "pixel_accuracy_void_counted", "counted as wrong")):
            entry[name + suffix] = _interval(
                drn_scores(counts.sum(0))[key],
                stats.bootstrap_ci(len(counts), lambda idx, key=key, counts=counts: drn_scores(counts[idx].sum(0))[key],
                                   num_resamples=n_boot, seed=seed),
                f"DRN-D-105, {VARIANTS[suffix]} variant ({weights_name}, fyu/drn's normalisation, fp32): "
                f"segmentation of the {what} (19 classes; void {void}); bootstrap over images",
            )
    return entry


def _frechet_scores(real: RealImages, fake_seg: np.ndarray, fake_inc: np.ndarray | None, inception: nn.Module | None,
                    size_hw: tuple[int, int], n_boot: int, seed: int) -> dict:
    """The Frechet distance in the segmenter's feature space (always available) and, with Inception,
    FID and KID."""
    h, w = size_hw
    entry = {"frechet_distance_segmenter": _interval(
        real.fd_seg(fake_seg),
        stats.bootstrap_ci(len(fake_seg), lambda idx: real.fd_seg.resampled(fake_seg, idx), num_resamples=n_boot, seed=seed,
                           vectorized=True),
        f"Frechet distance between Gaussians fitted to segmenter bottleneck features (global average pooled) of the "
        f"{len(real.seg)} real and {len(fake_seg)} synthesized validation images; bootstrap over synthesized images",
    )}
    if inception is None:
        return entry
    real_inc = real.inc
    entry["fid"] = _interval(
        real.fd_inc(fake_inc),
        stats.bootstrap_ci(len(fake_inc), lambda idx: real.fd_inc.resampled(fake_inc, idx), num_resamples=n_boot,
                           seed=seed, vectorized=True),
        f"FID, {inception.source_description}, {len(real_inc)} real vs {len(fake_inc)} synthesized {h}x{w} images "
        f"resized bilinearly to 299x299",
    )
    entry["kid"] = _interval(
        real.kid_inc(fake_inc),
        stats.bootstrap_ci(len(fake_inc), lambda idx: real.kid_inc.resampled(fake_inc, idx), num_resamples=n_boot,
                           seed=seed, vectorized=True),
        f"KID, {inception.source_description}, cubic polynomial kernel, unbiased MMD^2 between all {len(real_inc)} real and "
        f"{len(fake_inc)} synthesized {h}x{w} images resized bilinearly to 299x299 (clean-fid's 100 subsets of up to 1000 "
        "images estimate this value, and equal it for sets of one size up to 1000); bootstrap over synthesized images, the real ones "
        "fixed, pairs of an image with its own copy left out of the within-set mean",
    )
    return entry


def _colour_distance(real: M.ColourMoments, fake: M.ColourMoments, val: PreparedSplit, n_boot: int, seed: int) -> dict:
    """Class-conditional colour distance (synthetic city: its classes have known colour distributions)
    from per-image colour moments, bootstrap over images; per class in ``per_class``."""
    every = np.arange(len(fake.count))
    per_class = M.colour_moment_distance(sum_moments(real, every), sum_moments(fake, every))
    return _interval(
        float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        stats.bootstrap_ci(len(every), lambda idx: M.resampled_colour_distance(real, fake, idx), num_resamples=n_boot,
                           seed=seed, vectorized=True),
        "mean over classes of the Frechet distance between Gaussians fitted to the RGB colours (0..255) of "
        "real and synthesized pixels of each class over the same layouts; bootstrap over images",
        per_class={val.label_space.names[c]: float(v) for c, v in per_class.items()},
    )


def _diversity_measures(got: Scored, scorers: Scorers, lpips_backbone: str | None, size_hw: tuple[int, int]) -> dict:
    """Diversity of the collections: name -> (per-image mean pairwise distance between the k images, protocol)."""
    measures = {"diversity": (got.diversity, f"mean pairwise LPIPS-style distance (unit-normalised VGG-19 features, "
                                             f"no learned weights; {scorers.perception().source_description})")}
    if scorers.lpips is not None:
        h, w = size_hw
        measures["diversity_lpips"] = (got.diversity_lpips, f"mean pairwise LPIPS v0.1 (lpips package, AlexNet backbone "
                                                            f"from {Path(lpips_backbone).name}, images in [-1, 1] at {h}x{w})")
    return measures


# --- writing the outputs ----------------------------------------------------------------------------


def write_outputs(params: Params, val: PreparedSplit, scores: dict[str, ModelScores], console: Console,
                  judge: dict | None = None, calibration: dict | None = None) -> dict:
    """Write every model's per-image table, the preference table (from human judgments of the current
    images where given, else the automatic judge on the realism scores), its time curves and ranking,
    metrics.json and the headline metrics; returns the metrics."""
    reports = Path(params.paths.reports)
    for model, scored in scores.items():
        atomic_write_text(reports / "per_image" / f"{model}.csv", scored.per_image.to_csv(index=False))
    results = {model: scored.entry for model, scored in scores.items()}
    realism = {model: scored.realism for model, scored in scores.items()}
    preference = write_preference(params, val, realism, reports, console, calibration)
    h, w = val.size_hw
    out = {"models": results, "num_val_images": len(val), "image_size_hw": [h, w], "dataset": params.data.dataset,
           "missing": missing_metrics(params, results), "judge": judge or {}, "proxy_calibration": calibration or {}}
    atomic_write_json(reports / "metrics.json", out)
    write_headlines(reports / "headline", results, preference, (judge or {}).get("id"))
    return out


RERUN_STUDY = ("the study judged earlier images: build a new one for the current images (`crn-repro study make --out "
               "studies/NEW`), collect answers and `crn-repro study analyze` it, or set evaluate.human_judgments: null for the "
               "automatic judge")


def current_sources(params: Params, val: PreparedSplit):
    """(model, layout) -> the SHA-256 of what a study image of it is made from now: the synthesized
    file (first output), or the prepared real image; None where there is none (docs/facts.md §6.2)."""
    rows = {name: i for i, name in enumerate(val.names)}
    ks: dict[str, int | None] = {}

    def source(model: str, layout: str) -> str | None:
        if layout not in rows:
            return None
        if model == REAL:
            return real_image_sha256(np.asarray(val.images[rows[layout]]))
        folder = Path(params.paths.synth) / model
        if model not in ks:
            ks[model] = read_index(folder, model)["k"] if (folder / "index.json").is_file() else None
        if ks[model] is None:
            return None
        path = folder / output_names(layout, ks[model])[0]
        return file_sha256(path) if path.is_file() else None

    return source


def write_preference(params: Params, val: PreparedSplit, realism: dict[str, np.ndarray], reports: Path,
                     console: Console, calibration: dict | None = None) -> pd.DataFrame:
    """``preference.csv``, ``time_curves.csv`` and ``ranking.csv`` (``judgments.preference_tables``): human
    judgments count only where they judged the current images; says how many were dropped."""
    ep = params.evaluate
    tables = preference_tables(ep.reference_model, table_baselines(params), realism, ep.judgment_files, ep.bootstrap_resamples,
                               ep.seed, current_sources(params, val) if ep.judgment_files else None, RERUN_STUDY)
    binding = tables["binding"]
    if binding and binding["dropped"]:
        console.print(f"human judgments: {binding['dropped']} judged images that are no longer the synthesized ones and are "
                      f"left out (study build {', '.join(binding['builds']) or 'unknown'})", highlight=False, soft_wrap=True)
    if binding and binding["unbound"]:
        console.print(f"human judgments: {binding['unbound']} carry no image hashes and cannot be checked against the current "
                      "images (analyse the study again with this version to bind them)", highlight=False, soft_wrap=True)
    ranking = (tables["ranking"].assign(note="") if tables["ranking"] is not None   # no ranking: one row saying why
               else pd.DataFrame([{"note": tables["ranking_note"]}], columns=[*RANKING_COLUMNS, "note"]))
    tables["preference"] = withhold_uncalibrated(tables["preference"], calibration or {})
    atomic_write_text(reports / "preference.csv", tables["preference"].to_csv(index=False))
    atomic_write_text(reports / "time_curves.csv", tables["curves"].to_csv(index=False))
    atomic_write_text(reports / "ranking.csv", ranking.to_csv(index=False))
    return tables["preference"]


def withhold_uncalibrated(preference: pd.DataFrame, calibration: dict) -> pd.DataFrame:
    """The automatic proxy's Table 1 withheld (no rates, the source says why) where the proxy failed its
    calibration (``calibration.calibrate``): a judge that misorders obvious cases decides nothing."""
    if calibration.get("passes") is not False or not len(preference) or not str(preference.source.iloc[0]).startswith("automatic"):
        return preference
    why = (f"none: the automatic proxy failed its calibration (agreement {calibration['overall']:.3f} < "
           f"{calibration['threshold']} on real > slight > blurred > noise); no automatic Table 1")
    return preference.assign(wins=np.nan, rate=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, source=why)


def missing_metrics(params: Params, results: dict) -> list[dict]:
    """The literature's metrics this evaluation could not compute, each with the file it needs and where
    to get it (never silently replaced by another number)."""
    ep = params.evaluate
    missing = []
    if ep.inception == "none":
        missing.append({"metric": "FID and KID (Inception-v3 pool3, the published protocol)",
                        "needs": "evaluate.inception: pytorch-fid and evaluate.inception_path: pt_inception-2015-12-05-6726825d.pth",
                        "from": "the pytorch-fid project's GitHub release (github.com/mseitzer/pytorch-fid/releases)"})
    else:
        from crn_repro.inception import weights_file, weights_url

        if not weights_file(ep.inception, ep.inception_path).is_file():
            missing.append({"metric": f"FID and KID (Inception-v3 pool3, {ep.inception} weights)",
                            "needs": f"the file {weights_file(ep.inception, ep.inception_path)} (not found)",
                            "from": weights_url(ep.inception)})
    if any("diversity" in entry and "diversity_lpips" not in entry for entry in results.values()):
        where = f"the file {ep.lpips_backbone} (not found)" if ep.lpips_backbone else f"evaluate.lpips_backbone: {M.ALEXNET_FILE}"
        if ep.lpips_backbone and Path(ep.lpips_backbone).is_file():
            where = f"images of at least {M.Lpips.MIN_SIZE}x{M.Lpips.MIN_SIZE} pixels (AlexNet; these are {'x'.join(map(str, params.data.image_size_hw))})"
        missing.append({"metric": "diversity with LPIPS (learned weights, AlexNet backbone)", "needs": where,
                        "from": M.ALEXNET_WHERE})
    if params.data.dataset != "cityscapes":
        missing.append({"metric": "mIoU and pixel accuracy with DRN-D-105 (SPADE's segmenter)",
                        "needs": f"Cityscapes data (DRN-D-105 is a Cityscapes segmenter; this run's data: {params.data.dataset})",
                        "from": "the Cityscapes presets"})
    else:
        from crn_repro.drn import FILE_NAME, WHERE

        if not any("drn_miou" in entry for entry in results.values()):
            where = f"the file {ep.drn_weights} (not found)" if ep.drn_weights else f"evaluate.drn_weights: {FILE_NAME}"
            missing.append({"metric": "mIoU and pixel accuracy with DRN-D-105 (SPADE's segmenter)", "needs": where, "from": WHERE})
        if any("drn_miou" in entry for entry in results.values()) and not any("drn_miou_upsampled" in entry for entry in results.values()) \
                and tuple(params.data.image_size_hw) != tuple(params.cityscapes.frame_size_hw or ()):
            missing.append({"metric": "DRN-D-105 scores, upsampled variant (the images upsampled to the frames' size)",
                            "needs": "cityscapes.keep_full_resolution_val_labels: true, then `crn-repro prepare` again",
                            "from": "the Cityscapes gtFine labels (already in the dataset)"})
    return missing


def table_baselines(params: Params) -> list[str]:
    """The models Table 1 compares the reference model with (``evaluate.baselines``, default every other model)."""
    ep = params.evaluate
    chosen = list(ep.baselines) if ep.baselines is not None else [m for m in params.models if m != ep.reference_model]
    for model in chosen:
        if model not in params.models or model == ep.reference_model:
            raise CrnError(
                f"evaluate.baselines: {model!r} is not one of the other models in `models` ({', '.join(params.models)})"
            )
    return chosen


HEADLINE_KEYS = {  # metrics.json entry -> headline key: short, one column each in `dvc metrics show` (<= 160 wide)
    "segmentation_miou": "miou",
    "segmentation_pixel_accuracy": "acc",
    "frechet_distance_segmenter": "fd_seg",
    "fid": "fid",
    "realism_score": "realism",
    "colour_distance": "colour",
    "diversity": "div",
    "diversity_lpips": "lpips",
    "drn_miou": "drn_miou",
}


def write_headlines(folder: Path, results: dict[str, dict], preference: pd.DataFrame, judge: str | None = None) -> None:
    """One small JSON per model (``reports/headline/<model>.json``, the evaluate stage's DVC metrics):
    each metric's value to 4 significant digits (KID, the DRN accuracies and the upsampled DRN scores only
    in metrics.json) and, for a Table 1 baseline, how often the reference model was preferred over it
    (``ref_pref``), and the ``judge`` that scored it (its segmenter's weights: `dvc exp show` sets experiments
    scored by different judges apart). Intervals, protocols and per-class values stay in metrics.json."""
    preferred = dict(zip(preference.baseline, preference.rate))
    with staged_dir(folder) as tmp:  # built aside and swapped in: no file of a model no longer evaluated stays
        for model, entry in results.items():
            headline = {short: stats.significant(entry[name]["value"]) for name, short in HEADLINE_KEYS.items() if name in entry}
            if model in preferred:
                headline["ref_pref"] = stats.significant(float(preferred[model]))
            if judge:
                headline["judge"] = judge
            atomic_write_json(tmp / f"{model}.json", headline)
