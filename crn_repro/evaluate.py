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

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console

from crn_repro import metrics as M
from crn_repro import stats
from crn_repro.files import atomic_write_json, atomic_write_text, read_image, read_json, staged_dir
from crn_repro.judgments import RANKING_COLUMNS, preference_tables
from crn_repro.datasets import PreparedSplit, channels_to_layout, image_to_tensor
from crn_repro.errors import CrnError
from crn_repro.params import EvaluateParams, Params
from crn_repro.progress import StageProgress
from crn_repro.registry import SEGMENTER, load_segmenter
from crn_repro.segmentation import confusion_matrix, predict, segmentation_scores
from crn_repro.study.records import REAL, file_sha256, real_image_sha256
from crn_repro.synthesize import output_names


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


def evaluate(params: Params, console: Console | None = None) -> dict:
    """Write ``paths.reports/{metrics.json, preference.csv, per_image/<model>.csv}``; returns the metrics."""
    console = console or Console(stderr=True)
    ep: EvaluateParams = params.evaluate
    if ep.reference_model not in params.models:
        raise CrnError(f"evaluate.reference_model: {ep.reference_model!r} is not in `models` ({', '.join(params.models)})")
    table_baselines(params)  # a wrong name fails before the long work
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    val = PreparedSplit(Path(params.paths.prepared), "val")
    h, w = val.size_hw
    segmenter_path = Path(ep.segmenter) if ep.segmenter else Path(params.paths.runs) / SEGMENTER / "model.pt"
    segmenter = load_segmenter(segmenter_path, device, (h, w))
    seg_features = M.segmentation_feature_extractor(segmenter)
    inception = None
    if ep.inception != "none":
        from crn_repro.inception import load_inception

        inception = load_inception(ep.inception, ep.inception_path).to(device)
    vgg = None
    # a missing weights file: the metric is reported missing (with the file and where to get it), not replaced
    drn = None  # the literature's Cityscapes segmenter (SPADE's protocol), when its weights are given
    if params.data.dataset == "cityscapes" and ep.drn_weights and Path(ep.drn_weights).is_file():
        from crn_repro.drn import confusion, load_drn, scores as drn_scores

        drn = load_drn(ep.drn_weights, device)
    lpips = None
    if ep.lpips_backbone and Path(ep.lpips_backbone).is_file() and min(val.size_hw) >= M.Lpips.MIN_SIZE:
        lpips = M.Lpips(ep.lpips_backbone, device)
    n_boot, seed = ep.bootstrap_resamples, ep.seed

    synthetic = params.data.dataset == "synthetic"

    def val_batches():
        """(indices, real images (B,3,H,W) 0..255, layout channel ids (B,H,W)) streamed from the cache."""
        for start in range(0, len(val), ep.batch_size):
            idx = np.arange(start, min(start + ep.batch_size, len(val)))
            yield idx, image_to_tensor(np.array(val.images[idx])).to(device), torch.from_numpy(np.array(val.labels[idx])).long()

    # The real side, once: features and colour moments, streamed in batches.
    real_seg, real_inc, real_moments = [], [], []
    with torch.no_grad():
        for idx, real, ids in val_batches():
            real_seg.append(seg_features(real).cpu())
            if inception is not None:
                real_inc.append(inception(real).cpu())
            if synthetic:
                real_moments += _moments_per_image(real.cpu(), ids, val.num_classes)
    real_seg = torch.cat(real_seg).numpy()
    real_inc = torch.cat(real_inc).numpy() if inception is not None else None
    fd_seg = M.FrechetReference(real_seg)
    fd_inc = M.FrechetReference(real_inc) if real_inc is not None else None
    realism_space = real_inc if real_inc is not None else real_seg
    realism_name = "Inception pool3" if real_inc is not None else "segmenter bottleneck"
    real_moments = stack_moments(real_moments) if synthetic else None

    results: dict[str, dict] = {}
    realism: dict[str, np.ndarray] = {}
    reports = Path(params.paths.reports)
    per_image_dir = reports / "per_image"
    per_image_dir.mkdir(parents=True, exist_ok=True)
    with StageProgress(console) as progress:
        task = progress.add_task("evaluate", total=len(params.models) * len(val))
        for model in params.models:
            folder = Path(params.paths.synth) / model
            index_path = folder / "index.json"
            again = f"run `crn-repro synthesize --model {model}` again"
            index = read_json(index_path, again)
            if not isinstance(index, dict) or not {"names", "k", "facts"} <= set(index):
                raise CrnError(f"{index_path}: not a synthesized set's index (names, k, facts); {again}")
            if index["names"] != val.names:
                raise CrnError(f"{folder}: synthesized for other layouts than the prepared val split; synthesize again")
            k = index["k"]
            synth_hw = tuple(index["facts"].get("image_size_hw", (h, w)))
            if synth_hw != (h, w):
                raise CrnError(f"{folder}: images are {synth_hw[0]}x{synth_hw[1]}, the prepared data {h}x{w}; train and synthesize again")
            if k > 1 and vgg is None:
                from crn_repro.vgg import load_vgg19

                pv = params.vgg
                vgg = load_vgg19(pv.weights, pv.path, pv.pooling, pv.allow_download, pv.seed).to(device)

            # One streamed pass over the model's images; the first output stands for the model.
            conf, fake_seg, fake_inc, fake_moments, diversity, diversity_lpips, drn_conf, drn_conf_full = ([] for _ in range(8))
            with torch.no_grad():
                for idx, _, ids in val_batches():
                    collection = image_to_tensor(
                        _read_images(folder, [val.names[i] for i in idx], k, model).reshape(-1, h, w, 3)
                    ).reshape(len(idx), k, 3, h, w)
                    fake = collection[:, 0].to(device)
                    preds = predict(segmenter, fake).cpu()
                    conf += [confusion_matrix(p, t, val.num_classes) for p, t in zip(preds, ids)]
                    fake_seg.append(seg_features(fake).cpu())
                    if drn is not None:
                        drn_conf += [confusion(p, t) for p, t in zip(drn(fake).argmax(1).cpu(), ids)]
                        if val.labels_full is not None:  # upsampled to the frames' size, scored at full resolution
                            full = torch.from_numpy(np.array(val.labels_full[idx]))
                            up = F.interpolate(fake, size=full.shape[-2:], mode="bilinear", align_corners=False)
                            drn_conf_full += [confusion(p, t) for p, t in zip(drn(up).argmax(1).cpu(), full)]
                    if inception is not None:
                        fake_inc.append(inception(fake).cpu())
                    if synthetic:
                        fake_moments += _moments_per_image(fake.cpu(), ids, val.num_classes)
                    if k > 1:
                        feats = [[f.cpu() for f in vgg(collection[:, u].to(device))] for u in range(k)]
                        diversity += M.pairwise_diversity(feats).tolist()
                        if lpips is not None:
                            diversity_lpips += lpips.pairwise_diversity([collection[:, u] for u in range(k)]).tolist()
                    progress.advance(task, len(idx))
            conf = torch.stack(conf).numpy()
            fake_seg = torch.cat(fake_seg).numpy()

            # Segmentation score: per-image confusion matrices, bootstrap over images.
            def seg_score(idx, key, conf=conf):
                return segmentation_scores(torch.from_numpy(conf[idx].sum(0)), val.label_space.void_channel)[key]

            every = np.arange(len(conf))
            protocol = SEG_PROTOCOL.format(h=h, w=w, void=val.label_space.void_channel)
            entry = {
                name: _interval(
                    seg_score(every, key),
                    stats.bootstrap_ci(len(conf), lambda idx, key=key: seg_score(idx, key), num_resamples=n_boot, seed=seed),
                    protocol,
                )
                for name, key in (("segmentation_miou", "mean_iou"), ("segmentation_pixel_accuracy", "pixel_accuracy"))
            }

            if drn is not None:  # DRN-D-105 (SPADE's protocol at the prepared resolution), bootstrap over images
                variants = {"": (drn_conf, f"{h}x{w} synthesized images against the prepared {h}x{w} labels")}
                if drn_conf_full:
                    fh, fw = val.labels_full.shape[1:]
                    variants["_upsampled"] = (drn_conf_full, f"{h}x{w} synthesized images upsampled bilinearly to {fh}x{fw} "
                                                             f"against the {fh}x{fw} labels")
                for suffix, (counts, what) in variants.items():
                    counts = np.stack(counts)
                    for name, key, void in (("drn_miou", "miou", "ignored"), ("drn_pixel_accuracy", "pixel_accuracy", "ignored"),
                                            ("drn_pixel_accuracy_void", "pixel_accuracy_void_counted", "counted as wrong")):
                        entry[name + suffix] = _interval(
                            drn_scores(counts.sum(0))[key],
                            stats.bootstrap_ci(len(counts), lambda idx, key=key, counts=counts: drn_scores(counts[idx].sum(0))[key],
                                               num_resamples=n_boot, seed=seed),
                            f"DRN-D-105 ({Path(ep.drn_weights).name}, fyu/drn's normalisation) segmentation of the {what} "
                            f"(19 classes; void {void}); bootstrap over images",
                        )

            # Frechet distance in the segmenter's feature space (always available), FID/KID with Inception.
            entry["frechet_distance_segmenter"] = _interval(
                fd_seg(fake_seg),
                stats.bootstrap_ci(len(fake_seg), lambda idx: fd_seg.resampled(fake_seg, idx), num_resamples=n_boot, seed=seed,
                                   vectorized=True),
                f"Frechet distance between Gaussians fitted to segmenter bottleneck features (global average pooled) of the "
                f"{len(real_seg)} real and {len(fake_seg)} synthesized validation images; bootstrap over synthesized images",
            )
            if inception is not None:
                fake_inc = torch.cat(fake_inc).numpy()
                entry["fid"] = _interval(
                    fd_inc(fake_inc),
                    stats.bootstrap_ci(len(fake_inc), lambda idx: fd_inc.resampled(fake_inc, idx), num_resamples=n_boot,
                                       seed=seed, vectorized=True),
                    f"FID, {inception.source_description}, {len(real_inc)} real vs {len(fake_inc)} synthesized {h}x{w} images "
                    f"resized bilinearly to 299x299",
                )
                kid_mean, kid_std = M.kernel_inception_distance(real_inc, fake_inc, seed=seed)
                entry["kid"] = _interval(
                    kid_mean,
                    (kid_mean - 1.96 * kid_std, kid_mean + 1.96 * kid_std),
                    f"KID, {inception.source_description}, cubic polynomial kernel, unbiased MMD^2 over 100 subsets of "
                    f"{min(1000, len(real_inc), len(fake_inc))} of the {len(real_inc)} real and {len(fake_inc)} synthesized "
                    "images (as clean-fid); mean +- 1.96 std over subsets",
                )

            # Realism score of every synthesized image (the automatic judge).
            space = fake_inc if inception is not None else fake_seg
            realism[model] = M.realism_scores(realism_space, space, k=ep.realism_k)
            entry["realism_score"] = _interval(
                float(np.mean(realism[model])),
                stats.bootstrap_mean_ci(realism[model], num_resamples=n_boot, seed=seed),
                f"mean realism score (Kynkaenniemi et al. 2019, k={ep.realism_k}) in {realism_name} features of real val images",
            )
            per_image = pd.DataFrame(
                {
                    "model": model,
                    "image": val.names,
                    "pixel_accuracy": [_safe(lambda i=i: seg_score([i], "pixel_accuracy")) for i in every],
                    "realism_score": realism[model],
                }
            )

            # The score only the synthetic city allows: class-conditional colour distributions.
            if synthetic:
                fake_stacked = stack_moments(fake_moments)

                def colour(idx, fake_stacked=fake_stacked):
                    return M.resampled_colour_distance(real_moments, fake_stacked, idx)

                per_class = M.colour_moment_distance(sum_moments(real_moments, every), sum_moments(fake_stacked, every))
                entry["colour_distance"] = _interval(
                    float(np.mean(list(per_class.values()))) if per_class else float("nan"),
                    stats.bootstrap_ci(len(every), colour, num_resamples=n_boot, seed=seed, vectorized=True),
                    "mean over classes of the Frechet distance between Gaussians fitted to the RGB colours (0..255) of "
                    "real and synthesized pixels of each class over the same layouts; bootstrap over images",
                    per_class={val.label_space.names[c]: float(v) for c, v in per_class.items()},
                )

            # Diversity of a collection: mean pairwise perceptual distance between its k images.
            measures = {"diversity": (diversity, f"mean pairwise LPIPS-style distance (unit-normalised VGG-19 features, "
                                                 f"no learned weights; {vgg.source_description if vgg else ''})")}
            if lpips is not None:
                measures["diversity_lpips"] = (diversity_lpips, f"mean pairwise LPIPS v0.1 (lpips package, AlexNet backbone "
                                                                f"from {Path(ep.lpips_backbone).name}, images in [-1, 1] at {h}x{w})")
            for name, (values, protocol) in measures.items():
                if k > 1:
                    values = np.asarray(values)
                    entry[name] = _interval(float(values.mean()), stats.bootstrap_mean_ci(values, num_resamples=n_boot, seed=seed),
                                            f"{protocol} between the {k} images of each layout's collection")
                    per_image[name] = values

            results[model] = entry
            atomic_write_text(per_image_dir / f"{model}.csv", per_image.to_csv(index=False))

    preference = write_preference(params, val, realism, reports, console)
    out = {"models": results, "num_val_images": len(val), "image_size_hw": [h, w], "dataset": params.data.dataset,
           "missing": missing_metrics(params, results)}
    atomic_write_json(reports / "metrics.json", out)
    write_headlines(reports / "headline", results, preference)
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
        if model not in ks:
            index_path = Path(params.paths.synth) / model / "index.json"
            ks[model] = read_json(index_path, f"run `crn-repro synthesize --model {model}` again").get("k") if index_path.is_file() else None
        if ks[model] is None:
            return None
        path = Path(params.paths.synth) / model / output_names(layout, ks[model])[0]
        return file_sha256(path) if path.is_file() else None

    return source


def write_preference(params: Params, val: PreparedSplit, realism: dict[str, np.ndarray], reports: Path,
                     console: Console) -> pd.DataFrame:
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
    atomic_write_text(reports / "preference.csv", tables["preference"].to_csv(index=False))
    atomic_write_text(reports / "time_curves.csv", tables["curves"].to_csv(index=False))
    atomic_write_text(reports / "ranking.csv", ranking.to_csv(index=False))
    return tables["preference"]


def missing_metrics(params: Params, results: dict) -> list[dict]:
    """The literature's metrics this evaluation could not compute, each with the file it needs and where
    to get it (never silently replaced by another number)."""
    ep = params.evaluate
    missing = []
    if ep.inception == "none":
        missing.append({"metric": "FID and KID (Inception-v3 pool3, the published protocol)",
                        "needs": "evaluate.inception: pytorch-fid and evaluate.inception_path: pt_inception-2015-12-05-6726825d.pth",
                        "from": "the pytorch-fid project's GitHub release (github.com/mseitzer/pytorch-fid/releases)"})
    if any("diversity" in entry and "diversity_lpips" not in entry for entry in results.values()):
        where = f"the file {ep.lpips_backbone} (not found)" if ep.lpips_backbone else f"evaluate.lpips_backbone: {M.ALEXNET_FILE}"
        if ep.lpips_backbone and Path(ep.lpips_backbone).is_file():
            where = f"images of at least {M.Lpips.MIN_SIZE}x{M.Lpips.MIN_SIZE} pixels (AlexNet; these are {'x'.join(map(str, params.data.image_size_hw))})"
        missing.append({"metric": "diversity with LPIPS (learned weights, AlexNet backbone)", "needs": where,
                        "from": M.ALEXNET_WHERE})
    if params.data.dataset != "cityscapes":
        missing.append({"metric": "mIoU and pixel accuracy with DRN-D-105 (SPADE's protocol)",
                        "needs": f"Cityscapes data (DRN-D-105 is a Cityscapes segmenter; this run's data: {params.data.dataset})",
                        "from": "the Cityscapes presets"})
    else:
        from crn_repro.drn import FILE_NAME, WHERE

        if not any("drn_miou" in entry for entry in results.values()):
            where = f"the file {ep.drn_weights} (not found)" if ep.drn_weights else f"evaluate.drn_weights: {FILE_NAME}"
            missing.append({"metric": "mIoU and pixel accuracy with DRN-D-105 (SPADE's protocol)", "needs": where, "from": WHERE})
        if any("drn_miou" in entry for entry in results.values()) and not any("drn_miou_upsampled" in entry for entry in results.values()) \
                and tuple(params.data.image_size_hw) != tuple(params.cityscapes.frame_size_hw or ()):
            missing.append({"metric": "DRN-D-105 scores of the images upsampled to the frames' size (SPADE's protocol)",
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


def write_headlines(folder: Path, results: dict[str, dict], preference: pd.DataFrame) -> None:
    """One small JSON per model (``reports/headline/<model>.json``, the evaluate stage's DVC metrics):
    each metric's value to 4 significant digits (KID, the DRN accuracies and the upsampled DRN scores only
    in metrics.json) and, for a Table 1 baseline, how often the reference model was preferred over it
    (``ref_pref``). Intervals, protocols and per-class values stay in metrics.json."""
    preferred = dict(zip(preference.baseline, preference.rate))
    with staged_dir(folder) as tmp:  # built aside and swapped in: no file of a model no longer evaluated stays
        for model, entry in results.items():
            headline = {short: stats.significant(entry[name]["value"]) for name, short in HEADLINE_KEYS.items() if name in entry}
            if model in preferred:
                headline["ref_pref"] = stats.significant(float(preferred[model]))
            atomic_write_json(tmp / f"{model}.json", headline)
