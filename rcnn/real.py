"""`rcnn import-real`: real stamp sequences -> the simulator's HDF5 layout, so every tool works on both.

Input: the interchange layout of `../shared/hits2015/README.md` (`real_dev.npz`: frames of object k at
`offsets[k]:offsets[k+1]`, per-frame conditions, NaN where no log record matched), or a directory of FITS
files, one per object (`FITS layout` below). Per object:
- g-band frames only (`filter_code` 0), in time order;
- missing conditions are estimated and flagged (`conditions/estimated`): sky from the stamp's sigma-clipped
  border; zero point, seeing, airmass, exposure time from the other objects' frames of the same field and
  HiTS epoch (the same exposure), else the object's own median; limmag5 from the others by the simulator's
  formula;
- gain, read noise, saturation: the camera table's medians (lowest saturation): a stamp does not say its CCD;
- optimal photometry of every frame (`photometry/` group as `photometry DATASET.h5` writes it), in chunks
  of `PHOTOMETRY_CHUNK` frames under a progress bar (frames without a logged sky: measured as
  `photometry --sky border` does, with the fitted star taken out of the border and the sky's uncertainty
  in the flux error); a stop signal (Ctrl-C) stops between chunks and
  writes nothing;
- supernova and asteroid sequences start 5 images before the first 5-sigma detection, other classes at
  their first epoch (Carrasco-Davis et al. 2019, sec. 4). The detection is over the object's quiescent
  level (`photometry.optimal.first_detection`), as on a difference image: in a science cutout a host
  galaxy's light would pass the rule at the first epoch. `photometry/first_detection` is that epoch in the
  window. `split` is 2 (test) for all objects;
- labels are optional: without `label` and `class_names` (npz) or a LABEL keyword (FITS) objects get the one
  class `unlabelled` and, as in an alert stream, start 5 images before their first detection (at their first
  epoch if never detected). `rcnn classify` classifies them; `rcnn evaluate` refuses them;
- contextual inputs (GOTO): `context/galactic_latitude_deg` from the field's centre (the HiTS field table,
  `survey_params.hits_fields`, or `fields`: a table of field, ra_deg, dec_deg); `context/has_host` and
  `context/host_distance_arcsec` from a catalogue cross-match `context` (CSV: name, has_host,
  host_distance_arcsec), since the stamps alone do not say which galaxy is a host.
Refused, with one line naming the file, the array and the value: a file that is not the layout, no objects,
duplicate class names, a frame without an observation time (`mjd` NaN: it cannot be placed in its sequence),
a g-band frame whose logged condition is impossible (neither NaN nor > 0 and inside the survey logs'
`survey_params.schema.PLAUSIBLE_RANGES`: negative seeing, zero exposure time), an object without a
usable frame (no g band, or conditions no frame can give), unreadable side tables, and an existing output
unless `overwrite` (`--overwrite`). Valid epochs always come first in each row (`mask` packed).
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from photometry.optimal import bad_pixels, border_sky, first_detection, zero_point_scaling
from photometry.real import G_FILTER_CODE, camera_medians, measure_frames
from simulator.dataset import UNLABELLED, check_output, open_h5, write_arrays
from simulator.stopping import check as check_stop
from survey_params.limits import limiting_magnitude
from survey_params.schema import PLAUSIBLE_RANGES

from .data import ALERT_NAMES

CONDITIONS = ("exp_time_s", "seeing_arcsec", "airmass", "sky_adu", "zero_point", "limmag5")
PRE_ALERT_EPOCHS = 5
PHOTOMETRY_CHUNK = 4096  # frames per photometry call: ~1.5 s each; bounds the trial fits' memory


class ImportError_(ValueError):
    """A real file that cannot be imported (names the file, array and value)."""


def _fill(values: np.ndarray, field: np.ndarray, epoch: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaNs filled from frames of the same (field, epoch), else the owner's median; returns (values, filled)."""
    out = values.copy()
    missing = ~np.isfinite(out)
    for i in np.flatnonzero(missing):
        same = (field == field[i]) & (epoch == epoch[i]) & np.isfinite(values)
        pool = values[same] if same.any() else values[(owner == owner[i]) & np.isfinite(values)]
        if pool.size:
            out[i] = np.median(pool)
    return out, missing & np.isfinite(out)


NEEDED = ("stamps", "offsets", "mjd", "field", "hits_epoch", "filter_code") + CONDITIONS
LABELS = ("label", "class_names")  # both, or neither (unlabelled objects)
#: FITS layout: one file per object; primary HDU the stamp cube (T, S, S) in ADU; a binary table HDU named
#: EPOCHS with columns MJD, FILTER ('g', ...), HITS_EPOCH and the CONDITIONS; header keywords LABEL (optional), FIELD, NAME.
FITS_FILTERS = {"g": 0, "r": 1, "i": 2, "u": 3}


#: The first bytes of a zip archive (an .npz): a local file header, or the end record of an empty archive.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line (astropy's registry errors append a table of formats)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _implausible(key: str, values: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, str]:
    """(indices of the g-band frames whose condition `key` is neither NaN (no record: estimated) nor plausible,
    the range they break): plausible as the survey logs require, > 0 and inside `PLAUSIBLE_RANGES`. Other
    frames are not imported, so whatever they hold is left alone."""
    low, high, unit, why = PLAUSIBLE_RANGES[key]
    with np.errstate(invalid="ignore"):
        bad = g & ~np.isnan(values) & ~((values > 0) & (values >= low) & (values <= high))
    unit = f" {unit}" if unit else ""
    bounds = f"{'(' if low == 0 else '['}{low:g}, {high:g}]{unit}"
    return np.flatnonzero(bad), f"outside the plausible range {bounds} ({why})"


def load_npz(path: Path) -> dict:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"SIMP" or path.suffix.lower() in (".fits", ".fit", ".fts"):  # FITS files start "SIMPLE  ="
        raise ImportError_(f"{path}: is a FITS file; a FITS source is a directory of FITS files, one per object (the "
                           "FITS layout of rcnn/real.py): give the directory")
    if magic not in ZIP_MAGIC:
        raise ImportError_(f"{path}: is not an .npz archive (a zip of .npy arrays, as numpy.savez writes; its "
                           f"first bytes are {magic!r})")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise ImportError_(f"{path}: is not a readable .npz archive ({_first_line(exc)})") from None
    with archive as d:
        if not d.files:
            raise ImportError_(f"{path}: holds no arrays (an empty .npz archive; expected the real_dev.npz layout)")
        missing = [k for k in NEEDED if k not in d] + [k for k in LABELS if k not in d and any(j in d for j in LABELS)]
        if missing:
            raise ImportError_(f"{path}: missing array(s) {', '.join(missing)} (expected the real_dev.npz layout; "
                               f"{' and '.join(LABELS)} go together)")
        out = {}
        for k in NEEDED + tuple(k for k in ("name",) + LABELS if k in d):
            try:
                out[k] = d[k]
            except ValueError as exc:  # numpy refuses pickled object arrays without allow_pickle, which we never give
                if "allow_pickle" not in str(exc):
                    raise ImportError_(f"{path}: array '{k}' cannot be read ({_first_line(exc)})") from None
                raise ImportError_(f"{path}: array '{k}' holds Python objects (pickled); save it as numbers or "
                                   f"fixed-width strings") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:  # a damaged member
                raise ImportError_(f"{path}: array '{k}' cannot be read ({_first_line(exc)})") from None
    if "label" not in out:
        out["label"], out["class_names"] = np.zeros(max(len(out["offsets"]) - 1, 0), int), np.array([UNLABELLED])
    return out


def check_layout(a: dict, path: Path) -> None:
    """The arrays of the npz layout agree with each other: odd square stamps, offsets that cut them into the
    objects (at least one), one entry per frame or per object, labels that index distinct class_names, a finite
    observation time for every frame, plausible conditions (`_implausible`) for every g-band frame."""
    stamps, offsets, n_obj = a["stamps"], np.asarray(a["offsets"]), len(a["label"])
    per_frame = ("mjd", "hits_epoch", "filter_code") + CONDITIONS
    for k in ("stamps", "offsets") + per_frame:
        kind = np.asarray(a[k]).dtype.kind
        if kind not in "biuf" or (k == "offsets" and kind == "f"):
            raise ImportError_(f"{path}: '{k}' has dtype {np.asarray(a[k]).dtype}; expected "
                               f"{'integers' if k == 'offsets' else 'numbers'}")
    if stamps.ndim != 3 or stamps.shape[1] != stamps.shape[2] or stamps.shape[1] % 2 == 0:
        raise ImportError_(f"{path}: 'stamps' has shape {stamps.shape}; expected (frames, S, S) with S odd "
                           f"(the source at the central pixel)")
    if (len(offsets) != n_obj + 1 or offsets[0] != 0 or offsets[-1] != len(stamps)
            or (np.diff(offsets) < 1).any()):
        raise ImportError_(f"{path}: 'offsets' has {len(offsets)} entries from {offsets[0] if len(offsets) else None} "
                           f"to {offsets[-1] if len(offsets) else None}; expected {n_obj + 1} increasing from 0 to "
                           f"{len(stamps)} (one more than the objects in 'label', ending at the frames in 'stamps')")
    if n_obj == 0:
        raise ImportError_(f"{path}: holds no objects ('offsets' is {offsets.tolist()}, 'stamps' has "
                           f"{len(stamps)} frames)")
    per_object = ("field",) + tuple(k for k in ("name",) if k in a)
    for keys, n, what in ((per_frame, len(stamps), "frame of 'stamps'"), (per_object, n_obj, "object of 'label'")):
        for k in keys:
            if np.shape(a[k]) != (n,):
                raise ImportError_(f"{path}: '{k}' has shape {np.shape(a[k])}; expected ({n},): one per {what}")
    names = np.asarray(a["class_names"])
    if names.ndim != 1:
        raise ImportError_(f"{path}: 'class_names' has shape {names.shape}; expected (classes,): one name per class")
    seen: dict[str, int] = {}
    for c, name in enumerate(str(x) for x in names):
        if name in seen:
            raise ImportError_(f"{path}: 'class_names' holds {name!r} twice (classes {seen[name]} and {c}); each "
                               f"class needs its own name")
        seen[name] = c
    label = np.asarray(a["label"])
    if not np.issubdtype(label.dtype, np.integer) or (label < 0).any() or (label >= len(a["class_names"])).any():
        raise ImportError_(f"{path}: 'label' must be integers indexing 'class_names' (0..{len(a['class_names']) - 1}); "
                           f"got {label.dtype} from {label.min()} to {label.max()}")
    no_time = np.flatnonzero(~np.isfinite(a["mjd"]))
    if no_time.size:  # a frame without an observation time cannot be placed in its sequence
        i = int(no_time[0])
        k = int(np.searchsorted(offsets, i, side="right")) - 1
        more = f" ({no_time.size - 1} more frame(s) too)" if no_time.size > 1 else ""
        raise ImportError_(f"{path}: 'mjd'[{i}] is {float(a['mjd'][i])!r}: frame {i - offsets[k]} of object {k}"
                           f"{_object_name(a, k)} has no observation time{more}; every frame needs one")
    g = np.asarray(a["filter_code"]) == G_FILTER_CODE
    for key in CONDITIONS:
        values = np.asarray(a[key], dtype=float)
        bad, why = _implausible(key, values, g)
        if bad.size:
            i = int(bad[0])
            k = int(np.searchsorted(offsets, i, side="right")) - 1
            more = f" ({bad.size - 1} more frame(s) too)" if bad.size > 1 else ""
            raise ImportError_(f"{path}: '{key}'[{i}] is {float(values[i])!r} in g-band frame {i - offsets[k]} of "
                               f"object {k}{_object_name(a, k)}: {why}{more}")


def _object_name(a: dict, k: int) -> str:
    return f" ('{a['name'][k]}')" if "name" in a else ""


def _read_fits_object(f: Path, folder: Path):
    """(cube (T, S, S) float32, EPOCHS table, primary header) of one object's file in the `FITS layout`, read
    whole; an ImportError_ naming the file if it is not that."""
    import warnings

    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="File may have been truncated")  # else a reshape error later
            hdul = fits.open(f, memmap=False)
        with hdul:
            data = hdul[0].data
            if data is None or data.ndim != 3 or "EPOCHS" not in hdul:
                raise ImportError_(f"{f}: expected a (T, S, S) cube in the primary HDU and an EPOCHS table")
            return np.asarray(data, dtype=np.float32), hdul["EPOCHS"].data, hdul[0].header
    except ImportError_:
        raise
    except Exception as exc:  # astropy raises many types for a file that is not FITS, or a truncated one
        raise ImportError_(f"{f}: is not a readable FITS file ({_first_line(exc)}); every *.fits file of "
                           f"{folder} is read as one object") from None


def load_fits_dir(path: Path) -> dict:
    """The `FITS layout` files of a directory, as the arrays of the npz layout (objects sorted by file name)."""
    files = sorted(path.glob("*.fits"))
    if not files:
        raise ImportError_(f"{path}: no *.fits files")
    cubes, tables, labels, fields, names = [], [], [], [], []
    for f in files:
        cube, table, header = _read_fits_object(f, path)
        cols = {c.upper() for c in table.columns.names}
        missing = [c for c in ("MJD", "FILTER") + tuple(k.upper() for k in CONDITIONS) if c not in cols]
        if missing or len(table) != len(cube):
            raise ImportError_(f"{f}: EPOCHS needs one row per image and columns MJD, FILTER, "
                               f"{', '.join(k.upper() for k in CONDITIONS)} (missing {missing})")
        numbers = {}
        for c in ("MJD",) + tuple(k.upper() for k in CONDITIONS):
            try:
                numbers[c] = np.asarray(table[c], dtype=float)
            except (TypeError, ValueError) as exc:
                raise ImportError_(f"{f}: EPOCHS column {c} is not numbers ({_first_line(exc)})") from None
        mjd = numbers["MJD"]
        if not np.isfinite(mjd).all():
            i = int(np.flatnonzero(~np.isfinite(mjd))[0])
            raise ImportError_(f"{f}: EPOCHS row {i + 1}, column MJD: {float(mjd[i])!r}; every image needs its "
                               f"observation time")
        g = np.char.strip(np.asarray(table["FILTER"]).astype(str)) == "g"
        for k in CONDITIONS:
            bad, why = _implausible(k, numbers[k.upper()], g)
            if bad.size:
                more = f" ({bad.size - 1} more row(s) too)" if bad.size > 1 else ""
                raise ImportError_(f"{f}: EPOCHS row {bad[0] + 1}, column {k.upper()}: "
                                   f"{float(numbers[k.upper()][bad[0]])!r} in a g-band image: {why}{more}")
        cubes.append(cube)
        tables.append({k: np.asarray(table[k]) for k in table.columns.names})
        labels.append(str(header.get("LABEL", UNLABELLED)))
        fields.append(int(header.get("FIELD", -1)))
        names.append(str(header.get("NAME", f.stem)))
    class_names = sorted(set(labels))
    a = {"stamps": np.concatenate(cubes), "offsets": np.concatenate([[0], np.cumsum([len(c) for c in cubes])]),
         "label": np.array([class_names.index(x) for x in labels]), "class_names": np.array(class_names),
         "field": np.array(fields), "name": np.array(names)}
    col = lambda key: np.concatenate([np.asarray(t[key.upper()], dtype=float) for t in tables])  # noqa: E731
    a["mjd"] = col("mjd")
    a["hits_epoch"] = np.concatenate([np.asarray(t.get("HITS_EPOCH", np.arange(len(t["MJD"]))), dtype=float)
                                      for t in tables])
    filters = np.concatenate([np.char.strip(np.asarray(t["FILTER"]).astype(str)) for t in tables])
    unknown = sorted(str(x) for x in set(filters) - set(FITS_FILTERS) - {""})
    if unknown:
        raise ImportError_(f"{path}: unknown FILTER value(s) {unknown}; known: {sorted(FITS_FILTERS)} ('' unknown)")
    a["filter_code"] = np.array([FITS_FILTERS.get(x, np.nan) for x in filters], dtype=float)  # '': not g
    for k in CONDITIONS:
        a[k] = col(k)
    return a


def write_fits_object(path: str | Path, stamps: np.ndarray, epochs: dict, label: str | None, field: int = -1,
                      name: str = "") -> Path:
    """Write one object in the FITS layout (for users bringing their own data, and for tests); `label` None:
    an unlabelled object."""
    from astropy.io import fits
    from astropy.table import Table

    primary = fits.PrimaryHDU(np.asarray(stamps, dtype=np.float32))
    primary.header["FIELD"], primary.header["NAME"] = field, name
    if label is not None:
        primary.header["LABEL"] = label
    table = fits.BinTableHDU(Table({k.upper(): v for k, v in epochs.items()}), name="EPOCHS")
    fits.HDUList([primary, table]).writeto(path, overwrite=True)
    return Path(path)


def _field_latitudes(fields: np.ndarray, fields_file: str | Path | None) -> np.ndarray:
    """Galactic latitude (deg) of each object's field centre; NaN for fields without a known centre."""
    from astropy.table import Table

    from survey_params.fields import latitude_by_field
    from survey_params.hits_logs import hits_fields_table

    if fields_file is None:
        b = latitude_by_field(hits_fields_table(), "the built-in HiTS field centres")
    else:
        try:
            table = Table.read(fields_file)
        except Exception as exc:  # astropy raises many types: an unknown format, a malformed file, ...
            raise ImportError_(f"{fields_file}: cannot be read as a table of field, ra_deg, dec_deg (a CSV, ECSV, "
                               f"FITS or VOTable file; {_first_line(exc)})") from None
        b = latitude_by_field(table, str(fields_file))
    return np.array([b.get(str(f), np.nan) for f in fields], np.float32)


def _host_context(path: str | Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(has_host, host_distance_arcsec) per object from a cross-match CSV (name, has_host, host_distance_arcsec)."""
    from astropy.table import Table

    try:
        table = Table.read(path, format="ascii.csv")
    except Exception as exc:  # astropy raises several types for malformed CSV
        raise ImportError_(f"{path}: cannot be read as CSV ({exc})") from exc
    for col in ("name", "has_host", "host_distance_arcsec"):
        if col not in table.colnames:
            raise ImportError_(f"{path}: lacks column '{col}' (needs name, has_host, host_distance_arcsec)")
    rows = {str(n): i for i, n in enumerate(table["name"])}
    missing = [n for n in names if n not in rows]
    if missing:
        raise ImportError_(f"{path}: no row for object(s) {missing[:5]} ({len(missing)} in all)")
    has, dist = np.zeros(len(names), np.uint8), np.full(len(names), np.nan, np.float32)
    for k, n in enumerate(names):
        i = rows[n]
        h = table["has_host"][i]
        if str(h).strip().lower() not in ("0", "1", "true", "false"):
            raise ImportError_(f"{path}: data row {i + 1}, column 'has_host': {h!r} is not 0/1")
        has[k] = str(h).strip().lower() in ("1", "true")
        d = float(table["host_distance_arcsec"][i]) if has[k] else np.nan
        if has[k] and not (np.isfinite(d) and d >= 0):
            raise ImportError_(f"{path}: data row {i + 1}, column 'host_distance_arcsec': {d!r} is not a distance")
        dist[k] = d
    return has, dist


def check_destination(out: Path, source: Path, overwrite: bool) -> None:
    """An ImportError_, before any work, unless `out` (`--out`) can be written: not a directory, its nearest
    existing ancestor a directory, not the source, and if it exists, an earlier import of the same source
    (rerunning a pipeline redoes it) or `overwrite`: any other file is kept."""
    check_output(out, "--out", error=ImportError_)
    if out.exists():
        if source.exists() and out.resolve() == source.resolve():
            raise ImportError_(f"{out}: is the source itself; give --out another file")
        if not overwrite and _imported_from(out) != str(source.resolve()):
            raise ImportError_(f"{out}: exists and is not an import of {source}; pass --overwrite to replace it")


def _imported_from(path: Path) -> str | None:
    """The `source` attribute of an HDF5 file `rcnn import-real` wrote, else None."""
    try:
        with open_h5(path) as f:
            return f.attrs.get("source")
    except (OSError, ValueError):
        return None


def _no_usable_frames(a: dict, path: Path, objects: np.ndarray, g: np.ndarray, cond: dict) -> ImportError_:
    """The error for objects without a usable frame: what each lacks (no g-band frame, or a condition that
    neither the frame nor the same field and epoch nor the object's other frames give)."""
    k = int(objects[0])
    frames = np.arange(a["offsets"][k], a["offsets"][k + 1])
    gk = frames[g[frames]]
    if gk.size == 0:
        codes = sorted({float(x) for x in a["filter_code"][frames]}, key=lambda x: (np.isnan(x), x))
        why = f"none of its {frames.size} frames is g band (filter_code {G_FILTER_CODE}; it has filter_code {codes})"
    else:
        lack = {c: int((~np.isfinite(cond[c][gk])).sum()) for c in CONDITIONS}
        why = (f"each of its {gk.size} g-band frame(s) lacks a condition (NaN: "
               f"{', '.join(f'{c} in {n}' for c, n in lack.items() if n)}), and no frame of the same field and "
               f"epoch, nor the object's other frames, give it")
    more = f" ({objects.size - 1} more object(s) too)" if objects.size > 1 else ""
    return ImportError_(f"{path}: object {k}{_object_name(a, k)} has no usable frame: {why}{more}")


def _photometry(stamps: np.ndarray, frames: np.ndarray, cond: dict, sky_logged: np.ndarray, camera: tuple,
                pixel_scale_arcsec: float, progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """(flux_adu, flux_err_adu) of `frames` (NaN elsewhere), measured chunk by chunk (each frame on its own:
    the chunking does not change a value), checking for a stop signal after each chunk. Frames where
    `sky_logged` is False get the sky from their border, measured with the star."""
    from tqdm.auto import tqdm

    flux, err = np.full(len(stamps), np.nan), np.full(len(stamps), np.nan)
    with tqdm(total=len(frames), unit="frame", desc=desc, disable=not progress) as bar:
        for lo in range(0, len(frames), PHOTOMETRY_CHUNK):
            f = frames[lo:lo + PHOTOMETRY_CHUNK]
            for part, logged in ((f[sky_logged[f]], True), (f[~sky_logged[f]], False)):
                if len(part):
                    phot, _ = measure_frames(stamps[part], cond["seeing_arcsec"][part],
                                             cond["sky_adu"][part] if logged else None, *camera, pixel_scale_arcsec)
                    flux[part], err[part] = phot.flux_adu, phot.flux_err_adu
            bar.update(len(f))
            check_stop()
    return flux, err


def import_real(path: str | Path, out: str | Path, camera_csv: str | Path | None = None,
                pixel_scale_arcsec: float = 0.27, fields_file: str | Path | None = None,
                context_csv: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert real stamps (an npz in the real_dev layout, or a directory of FITS files in the FITS layout)
    to a dataset (see the module docstring); returns `out`. An existing `out` is refused unless `overwrite`."""
    path, out = Path(path), Path(out)
    if not path.exists():
        raise ImportError_(f"{path}: not found")
    check_destination(out, path, overwrite)
    a = load_fits_dir(path) if path.is_dir() else load_npz(path)
    check_layout(a, path)
    offsets = a["offsets"]
    n_obj = len(a["label"])
    gain, rn, sat = camera_medians(camera_csv)
    # the side tables are read before the photometry, so that a bad one fails at once
    latitude = _field_latitudes(a["field"], fields_file)
    host = None
    if context_csv is not None:
        host = _host_context(context_csv, [str(x) for x in a.get("name", np.arange(n_obj))])
    owner = np.repeat(np.arange(n_obj), np.diff(offsets))
    field = a["field"][owner]
    g = a["filter_code"] == G_FILTER_CODE
    stamps = a["stamps"].astype(np.float64)
    cond, estimated = {}, np.zeros(len(stamps), bool)
    bad = bad_pixels(stamps, sat)
    sky_border = border_sky(stamps, bad)
    cond["sky_adu"] = np.where(np.isfinite(a["sky_adu"]), a["sky_adu"], sky_border)
    estimated |= ~np.isfinite(a["sky_adu"])
    for k in ("zero_point", "seeing_arcsec", "airmass", "exp_time_s"):
        cond[k], filled = _fill(np.where(g, a[k], np.nan), field, a["hits_epoch"], owner)
        estimated |= filled
    lim_formula = limiting_magnitude(cond["seeing_arcsec"], cond["sky_adu"], cond["zero_point"], cond["exp_time_s"],
                                     gain, rn, pixel_scale_arcsec)
    cond["limmag5"] = np.where(np.isfinite(a["limmag5"]), a["limmag5"], lim_formula)
    estimated |= ~np.isfinite(a["limmag5"])
    usable = g & np.all([np.isfinite(cond[k]) for k in CONDITIONS], axis=0)
    empty = np.flatnonzero(np.add.reduceat(usable, offsets[:-1]) == 0)
    if empty.size:
        raise _no_usable_frames(a, path, empty, g, cond)
    flux, err = _photometry(stamps, np.flatnonzero(usable), cond, np.isfinite(a["sky_adu"]), (gain, rn, sat),
                            pixel_scale_arcsec, progress, f"import-real {out.name}")
    # per object: usable g frames in time order, window from the alert for transients (and unlabelled objects);
    # the first detection over the object's quiescent level, measured on all its frames, as in the window
    class_names = [str(c) for c in a["class_names"]]
    rows, zp_ref, detection = [], np.zeros(n_obj, np.float32), np.full(n_obj, -1, np.int16)
    for k in range(n_obj):
        frames = np.arange(offsets[k], offsets[k + 1])
        frames = frames[usable[frames]]
        frames = frames[np.argsort(a["mjd"][frames], kind="stable")]
        zp_ref[k] = cond["zero_point"][frames[0]]  # eq. 4's reference: the object's first exposure, before the window
        det = int(first_detection(flux[frames][None], err[frames][None], np.ones((1, len(frames)), bool))[0])
        start = 0
        if class_names[a["label"][k]] in ALERT_NAMES + (UNLABELLED,) and det >= 0:
            start = max(det - PRE_ALERT_EPOCHS, 0)
        detection[k] = det - start if det >= 0 else -1
        rows.append(frames[start:])
    t = max(len(r) for r in rows)
    s = stamps.shape[-1]
    arrays = {"stamps": np.zeros((n_obj, t, s, s), np.float32), "mjd": np.full((n_obj, t), np.nan),
              "mask": np.zeros((n_obj, t), bool), "label": a["label"].astype(np.int16), "split": np.full(n_obj, 2, np.uint8),
              "conditions/estimated": np.zeros((n_obj, t), bool), "photometry/flux_adu": np.full((n_obj, t), np.nan, np.float32),
              "photometry/flux_err_adu": np.full((n_obj, t), np.nan, np.float32),
              "truth/field": np.array([str(f) for f in a["field"]], dtype=object),
              "truth/object_index": np.arange(n_obj, dtype=np.int64)}
    if "name" in a:
        arrays["truth/name"] = np.array([str(x) for x in a["name"]], dtype=object)
    arrays["context/galactic_latitude_deg"] = latitude
    if host is not None:
        arrays["context/has_host"], arrays["context/host_distance_arcsec"] = host
    for key in CONDITIONS + ("gain", "read_noise", "saturation"):
        arrays[f"conditions/{key}"] = np.full((n_obj, t), np.nan, np.float32)
    for k, frames in enumerate(rows):
        n = len(frames)
        arrays["stamps"][k, :n] = np.where(np.isfinite(stamps[frames]), stamps[frames], -9999.0)
        arrays["mjd"][k, :n] = a["mjd"][frames]
        arrays["mask"][k, :n] = True
        arrays["conditions/estimated"][k, :n] = estimated[frames]
        arrays["photometry/flux_adu"][k, :n] = flux[frames]
        arrays["photometry/flux_err_adu"][k, :n] = err[frames]
        for key in CONDITIONS:
            arrays[f"conditions/{key}"][k, :n] = cond[key][frames]
        for key, v in (("gain", gain), ("read_noise", rn), ("saturation", sat)):
            arrays[f"conditions/{key}"][k, :n] = v
    arrays["conditions/zero_point_ref"] = zp_ref
    scale = zero_point_scaling(arrays["conditions/zero_point"].astype(float), arrays["mask"], zp_ref)
    arrays["photometry/lc_flux"] = (arrays["photometry/flux_adu"] * scale).astype(np.float32)
    arrays["photometry/lc_flux_err"] = (arrays["photometry/flux_err_adu"] * scale).astype(np.float32)
    arrays["photometry/first_detection"] = detection
    attrs = {"survey": "hits", "source": str(path.resolve()), "format_version": 1, "pixel_scale_arcsec": pixel_scale_arcsec,
             "config": "{}", "class_names": str(class_names)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_arrays(out, arrays, attrs, class_names)
    return out
