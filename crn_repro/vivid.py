"""The release's "vivid" training images (docs/facts.md §3, §12): multi-scale tone mapping of Cityscapes
frames with the weighted-least-squares (WLS) edge-preserving filter of Farbman et al. 2008, "Edge-
Preserving Decompositions for Multi-Scale Tone and Detail Manipulation", applied by the authors to
the training images of their 512p and 1024p models. Not in the paper: an option
(``cityscapes.vivid_train_images``), written here from the description of the method and the
release's published parameters.

Per image, after resizing: sRGB in [0, 1] raised to 0.75; CIELAB; the lightness L smoothed twice by
WLS (lambda 0.125 and 0.5, alpha 1.2, guided by log L), giving a fine detail layer L - L0, a medium
one L0 - L1 and a base L1; three tone mappings (fine, medium, coarse emphasis) of these layers with
sigmoid compression, chroma x1.1; back to sRGB and averaged.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

# sRGB (D65) <-> CIE XYZ <-> CIELAB. The release used MATLAB's makecform('srgb2lab'); which white point
# that applies is not settled by the sources we read (docs/facts.md §12): D65 here.
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_WHITE = _RGB_TO_XYZ.sum(1)  # D65: the XYZ of sRGB white
_EPSILON, _KAPPA = 216 / 24389, 24389 / 27

FINE = (25.0, 1.0, 1.0, 1.0)  # (val0, val1, val2, exposure) of the release's three tone mappings
MEDIUM = (1.0, 40.0, 1.0, 1.0)
COARSE = (4.0, 1.0, 15.0, 1.10)
SATURATION = 1.1
WLS_LAMBDAS = (0.125, 0.5)
WLS_ALPHA = 1.2


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIELAB (L in 0..100)."""
    rgb = np.asarray(rgb, np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB -> sRGB (..., 3), clipped to [0, 1]."""
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    linear = np.clip(xyz @ np.linalg.inv(_RGB_TO_XYZ).T, 0, 1)
    return np.clip(np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055), 0, 1)


def wls_filter(values: np.ndarray, lam: float, alpha: float = WLS_ALPHA, small: float = 1e-4) -> np.ndarray:
    """Farbman et al.'s WLS smoothing of a 2-d array: argmin_u sum (u - v)^2 + lam * sum over
    neighbouring pixels of w (u_p - u_q)^2, with w = 1 / (|d log v|^alpha + small) from the log of the
    input; solved exactly as one sparse linear system."""
    v = np.asarray(values, np.float64)
    h, w = v.shape
    guide = np.log(v + np.finfo(np.float64).eps)
    wy = lam / (np.abs(np.diff(guide, axis=0)) ** alpha + small)  # (h-1, w): between rows
    wx = lam / (np.abs(np.diff(guide, axis=1)) ** alpha + small)  # (h, w-1): between columns
    index = np.arange(h * w).reshape(h, w)
    rows = np.concatenate([index[:-1].ravel(), index[:, :-1].ravel()])
    cols = np.concatenate([index[1:].ravel(), index[:, 1:].ravel()])
    weights = np.concatenate([wy.ravel(), wx.ravel()])
    off = scipy.sparse.coo_matrix((-weights, (rows, cols)), shape=(h * w, h * w))
    degree = np.zeros(h * w)
    np.add.at(degree, rows, weights)
    np.add.at(degree, cols, weights)
    system = (off + off.T + scipy.sparse.diags(1 + degree)).tocsc()
    return scipy.sparse.linalg.spsolve(system, v.ravel()).reshape(h, w)


def _sigmoid(x: np.ndarray, a: float) -> np.ndarray:
    """A sigmoid of x (nominally in [-1, 1]) rescaled so that 0.5 maps to 0.5."""
    half = 1 / (1 + np.exp(-a * 0.5)) - 0.5
    return (1 / (1 + np.exp(-a * x)) - 0.5) * (0.5 / half)


def tone_map(lab: np.ndarray, l0: np.ndarray, l1: np.ndarray, val0: float, val1: float, val2: float,
             exposure: float, saturation: float = SATURATION) -> np.ndarray:
    """One tone mapping of the layers (positive vals: sigmoid compression of the fine detail,
    medium detail and base around L = 56), chroma scaled by ``saturation``; returns sRGB."""
    lightness = lab[..., 0]
    fine = _sigmoid((lightness - l0) / 100, val0) * 100
    medium = _sigmoid((l0 - l1) / 100, val1) * 100
    base = _sigmoid((exposure * l1 - 56) / 100, val2) * 100 + 56
    mapped = np.stack([base + medium + fine, lab[..., 1] * saturation, lab[..., 2] * saturation], axis=-1)
    return lab_to_srgb(mapped)


def vivid(image: np.ndarray) -> np.ndarray:
    """The release's vivid version of an RGB image (H, W, 3) uint8, as uint8."""
    rgb = np.clip(np.asarray(image, np.float64) / 255.0, 0, 1) ** 0.75
    lab = srgb_to_lab(rgb)
    l0, l1 = (wls_filter(lab[..., 0], lam) for lam in WLS_LAMBDAS)
    mapped = sum(tone_map(lab, l0, l1, *setting) for setting in (FINE, MEDIUM, COARSE)) / 3
    return np.clip(np.round(mapped * 255), 0, 255).astype(np.uint8)
