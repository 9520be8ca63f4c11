"""Does the automatic proxy order obvious cases as people do? The realism score that decides the
automatic Table 1 (Kynkaanniemi et al. 2019) is checked on a calibration set whose right order is known:
for each held-out real validation image, the image itself > slightly degraded (blur sigma 0.5 px and
Gaussian noise of std 4 grey levels) > strongly blurred (sigma = height / 16) > uniform noise. The
reference set is the other half of the validation images (even indices), the calibrated images the odd
ones, so that no image is scored against itself. Agreement is the fraction of (image, pair of levels)
whose scores are in the right order, over all pairs and per pair."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from crn_repro import metrics as M

LEVELS = ("real", "slight", "blurred", "noise")
MIN_AGREEMENT = 0.9  # below it the proxy does not decide the automatic Table 1


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 3, H, W) images, reflect-padded."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def degrade(images: torch.Tensor, level: str, seed: int = 0) -> torch.Tensor:
    """``images`` (B, 3, H, W), 0..255, at one calibration ``level`` (``LEVELS``), rounded to 0..255 as saved."""
    generator = torch.Generator().manual_seed(seed)
    h = images.shape[-2]
    if level == "real":
        out = images
    elif level == "slight":
        out = _blur(images, 0.5) + 4.0 * torch.randn(images.shape, generator=generator).to(images)
    elif level == "blurred":
        out = _blur(images, max(1.0, h / 16))
    elif level == "noise":
        out = 255.0 * torch.rand(images.shape, generator=generator).to(images)
    else:
        raise ValueError(f"unknown calibration level {level!r}")
    return out.round().clamp(0, 255)


def agreement(scores: np.ndarray) -> dict:
    """``scores`` (n images, len(LEVELS)), best level first: the fraction of pairs in the right order
    (a tie counts as wrong), over every pair and per pair of levels."""
    pairs = {}
    for i in range(len(LEVELS)):
        for j in range(i + 1, len(LEVELS)):
            pairs[f"{LEVELS[i]}>{LEVELS[j]}"] = float(np.mean(scores[:, i] > scores[:, j]))
    return {"overall": float(np.mean(list(pairs.values()))), "pairs": pairs}


def calibrate(images: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor], k: int, space: str,
              min_agreement: float = MIN_AGREEMENT, seed: int = 0, batch_size: int = 16) -> dict:
    """The realism proxy's agreement with the known order on ``images`` ((N, 3, H, W) uint8 real validation
    images; N >= 2k + 1, or it is not calibrated), ``features`` applied ``batch_size`` images at a time: ``overall``, ``pairs``,
    ``passes`` (overall >= ``min_agreement``), the mean score per level and the protocol."""
    reference, held_out = images[0::2], images[1::2]
    if len(reference) <= k:
        return {"passes": None, "threshold": min_agreement, "n": len(held_out),
                "note": f"not calibrated: {len(images)} validation images, the calibration needs at least {2 * k + 1}"}

    def feats(batch: torch.Tensor, level: str) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([features(degrade(batch[i : i + batch_size].float(), level, seed + i)).cpu()
                              for i in range(0, len(batch), batch_size)]).numpy()

    real = feats(reference, "real")
    scores = np.stack([M.realism_scores(real, feats(held_out, level), k=k) for level in LEVELS], axis=1)
    result = agreement(scores)
    result.update(
        passes=result["overall"] >= min_agreement, threshold=min_agreement, n=len(held_out),
        mean_scores={level: float(scores[:, i].mean()) for i, level in enumerate(LEVELS)},
        protocol=f"realism score (k={k}) in {space} features of {len(held_out)} held-out real validation images "
                 f"(odd indices) against the other {len(reference)} (even): real > slight (blur sigma 0.5 px + noise std 4) "
                 f"> blurred (sigma = height/16) > uniform noise; fraction of correctly ordered pairs, ties wrong",
    )
    return result
