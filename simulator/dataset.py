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
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
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


def _create(group: h5py.File, name: str, data: np.ndarray, compress: bool = True) -> None:
    data = np.asarray(data)
    if data.dtype == object:  # fixed-width ASCII: no global heap, so identical inputs give identical bytes
        data = data.astype(str).astype(TEXT_DTYPE)
    kwargs = {}
    if data.ndim >= 1 and data.shape[0] > 0:
        chunk0 = min(STAMP_CHUNK_OBJECTS, data.shape[0])
        kwargs = {"chunks": (chunk0,) + data.shape[1:], "fillvalue": np.zeros((), data.dtype),
                  **(_filters(data.dtype) if compress else {})}
    group.create_dataset(name, data=data, track_times=False, **kwargs)


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


def write_arrays(path: str | Path, arrays: dict, attrs: dict, class_names, compress: bool = True) -> None:
    """Write `arrays` (dataset path -> array) and root `attrs` to `path`, atomically (temp name + rename).

    `compress=False` for temporary shard files: the merge compresses once, at the end."""
    with _atomic_file(path, attrs, class_names) as f:
        for key in sorted(arrays):
            _create(f, key, arrays[key], compress)


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
    """Concatenate shard files (in order) into the final dataset `out`, atomically."""
    with h5py.File(shard_paths[0], "r") as f0:
        keys: list[str] = []
        f0.visititems(lambda n, o: keys.append(n) if isinstance(o, h5py.Dataset) else None)
        specs = {k: (f0[k].shape[1:], f0[k].dtype) for k in keys}
    n = 0
    for p in shard_paths:
        with h5py.File(p, "r") as f:
            n += f["label"].shape[0]
    with _atomic_file(out, attrs, class_names) as g:
        chunk = min(STAMP_CHUNK_OBJECTS, n)
        for k in sorted(keys):
            shape, dtype = specs[k]
            # An explicit fill value makes HDF5 initialise edge chunks: no stray memory in the file.
            g.create_dataset(k, shape=(n,) + shape, dtype=dtype, track_times=False, chunks=(chunk,) + shape,
                             fillvalue=np.zeros((), dtype), **_filters(dtype))
        # Each shard is read once; rows are written in whole chunks, in order, so the file's bytes do not
        # depend on the shard size.
        pending = {k: [] for k in keys}
        start = 0
        for p in shard_paths:
            with h5py.File(p, "r") as f:
                for k in keys:
                    pending[k].append(f[k][()])
            rows = sum(len(b) for b in pending[keys[0]])
            full = rows - rows % chunk
            for k in keys:
                block = np.concatenate(pending[k])
                if full:
                    g[k][start:start + full] = block[:full]
                pending[k] = [block[full:]]
            start += full
        if start < n:
            for k in keys:
                g[k][start:n] = pending[k][0]


def class_names(path: str | Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [c.decode() if isinstance(c, bytes) else str(c) for c in f["label"].attrs["class_names"]]


def config_of(path: str | Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])
