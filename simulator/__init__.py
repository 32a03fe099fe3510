"""Simulated stamp sequences: light curves -> GalSim-exact batched rendering -> CCD noise -> HDF5 datasets."""
from importlib import import_module

#: Public names -> the submodule defining them. They load on first use (PEP 562), so that `rcnn`, which only
#: reads datasets (`simulator.dataset`), starts without importing GalSim, sncosmo and astropy.
_EXPORTS = {"adu_to_mag": "flux", "mag_to_adu": "flux", "add_ccd_noise": "noise", "HostParams": "render",
            "Renderer": "render", "StampParams": "render", "simulate": "run", "ALL_CLASSES": "settings",
            "SimConfig": "settings", "load_config": "settings"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
