"""The survey-conditions schema: a camera (per CCD) and per-field, per-epoch exposures.

A `Survey` is what the simulator samples observing conditions from. It is two astropy Tables with fixed
column names and units, read from and written to ECSV so that users can bring their own survey logs.
Validation reports the file, the data row (1-based) and the column of every problem it finds.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io.ascii import convert_numpy as ascii_convert
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

#: Plausibility bounds of the numeric columns: name -> (low, high, unit, why), both bounds inclusive. A value
#: outside is an error naming file, data row, column and value: it is a unit mistake, a typo or a placeholder,
#: and the simulator would otherwise fail far from the cause ("lam value too large") or silently make stamps
#: of invisible or absurd stars. The bounds are deliberately generous: every real survey lies well inside
#: them (the HiTS 2015 DECam logs: gain 3.7-4.4, read noise 5.5-12.7, saturation 33874-51319, exposure
#: 86-102 s, seeing 0.98-4.4", airmass 1.09-1.99, sky 100-5515 ADU, zero point 22.6-25.4, limmag5 14.5-25.4).
#: Besides, every column must be finite (limmag5 may be NaN: see `validate_epochs`) and > 0 (read_noise >= 0).
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str, str]] = {
    "gain": (0.01, 100.0, "electron/adu", "CCD and CMOS gains are ~0.1-20 e-/ADU"),
    "read_noise": (0.0, 1000.0, "electron", "science detectors read out with < 100 e- rms; EMCCDs reach 0"),
    "saturation": (100.0, 1e7, "adu", "16-bit converters saturate at 65535 ADU; 1e7 allows 24-bit or co-added frames"),
    "mjd": (0.0, 1e6, "d", "MJD 0 is 1858-11-17, 1e6 the year 4596: a JD (2.4e6) or a Unix time is refused"),
    "exp_time_s": (1e-3, 1e5, "s", "from a millisecond shutter to a day-long exposure"),
    "seeing_arcsec": (0.01, 20.0, "arcsec", "from diffraction-limited space PSFs (~0.05\") to very bad seeing (~5\")"),
    "airmass": (1.0, 10.0, "", "1 at the zenith; 10 is 84 deg from it, far below any telescope's limit"),
    "sky_adu": (0.0, 1e6, "adu", "above any saturation level but the most generous"),
    "zero_point": (10.0, 40.0, "mag", "magnitude of 1 ADU/s: ~18 for a small telescope, ~30 for the largest; "
                   "outside, stars are invisible or overflow the Poisson sampler"),
    "limmag5": (5.0, 32.0, "mag", "single exposures reach 5-sigma limits of ~15 (clouds) to ~29 (the largest "
                "telescopes); 32 keeps the simulator's star magnitudes inside its 35-mag table"),
}

#: Plausible pixel scale, arcsec/px (inclusive): adaptive optics (~0.01") to TESS-like cameras (21"/px).
PIXEL_SCALE_RANGE = (0.01, 30.0)


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
    fields_file: str | None = None  # the file `fields_table` came from, for error messages

    def __post_init__(self) -> None:
        self.pixel_scale_arcsec = _pixel_scale(self.pixel_scale_arcsec, self.camera_file or self.source)
        if self.band not in KNOWN_FILTERS:
            raise ConditionsError(f"{self.camera_file or self.source}: band {self.band!r} is not one of {KNOWN_FILTERS}")
        self.camera = validate_camera(self.camera, self.camera_file or self.source)
        self.epochs = validate_epochs(self.epochs, self.epochs_file or self.source)
        self._latitude = {}
        if self.fields_table is not None:
            from .fields import latitude_by_field

            self._latitude = latitude_by_field(self.fields_table, self.fields_file or f"{self.source} (fields table)")

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
        cam, ep = _read_ecsv(cam_path), _read_ecsv(ep_path)
        meta = dict(cam.meta)
        for key in ("survey", "band", "pixel_scale_arcsec"):
            if key not in meta:
                raise ConditionsError(f"{cam_path}: header metadata lacks '{key}'")
        name, band, scale = meta.pop("survey"), meta.pop("band"), meta.pop("pixel_scale_arcsec")
        fields_path = directory / "fields.ecsv"
        fields_table = _read_ecsv(fields_path) if fields_path.exists() else None
        return cls(name=name, band=band, pixel_scale_arcsec=scale, camera=cam, epochs=ep, source=str(directory),
                   meta=meta, camera_file=str(cam_path), epochs_file=str(ep_path), fields_table=fields_table,
                   fields_file=str(fields_path) if fields_table is not None else None)


def _read_ecsv(path: Path) -> Table:
    """`path` read as ECSV; any failure (not a file, not text, a broken header or row) is a ConditionsError."""
    try:
        return Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # astropy raises many types (ValueError, TypeError, YAML and Unicode errors, OSError)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        cell = _bad_ecsv_cell(path, detail)
        raise ConditionsError(f"{path}{cell}: cannot be read as ECSV ({detail[:300]})") from exc


def _bad_ecsv_cell(path: Path, detail: str) -> str:
    """", data row N, column 'X', value 'v'" for astropy's "column 'X' failed to convert" (which names no
    row), found by re-reading the data as text; "" when that does not work."""
    match = re.search(r"column '([^']+)' failed to convert", detail)
    if not match:
        return ""
    column, to_int = match.group(1), "int()" in detail
    try:
        text = Table.read(path, format="ascii.basic", comment=r"\s*#", guess=False, fast_reader=False,
                          converters={column: [ascii_convert(str)]})
        values = np.ma.getdata(text[column]).astype(str)
    except Exception:
        return ""
    for row, value in enumerate(values):
        try:
            int(value) if to_int else float(value)
        except ValueError:
            return f", data row {row + 1}, column '{column}', value {str(value)!r}"
    return ""


def _pixel_scale(value, source: str) -> float:
    """`value` as a finite pixel scale inside `PIXEL_SCALE_RANGE`, or a ConditionsError naming `source`."""
    low, high = PIXEL_SCALE_RANGE
    scale = math.nan
    if not isinstance(value, (bool, np.bool_)):
        try:
            scale = float(value)
        except (TypeError, ValueError):
            pass
    if not low <= scale <= high:
        raise ConditionsError(f"{source}: pixel_scale_arcsec must be a number of arcsec per pixel in "
                              f"[{low:g}, {high:g}], got {value!r}")
    return scale


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


def _numbers(table: Table, column: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Column `column` as float64, and where it is empty (masked; NaN there). Text that is not a number is a
    ConditionsError naming file, data row, column and value."""
    col = table[column]
    raw = np.asarray(np.ma.getdata(col))
    empty = np.broadcast_to(np.asarray(np.ma.getmaskarray(col), dtype=bool), raw.shape).copy()
    if raw.ndim != 1:
        raise ConditionsError(f"{_where(source, None, column)}: holds {raw.ndim}-d values, expected one number a row")
    if raw.dtype.kind in "iuf":
        values = raw.astype(float)
    elif raw.dtype.kind in "USO":
        values = np.full(len(raw), np.nan)
        for row, text in enumerate(raw):
            if empty[row]:
                continue
            try:
                values[row] = float(str(text).strip())
            except ValueError:
                raise ConditionsError(f"{_where(source, row, column)}: value {str(text)!r} is not a number") from None
    else:
        raise ConditionsError(f"{_where(source, 0 if len(raw) else None, column)}: values of type {raw.dtype} "
                              f"(first {raw[0] if len(raw) else None!r}) are not numbers")
    values[empty] = np.nan
    return values, empty


def _check_column(values: np.ndarray, empty: np.ndarray, column: str, source: str, allow_nan: bool = False) -> None:
    """Values finite (NaN too where `allow_nan`), > 0 (>= 0 for read_noise) and inside `PLAUSIBLE_RANGES`."""
    def fail(bad, what):
        row = int(np.flatnonzero(bad)[0])
        value = "is empty" if empty[row] else f"{float(values[row])!r} {what(values[row])}"
        raise ConditionsError(f"{_where(source, row, column)}: value {value} ({int(bad.sum())} such rows)")

    nan = np.isnan(values)
    bad = ~np.isfinite(values) & ~(nan & allow_nan)
    if bad.any():
        fail(bad, lambda v: "is not finite")
    with np.errstate(invalid="ignore"):
        allow_zero = column == "read_noise"
        bad = values < 0 if allow_zero else values <= 0
        if bad.any():
            fail(bad, lambda v: "must be >= 0" if allow_zero else "must be > 0")
        if column in PLAUSIBLE_RANGES:
            low, high, unit, why = PLAUSIBLE_RANGES[column]
            bad = (values < low) | (values > high)
            if bad.any():
                unit = f" {unit}" if unit else ""
                fail(bad, lambda v: f"is {'below' if v < low else 'above'} {low if v < low else high:g}{unit}, outside "
                                    f"the plausible range [{low:g}, {high:g}]{unit} ({why})")


def _float_column(table: Table, column: str, source: str, allow_nan: bool = False) -> np.ndarray:
    values, empty = _numbers(table, column, source)
    _check_column(values, empty, column, source, allow_nan)
    return values


def _ids(table: Table, column: str, source: str) -> np.ndarray:
    """Identifier column: no empty or NaN entries."""
    col = table[column]
    raw = np.asarray(np.ma.getdata(col))
    empty = np.broadcast_to(np.asarray(np.ma.getmaskarray(col), dtype=bool), raw.shape)
    bad = empty.copy()
    if raw.dtype.kind == "f":
        bad |= ~np.isfinite(raw)
    elif raw.dtype.kind in "USO":
        text = np.char.strip(raw.astype(str))
        bad |= (text == "") | np.isin(np.char.lower(text), ("nan", "inf", "-inf", "+inf"))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = "is empty" if empty[row] else f"{raw[row].item()!r} is not an identifier"
        raise ConditionsError(f"{_where(source, row, column)}: value {value} ({int(bad.sum())} such rows)")
    return raw


def _repeats(keys) -> list[tuple[int, int]]:
    """(row, earlier row holding the same key) for every row whose key came before, in row order."""
    first: dict = {}
    out = []
    for row, key in enumerate(keys):
        if key in first:
            out.append((row, first[key]))
        else:
            first[key] = row
    return out


def validate_camera(table: Table, source: str) -> Table:
    """Check the camera table: at least one CCD, integer CCD ids, unique; gain, read noise and saturation
    numbers, finite, positive and plausible (`PLAUSIBLE_RANGES`)."""
    _require_columns(table, CAMERA_COLUMNS, source)
    if len(table) == 0:
        raise ConditionsError(f"{source}: no data rows; the camera table needs at least one CCD")
    values, empty = _numbers(table, "ccd", source)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2 ** 53)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = "is empty" if empty[row] else f"{np.asarray(np.ma.getdata(table['ccd']))[row].item()!r} is not an integer"
        raise ConditionsError(f"{_where(source, row, 'ccd')}: value {value} ({int(bad.sum())} such rows); "
                              "CCD ids are integers")
    ccd = values.astype(np.int64)
    out = Table({"ccd": ccd})
    for col in ("gain", "read_noise", "saturation"):
        out[col] = _float_column(table, col, source)
    uniq, counts = np.unique(ccd, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        row = int(np.flatnonzero(ccd == dup)[1])
        raise ConditionsError(f"{_where(source, row, 'ccd')}: duplicate CCD id {int(dup)}")
    return _annotate(out, CAMERA_COLUMNS)


def validate_epochs(table: Table, source: str) -> Table:
    """Check the exposure table and return it sorted by (field, MJD).

    Errors (naming file, data row, column and value): no rows; an empty or NaN field id; an unknown filter;
    text, an empty cell, a non-finite, non-positive or implausible (`PLAUSIBLE_RANGES`) MJD, exposure
    time, seeing, airmass, sky, zero point or limmag5; two rows of one field at the same MJD (a duplicated
    exposure). Row order carries no meaning: the rows come back sorted by (field, MJD), so a log listed by
    epoch number (the published HiTS log, whose numbering is not chronological) needs no repair. A NaN (or empty) `limmag5` is recomputed from the other columns by
    `survey_params.limits` when the survey is sampled (the HiTS records lack some depths).
    """
    _require_columns(table, EPOCH_COLUMNS, source)
    if len(table) == 0:
        raise ConditionsError(f"{source}: no data rows; the epochs table needs at least one exposure")
    fields = _ids(table, "field", source)
    filters = np.asarray(np.ma.getdata(table["filter"])).astype(str)
    filters[np.broadcast_to(np.ma.getmaskarray(table["filter"]), filters.shape)] = ""
    unknown = ~np.isin(filters, KNOWN_FILTERS)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise ConditionsError(f"{_where(source, row, 'filter')}: unknown filter {str(filters[row])!r}; "
                              f"known: {', '.join(KNOWN_FILTERS)}")
    out = Table({"field": fields, "filter": filters})
    for col in ("mjd", "exp_time_s", "seeing_arcsec", "airmass", "sky_adu", "zero_point", "limmag5"):
        out[col] = _float_column(table, col, source, allow_nan=col == "limmag5")
    out = out[list(EPOCH_COLUMNS)]
    mjd = np.asarray(out["mjd"])
    keys = fields.astype(str)
    # A field exposed twice at one MJD is a duplicated row (a log concatenated with itself, a bad join):
    # using it would weight that epoch twice.
    dups = _repeats(zip(keys.tolist(), mjd.tolist()))
    if dups:
        row, first = dups[0]
        raise ConditionsError(f"{_where(source, row, 'mjd')}: duplicate exposure: field {str(keys[row])!r} at MJD "
                              f"{float(mjd[row])!r} is already data row {first + 1} ({len(dups)} duplicate rows)")
    order = np.lexsort((mjd, keys))
    return _annotate(out[order], EPOCH_COLUMNS)
