"""Field positions on the sky: galactic latitude for contextual inputs (GOTO, Killestein et al. 2021).

Survey logs often lack pointing coordinates (the published HiTS 2015 logs do). Every exposure's airmass
and time still fix them: airmass = sec z with cos z = sin(phi) sin(dec) + cos(phi) cos(dec) cos(LST - RA)
for an observatory at latitude phi, so a least-squares fit over a field's exposures (spread over hours of
hour angle) recovers its RA and Dec. `python -m survey_params.fields DIR` fits the HiTS logs and writes
`hits_fields.py`; the fit leaves 0.003 rms in airmass, the logs' own rounding to 0.01.
"""
from __future__ import annotations

import argparse
import pprint
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from .hits_logs import _read_csv
from .schema import ConditionsError

#: Cerro Tololo (DECam on the Blanco 4 m): geodetic latitude and east longitude, degrees.
CTIO_LAT_DEG, CTIO_LON_DEG = -30.16606, -70.81489

FIELD_COLUMNS = {"field": ("", "field identifier, as in the epochs table"),
                 "ra_deg": ("deg", "right ascension (ICRS) of the field centre"),
                 "dec_deg": ("deg", "declination (ICRS) of the field centre")}


def galactic_latitude_deg(ra_deg, dec_deg) -> np.ndarray:
    """Galactic latitude b (degrees) of ICRS positions."""
    return SkyCoord(ra=np.asarray(ra_deg) * u.deg, dec=np.asarray(dec_deg) * u.deg).galactic.b.deg


def latitude_by_field(table: Table, source: str) -> dict[str, float]:
    """Galactic latitude (deg) of every field of a table with `FIELD_COLUMNS`, keyed by str(field); a missing
    column, text in a coordinate, an impossible position or a field listed twice is a `ConditionsError` naming
    `source`, the row and the column."""
    from .schema import ConditionsError, _ids, _numbers, _repeats, _require_columns, _where

    _require_columns(table, FIELD_COLUMNS, source)
    keys = [str(f) for f in _ids(table, "field", source)]
    dups = _repeats(keys)
    if dups:
        row, first = dups[0]
        raise ConditionsError(f"{_where(source, row, 'field')}: duplicate field {keys[row]!r} (already data row "
                              f"{first + 1}): one position per field")
    ra, dec = (_numbers(table, c, source)[0] for c in ("ra_deg", "dec_deg"))
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConditionsError(f"{_where(source, row, 'dec_deg')}: position ({float(ra[row])!r}, {float(dec[row])!r}) is not a sky position")
    return {key: float(b) for key, b in zip(keys, galactic_latitude_deg(ra, dec))}


def fit_field_coordinates(epochs: Table, site_lat_deg: float = CTIO_LAT_DEG,
                          site_lon_deg: float = CTIO_LON_DEG) -> Table:
    """RA, Dec of every field of an epochs table (`field`, `mjd`, `exp_time_s`, `airmass`) from its airmasses.

    Returns a table with `FIELD_COLUMNS` plus `airmass_rms` (fit residual) and `n_epochs` per field; a field
    with fewer than 4 exposures with an airmass gets NaN (two unknowns, and the hour angle's sign).
    """
    from scipy.optimize import least_squares

    phi = np.radians(site_lat_deg)
    fields = np.asarray(epochs["field"])
    rows = []
    for f in sorted(set(fields.tolist())):
        sel = epochs[(fields == f) & np.isfinite(np.asarray(epochs["airmass"], float))]
        mid = np.asarray(sel["mjd"], float) + np.asarray(sel["exp_time_s"], float) / 2 / 86400
        lst = Time(mid, format="mjd", scale="utc").sidereal_time("mean", longitude=site_lon_deg * u.deg).rad
        airmass = np.asarray(sel["airmass"], float)
        if len(sel) < 4:
            rows.append((f, np.nan, np.nan, np.nan, len(sel)))
            continue

        def residual(p):
            cos_z = np.sin(phi) * np.sin(p[1]) + np.cos(phi) * np.cos(p[1]) * np.cos(lst - p[0])
            return 1.0 / np.clip(cos_z, 0.05, 1.0) - airmass

        starts = [(ra, dec) for ra in np.linspace(0, 2 * np.pi, 24, endpoint=False) for dec in np.radians([-60, -20, 20])]
        fit = min((least_squares(residual, s, bounds=([-np.inf, -np.pi / 2], [np.inf, np.pi / 2])) for s in starts),
                  key=lambda r: r.cost)
        rows.append((f, np.degrees(fit.x[0]) % 360.0, np.degrees(fit.x[1]), float(np.sqrt(np.mean(fit.fun ** 2))), len(sel)))
    return Table(rows=rows, names=("field", "ra_deg", "dec_deg", "airmass_rms", "n_epochs"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Fit HiTS field centres from the logs' airmasses; write hits_fields.py")
    parser.add_argument("directory", help="the HiTS 2015 logs (blind15a_epochs.csv has every band's airmass)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("hits_fields.py")))
    args = parser.parse_args(argv)
    path = Path(args.directory) / "blind15a_epochs.csv"
    try:
        if not path.is_file():
            raise ConditionsError(f"{path}: file not found; the HiTS 2015 logs' blind15a_epochs.csv has the "
                                  "airmasses the centres are fitted to")
        raw = _read_csv(path, {"field": "field", "mjd": "mjd", "exp_time": "exp_time_s", "airmass": "airmass"})
    except ConditionsError as exc:  # one line, not a traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    fit = fit_field_coordinates(raw)
    fields = {"reference": "Förster et al. 2016 (HiTS Blind15A); centres fitted to the logged airmasses by "
                           "survey_params/fields.py (CTIO site)",
              "field": [int(f) for f in fit["field"]], "ra_deg": np.round(fit["ra_deg"], 3).tolist(),
              "dec_deg": np.round(fit["dec_deg"], 3).tolist(),
              "airmass_rms_max": round(float(np.max(fit["airmass_rms"])), 4)}
    text = ('"""HiTS 2015 (Blind15A) field centres, fitted to the logged airmasses.\n\n'
            'Generated by `python -m survey_params.fields /path/to/hits2015`; do not edit by hand.\n"""\n\n'
            f"HITS_FIELDS = {pprint.pformat(fields, width=110, compact=True, sort_dicts=False)}\n")
    tmp = Path(args.out + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"{args.out}: {len(fit)} fields, airmass rms <= {fields['airmass_rms_max']}")


if __name__ == "__main__":
    main()
