"""Per-object observing conditions: each simulated object gets a CCD and a sequence of epochs.

Two samplers share one interface (`n_epochs`, `pixel_scale_arcsec`, `draw(rng)`):
- `LogSampler` draws a random field and CCD from a real `Survey` log and uses that field's epochs in the
  science band, as Carrasco-Davis et al. (2019) do;
- `ModelSampler` draws from the compact built-in model (`hits_builtin.py`, derived from the real logs).
Epochs with seeing above `seeing_limit_arcsec` are dropped (paper: 2"); the remaining ones are packed at
the front of fixed-length arrays of `n_epochs` (the longest sequence), and `mask` marks them. Choosing the
window of N_d epochs an object is classified on is the simulator's job (`ObjectConditions.window`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.special import ndtr

from .fields import FIELD_COLUMNS, latitude_by_field
from .hits_builtin import HITS_MODEL
from .hits_fields import HITS_FIELDS
from .hits_logs import read_hits_logs
from .limits import limiting_magnitude
from .schema import ConditionsError, Survey

#: Environment variable naming a conditions directory, used when `--conditions` is not given.
CONDITIONS_ENV = "STAMPSEQ_CONDITIONS"

#: Per-epoch condition arrays stored for every object, with units in the names.
EPOCH_FIELDS = ("exp_time_s", "seeing_arcsec", "airmass", "sky_adu", "zero_point", "limmag5")


@dataclass
class ObjectConditions:
    """Conditions of one object's epochs; arrays of length n_epochs, valid where `mask`."""

    mjd: np.ndarray
    exp_time_s: np.ndarray
    seeing_arcsec: np.ndarray
    airmass: np.ndarray
    sky_adu: np.ndarray
    zero_point: np.ndarray
    limmag5: np.ndarray
    mask: np.ndarray
    gain: float
    read_noise: float
    saturation: float
    field: str
    ccd: int
    galactic_latitude_deg: float = math.nan  # of the field's centre; NaN when the survey has no position

    def window(self, index: np.ndarray, n_epochs: int) -> "ObjectConditions":
        """These conditions at epochs `index` only, packed first into arrays of length `n_epochs`."""
        keep = np.zeros(len(self.mask), bool)
        keep[index] = True
        mjd, cols, mask = _pack(n_epochs, self.mjd, {k: getattr(self, k) for k in EPOCH_FIELDS}, keep)
        return ObjectConditions(mjd=mjd, mask=mask, gain=self.gain, read_noise=self.read_noise,
                                saturation=self.saturation, field=self.field, ccd=self.ccd,
                                galactic_latitude_deg=self.galactic_latitude_deg, **cols)


def _pack(n_epochs: int, mjd, cols: dict, keep) -> tuple[np.ndarray, dict, np.ndarray]:
    """Keep epochs where `keep`, pack them first, pad to `n_epochs` with NaN, return (mjd, cols, mask)."""
    idx = np.flatnonzero(keep)[:n_epochs]
    mask = np.zeros(n_epochs, dtype=bool)
    mask[: len(idx)] = True
    out_mjd = np.full(n_epochs, np.nan)
    out_mjd[: len(idx)] = np.asarray(mjd)[idx]
    out = {}
    for k, v in cols.items():
        a = np.full(n_epochs, np.nan)
        a[: len(idx)] = np.asarray(v)[idx]
        out[k] = a
    return out_mjd, out, mask


class LogSampler:
    """Conditions from a real survey log: random field, random CCD, that field's science-band epochs."""

    def __init__(self, survey: Survey, seeing_limit_arcsec: float = 2.0):
        self.survey = survey
        self.pixel_scale_arcsec = survey.pixel_scale_arcsec
        self.seeing_limit_arcsec = seeing_limit_arcsec
        self._fields = []
        for f in survey.fields():
            ep = survey.field_epochs(f, seeing_limit_arcsec)
            if len(ep):
                self._fields.append((str(f), ep, survey.galactic_latitude_deg(f)))
        if not self._fields:
            raise ConditionsError(f"{survey.source}: no {survey.band}-band epoch has seeing <= {seeing_limit_arcsec}\"")
        self.n_epochs = max(len(ep) for _, ep, _ in self._fields)
        cam = survey.camera
        self._camera = (np.asarray(cam["ccd"]).astype(int), np.asarray(cam["gain"]),
                        np.asarray(cam["read_noise"]), np.asarray(cam["saturation"]))

    def draw(self, rng: np.random.Generator) -> ObjectConditions:
        field, ep, latitude = self._fields[rng.integers(len(self._fields))]
        k = rng.integers(len(self._camera[0]))
        ccd, gain, rn, sat = (c[k] for c in self._camera)
        cols = {name: np.asarray(ep[name], dtype=float) for name in EPOCH_FIELDS}
        missing = ~np.isfinite(cols["limmag5"])
        if missing.any():  # documented repair: depth from the other conditions
            cols["limmag5"][missing] = limiting_magnitude(
                cols["seeing_arcsec"][missing], cols["sky_adu"][missing], cols["zero_point"][missing],
                cols["exp_time_s"][missing], gain, rn, self.pixel_scale_arcsec)
        mjd, cols, mask = _pack(self.n_epochs, ep["mjd"], cols, np.ones(len(ep), bool))
        return ObjectConditions(mjd=mjd, mask=mask, gain=float(gain), read_noise=float(rn),
                                saturation=float(sat), field=field, ccd=int(ccd), galactic_latitude_deg=latitude, **cols)


class ModelSampler:
    """Conditions from the compact built-in survey model (see `survey_params.derive_hits`).

    The model's conditions are not tied to a field; the field (and so the galactic latitude) is drawn
    uniformly from the survey's field centres `fields` (`survey_params.hits_fields`)."""

    def __init__(self, model: dict = HITS_MODEL, seeing_limit_arcsec: float = 2.0, fields: dict = HITS_FIELDS):
        self.model = model
        latitude = latitude_by_field(Table({k: fields[k] for k in FIELD_COLUMNS}), "the built-in field centres")
        self._field_ids, self._field_b = list(latitude), list(latitude.values())
        self.pixel_scale_arcsec = float(model["pixel_scale_arcsec"])
        self.seeing_limit_arcsec = seeing_limit_arcsec
        cad = model["cadence"]
        self._nights = np.asarray(cad["nights"], dtype=float)
        self._visit_cdf = np.cumsum(np.asarray(cad["visit_probs"]), axis=1)
        self._first_q = np.asarray(cad["first_visit_frac_quantiles"])
        self._spacing_q = np.asarray(cad["spacing_d_quantiles"])
        cop = model["copula"]
        self._levels = np.asarray(cop["levels"])
        self._quantiles = {v: np.asarray(cop["quantiles"][v]) for v in cop["variables"]}
        self._chol = np.linalg.cholesky(np.asarray(cop["correlation"]) + 1e-9 * np.eye(len(cop["variables"])))
        self._variables = cop["variables"]
        self._exp_values = np.asarray(model["exp_time_s"]["values"])
        self._exp_cdf = np.cumsum(model["exp_time_s"]["probs"])
        cam = model["camera"]
        self._camera = tuple(np.asarray(cam[k]) for k in ("ccd", "gain", "read_noise", "saturation"))
        self.n_epochs = int(sum(np.flatnonzero(row > 0)[-1] for row in np.asarray(cad["visit_probs"])))

    def _quantile(self, name: str, u: np.ndarray) -> np.ndarray:
        return np.interp(u, self._levels, self._quantiles[name])

    def draw(self, rng: np.random.Generator) -> ObjectConditions:
        counts = (rng.random(len(self._nights))[:, None] > self._visit_cdf).sum(axis=1)
        visited = np.flatnonzero(counts)
        n_visits = counts[visited]
        # per visited night: one draw for the first visit's time, then one per gap (the order of a loop)
        u = rng.random(int(n_visits.sum()))
        col = np.arange(n_visits.max())
        inside = col[None, :] < n_visits[:, None]
        draws = np.zeros(inside.shape)
        draws[inside] = u
        first = np.interp(draws[:, 0], self._levels, self._first_q)
        gaps = np.where(inside[:, 1:], np.interp(draws[:, 1:], self._levels, self._spacing_q), 0.0)
        offsets = np.cumsum(np.concatenate([np.zeros((len(visited), 1)), gaps], axis=1), axis=1)
        times = (self._nights[visited] + first)[:, None] + offsets
        # a long night's visits can run past the next night's first one: keep time order
        t = self.model["cadence"]["mjd_start"] + np.sort(times[inside])
        n = len(t)
        u = ndtr(rng.standard_normal((n, len(self._variables))) @ self._chol.T)
        v = {name: self._quantile(name, u[:, i]) for i, name in enumerate(self._variables)}
        exp_time = self._exp_values[np.searchsorted(self._exp_cdf, rng.random(n), side="right").clip(max=len(self._exp_values) - 1)]
        k = rng.integers(len(self._camera[0]))
        ccd, gain, rn, sat = (c[k] for c in self._camera)
        cop = self.model["copula"]
        limmag5 = limiting_magnitude(v["seeing_arcsec"], v["sky_adu"], v["zero_point"], exp_time,
                                     cop["limmag5_formula_gain"], cop["limmag5_formula_read_noise"],
                                     self.pixel_scale_arcsec) + v["limmag5_residual"]
        cols = {"exp_time_s": exp_time, "seeing_arcsec": v["seeing_arcsec"], "airmass": v["airmass"],
                "sky_adu": v["sky_adu"], "zero_point": v["zero_point"], "limmag5": limmag5}
        mjd, cols, mask = _pack(self.n_epochs, t, cols, v["seeing_arcsec"] <= self.seeing_limit_arcsec)
        f = rng.integers(len(self._field_ids))
        return ObjectConditions(mjd=mjd, mask=mask, gain=float(gain), read_noise=float(rn), saturation=float(sat),
                                field=self._field_ids[f], ccd=int(ccd), galactic_latitude_deg=self._field_b[f], **cols)


def load_survey(directory: str | Path) -> Survey:
    """A `Survey` from a conditions directory: ECSV (`camera.ecsv` + `epochs.ecsv`) or the HiTS CSV logs."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConditionsError(f"{directory}: conditions directory not found")
    if (directory / "camera.ecsv").exists():
        return Survey.read(directory)
    return read_hits_logs(directory)


def make_sampler(survey: str = "hits", conditions: str | None = None, seeing_limit_arcsec: float = 2.0):
    """The conditions sampler for `survey`: real logs from `conditions` (or $STAMPSEQ_CONDITIONS) when given,
    else the built-in model."""
    if not seeing_limit_arcsec > 0:
        raise ConditionsError(f"seeing limit must be positive, got {seeing_limit_arcsec}")
    conditions = conditions or os.environ.get(CONDITIONS_ENV) or None
    if conditions:
        logs = load_survey(conditions)
        if logs.name != survey:
            raise ConditionsError(f"{conditions}: holds survey {logs.name!r}, but --survey is {survey!r}")
        return LogSampler(logs, seeing_limit_arcsec)
    if survey != "hits":
        raise ConditionsError(f"survey {survey!r} has no built-in model; give --conditions DIR with its logs")
    return ModelSampler(HITS_MODEL, seeing_limit_arcsec)
