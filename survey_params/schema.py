"""The survey-conditions schema: a camera (per CCD) and per-field, per-epoch exposures.

A `Survey` is what the simulator samples observing conditions from. It is two astropy Tables with fixed
column names and units, read from and written to ECSV so that users can bring their own survey logs.
Validation reports the file, the data row (1-based) and the column of every problem it finds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

#: Columns of the per-CCD camera table: name -> (unit, meaning).
CAMERA_COLUMNS: dict[str, tuple[str, str]] = {
    "ccd": ("", "CCD identifier (integer)"),
    "gain": ("electron/adu", "gain, electrons per ADU"),
    "read_noise": ("electron", "read noise, electrons rms"),
    "saturation": ("adu", "saturation level, ADU"),
}

#: Columns of the per-field, per-epoch exposure table: name -> (unit, meaning).
EPOCH_COLUMNS: dict[str, tuple[str, str]] = {
    "field": ("", "field identifier (integer or string)"),
    "mjd": ("d", "modified Julian date of the exposure"),
    "filter": ("", "filter name (u, g, r, i, z, Y)"),
    "exp_time_s": ("s", "exposure time"),
    "seeing_arcsec": ("arcsec", "PSF FWHM"),
    "airmass": ("", "airmass"),
    "sky_adu": ("adu", "sky level per pixel"),
    "zero_point": ("mag", "zero point: m = zero_point - 2.5 log10(ADU / exp_time_s)"),
    "limmag5": ("mag", "5-sigma point-source limiting magnitude"),
}

KNOWN_FILTERS = ("u", "g", "r", "i", "z", "Y")


class ConditionsError(ValueError):
    """A survey log that cannot be used; the message names file, row and column."""


def _where(source: str, row: int | None, column: str | None) -> str:
    parts = [source]
    if row is not None:
        parts.append(f"data row {row + 1}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


@dataclass
class Survey:
    """Camera and exposure log of one survey.

    `camera` has the `CAMERA_COLUMNS`, `epochs` the `EPOCH_COLUMNS`; `band` is the science filter the
    simulator uses; `source` names where the tables came from, and `camera_file` / `epochs_file` (default:
    `source`) the files that error messages name. Both tables are validated on construction.
    """

    name: str
    band: str
    pixel_scale_arcsec: float
    camera: Table
    epochs: Table
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)
    camera_file: str | None = None
    epochs_file: str | None = None
    fields_table: Table | None = None  # optional `fields.FIELD_COLUMNS`: field centres (for galactic latitude)

    def __post_init__(self) -> None:
        if not (self.pixel_scale_arcsec > 0):
            raise ConditionsError(f"{self.source}: pixel_scale_arcsec must be > 0, got {self.pixel_scale_arcsec!r}")
        if self.band not in KNOWN_FILTERS:
            raise ConditionsError(f"{self.source}: band {self.band!r} is not one of {KNOWN_FILTERS}")
        self.camera = validate_camera(self.camera, self.camera_file or self.source)
        self.epochs = validate_epochs(self.epochs, self.epochs_file or self.source)
        self._latitude = {}
        if self.fields_table is not None:
            from .fields import latitude_by_field

            self._latitude = latitude_by_field(self.fields_table, f"{self.source} (fields table)")

    def fields(self) -> list:
        """Field identifiers that have at least one epoch in the science band."""
        sel = self.epochs[self.epochs["filter"] == self.band]
        return sorted(set(sel["field"].tolist()))

    def field_epochs(self, field_id, seeing_limit_arcsec: float = math.inf) -> Table:
        """Science-band epochs of one field, sorted by MJD, seeing at most `seeing_limit_arcsec`."""
        ep = self.epochs
        sel = (ep["field"] == field_id) & (ep["filter"] == self.band) & (ep["seeing_arcsec"] <= seeing_limit_arcsec)
        return ep[sel]

    def galactic_latitude_deg(self, field_id) -> float:
        """Galactic latitude of a field's centre, NaN when the survey has no position for it."""
        return self._latitude.get(str(field_id), math.nan)

    def write(self, directory: str | Path) -> None:
        """Write `camera.ecsv`, `epochs.ecsv` (with units and the survey metadata) and, when the survey has
        field positions, `fields.ecsv` to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cam = Table(self.camera, copy=True)
        cam.meta = {"survey": self.name, "band": self.band, "pixel_scale_arcsec": self.pixel_scale_arcsec, **self.meta}
        ep = Table(self.epochs, copy=True)
        tables = [(cam, "camera.ecsv"), (ep, "epochs.ecsv")]
        if self.fields_table is not None:
            tables.append((Table(self.fields_table, copy=True), "fields.ecsv"))
        for table, fname in tables:
            tmp = directory / (fname + ".tmp")
            table.write(tmp, format="ascii.ecsv", overwrite=True)
            tmp.replace(directory / fname)

    @classmethod
    def read(cls, directory: str | Path) -> "Survey":
        """Read a survey written by `write` (or by hand): `camera.ecsv`, `epochs.ecsv` and optionally
        `fields.ecsv` (field, ra_deg, dec_deg) in `directory`."""
        directory = Path(directory)
        cam_path, ep_path = directory / "camera.ecsv", directory / "epochs.ecsv"
        for p in (cam_path, ep_path):
            if not p.exists():
                raise ConditionsError(f"{p}: file not found (a survey directory holds camera.ecsv and epochs.ecsv)")
        cam = Table.read(cam_path, format="ascii.ecsv")
        ep = Table.read(ep_path, format="ascii.ecsv")
        meta = dict(cam.meta)
        for key in ("survey", "band", "pixel_scale_arcsec"):
            if key not in meta:
                raise ConditionsError(f"{cam_path}: header metadata lacks '{key}'")
        name, band, scale = meta.pop("survey"), meta.pop("band"), float(meta.pop("pixel_scale_arcsec"))
        fields_path = directory / "fields.ecsv"
        fields_table = Table.read(fields_path, format="ascii.ecsv") if fields_path.exists() else None
        return cls(name=name, band=band, pixel_scale_arcsec=scale, camera=cam, epochs=ep, source=str(directory),
                   meta=meta, camera_file=str(cam_path), epochs_file=str(ep_path), fields_table=fields_table)


def _annotate(table: Table, columns: dict[str, tuple[str, str]]) -> Table:
    """Set each column's unit and description from the schema."""
    for name, (unit, desc) in columns.items():
        table[name].unit = unit or None
        table[name].description = desc
    return table


def _require_columns(table: Table, columns, source: str) -> None:
    missing = [c for c in columns if c not in table.colnames]
    if missing:
        raise ConditionsError(f"{source}: missing column(s) {missing}; present: {table.colnames}")


def _check_finite_positive(table: Table, column: str, source: str, allow_zero: bool = False) -> None:
    values = np.asarray(table[column], dtype=float)
    bad_nan = ~np.isfinite(values)
    if bad_nan.any():
        row = int(np.flatnonzero(bad_nan)[0])
        raise ConditionsError(f"{_where(source, row, column)}: value {float(values[row])!r} is not finite "
                              f"({int(bad_nan.sum())} such rows)")
    bad = values < 0 if allow_zero else values <= 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConditionsError(f"{_where(source, row, column)}: value {float(values[row])!r} must be "
                              f"{'>= 0' if allow_zero else '> 0'} ({int(bad.sum())} such rows)")


def validate_camera(table: Table, source: str) -> Table:
    """Check the camera table: columns present, values finite and positive, CCD ids unique."""
    _require_columns(table, CAMERA_COLUMNS, source)
    out = Table({name: table[name] for name in CAMERA_COLUMNS})
    for col in ("gain", "saturation"):
        _check_finite_positive(out, col, source)
    _check_finite_positive(out, "read_noise", source, allow_zero=True)
    ccd = np.asarray(out["ccd"])
    uniq, counts = np.unique(ccd, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        row = int(np.flatnonzero(ccd == dup)[1])
        raise ConditionsError(f"{_where(source, row, 'ccd')}: duplicate CCD id {dup!r}")
    for name in ("gain", "read_noise", "saturation"):
        out[name] = np.asarray(out[name], dtype=float)
    return _annotate(out, CAMERA_COLUMNS)


def validate_epochs(table: Table, source: str) -> Table:
    """Check the exposure table and return it sorted by (field, MJD).

    Errors (naming file, data row and column): NaN or non-positive exposure time, seeing, airmass,
    sky or MJD; NaN zero point; unknown filter. Documented repairs: rows whose MJDs are not increasing
    within a field are sorted (with a warning naming the first such row); a NaN `limmag5` is
    recomputed from the other columns by `survey_params.limits` when the survey is sampled.
    """
    _require_columns(table, EPOCH_COLUMNS, source)
    out = Table({name: table[name] for name in EPOCH_COLUMNS})
    filters = np.asarray(out["filter"]).astype(str)
    unknown = ~np.isin(filters, KNOWN_FILTERS)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise ConditionsError(f"{_where(source, row, 'filter')}: unknown filter {str(filters[row])!r}; "
                              f"known: {', '.join(KNOWN_FILTERS)}")
    out["filter"] = filters
    for col in ("mjd", "exp_time_s", "seeing_arcsec", "airmass", "sky_adu"):
        _check_finite_positive(out, col, source)
    zp = np.asarray(out["zero_point"], dtype=float)
    if not np.isfinite(zp).all():
        row = int(np.flatnonzero(~np.isfinite(zp))[0])
        raise ConditionsError(f"{_where(source, row, 'zero_point')}: value {float(zp[row])!r} is not finite")
    for col in ("mjd", "exp_time_s", "seeing_arcsec", "airmass", "sky_adu", "zero_point", "limmag5"):
        out[col] = np.asarray(out[col], dtype=float)
    airmass = np.asarray(out["airmass"])
    if (airmass < 1.0).any():
        row = int(np.flatnonzero(airmass < 1.0)[0])
        raise ConditionsError(f"{_where(source, row, 'airmass')}: value {float(airmass[row])!r} is below 1")
    # Repair: sort by MJD within each field, telling the user where the log was out of order.
    fields = np.asarray(out["field"])
    mjd = np.asarray(out["mjd"])
    same_field = fields[1:] == fields[:-1]
    backwards = same_field & (np.diff(mjd) < 0)
    if backwards.any():
        row = int(np.flatnonzero(backwards)[0]) + 1
        warnings.warn(f"{_where(source, row, 'mjd')}: MJDs are not increasing within field "
                      f"{str(fields[row])!r} ({int(backwards.sum())} places); epochs were sorted by MJD",
                      stacklevel=2)
    order = np.lexsort((mjd, fields.astype(str)))
    return _annotate(out[order], EPOCH_COLUMNS)
