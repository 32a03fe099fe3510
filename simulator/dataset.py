"""The HDF5 dataset layout: the one interface between simulation, photometry and training.

Datasets (N objects, T epochs, S x S stamps); names are a contract:
- `stamps` (N, T, S, S) float32 ADU with sky; `mjd` (N, T); `mask` (N, T) bool valid epochs;
- `label` (N,) int16 with attribute `class_names`; `split` (N,) uint8 0 train / 1 validation / 2 test;
- `conditions/{exp_time_s, seeing_arcsec, airmass, sky_adu, zero_point, limmag5, gain, read_noise,
  saturation}` (N, T), NaN at padded epochs;
- `truth/mag` (N, T) true point-source magnitude (inf when absent), `truth/has_host` (N,), and more under
  `truth/` (host parameters, centring offsets before rotation, orientation, field, CCD, object index).
- `context/has_host`, `context/host_distance_arcsec`, `context/galactic_latitude_deg` (N,): what a broker
  knows beside the stamps (catalogue cross-match, pointing), GOTO's contextual inputs.
Root attributes: `survey`, `seed`, `version` (package), `format_version`, `config` (JSON), `class_names`,
`pixel_scale_arcsec`. The `photometry` command adds a `photometry/` group (see `photometry.dataset`).

Stamps are chunked by 64 objects (one chunk holds whole sequences), byte-shuffled and deflated at level 1:
reading a training batch touches few chunks and decompresses fast. Deflate, not LZF: h5py's LZF leaves its
hash table uninitialised, so identical data could compress to different bytes. Explicit fill values make
HDF5 initialise edge chunks. Together they make same inputs give byte-identical files. Files are written
under a temporary name and renamed.

Chunks are compressed where they are made (`pack_chunks`, in the simulation workers: shuffle for floats
+ deflate with the run-length strategy, which HDF5's gzip filter reads) and written with
`write_direct_chunk`; the merge copies whole chunks without decompressing them, and recompresses (with
the same code) only chunks that straddle shards.
"""
from __future__ import annotations

import json
import os
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

FORMAT_VERSION = 1
STAMP_CHUNK_OBJECTS = 64
_STRING = h5py.string_dtype()
TEXT_DTYPE = "S32"  # per-object text (field names) in datasets


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("stampseq")
    except Exception:  # running from a source tree without installation
        return "0+unknown"


def _filters(dtype) -> dict:
    return {"compression": "gzip", "compression_opts": 1, "shuffle": np.dtype(dtype).kind == "f"}


def _layout(dtype, rows: int, row_shape: tuple) -> dict:
    """Options of every chunked dataset we write: `rows` objects per chunk, filters by dtype, and an
    explicit fill value (HDF5 then initialises edge chunks: no stray memory in the file)."""
    return {"chunks": (rows,) + tuple(row_shape), "fillvalue": np.zeros((), dtype), "track_times": False,
            **_filters(dtype)}


def _storable(data) -> np.ndarray:
    """`data` as stored: text as fixed-width ASCII (no global heap, so identical inputs give identical bytes)."""
    data = np.asarray(data)
    return data.astype(str).astype(TEXT_DTYPE) if data.dtype == object else data


@dataclass
class PackedChunks:
    """An array stored as compressed HDF5 chunks of `rows` along axis 0 (the last one zero-padded)."""

    shape: tuple
    dtype: np.dtype
    rows: int
    chunks: list


def _deflate_chunk(block: np.ndarray, rows: int, shuffle: bool) -> bytes:
    """One chunk's bytes for HDF5's (shuffle +) deflate filters; `block` zero-padded to `rows`.

    Deflate's run-length strategy (Z_RLE): a standard deflate stream that any HDF5 reader's gzip filter
    decodes, made twice as fast as level 1's default strategy and slightly smaller on shuffled noisy
    floats (whose gain is in the repeated exponent bytes, not in long-distance matches)."""
    if len(block) < rows:
        block = np.concatenate([block, np.zeros((rows - len(block),) + block.shape[1:], block.dtype)])
    data = np.ascontiguousarray(block)
    raw = data.view(np.uint8).reshape(-1, data.dtype.itemsize).T.tobytes() if shuffle else data.tobytes()
    deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return deflate.compress(raw) + deflate.flush()


def pack_chunks(array: np.ndarray) -> PackedChunks:
    """Compress an array (objects along axis 0) into the chunks `_create` would write (STAMP_CHUNK_OBJECTS
    rows each); text becomes fixed-width ASCII as in `_create`."""
    array = _storable(array)
    rows = min(STAMP_CHUNK_OBJECTS, len(array))
    shuffle = _filters(array.dtype)["shuffle"]
    return PackedChunks(array.shape, array.dtype, rows,
                        [_deflate_chunk(array[i:i + rows], rows, shuffle) for i in range(0, len(array), rows)])


def _create_packed(group: h5py.File, name: str, data: PackedChunks) -> None:
    ds = group.create_dataset(name, shape=data.shape, dtype=data.dtype,
                              **_layout(data.dtype, data.rows, data.shape[1:]))
    zeros = (0,) * (len(data.shape) - 1)
    for k, chunk in enumerate(data.chunks):
        ds.id.write_direct_chunk((k * data.rows,) + zeros, chunk)


def _create(group: h5py.File, name: str, data) -> None:
    if isinstance(data, PackedChunks):
        return _create_packed(group, name, data)
    data = _storable(data)
    chunked = data.ndim >= 1 and data.shape[0] > 0
    kwargs = (_layout(data.dtype, min(STAMP_CHUNK_OBJECTS, data.shape[0]), data.shape[1:]) if chunked
              else {"track_times": False})
    group.create_dataset(name, data=data, **kwargs)


@contextmanager
def _atomic_file(path: str | Path, attrs: dict, class_names):
    """An HDF5 file open for writing under a temporary name; on success it gets the root attributes and
    `label.class_names` and is renamed to `path`; on failure the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            yield f
            f["label"].attrs["class_names"] = np.array(class_names, dtype=object).astype(_STRING)
            for k, v in attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_arrays(path: str | Path, arrays: dict, attrs: dict, class_names) -> None:
    """Write `arrays` (dataset path -> array or `PackedChunks`) and root `attrs` to `path`, atomically
    (temp name + rename)."""
    with _atomic_file(path, attrs, class_names) as f:
        for key in sorted(arrays):
            _create(f, key, arrays[key])


def read_arrays(path: str | Path) -> tuple[dict, dict]:
    """All datasets (path -> array) and root attributes of a file written by `write_arrays`."""
    arrays: dict = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                arrays[name] = data.astype(str).astype(object) if obj.dtype.kind == "S" else data
        f.visititems(visit)
        attrs = dict(f.attrs)
    return arrays, attrs


def merge(shard_paths: list[Path], out: str | Path, attrs: dict, class_names) -> None:
    """Concatenate shard files (in order) into the final dataset `out`, atomically.

    Every dataset is written chunk by chunk, in order: chunks a shard already holds compressed the same
    way are copied as bytes (`read_direct_chunk`), chunks straddling shards are rebuilt from their rows
    with the same compression code, so the file's bytes do not depend on the shard size or the workers."""
    with h5py.File(shard_paths[0], "r") as f0:
        keys: list[str] = []
        f0.visititems(lambda n, o: keys.append(n) if isinstance(o, h5py.Dataset) else None)
        specs = {k: (f0[k].shape[1:], f0[k].dtype) for k in keys}
    files = [h5py.File(p, "r") for p in shard_paths]
    try:
        bounds = np.concatenate([[0], np.cumsum([f["label"].shape[0] for f in files])])
        with _atomic_file(out, attrs, class_names) as g:
            for k in sorted(keys):
                _merge_dataset([f[k] for f in files], bounds, g, k, specs[k])
    finally:
        for f in files:
            f.close()


def _merge_dataset(sources: list, bounds: np.ndarray, g: h5py.File, name: str, spec) -> None:
    """One dataset of the merge: `sources[s]` holds rows bounds[s]..bounds[s+1]."""
    shape, dtype = spec
    n = int(bounds[-1])
    chunk = min(STAMP_CHUNK_OBJECTS, n)
    filters = _filters(dtype)
    out = g.create_dataset(name, shape=(n,) + shape, dtype=dtype, **_layout(dtype, chunk, shape))
    zeros = (0,) * len(shape)
    same_coding = [src.chunks == (chunk,) + shape and src.compression == "gzip"
                   and bool(src.shuffle) == filters["shuffle"] for src in sources]
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        s = int(np.searchsorted(bounds, lo, side="right")) - 1  # the shard holding row lo
        a, b = int(bounds[s]), int(bounds[s + 1])
        if same_coding[s] and (lo - a) % chunk == 0 and hi <= b and (hi - lo == chunk or hi == b):
            _, raw = sources[s].id.read_direct_chunk((lo - a,) + zeros)
        else:  # a chunk straddling shards (or coded otherwise): gather its rows, compress with the same code
            parts, row = [], lo
            while row < hi:
                s = int(np.searchsorted(bounds, row, side="right")) - 1
                top = min(hi, int(bounds[s + 1]))
                parts.append(sources[s][row - int(bounds[s]):top - int(bounds[s])])
                row = top
            raw = _deflate_chunk(np.concatenate(parts), chunk, filters["shuffle"])
        out.id.write_direct_chunk((lo,) + zeros, raw)


def class_names(path: str | Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [c.decode() if isinstance(c, bytes) else str(c) for c in f["label"].attrs["class_names"]]


def config_of(path: str | Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])
