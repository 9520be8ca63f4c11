"""Published numbers the report puts beside this run's (docs/facts.md §6, §7), each with its source.
They were measured by other people on other data or protocols: the report always shows them apart
from what this run measured, never mixed into its tables' own columns.
"""

from __future__ import annotations

# Paper Table 1: the fraction of pairwise comparisons in which CRN was judged more realistic than each
# baseline (human judgments, unlimited viewing time), per dataset. Keys are this suite's model names.
TABLE_1 = {
    "cityscapes": {"image-space": 0.997, "gan-semseg": 0.985, "pix2pix": 0.969, "unet": 0.783, "fullres": 0.677},
    "nyu": {"image-space": 0.914, "gan-semseg": 0.823, "pix2pix": 0.772, "unet": 0.712, "fullres": 0.658},
}
TABLE_1_SOURCE = "Chen & Koltun 2017, Table 1 (human judgments, unlimited time)"

# Paper Fig. 3 (Cityscapes, time-limited): the rates the text gives, by (first, second) and exposure time.
FIGURE_3 = {
    ("real", "pix2pix"): {125: 0.725, 250: 0.850, 500: 0.951},
    ("crn", "pix2pix"): {125: 0.734, 250: 0.840, 500: 0.874},
    ("real", "crn"): {125: 0.526, 250: 0.574, 500: 0.642},
}
FIGURE_3_SOURCE = "Chen & Koltun 2017, Sec. 5.2 (the rates its text gives for Fig. 3)"

# Automatic scores in later papers (Cityscapes), with the protocol each used. SPADE's Table 1 scored CRN
# and later methods alike: (model, mIoU, pixel accuracy, FID).
SPADE_SOURCE = "Park et al. 2019 (SPADE), Table 1"
SPADE_PROTOCOLS = {
    "miou": "DRN-D-105 segmentation of 256x512 synthesized images (at that size or upsampled: open), Cityscapes val",
    "pixel_acc": "DRN-D-105 segmentation of 256x512 synthesized images (at that size or upsampled: open), Cityscapes val",
    "fid": "FID, Inception-v3 pool3, Cityscapes val",
}
SPADE_TABLE_1 = [("crn", 52.4, 77.1, 104.7), ("pix2pixHD", 58.3, 81.4, 95.0), ("SPADE", 62.3, 81.9, 71.8)]
AUTOMATIC = [
    {"model": model, "metric": metric, "value": value, "source": SPADE_SOURCE, "protocol": SPADE_PROTOCOLS[metric]}
    for model, *values in SPADE_TABLE_1
    for metric, value in zip(SPADE_PROTOCOLS, values)
] + [
    {"model": "crn", "metric": "miou", "value": 34.8, "source": "Wang et al. 2018 (pix2pixHD), Table 1",
     "protocol": "PSPNet segmentation of synthesized images, Cityscapes val"},
]


def table_1_row(dataset: str) -> tuple[str, dict[str, float]]:
    """(the dataset whose Table 1 row compares best with this run's, that row). The synthetic city
    stands in for Cityscapes (street scenes in its layout); NYU has a row of its own."""
    key = "nyu" if dataset == "nyu" else "cityscapes"
    return key, TABLE_1[key]
