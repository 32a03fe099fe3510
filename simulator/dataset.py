"""The HDF5 dataset layout: the one interface between simulation, photometry and training.

Datasets (N objects, T epochs, S x S stamps); names are a contract:
- `stamps` (N, T, S, S) float32 ADU with sky; `mjd` (N, T); `mask` (N, T) bool valid epochs;
- `label` (N,) int16 with attribute `class_names`; `split` (N,) uint8 0 train / 1 validation / 2 test;
- `conditions/{exp_time_s, seeing_arcsec, airmass, sky_adu, zero_point, limmag5, gain, read_noise,
  saturation}` (N, T), NaN at padded epochs; `conditions/zero_point_ref` (N,): the zero point of the
  field's first exposure, eq. 4's reference (datasets without it: each sequence's first epoch);
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
+ deflate with the run-length strategy, the floats' noisy low mantissa bytes in stored blocks; one zlib
stream, which HDF5's gzip filter reads) and written with
`write_direct_chunk`; the merge copies whole chunks without decompressing them, and recompresses (with
the same code) only chunks that straddle shards.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
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

    Always one standard zlib stream, which any HDF5 reader's gzip filter decodes. Deflate runs with the
    run-length strategy (Z_RLE: twice as fast as level 1's default strategy and slightly smaller on
    shuffled noisy floats, whose gain is in the repeated exponent bytes, not in long-distance matches).
    For shuffled floats the low half of the byte planes (the low mantissa bytes: noise, incompressible)
    goes in stored blocks, except runs of zeros (padded epochs), which are deflated: within 1% of the
    size of deflating them all, in half the time (`_low_planes_blocks`). Chunks under 64 KiB (per-object
    arrays) are deflated whole: the blocks' few bytes of overhead would show there."""
    if len(block) < rows:
        block = np.concatenate([block, np.zeros((rows - len(block),) + block.shape[1:], block.dtype)])
    data = np.ascontiguousarray(block)
    raw = data.view(np.uint8).reshape(-1, data.dtype.itemsize).T.tobytes() if shuffle else data.tobytes()
    if not shuffle or len(raw) < _SPLIT_MIN_BYTES:
        deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
        return deflate.compress(raw) + deflate.flush()
    low = data.dtype.itemsize // 2 * data.size  # bytes of the low planes, first in the shuffled order
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_RLE)  # raw deflate, no header
    high = memoryview(raw)[low:]
    return b"".join([_ZLIB_HEADER, *_low_planes_blocks(raw, low), deflate.compress(high), deflate.flush(),
                     zlib.adler32(raw).to_bytes(4, "big")])


_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" (what zlib writes at level 1)
_SPLIT_MIN_BYTES = 65536  # smaller chunks are deflated whole
_ZERO_RUN_GRANULE = 16  # bytes: zero runs are found in steps of this


def _low_planes_blocks(raw: bytes, low: int) -> list:
    """Deflate blocks (byte-aligned, none final) for raw[:low]: stored blocks, and deflated blocks for
    runs of zeros."""
    g = _ZERO_RUN_GRANULE
    if low == 0:
        return []
    a = np.frombuffer(raw, np.uint8, count=low)
    whole = low // g
    nonzero = np.empty(-(-low // g), bool)
    nonzero[:whole] = a[:whole * g].reshape(whole, g).any(axis=1)
    if whole < len(nonzero):
        nonzero[whole] = a[whole * g:].any()
    edges = (np.flatnonzero(np.diff(nonzero)) + 1).tolist()
    view, blocks = memoryview(raw), []
    for start, stop in zip([0] + edges, edges + [len(nonzero)]):
        lo, hi = start * g, min(stop * g, low)
        if not nonzero[start]:
            blocks.append(_deflated_zeros(hi - lo))
            continue
        for s in range(lo, hi, 65535):  # a stored block holds at most 65535 bytes
            n = min(65535, hi - s)
            blocks += [b"\x00" + n.to_bytes(2, "little") + (n ^ 0xFFFF).to_bytes(2, "little"), view[s:s + n]]
    return blocks


@lru_cache(maxsize=None)
def _deflated_zeros(n: int) -> bytes:
    """Raw deflate blocks for n zero bytes, ending byte-aligned and not final (sync flush)."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return deflate.compress(bytes(n)) + deflate.flush(zlib.Z_SYNC_FLUSH)


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


def check_output(path: str | Path, option: str, directory: bool = False, error: type = ValueError) -> None:
    """`error` naming `path` (the CLI's `option`) unless it can be written as a file (or as a `directory`):
    checked before any work, so that a run does not end in "[Errno 21] Is a directory" or "[Errno 17] File
    exists"."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise error(f"{path}: {'exists and is not' if directory else 'is'} a directory; {option} names a "
                    + ("directory" if directory else "file"))
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise error(f"{parent}: is not a directory, so {option} {path} cannot be written")
    where = path if directory and path.is_dir() else parent  # where the files (or their folders) will be made
    try:  # a file made and removed there: permissions, a read-only file system (root's os.access says yes)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise error(f"{where}: cannot write there ({exc.strerror}), so {option} {path} cannot be written") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` written under a temporary name beside `path`, then renamed to it: a kill leaves the old file
    or the new one, never half of one (reports, manifests)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove `path.tmp<PID>` files of writers no longer running (a process killed while writing `path`);
    those of a live process are left alone."""
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(glob.escape(path.name) + ".tmp*"):
        pid = stale.name[len(path.name) + 4:]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass  # alive (another user's), or not a PID


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """A matplotlib figure written as PNG under a temporary name, then renamed to `path`: a kill mid-write
    leaves the previous figure or none, never a truncated one. Closes the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path


@contextmanager
def _atomic_file(path: str | Path, attrs: dict, class_names, tmp: Path | None = None):
    """An HDF5 file open for writing under a temporary name (`tmp`, default beside `path`); on success it
    gets the root attributes and `label.class_names` and is renamed to `path`; on failure the temporary
    file is removed."""
    path = Path(path)
    if tmp is None:
        _remove_stale_temporaries(path)
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


class Merger:
    """Builds the final dataset `out` (temp name, renamed when complete) from shard files while a run
    still makes them: `add(i)` says shard i is on disk, and every shard whose predecessors are all in
    is appended at once, in order, with one shard file open at a time (a paper-scale run has ~840
    shards; open-file limits are often 256-1024). A context manager: leaving it with an error removes
    the temporary file (`tmp`: default beside `out`).

    Every dataset is written chunk by chunk, in row order: chunks a shard already holds compressed the
    same way are copied as bytes (`read_direct_chunk`); chunks straddling shards are rebuilt from their
    rows with the same compression code, so the chunks do not depend on the shard size or the workers,
    and the file's bytes not on the workers."""

    def __init__(self, shard_paths: list[Path], out: str | Path, attrs: dict, class_names, n_rows: int,
                 tmp: Path | None = None):
        self.paths, self.n_rows = list(shard_paths), n_rows
        self._file_cm = _atomic_file(out, attrs, class_names, tmp)
        self._ready: set[int] = set()
        self._next, self._row, self._writers = 0, 0, None

    def __enter__(self) -> "Merger":
        self._file = self._file_cm.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if exc[0] is None and self._next < len(self.paths):
            exc = (RuntimeError, RuntimeError(f"merge left after {self._next} of {len(self.paths)} shards"), None)
            self._file_cm.__exit__(*exc)
            raise exc[1]
        return self._file_cm.__exit__(*exc)

    def add(self, index: int) -> None:
        """Shard `index` is complete on disk: append it and any later ones it was holding up."""
        self._ready.add(index)
        while self._next in self._ready:
            self._append(self.paths[self._next])
            self._ready.discard(self._next)
            self._next += 1

    def _append(self, path: Path) -> None:
        with h5py.File(path, "r") as f:
            if self._writers is None:  # datasets as in the first shard, sorted by name
                specs = {}
                f.visititems(lambda name, obj: specs.__setitem__(name, (obj.shape[1:], obj.dtype))
                             if isinstance(obj, h5py.Dataset) else None)
                self._writers = [_ChunkWriter(self._file, k, self.n_rows, *specs[k]) for k in sorted(specs)]
            a, b = self._row, self._row + f["label"].shape[0]
            for w in self._writers:
                w.take(f[w.name], a, b)
            self._row = b


class _ChunkWriter:
    """One dataset of a merge, filled shard by shard in row order: the next chunk starts at row `lo`;
    `held` keeps the rows of previous shards that it already has."""

    def __init__(self, g: h5py.File, name: str, n: int, shape: tuple, dtype):
        self.name, self.n, self.shape = name, n, shape
        self.chunk = min(STAMP_CHUNK_OBJECTS, n)
        self.shuffle = _filters(dtype)["shuffle"]
        self.out = g.create_dataset(name, shape=(n,) + shape, dtype=dtype, **_layout(dtype, self.chunk, shape))
        self.zeros = (0,) * len(shape)
        self.lo, self.held = 0, []

    def take(self, src: h5py.Dataset, a: int, b: int) -> None:
        """Write the chunks that end within `src`, which holds rows a..b-1; hold the rest."""
        same_coding = (src.chunks == (self.chunk,) + self.shape and src.compression == "gzip"
                       and bool(src.shuffle) == self.shuffle)
        row = a  # first row of src not yet used
        while row < b:
            lo, hi = self.lo, min(self.lo + self.chunk, self.n)
            if hi > b:  # the chunk continues in the next shard
                self.held.append(src[row - a:])
                return
            if not self.held and same_coding and (lo - a) % self.chunk == 0:
                _, raw = src.id.read_direct_chunk((lo - a,) + self.zeros)
            else:  # straddles shards (or coded otherwise): gather its rows, compress with the same code
                raw = _deflate_chunk(np.concatenate(self.held + [src[row - a:hi - a]]), self.chunk, self.shuffle)
                self.held = []
            self.out.id.write_direct_chunk((lo,) + self.zeros, raw)
            self.lo = row = hi


def open_h5(path: str | Path) -> h5py.File:
    """A dataset file opened for reading, or an OSError that names it (h5py's own says only "file signature
    not found"): missing, a directory, empty, or not HDF5."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a dataset")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset not found")
    if path.stat().st_size == 0:
        raise OSError(f"{path}: is empty, not an HDF5 dataset")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise OSError(f"{path}: cannot be read as an HDF5 dataset ({exc})") from None


def zero_point_ref(f: h5py.File, path: str | Path, error: type[ValueError] = ValueError) -> np.ndarray | None:
    """`conditions/zero_point_ref` (N,) as float64, eq. 4's reference, or None for a dataset written before it
    (its users then take each sequence's first epoch); an `error` naming the file if it is not N finite
    numbers."""
    if "conditions/zero_point_ref" not in f:
        return None
    ref, n = f["conditions/zero_point_ref"], f["mask"].shape[0]
    if ref.shape != (n,) or ref.dtype.kind not in "iuf":
        raise error(f"{path}: 'conditions/zero_point_ref' has shape {ref.shape} ({ref.dtype}); expected ({n},) numbers")
    values = ref[()].astype(np.float64)
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise error(f"{path}: 'conditions/zero_point_ref'[{i}] is {values[i]}; expected a finite zero point")
    return values


#: The one class of objects imported without labels (`rcnn import-real`): they can be classified, not evaluated.
UNLABELLED = "unlabelled"


def class_names(path: str | Path) -> list[str]:
    with open_h5(path) as f:
        names = f["label"].attrs.get("class_names") if "label" in f else None
        if names is None:
            raise ValueError(f"{path}: no 'label' dataset with a 'class_names' attribute; is it a dataset from "
                             f"`simulate` or `rcnn import-real`?")
        return [c.decode() if isinstance(c, bytes) else str(c) for c in names]


def config_of(path: str | Path) -> dict:
    with open_h5(path) as f:
        return json.loads(f.attrs["config"])
