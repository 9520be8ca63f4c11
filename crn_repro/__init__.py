"""crn-repro: Photographic Image Synthesis with Cascaded Refinement Networks (Chen & Koltun, ICCV 2017)."""

__version__ = "0.1.0"
