"""Per-object observing conditions: each simulated object gets a CCD and a sequence of epochs.

Two samplers share one interface (`n_epochs`, `pixel_scale_arcsec`, `draw(rng)`, `draw_many(rngs)`):
- `LogSampler` draws a random field and CCD from a real `Survey` log and uses that field's epochs in the
  science band, as Carrasco-Davis et al. (2019) do;
- `ModelSampler` draws from the compact built-in model (`hits_builtin.py`, derived from the real logs).
Epochs with seeing above `seeing_limit_arcsec` are dropped (paper: 2"); the remaining ones are packed at
the front of fixed-length arrays of `n_epochs` (the longest sequence), and `mask` marks them. Choosing the
window of N_d epochs an object is classified on is the simulator's job (`simulator.shard`).
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
    zero_point_ref: float = math.nan  # the field's first science-band exposure's (eq. 4's zp_ref), any seeing

    def __post_init__(self):
        if not math.isfinite(self.zero_point_ref) and self.mask.any():  # conditions made without it
            self.zero_point_ref = float(self.zero_point[self.mask][0])


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
                first = survey.field_epochs(f)  # sorted by MJD, whatever the seeing
                self._fields.append((str(f), ep, survey.galactic_latitude_deg(f), float(first["zero_point"][0])))
        if not self._fields:
            raise ConditionsError(f"{survey.source}: no {survey.band}-band epoch has seeing <= {seeing_limit_arcsec}\"")
        self.n_epochs = max(len(ep) for _, ep, _, _ in self._fields)
        cam = survey.camera
        self._camera = (np.asarray(cam["ccd"]).astype(int), np.asarray(cam["gain"]),
                        np.asarray(cam["read_noise"]), np.asarray(cam["saturation"]))

    def draw_many(self, rngs) -> list[ObjectConditions]:
        """`draw` for each stream in `rngs`."""
        return [self.draw(rng) for rng in rngs]

    def best_seeing_arcsec(self) -> float:
        """The smallest seeing (arcsec) it draws: the best science-band epoch within the seeing limit."""
        return float(min(np.min(ep["seeing_arcsec"]) for _, ep, _, _ in self._fields))

    def draw(self, rng: np.random.Generator) -> ObjectConditions:
        field, ep, latitude, zp_ref = self._fields[rng.integers(len(self._fields))]
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
                                saturation=float(sat), field=field, ccd=int(ccd), galactic_latitude_deg=latitude,
                                zero_point_ref=zp_ref, **cols)


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
        self._first_q = [np.asarray(q) for q in cad["first_visit_frac_quantiles"]]  # index: visits - 1
        self._spacing_q = [np.asarray(q) for q in cad["spacing_d_quantiles"]]
        self._night_end = float(cad["night_end_frac"])
        cop = model["copula"]
        self._levels = np.asarray(cop["levels"])
        self._quantiles = {v: np.asarray(cop["quantiles"][v]) for v in cop["variables"]}
        self._chol = np.linalg.cholesky(np.asarray(cop["correlation"]) + 1e-9 * np.eye(len(cop["variables"])))
        self._variables = cop["variables"]
        self._night_mean = np.asarray(cop["night_mean_scores"])  # (nights, variables)
        spread, rho = np.asarray(cop["spread"]), np.asarray(cop["field_night_correlation"])
        self._night_share, self._visit_share = spread * np.sqrt(rho), spread * np.sqrt(1 - rho)
        self._exp_values = np.asarray(model["exp_time_s"]["values"])
        self._exp_cdf = np.cumsum(model["exp_time_s"]["probs"])
        cam = model["camera"]
        self._camera = tuple(np.asarray(cam[k]) for k in ("ccd", "gain", "read_noise", "saturation"))
        self.n_epochs = int(sum(np.flatnonzero(row > 0)[-1] for row in np.asarray(cad["visit_probs"])))

    def draw(self, rng: np.random.Generator) -> ObjectConditions:
        return self.draw_many([rng])[0]

    def best_seeing_arcsec(self) -> float:
        """The smallest seeing (arcsec) it draws: the model's lowest seeing quantile."""
        return float(self._quantiles["seeing_arcsec"].min())

    def draw_many(self, rngs) -> list[ObjectConditions]:
        """`draw` for each stream in `rngs`: each stream's draws are made in `draw`'s order, then the
        arithmetic runs on all objects at once, element by element (no reduction across objects), so
        an object's conditions do not depend on the others."""
        nights, cad, cop = self._nights, self.model["cadence"], self.model["copula"]
        n_vars, n_cam, n_fields = len(self._variables), len(self._camera[0]), len(self._field_ids)
        visits, u_visit, z, z_night, u_exp, cam, field = [], [], [], [], [], [], []
        for rng in rngs:  # per stream: night visits, visit times, copula normals (visit, night), exposure
            counts = (rng.random(len(nights))[:, None] > self._visit_cdf).sum(axis=1)  # times, CCD, field
            visits.append(counts)
            n = int(counts.sum())
            u_visit.append(rng.random(n))
            z.append(rng.standard_normal((n, n_vars)))
            z_night.append(rng.standard_normal((int((counts > 0).sum()), n_vars)))
            u_exp.append(rng.random(n))
            cam.append(rng.integers(n_cam))
            field.append(rng.integers(n_fields))
        # visit times: one row per (object, visited night), visits in order along the row; the first visit's
        # time and the spacings follow the night's number of visits
        counts = np.stack(visits)  # (objects, nights)
        obj, night = np.nonzero(counts)
        n_visits = counts[obj, night]
        col = np.arange(n_visits.max() if len(n_visits) else 0)
        inside = col[None, :] < n_visits[:, None]
        draws = np.zeros(inside.shape)
        draws[inside] = np.concatenate(u_visit)
        first, gaps = np.zeros(len(obj)), np.zeros((len(obj), max(len(col) - 1, 0)))
        for k in np.unique(n_visits):
            rows = n_visits == k
            first[rows] = np.interp(draws[rows, 0], self._levels, self._first_q[k - 1])
            if k > 1:
                gaps[rows, :k - 1] = np.interp(draws[rows, 1:k], self._levels, self._spacing_q[k - 1])
        offsets = np.cumsum(np.concatenate([np.zeros((len(obj), 1)), gaps], axis=1), axis=1)
        # a night ends by the latest time of night observed: a night drawn to run past it starts earlier
        # (and one longer than a whole night, from the rare six- or seven-visit nights, is squeezed into it)
        offsets *= np.minimum(1.0, self._night_end / np.maximum(offsets[:, -1], 1e-12))[:, None]
        first = np.minimum(first, self._night_end - offsets[:, -1])
        times = ((nights[night] + first)[:, None] + offsets)[inside]
        owner = np.repeat(obj, n_visits)
        # conditions per visit from the Gaussian copula: the campaign night's mean normal scores, plus a share
        # for the field's night (the same for its visits) and the visit's own, each with the copula's
        # correlations between variables
        mix = lambda normals: normals @ self._chol.T  # noqa: E731
        row = np.repeat(np.arange(len(obj)), n_visits)
        x = (self._night_mean[night[row]] + mix(np.concatenate(z_night))[row] * self._night_share
             + mix(np.concatenate(z)) * self._visit_share)
        pick = np.searchsorted(self._exp_cdf, np.concatenate(u_exp), side="right")
        exp_time = self._exp_values[pick.clip(max=len(self._exp_values) - 1)]
        t = cad["mjd_start"] + times  # in time order: nights in order, each inside its day
        v = {name: np.interp(ndtr(x[:, i]), self._levels, self._quantiles[name])
             for i, name in enumerate(self._variables)}
        limmag5 = limiting_magnitude(v["seeing_arcsec"], v["sky_adu"], v["zero_point"], exp_time,
                                     cop["limmag5_formula_gain"], cop["limmag5_formula_read_noise"],
                                     self.pixel_scale_arcsec) + v["limmag5_residual"]
        # epochs within the seeing limit, packed first in each object's row
        keep = v["seeing_arcsec"] <= self.seeing_limit_arcsec
        n_obj, width = len(rngs), self.n_epochs
        starts = np.searchsorted(owner, np.arange(n_obj))
        # eq. 4's reference: each object's first visit, whatever its seeing (NaN for an object never visited)
        visited = np.bincount(owner, minlength=n_obj) > 0
        zp_ref = np.where(visited, np.append(v["zero_point"], np.nan)[starts], np.nan)
        slot = np.cumsum(keep) - 1
        slot -= np.concatenate([[0], np.cumsum(keep)])[starts][owner]
        keep &= slot < width
        columns = {"mjd": t, "exp_time_s": exp_time, "seeing_arcsec": v["seeing_arcsec"], "airmass": v["airmass"],
                   "sky_adu": v["sky_adu"], "zero_point": v["zero_point"], "limmag5": limmag5}
        table = np.full((len(columns), n_obj, width), np.nan)
        for row, values in enumerate(columns.values()):
            table[row, owner[keep], slot[keep]] = values[keep]
        mask = np.zeros((n_obj, width), bool)
        mask[owner[keep], slot[keep]] = True
        out = []
        for o in range(n_obj):
            k, f = cam[o], field[o]
            ccd, gain, rn, sat = (c[k] for c in self._camera)
            cols = {name: table[row, o] for row, name in enumerate(columns)}
            out.append(ObjectConditions(mask=mask[o], gain=float(gain), read_noise=float(rn), saturation=float(sat),
                                        field=self._field_ids[f], ccd=int(ccd), galactic_latitude_deg=self._field_b[f],
                                        zero_point_ref=float(zp_ref[o]), **cols))
        return out


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
