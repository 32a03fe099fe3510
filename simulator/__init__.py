"""Simulated stamp sequences: light curves -> GalSim-exact batched rendering -> CCD noise -> HDF5 datasets."""
from .flux import adu_to_mag, mag_to_adu
from .noise import add_ccd_noise
from .render import HostParams, Renderer, StampParams
from .run import simulate
from .settings import ALL_CLASSES, SimConfig, load_config

__all__ = ["ALL_CLASSES", "HostParams", "Renderer", "SimConfig", "StampParams", "add_ccd_noise", "adu_to_mag",
           "load_config", "mag_to_adu", "simulate"]
