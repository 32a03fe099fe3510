"""Optimal (Naylor 1998) photometry of stamps: simulated datasets (`photometry DATASET.h5`) and real stamps."""
from .dataset import PhotometryError, run_photometry
from .optimal import (OptimalPhotometry, Photometry, bad_pixels, border_mask, border_sky, first_detection, fit_fwhm,
                      zero_point_scaling)

__all__ = ["OptimalPhotometry", "Photometry", "PhotometryError", "bad_pixels", "border_mask", "border_sky",
           "first_detection", "fit_fwhm", "run_photometry", "zero_point_scaling"]
