"""Sharded, resumable dataset production on one process, local processes, or a Dask cluster.

Objects are cut into shards of `shard_size`. Each finished shard is written to `OUT.parts/` under a
temporary name and renamed, so a killed run loses at most the shards in flight; rerunning with the same
options skips the shards already there. Meanwhile `OUT` is built under a temporary name from the shards
in order, each appended as soon as all earlier ones are in (`dataset.Merger`); when the last is in it is
renamed to `OUT` and the parts are removed. Local worker processes write their shard files themselves and
send back only the shard's range: CPython's process pool hangs for good if a worker dies (killed for
memory) while its result is on the way, which a few bytes, written at once, cannot be. Dask workers
return arrays and this process writes them, so a cluster needs no shared filesystem (but a `conditions`
directory must be readable on the workers).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from tqdm.auto import tqdm

from survey_params.sampling import CONDITIONS_ENV

from .dataset import (FORMAT_VERSION, Merger, check_output, open_h5, pack_chunks, package_version, write_arrays,
                      write_text_atomic)
from .lock import exclusive, forget_locks
from .settings import SimConfig
from .shard import n_epochs, pixel_scale_arcsec, simulate_shard
from .stopping import check as check_stop
from .stopping import worker_signals
from .templates import TEMPLATES_ENV


class SimulationError(RuntimeError):
    """A run that cannot proceed (e.g. leftovers of a run with other options)."""


def shard_ranges(cfg: SimConfig) -> list[tuple[int, int]]:
    n = cfg.n_per_class * len(cfg.classes)
    return [(s, min(s + cfg.shard_size, n)) for s in range(0, n, cfg.shard_size)]


def _root_attrs(cfg: SimConfig) -> dict:
    return {"survey": cfg.survey, "seed": cfg.seed, "version": package_version(), "format_version": FORMAT_VERSION,
            "config": cfg.content_json(), "class_names": json.dumps(list(cfg.classes)),
            "pixel_scale_arcsec": pixel_scale_arcsec(cfg)}


def simulate_packed(cfg_json: str, start: int, stop: int) -> dict:
    """`simulate_shard` with every array compressed into HDF5 chunks where it is made (in the worker):
    writing the shard and merging only copy bytes."""
    return {k: pack_chunks(v) for k, v in simulate_shard(cfg_json, start, stop).items()}


def _write_shard(path: Path, arrays: dict, cfg_json: str, classes, start: int, stop: int) -> tuple[int, int]:
    write_arrays(path, arrays, {"start": start, "stop": stop, "config": cfg_json}, classes)
    return start, stop


def simulate_to_file(cfg_json: str, classes, start: int, stop: int, path: str) -> tuple[int, int]:
    """Objects `start..stop` into the shard file `path` (temp name + rename); returns the range."""
    return _write_shard(Path(path), simulate_packed(cfg_json, start, stop), cfg_json, classes, start, stop)


def _worker_context():
    """Forked workers where the platform allows it: they inherit this process's imports and its `_setup`
    cache (survey model, templates, Fourier tables), which `simulate` fills before any worker starts, so a
    worker computes from its first instant (spawned ones first spend ~2 s importing and tabulating). The
    pool is created before any other thread of ours (the progress bar's monitor) exists; a process that
    has imported JAX (multithreaded, and it warns on fork) spawns instead."""
    forkable = "fork" in get_all_start_methods() and sys.platform == "linux" and "jax" not in sys.modules
    return get_context("fork" if forkable else "spawn")


def _worker_start() -> None:
    """A pool worker's set-up: the parent's signal handlers off and an exit when it dies (`worker_signals`),
    its copy of the output's lock closed (`forget_locks`), and gc.freeze: a forked worker's inherited heap
    (survey, templates, tables, imports: ~150k objects) leaves the cyclic collector's scans (each full scan
    ~60 ms; ~2% of a worker's time)."""
    worker_signals()
    forget_locks()
    gc.freeze()


def _shard_result(future) -> tuple[int, int]:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise SimulationError("a worker process died (out of memory? use fewer --workers); any finished shards "
                              "are kept: rerun the same command to go on") from exc


def _shards_written(cfg: SimConfig, pending: list[tuple[int, int]], path_of: dict, stack: ExitStack):
    """An iterator of (start, stop) for every pending shard, in completion order, each yielded once its file
    `path_of[(start, stop)]` is on disk. Workers (local processes or a Dask cluster) are started and given
    every shard now; `stack` closes them."""
    cfg_json = cfg.content_json()
    if cfg.scheduler:
        from distributed import Client
        from distributed import as_completed as dask_completed

        try:
            client = stack.enter_context(Client(cfg.scheduler))
        except (ValueError, OSError) as exc:  # Dask's messages name the address, not the option
            raise SimulationError(f"--scheduler {cfg.scheduler}: {exc}") from None
        futures = {client.submit(simulate_packed, cfg_json, a, b, pure=False): (a, b) for a, b in pending}
        return (_write_shard(path_of[futures[fut]], fut.result(), cfg_json, cfg.classes, *futures[fut])
                for fut in dask_completed(futures))
    if cfg.workers > 1 and len(pending) > 1:
        pool = ProcessPoolExecutor(max_workers=cfg.workers, mp_context=_worker_context(), initializer=_worker_start)
        # on an error or a stop, shards not started are dropped: those in flight are finished and kept
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        futures = [pool.submit(simulate_to_file, cfg_json, cfg.classes, a, b, str(path_of[(a, b)])) for a, b in pending]
        return (_shard_result(fut) for fut in as_completed(futures))
    return (simulate_to_file(cfg_json, cfg.classes, a, b, str(path_of[(a, b)])) for a, b in pending)


def _complete(out: Path, content: str, overwrite: bool) -> bool:
    """Whether `out` already holds the dataset of `content` (said so); a SimulationError if it holds another
    one and `overwrite` is off."""
    if not out.exists() or overwrite:
        return False
    try:
        with open_h5(out) as f:
            same = f.attrs.get("config") == content
    except OSError as exc:
        raise SimulationError(f"{exc}; pass --overwrite to replace it") from None
    if not same:
        raise SimulationError(f"{out}: exists and was made with other options; pass --overwrite to replace it")
    print(f"{out}: already complete with these options; nothing to do")
    return True


def simulate(cfg: SimConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Simulate the dataset described by `cfg` into the HDF5 file `out`; resumes an interrupted run."""
    out = Path(out)
    parts = Path(str(out) + ".parts")
    check_output(out, "--out", error=SimulationError)
    if parts.exists() and not parts.is_dir():
        raise SimulationError(f"{parts}: is not a directory (simulate keeps the shards of {out} there)")
    # record the data directories the environment selects, so the stored config says what was used
    env = {"conditions": os.environ.get(CONDITIONS_ENV), "templates": os.environ.get(TEMPLATES_ENV)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in env.items() if v and getattr(cfg, k) is None})
    content = cfg.content_json()
    if _complete(out, content, overwrite):
        if parts.is_dir():  # a run killed between renaming OUT and removing its shards
            with exclusive(parts / "lock", str(out)):
                shutil.rmtree(parts)
        return out
    n_epochs(cfg)  # load the survey and templates once here: bad inputs fail before anything is written
    parts.mkdir(parents=True, exist_ok=True)
    _warn_disk_space(cfg, out, parts)
    with exclusive(parts / "lock", str(out)):  # a second `simulate` to the same OUT stops here
        try:
            done = _complete(out, content, overwrite)  # another run may have finished OUT since the check above
        except SimulationError:
            if not any(parts.glob("shard-*.h5")):
                shutil.rmtree(parts, ignore_errors=True)
            raise
        if done:
            shutil.rmtree(parts)
            return out
        manifest = parts / "config.json"
        saved = manifest.read_text() if manifest.exists() else None
        if saved not in (None, content) and any(parts.glob("shard-*.h5")):
            raise SimulationError(f"{parts}: holds shards of a run with other options; delete it or rerun with "
                                  f"those options (see {manifest})")
        if saved != content:  # new, or a run that finished no shard
            write_text_atomic(manifest, content)
        try:
            _shards_into(cfg, out, parts)
        except BaseException:  # a run that finished no shard (no cluster, a bad worker, a kill) leaves nothing
            if not any(parts.glob("shard-*.h5")):
                shutil.rmtree(parts, ignore_errors=True)
            raise
        shutil.rmtree(parts)
    return out


# Compressed size of a dataset: the float32 stamps deflate to ~53% (HiTS sets of 2,100 and 7,000 objects at 20
# epochs: 17.6-17.8 kB of stamps per object), the other arrays take ~0.8 kB per object.
STAMP_BYTES_RATIO = 0.55
OTHER_BYTES_PER_OBJECT = 1000


def estimated_bytes(cfg: SimConfig) -> int:
    """About the size of the dataset `cfg` describes (a slight overestimate)."""
    n = cfg.n_per_class * len(cfg.classes)
    return int(n * (n_epochs(cfg) * cfg.stamp_size ** 2 * 4 * STAMP_BYTES_RATIO + OTHER_BYTES_PER_OBJECT))


def _warn_disk_space(cfg: SimConfig, out: Path, parts: Path) -> None:
    """Say at the start, not hours later, when the disk looks too small: while it runs, the shards in `parts`
    and the output built from them take about twice the dataset's size. Only a warning (the estimate is one);
    a run stopped by a full disk keeps its finished shards and resumes once there is room."""
    size = estimated_bytes(cfg)
    need = 2 * size - sum(p.stat().st_size for p in parts.glob("shard-*.h5"))
    free = shutil.disk_usage(parts).free
    if need > free:
        print(f"warning: simulating {out} needs about {need / 1e9:.1f} GB more on its disk (its shards in {parts} "
              f"and the merged file, ~{size / 1e9:.1f} GB each), which has {free / 1e9:.1f} GB "
              "free; a run that fills it keeps its finished shards and resumes when rerun", file=sys.stderr)


def _shards_into(cfg: SimConfig, out: Path, parts: Path) -> None:
    """Simulate the shards `parts` lacks (`parts/shard-*.h5`) and build `out` from all of them."""
    shards = shard_ranges(cfg)
    path_of = {r: parts / f"shard-{i:06d}.h5" for i, r in enumerate(shards)}
    pending = [r for r in shards if not path_of[r].exists()]
    done = sum(b - a for (a, b) in shards if path_of[(a, b)].exists())
    total = shards[-1][1]
    index = {r: i for i, r in enumerate(shards)}
    with ExitStack() as stack:
        written = _shards_written(cfg, pending, path_of, stack)  # workers start here, before the output is open
        bar = stack.enter_context(tqdm(total=total, initial=done, unit="obj", desc=f"simulate {out.name}",
                                       disable=not cfg.progress))
        # the output is built while shards arrive, each appended once all earlier ones are in
        # (inside the parts directory: a killed run's partial output goes with it, or is rewritten)
        merger = stack.enter_context(Merger([path_of[r] for r in shards], out, _root_attrs(cfg), cfg.classes, total,
                                            tmp=parts / "merging.h5"))
        for r in set(shards) - set(pending):  # shards a killed run left (the merger orders them)
            merger.add(index[r])
        for a, b in written:
            merger.add(index[(a, b)])
            bar.update(b - a)
            check_stop()  # a stop signal: this shard is kept, the pool drops those not started
