"""Survey observing conditions: camera and per-epoch exposure schema, real logs, built-in survey models."""
from importlib import import_module

#: Public names -> the submodule defining them, loaded on first use (PEP 562): `survey_params.limits` alone
#: (what `rcnn import-real` needs) does not import astropy.
_EXPORTS = {"limiting_magnitude": "limits", **dict.fromkeys(
    ("CONDITIONS_ENV", "LogSampler", "ModelSampler", "ObjectConditions", "load_survey", "make_sampler"), "sampling"),
    **dict.fromkeys(("CAMERA_COLUMNS", "EPOCH_COLUMNS", "ConditionsError", "Survey"), "schema")}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
