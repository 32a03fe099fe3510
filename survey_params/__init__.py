"""Survey observing conditions: camera and per-epoch exposure schema, real logs, built-in survey models."""
from .limits import limiting_magnitude
from .sampling import CONDITIONS_ENV, LogSampler, ModelSampler, ObjectConditions, load_survey, make_sampler
from .schema import CAMERA_COLUMNS, EPOCH_COLUMNS, ConditionsError, Survey

__all__ = ["CAMERA_COLUMNS", "CONDITIONS_ENV", "ConditionsError", "EPOCH_COLUMNS", "LogSampler", "ModelSampler",
           "ObjectConditions", "Survey", "limiting_magnitude", "load_survey", "make_sampler"]
