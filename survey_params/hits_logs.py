"""Reader for the real HiTS 2015 logs (Förster et al. 2016, ApJ 832, 155), as published with
Carrasco-Davis et al. (2019): `camera.csv`, `field_epochs.csv` and `blind15a_epochs.csv`.

`field_epochs.csv` holds the per field/epoch conditions the original simulations sampled from; when it is
absent the same table is built from the campaign records `blind15a_epochs.csv` (`back_level` -> sky,
`zp_ps` -> zero point, `limit_mag_ea5` -> limmag5). Both files are validated like any survey log.
Three g exposures of field 25 have no `zp_ps` in the campaign records; the published `field_epochs.csv`
gives them the zero point of the field's previous exposure in the band, and so does the fallback (with a
warning).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from .schema import ConditionsError, Survey, validate_camera

HITS_PIXEL_SCALE_ARCSEC = 0.27  # DECam (Flaugher et al. 2015)
HITS_BAND = "g"
LOG_FILES = ("camera.csv", "field_epochs.csv", "blind15a_epochs.csv")


def _read_csv(path: Path, columns: dict[str, str]) -> Table:
    try:
        raw = Table.read(path, format="ascii.csv")
    except Exception as exc:  # astropy raises several types for malformed CSV
        raise ConditionsError(f"{path}: cannot be read as CSV ({exc})") from exc
    if not raw.colnames:
        raise ConditionsError(f"{path}: is empty; expected a CSV table with a header row ({', '.join(columns)})")
    missing = [c for c in columns if c not in raw.colnames]
    if missing:
        raise ConditionsError(f"{path}: missing column(s) {missing}; present: {raw.colnames}")
    # empty cells stay masked: validation reports them as empty (and a missing limmag5 is recomputed)
    return Table({dst: raw[src] for src, dst in columns.items()})


def read_camera_csv(path: str | Path) -> Table:
    """A camera table (`camera.csv`: ccd, gain, read_noise, saturation, one row per CCD), validated
    (`schema.validate_camera`: integer unique CCD ids; finite, positive, plausible values). The one reader
    of camera tables: the survey logs and `rcnn import-real --camera` both use it."""
    path = Path(path)
    if not path.is_file():
        raise ConditionsError(f"{path}: {'is a directory' if path.is_dir() else 'file not found'}; expected a camera "
                              f"table (CSV: ccd, gain, read_noise, saturation, one row per CCD)")
    return validate_camera(_read_csv(path, {c: c for c in ("ccd", "gain", "read_noise", "saturation")}), str(path))


def _carry_zero_points(epochs: Table, path: Path) -> None:
    """Give an exposure without a zero point that of its field's previous exposure in the same band (by
    MJD), as the published `field_epochs.csv` does; one with no earlier exposure is left for validation."""
    try:
        zp = np.ma.filled(np.ma.asarray(epochs["zero_point"], dtype=float), np.nan)
        mjd = np.ma.filled(np.ma.asarray(epochs["mjd"], dtype=float), np.nan)
    except (TypeError, ValueError):
        return  # text cells: validation names them
    missing = np.isnan(zp)
    if not missing.any():
        return
    keys = [f"{f}|{b}" for f, b in zip(np.asarray(epochs["field"]).tolist(), np.asarray(epochs["filter"]).tolist())]
    filled = zp.copy()
    last: dict[str, float] = {}
    for row in sorted(range(len(zp)), key=lambda r: (keys[r], mjd[r])):
        if missing[row] and keys[row] in last:
            filled[row] = last[keys[row]]
        elif not missing[row]:
            last[keys[row]] = zp[row]
    repaired = np.flatnonzero(missing & ~np.isnan(filled))
    if len(repaired):
        warnings.warn(f"{path}: {len(repaired)} exposure(s) without a zero point (first: data row "
                      f"{int(repaired[0]) + 1}, column 'zp_ps') take their field's previous exposure's in the "
                      f"band, as field_epochs.csv does", stacklevel=3)
        epochs["zero_point"] = filled


def hits_fields_table() -> Table:
    """The HiTS 2015 field centres (`survey_params.hits_fields`, fitted to the logged airmasses)."""
    from .hits_fields import HITS_FIELDS

    return Table({k: HITS_FIELDS[k] for k in ("field", "ra_deg", "dec_deg")})


def read_hits_logs(directory: str | Path) -> Survey:
    """Load the real HiTS 2015 logs from `directory` as a `Survey` (g band, 0.27"/px)."""
    directory = Path(directory)
    cam_path = directory / "camera.csv"
    if not cam_path.exists():
        raise ConditionsError(f"{cam_path}: file not found; a HiTS conditions directory holds {', '.join(LOG_FILES)}")
    camera = read_camera_csv(cam_path)
    field_path, blind_path = directory / "field_epochs.csv", directory / "blind15a_epochs.csv"
    if field_path.exists():
        ep_path = field_path
        epochs = _read_csv(field_path, {"field": "field", "mjd": "mjd", "filter": "filter",
                                        "exp_time_s": "exp_time_s", "seeing": "seeing_arcsec",
                                        "airmass": "airmass", "sky_adu": "sky_adu",
                                        "zero_point": "zero_point", "limmag5": "limmag5"})
    elif blind_path.exists():
        ep_path = blind_path
        epochs = _read_csv(blind_path, {"field": "field", "mjd": "mjd", "filter": "filter",
                                        "exp_time": "exp_time_s", "seeing": "seeing_arcsec",
                                        "airmass": "airmass", "back_level": "sky_adu",
                                        "zp_ps": "zero_point", "limit_mag_ea5": "limmag5"})
        _carry_zero_points(epochs, blind_path)
    else:
        raise ConditionsError(f"{directory}: neither field_epochs.csv nor blind15a_epochs.csv found")
    return Survey(name="hits", band=HITS_BAND, pixel_scale_arcsec=HITS_PIXEL_SCALE_ARCSEC,
                  camera=camera, epochs=epochs, source=str(directory), fields_table=hits_fields_table(),
                  meta={"reference": "Förster et al. 2016, ApJ 832, 155 (HiTS)"},
                  camera_file=str(cam_path), epochs_file=str(ep_path))
