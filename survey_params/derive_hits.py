"""Derive the built-in `hits` survey model from the real HiTS 2015 logs and write `hits_builtin.py`.

    python -m survey_params.derive_hits /path/to/hits2015 [--out survey_params/hits_builtin.py]

Numbers derived (Förster et al. 2016, ApJ 832, 155; logs as published with Carrasco-Davis et al. 2019):
- camera: gain, read noise and saturation of every CCD in `camera.csv`;
- cadence: for every night of the campaign, the distribution over fields of the number of g visits;
  for each number of visits in a night, the distributions of the first visit's time of night and of the
  spacing between visits (a field visited twice a night is visited hours apart, five times ~1.6 h apart);
  the latest time of night of any visit (the night's end);
- conditions: a Gaussian copula over (seeing, sky, zero point, airmass, limmag5 residual) of all g epochs:
  41 quantiles of each marginal; the normal scores' mean in each night of the campaign (a night is good or
  bad for every field: the fourth night's seeing was above 2" everywhere); about those means, each
  variable's spread, the correlation matrix between variables, and the correlation of two visits of one
  field in one night (at least 0). The limmag5 residual is the logged depth minus
  `survey_params.limits.limiting_magnitude` for the median CCD, so that a drawn depth stays consistent
  with the drawn seeing, sky and zero point;
- exposure times and their frequencies.
"""
from __future__ import annotations

import argparse
import pprint
from pathlib import Path

import numpy as np
from scipy import stats

from .hits_logs import read_hits_logs
from .limits import limiting_magnitude
from .schema import ConditionsError

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 41)
COPULA_VARIABLES = ("seeing_arcsec", "sky_adu", "zero_point", "airmass", "limmag5_residual")


def _r(x, digits: int = 6):
    return np.round(np.asarray(x, dtype=float), digits).tolist()


def derive(directory: str | Path) -> dict:
    survey = read_hits_logs(directory)
    cam, ep = survey.camera, survey.epochs
    g = ep[ep["filter"] == survey.band]
    mjd = np.asarray(g["mjd"])
    t0 = float(np.floor(mjd.min()))
    night = np.floor(mjd - t0).astype(int)
    fields = np.asarray(g["field"])
    nights = np.unique(night)
    field_ids = np.unique(fields)
    max_visits = 0
    counts = np.zeros((len(nights), len(field_ids)), dtype=int)
    first_frac, spacing, last_frac, same_night = {}, {}, [], []
    for j, f in enumerate(field_ids):
        for i, n in enumerate(nights):
            idx = np.flatnonzero((fields == f) & (night == n))
            idx = idx[np.argsort(mjd[idx], kind="stable")]
            t = mjd[idx]
            counts[i, j] = len(t)
            if len(t):
                first_frac.setdefault(len(t), []).append(t[0] - t0 - n)
                spacing.setdefault(len(t), []).extend(np.diff(t))
                last_frac.append(t[-1] - t0 - n)
                same_night.extend((a, b) for a in idx for b in idx if a != b)
    max_visits = int(counts.max())
    visit_probs = [np.bincount(counts[i], minlength=max_visits + 1) / len(field_ids) for i in range(len(nights))]

    gain_med = float(np.median(cam["gain"]))
    rn_med = float(np.median(cam["read_noise"]))
    formula = limiting_magnitude(g["seeing_arcsec"], g["sky_adu"], g["zero_point"], g["exp_time_s"],
                                 gain_med, rn_med, survey.pixel_scale_arcsec)
    variables = {
        "seeing_arcsec": np.asarray(g["seeing_arcsec"]),
        "sky_adu": np.asarray(g["sky_adu"]),
        "zero_point": np.asarray(g["zero_point"]),
        "airmass": np.asarray(g["airmass"]),
        "limmag5_residual": np.asarray(g["limmag5"]) - formula,
    }
    data = np.column_stack([variables[v] for v in COPULA_VARIABLES])
    scores = stats.norm.ppf((stats.rankdata(data, axis=0) - 0.5) / len(data))
    night_mean = np.array([scores[night == n].mean(axis=0) for n in nights])
    resid = scores - night_mean[np.searchsorted(nights, night)]
    spread = resid.std(axis=0)
    resid /= spread
    corr = np.corrcoef(resid, rowvar=False)
    a, b = np.array(same_night).T
    night_corr = [max(0.0, float(np.corrcoef(resid[a, k], resid[b, k])[0, 1])) for k in range(len(COPULA_VARIABLES))]
    exp_values, exp_counts = np.unique(np.asarray(g["exp_time_s"]), return_counts=True)
    return {
        "reference": "Förster et al. 2016, ApJ 832, 155 (HiTS); derived by survey_params/derive_hits.py",
        "n_epochs_in_logs": int(len(g)),
        "n_fields_in_logs": int(len(field_ids)),
        "band": survey.band,
        "pixel_scale_arcsec": survey.pixel_scale_arcsec,
        "camera": {"ccd": np.asarray(cam["ccd"]).astype(int).tolist(), "gain": _r(cam["gain"]),
                   "read_noise": _r(cam["read_noise"]), "saturation": _r(cam["saturation"], 1)},
        "cadence": {"mjd_start": t0, "nights": nights.astype(int).tolist(),
                    "visit_probs": [_r(p, 5) for p in visit_probs],
                    "night_end_frac": _r(max(last_frac)),
                    # index k - 1: nights with k visits (every k up to the most is in the logs)
                    "first_visit_frac_quantiles": [_r(np.quantile(first_frac[k], QUANTILE_LEVELS))
                                                   for k in range(1, max_visits + 1)],
                    "spacing_d_quantiles": [_r(np.quantile(spacing[k], QUANTILE_LEVELS)) if k > 1 else []
                                            for k in range(1, max_visits + 1)]},
        "exp_time_s": {"values": _r(exp_values), "probs": _r(exp_counts / exp_counts.sum(), 5)},
        "copula": {"variables": list(COPULA_VARIABLES), "levels": _r(QUANTILE_LEVELS, 4),
                   "quantiles": {v: _r(np.quantile(variables[v], QUANTILE_LEVELS)) for v in COPULA_VARIABLES},
                   "night_mean_scores": [_r(m, 4) for m in night_mean],
                   "spread": _r(spread, 4),
                   "correlation": _r(corr, 4),
                   "field_night_correlation": _r(night_corr, 4),
                   "limmag5_formula_gain": gain_med, "limmag5_formula_read_noise": rn_med},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="folder with camera.csv and field_epochs.csv (HiTS 2015 logs)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("hits_builtin.py")))
    args = parser.parse_args(argv)
    try:
        model = derive(args.directory)
    except ConditionsError as exc:  # a log missing or malformed: one line, not a traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    text = ('"""Built-in HiTS 2015 survey model (Förster et al. 2016, ApJ 832, 155).\n\n'
            "Generated by `python -m survey_params.derive_hits` from the real 2015 logs; do not edit by hand.\n"
            '"""\n\nHITS_MODEL = ' + pprint.pformat(model, width=110, compact=True, sort_dicts=False) + "\n")
    tmp = Path(args.out + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {model['n_fields_in_logs']} fields, {model['n_epochs_in_logs']} g epochs, "
          f"{len(model['camera']['ccd'])} CCDs, {len(model['cadence']['nights'])} nights")


if __name__ == "__main__":
    main()
