"""Batches for training and evaluation, streamed from a dataset's HDF5 file (never loaded whole).

Inputs follow Carrasco-Davis et al. (2019), sec. 3.1: each image is sky-subtracted and scaled by eq. 4,
(image - sky) x 10^((zp_ref - zp) / 2.5) with zp_ref the zero point of the field's first exposure
(`conditions/zero_point_ref`; datasets without it: the sequence's first epoch's), then divided by
`flux_scale_adu` and asinh-compressed (`input_transform`); the first `max_steps` images (N_d) are kept. The model stacks n_w consecutive images per
step itself (step k sees images k..k+n_w-1), so a batch carries each image once. The light-curve model
and the dm-dt CNN get the photometry's eq. 4-scaled fluxes and errors (`photometry/lc_flux`, `lc_flux_err`) instead.

Sampling reads whole HDF5 chunks (64 objects): a training batch is a random subset of the objects of a
few random chunks of its split, drawn from `default_rng([seed, step])`, so any step's batch is known
without replaying earlier ones (exact resume). `ReadAhead` reads `prefetch` batches ahead, in a thread or in
`loader_workers` processes.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import h5py
import numpy as np

from photometry.optimal import BAD_HIGH, BAD_LOW
from simulator.dataset import UNLABELLED, open_h5, zero_point_ref
from simulator.settings import ALERT_CLASSES

from .config import CONTEXT_INPUTS, TrainConfig

# the transients, whose sequences start at their alert: the simulator's classes and the real HiTS labels
ALERT_NAMES = ALERT_CLASSES + ("SN", "Ast")

REQUIRED = ("stamps", "mask", "mjd", "label", "split", "conditions/sky_adu", "conditions/zero_point")
LC_REQUIRED = ("photometry/lc_flux", "photometry/lc_flux_err")
SPLITS = {"train": 0, "validation": 1, "test": 2}


class DatasetError(ValueError):
    """A dataset the models cannot use; the message names the file, the array and the value."""


class SequenceData:
    """One dataset file: validated at opening, then read in batches (dict of numpy arrays)."""

    def __init__(self, path: str | Path, cfg: TrainConfig, stamp_size: int | None = None):
        """`stamp_size` (px): the size a trained RCNN takes (None: any square stamps, `self.stamp_size`)."""
        self.path, self.cfg = Path(path), cfg
        if not self.path.exists():
            raise DatasetError(f"{self.path}: dataset not found")
        with open_h5(self.path) as f:
            needed = REQUIRED + (LC_REQUIRED if cfg.model != "rcnn" else ())
            missing = [k for k in needed if k not in f]
            if missing:
                hint = " (run `photometry` on it first)" if any(k.startswith("photometry/") for k in missing) else ""
                if {"label", "split"} & set(missing):  # labels are optional in import-real's sources, not here
                    hint += ("; every command reads each object's class ('label', the names in its 'class_names' "
                             "attribute) and split ('split': 0 train, 1 validation, 2 test), classify too: `rcnn "
                             f"import-real` gives stamps without labels the class '{UNLABELLED}' and split 2 (test)")
                raise DatasetError(f"{self.path}: missing dataset(s) {', '.join(missing)}{hint}")
            for k in needed:
                if not isinstance(f[k], h5py.Dataset) or f[k].dtype.kind not in ("iu" if k in ("label", "split")
                                                                                  else "biuf"):
                    what = (f"holds {f[k].dtype}" if isinstance(f[k], h5py.Dataset) else "is a group")
                    raise DatasetError(f"{self.path}: '{k}' {what}; expected "
                                       + ("integers" if k in ("label", "split") else "numbers"))
            shape = f["stamps"].shape
            if stamp_size is None and len(shape) == 4 and shape[2] == shape[3] and shape[2] > 0:
                stamp_size = shape[2]
            if len(shape) != 4 or shape[2:] != (stamp_size, stamp_size):
                want = "S, S" if stamp_size is None else f"{stamp_size}, {stamp_size}"
                why = "" if stamp_size is None else "; the run was trained on stamps of that size"
                raise DatasetError(f"{self.path}: 'stamps' has shape {shape}; expected (N, T, {want}){why}")
            self.stamp_size = stamp_size
            n, t = shape[:2]
            if n == 0:
                raise DatasetError(f"{self.path}: holds no objects ('stamps' has shape {shape})")
            for k in needed[1:]:
                want = (n,) if k in ("label", "split") else (n, t)
                if f[k].shape != want:
                    raise DatasetError(f"{self.path}: '{k}' has shape {f[k].shape}; expected {want}")
            mask = f["mask"][()]
            if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
                i, j = np.argwhere(~np.isin(mask, (0, 1)))[0]
                raise DatasetError(f"{self.path}: 'mask'[{i}, {j}] = {mask[i, j]}; expected true/false (1/0)")
            mask = mask.astype(bool)
            late = mask[:, 1:] & ~mask[:, :-1]
            if late.any():  # the models, the time origin and eq. 4's reference epoch all assume it
                i, j = np.argwhere(late)[0]
                raise DatasetError(f"{self.path}: 'mask' of object {i} has valid epoch {j + 1} after an invalid "
                                   "one; an object's valid epochs must come first, in time order")
            if cfg.model != "rcnn":
                err = f["photometry/lc_flux_err"][()]
                if (mask & (err < 0)).any():
                    i, j = np.argwhere(mask & (err < 0))[0]
                    raise DatasetError(f"{self.path}: 'photometry/lc_flux_err'[{i}, {j}] = {err[i, j]} at a valid "
                                       "epoch; an uncertainty is >= 0")
            names = f["label"].attrs.get("class_names")
            if names is None:
                raise DatasetError(f"{self.path}: 'label' has no 'class_names' attribute")
            self.class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
            self.label = f["label"][()].astype(np.int32)
            bad = (self.label < 0) | (self.label >= len(self.class_names))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DatasetError(f"{self.path}: 'label'[{i}] = {self.label[i]} is not a class index "
                                   f"(0..{len(self.class_names) - 1})")
            self.split = f["split"][()]
            self.context = None
            if cfg.context:  # GOTO's contextual inputs, scaled to order unity (CONTEXT_INPUTS)
                self.context = read_context(f, cfg.context, self.path)
            self.alert = None
            if cfg.pre_detection_label:  # RAPID: the epoch of the alert, from the simulator's truth or photometry
                key = next((k for k in ("truth/alert_epoch", "photometry/first_detection") if k in f), None)
                if key is None:
                    raise DatasetError(f"{self.path}: pre_detection_label needs 'truth/alert_epoch' or "
                                       "'photometry/first_detection' (run `photometry` first)")
                self.alert = f[key][()].astype(np.int64)
                if key == "photometry/first_detection":  # only transients have an alert, as in the truth
                    transient = np.isin(self.class_names, ALERT_NAMES)
                    self.alert = np.where(transient[self.label], self.alert, -1)
            self.zp_ref = zero_point_ref(f, self.path, DatasetError)  # eq. 4's reference (None: first epochs)
            self.chunk = f["stamps"].chunks[0] if f["stamps"].chunks else 64
            self.n_objects, self.n_epochs = n, t
            self.n_images = min(t, cfg.max_steps)
            if self.n_images < cfg.n_w:
                raise DatasetError(f"{self.path}: sequences have {self.n_images} images; n_w = {cfg.n_w} needs more")
            self.n_steps = self.n_images - cfg.n_w + 1
            self.has_step = mask[:, cfg.n_w - 1]  # a step to classify: n_w valid epochs

    def indices(self, split: str) -> np.ndarray:
        """The objects of `split` that have a step to classify (at least n_w valid epochs)."""
        return np.flatnonzero((self.split == SPLITS[split]) & self.has_step)

    def require(self, split: str, why: str = "") -> np.ndarray:
        """`indices(split)`, or a DatasetError naming the file and every split's count if it is empty (`why`:
        what needs the split, appended to the message)."""
        idx = self.indices(split)
        if not len(idx):
            n = int(np.sum(self.split == SPLITS[split]))
            counts = ", ".join(f"{name} {int(np.sum(self.split == code))}" for name, code in SPLITS.items())
            problem = (f"none of the {n} objects of its {split} split has a step (n_w = {self.cfg.n_w} valid epochs; "
                       "see 'mask')" if n else f"its {split} split is empty (objects per split: {counts})")
            raise DatasetError(f"{self.path}: {problem}" + (f"; {why}" if why else ""))
        return idx

    def read(self, idx: np.ndarray, flux_factor: np.ndarray | None = None) -> dict:
        """Model inputs for objects `idx` (any order), validated: images or light curves, dt, masks, labels;
        `flux_factor` (len(idx),) rescales each sequence's fluxes (brightness augmentation)."""
        idx = np.asarray(idx)
        keys = ["mask", "mjd", "conditions/sky_adu", "conditions/zero_point"]
        keys += ["stamps"] if self.cfg.model == "rcnn" else list(LC_REQUIRED)
        raw = self._raw(idx, keys)
        try:
            out = prepare_inputs(self.cfg, raw["mask"], raw["mjd"], raw["conditions/sky_adu"],
                                 raw["conditions/zero_point"], raw.get("stamps"), raw.get("photometry/lc_flux"),
                                 raw.get("photometry/lc_flux_err"), flux_factor,
                                 None if self.zp_ref is None else self.zp_ref[idx])
        except NonFinite as exc:
            also = "" if exc.name == "mjd" else " (or its sky / zero point is not)"
            raise DatasetError(f"{self.path}: '{exc.name}' of object {int(idx[exc.row])} is not finite at epoch "
                               f"{exc.epoch}{also}") from None
        out["label"] = self.label[idx]
        if self.context is not None:
            out["context"] = self.context[idx]
        if self.alert is not None:
            out["step_label"] = step_labels(out["label"], self.alert[idx], self.n_images, self.cfg.n_w,
                                            len(self.class_names))
        return out

    def read_mask(self, idx: np.ndarray) -> np.ndarray:
        """The image mask (len(idx), n_images) of objects `idx`, as `read` gives it, without the images."""
        return self._raw(np.asarray(idx), ["mask"])["mask"].astype(bool)

    def _raw(self, idx: np.ndarray, keys: list[str]) -> dict:
        """Datasets `keys` at objects `idx` (any order, repeats allowed), first `n_images` epochs: whole chunks
        read, then the rows wanted (one decompression per chunk)."""
        order = np.argsort(idx)
        sorted_idx = idx[order]
        raw = {k: [] for k in keys}
        with open_h5(self.path) as f:
            for c in np.unique(sorted_idx // self.chunk):
                lo = c * self.chunk
                rows = sorted_idx[(sorted_idx >= lo) & (sorted_idx < lo + self.chunk)] - lo
                for k in keys:
                    raw[k].append(f[k][lo:lo + self.chunk, :self.n_images][rows])
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return {k: np.concatenate(v)[back] for k, v in raw.items()}

    def sample(self, rng: np.random.Generator, split: str, batch_size: int) -> np.ndarray:
        """Object indices of a random batch: a random subset of the objects of a few random chunks."""
        pool = self.require(split)
        chunks = np.unique(pool // self.chunk)
        chosen = []
        for c in rng.permutation(chunks):
            chosen.append(pool[pool // self.chunk == c])
            if sum(len(x) for x in chosen) >= 2 * batch_size:
                break
        objects = np.concatenate(chosen)
        return rng.choice(objects, size=batch_size, replace=len(objects) < batch_size)

    def batches(self, split: str, batch_size: int, limit: int | None = None, workers: int = 0):
        """Consecutive batches covering a split in index order (evaluation), at most `limit`, read ahead
        (`ReadAhead`: a thread, or `workers` processes)."""
        yield from (batch for _, batch in read_ahead(self, self.indices(split), batch_size, limit, workers))


def read_context(f: h5py.File, names: list[str], path) -> np.ndarray:
    """(N, len(names)) float32 contextual inputs from the `context/*` datasets of an open dataset."""
    raw = {}
    for name in names:
        key = CONTEXT_INPUTS[name][0]
        if key not in f:
            raise DatasetError(f"{path}: context input {name!r} needs dataset '{key}' (simulated datasets have it; "
                               "for real data give `rcnn import-real --context CSV`)")
        raw[name] = f[key][()]
    return context_array(raw, names, str(path))


def context_array(raw: dict, names: list[str], where: str) -> np.ndarray:
    """Scale raw contextual values (name -> (N,) in CONTEXT_INPUTS units) into the model's (N, k) input.

    A missing host distance (no host) becomes 0; an unknown galactic latitude is an error, since the model
    would read it as the Galactic plane."""
    columns = []
    for name in names:
        if name not in raw:
            raise DatasetError(f"{where}: context input {name!r} missing (the model was trained with {names})")
        key, scale = CONTEXT_INPUTS[name]
        values = np.asarray(raw[name], np.float64)
        if name == "galactic_latitude":
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DatasetError(f"{where}: '{key}'[{i}] is {values[i]}: the field's position is unknown "
                                   f"({int(bad.sum())} objects); give the survey field centres (fields.ecsv)")
            values = np.abs(values)
        columns.append(np.nan_to_num(values, nan=0.0) * scale)
    return np.stack(columns, 1).astype(np.float32)


class NonFinite(ValueError):
    def __init__(self, name: str, row: int, epoch: int):
        super().__init__(f"{name}: not finite at row {row}, epoch {epoch}")
        self.name, self.row, self.epoch = name, row, epoch


def _transform(cfg: TrainConfig, x: np.ndarray) -> np.ndarray:
    x = x / cfg.flux_scale_adu
    return np.arcsinh(x) if cfg.input_transform == "asinh" else x


def _check_finite(values: np.ndarray, mask: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(values.reshape(values.shape[0], values.shape[1], -1)).all(axis=-1) & mask
    if bad.any():
        row, epoch = (int(v[0]) for v in np.nonzero(bad))
        raise NonFinite(name, row, epoch)


def prepare_inputs(cfg: TrainConfig, mask, mjd, sky_adu, zero_point, stamps=None, lc_flux=None, lc_flux_err=None,
                   flux_factor=None, zero_point_ref=None) -> dict:
    """Model inputs from raw arrays (N, T[, S, S]) of the first `max_steps` epochs: eq. 4 scaling,
    `_transform`, time differences from the first image, zeros at padded epochs. `zero_point_ref` (N,):
    eq. 4's zp_ref, the field's first exposure's zero point (None: each sequence's first epoch's).
    `flux_factor` (N,) multiplies each sequence's sky-subtracted fluxes (brightness augmentation)."""
    mask = np.asarray(mask, dtype=bool)
    zp = np.asarray(zero_point, dtype=np.float64)
    ref = zp[:, :1] if zero_point_ref is None else np.asarray(zero_point_ref, np.float64)[:, None]
    factor = 1.0 if flux_factor is None else np.asarray(flux_factor, np.float64)[:, None]
    scale = np.where(mask, 10 ** ((ref - zp) / 2.5), 0.0) * factor  # eq. 4
    mjd = np.asarray(mjd, dtype=np.float64)
    out = {"mask": mask, "dt": np.where(mask, mjd - mjd[:, :1], 0.0).astype(np.float32)}
    if not np.isfinite(out["dt"]).all():  # a NaN time would make every loss NaN, silently
        _check_finite(np.where(mask, mjd - mjd[:, :1], 0.0), mask, "mjd")
    if stamps is not None:  # float32 in place: the input pipeline's main cost after decompression
        stamps = np.asarray(stamps, dtype=np.float32)
        img = stamps - np.asarray(sky_adu, np.float32)[..., None, None]
        # eq. 4 and `_transform`'s scale in one factor (float64, then float32), the asinh in place below
        img *= (scale / cfg.flux_scale_adu).astype(np.float32)[..., None, None]
        # sentinel (real HiTS -9999) and absurd pixels carry no signal: the sky level (0) instead
        np.copyto(img, np.float32(0), where=(stamps <= BAD_LOW) | (stamps >= BAD_HIGH))
        if not np.isfinite(img.sum(dtype=np.float64)):  # the finer check only when something is off
            _check_finite(img, mask, "stamps")
        if cfg.input_transform == "asinh":
            np.arcsinh(img, out=img)
        np.copyto(img, np.float32(0), where=~mask[..., None, None])
        out["images"] = img
    if lc_flux is not None and cfg.model == "dmdt":
        from .dmdt import asinh_mag, dmdt_images

        flux, err = np.asarray(lc_flux, dtype=np.float64) * factor, np.asarray(lc_flux_err, dtype=np.float64) * factor
        _check_finite(np.stack([flux, err], axis=-1), mask, "photometry/lc_flux")
        out["dmdt"] = dmdt_images(np.where(mask, asinh_mag(flux, err), np.nan), mjd, mask, cfg.n_w)
    elif lc_flux is not None:
        flux = _transform(cfg, np.asarray(lc_flux, np.float64) * factor)
        err = _transform(cfg, np.asarray(lc_flux_err, np.float64) * factor)
        _check_finite(np.stack([flux, err], axis=-1), mask, "photometry/lc_flux")
        out["flux"] = np.where(mask, flux, 0.0).astype(np.float32)
        out["flux_err"] = np.where(mask, err, 0.0).astype(np.float32)
    return out


def step_labels(label: np.ndarray, alert: np.ndarray, n_images: int, n_w: int, pre_class: int) -> np.ndarray:
    """(N, steps) labels: `pre_class` at steps whose last image comes before the object's alert epoch (RAPID's
    pre-detection label), the object's class elsewhere; alert -1 (no alert) keeps the class everywhere."""
    last_image = np.arange(n_images - n_w + 1) + n_w - 1
    before = (alert[:, None] >= 0) & (last_image[None, :] < alert[:, None])
    return np.where(before, pre_class, label[:, None]).astype(np.int32)


def augment(batch: dict, rng: np.random.Generator) -> dict:
    """Random 90-degree rotation and mirror per sequence (the same for all its images)."""
    return _turn(batch, *_augment_draws(rng, len(batch["label"])))


def _augment_draws(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`augment`'s draws for n sequences, in their order: quarter turns (0-3), then mirror flags."""
    turns = rng.integers(4, size=n)
    return turns, rng.integers(2, size=n).astype(bool)


def _turn(batch: dict, turns: np.ndarray, flip: np.ndarray) -> dict:
    """Each sequence's images rotated by its `turns` quarter turns, then mirrored where `flip`."""
    if "images" not in batch:
        return batch
    img = batch["images"].copy()
    for r in range(1, 4):
        sel = turns == r
        img[sel] = np.rot90(img[sel], r, axes=(2, 3))
    img[flip] = img[flip][..., ::-1]
    return {**batch, "images": img}


def train_batch(data: SequenceData, cfg: TrainConfig, step: int, rows: tuple[int, int] | None = None) -> dict:
    """The training batch of `step`: a pure function of (seed, step). `rows` = (lo, hi): only rows lo:hi of it
    are read (a multi-host run's share; every draw is made for the whole batch, so the rows are the same as
    in the whole batch), plus `batch_mask`, the whole batch's image mask (which `cnn_rows` needs)."""
    rng = np.random.default_rng([cfg.seed, step])
    idx = data.sample(rng, "train", cfg.batch_size)
    factor = None
    if cfg.augment and cfg.augment_brightness_mag > 0:  # brightness must not tell the class: real sets differ
        factor = 10 ** (-0.4 * rng.uniform(-cfg.augment_brightness_mag, cfg.augment_brightness_mag, len(idx)))
    part = slice(None) if rows is None else slice(*rows)
    batch = data.read(idx[part], None if factor is None else factor[part])
    if cfg.augment:  # drawn for the whole batch
        turns, flip = _augment_draws(rng, len(idx))
        batch = _turn(batch, turns[part], flip[part])
    if rows is not None:
        batch["batch_mask"] = data.read_mask(idx)
    return batch


def loader_workers(setting: int, backend: str, cores: int | None = None) -> int:
    """Input processes for `setting` (`TrainConfig.loader_workers`): -1 (auto) is none on the CPU backend,
    whose network steps need every core and last ~100 times longer than a batch's reading, else
    max(1, min(8, cores - 2)), two cores left for the training loop and the accelerator's host work."""
    if setting >= 0:
        return setting
    if backend == "cpu":
        return 0
    return max(1, min(8, (cores or os.cpu_count() or 1) - 2))


_WORKER: dict = {}


def _worker_start(path: str, cfg: TrainConfig, slots: list[str]) -> None:
    from simulator.stopping import worker_signals

    worker_signals()  # Ctrl-C reaches the whole process group: the parent stops and shuts the workers down
    _WORKER["data"] = SequenceData(path, cfg)
    _WORKER["slots"] = [_open_slot(name) for name in slots]


class FileSlot:
    """A buffer shared between processes through a file in the temporary directory, mapped into memory
    (the page cache shares it as POSIX shared memory would): for hosts whose /dev/shm is too small for the
    slots (Docker's default is 64 MB). Its blocks are allocated when it is made, so a full disk is an error
    then, not a SIGBUS in a writer. `name` (the path), `buf`, `close()` and `unlink()` as `SharedMemory`."""

    def __init__(self, path: str, size: int | None = None):
        import mmap

        self.name = str(path)
        fd = os.open(self.name, os.O_RDWR | (os.O_CREAT | os.O_EXCL if size else 0), 0o600)
        try:
            if size:
                os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size or os.fstat(fd).st_size)
        except OSError:
            if size:  # made here: not left behind
                os.unlink(self.name)
            raise
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    def close(self) -> None:
        self.buf.release()
        self._map.close()

    def unlink(self) -> None:
        os.unlink(self.name)
        try:
            os.rmdir(os.path.dirname(self.name))  # the last one removes the slots' directory
        except OSError:
            pass


def _open_slot(name: str):
    """A slot made by `_make_slots`, opened in an input process: a `FileSlot` (a path) or POSIX shared memory."""
    if os.sep in name:
        return FileSlot(name)
    from multiprocessing.shared_memory import SharedMemory

    return SharedMemory(name)


def _make_slots(n: int, size: int) -> list:
    """`n` shared buffers of `size` bytes for the input processes' results: POSIX shared memory where
    /dev/shm has room for twice them (a full /dev/shm kills the writers with SIGBUS), else files in the
    temporary directory (`FileSlot`), else none: results are then pickled through the pool's pipe, slower,
    and a process killed while sending one would hang the pool."""
    import shutil
    import tempfile
    from multiprocessing.shared_memory import SharedMemory

    if _shm_room(2 * n * size):
        return [SharedMemory(create=True, size=size) for _ in range(n)]
    if _room(tempfile.gettempdir(), 2 * n * size):
        folder = tempfile.mkdtemp(prefix="stampseq-input-")
        slots = []
        try:
            for i in range(n):
                slots.append(FileSlot(os.path.join(folder, f"slot{i}"), size))
        except OSError:  # the disk filled meanwhile, or its file system cannot allocate files
            for slot in slots:
                slot.close()
            shutil.rmtree(folder, ignore_errors=True)
            return []
        return slots
    return []


def _worker_call(fn, item, slot: int | None):
    """fn's dict of arrays written into shared-memory `slot` (its layout returned: a 9 MB batch through
    a pipe costs the consumer more than reading it); pickled whole if it does not fit."""
    result = fn(_WORKER["data"], item)
    if slot is None:
        return result
    buf = _WORKER["slots"][slot].buf
    layout, offset = [], 0
    for key, value in result.items():
        value = np.ascontiguousarray(value)
        if offset + value.nbytes > len(buf):
            return result
        np.frombuffer(buf, np.uint8, value.nbytes, offset)[:] = value.reshape(-1).view(np.uint8)
        layout.append((key, value.dtype.str, value.shape, offset))
        offset += -(-value.nbytes // 64) * 64
    return layout


def _shm_room(nbytes: int) -> bool:
    """Whether shared memory has `nbytes` free (POSIX /dev/shm where it exists; elsewhere assumed)."""
    return _room("/dev/shm", nbytes)


def _room(folder: str, nbytes: int) -> bool:
    """Whether the file system of `folder` has `nbytes` free (assumed where it cannot be asked)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return True
    return st.f_bavail * st.f_frsize >= nbytes


def _from_slot(block, layout: list) -> dict:
    """Copies of the arrays `_worker_call` wrote into a shared-memory block."""
    return {key: np.frombuffer(block.buf, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape).copy()
            for key, dtype, shape, offset in layout}


def read_ahead(data: SequenceData, index: np.ndarray, batch_size: int, limit: int | None = None, workers: int = 0):
    """(rows, batch) for consecutive slices of `index` of `batch_size` objects (at most `limit` of them),
    read ahead by a `ReadAhead`, closed when the iteration ends or is abandoned."""
    slices = [index[start:start + batch_size] for start in range(0, len(index), batch_size)][:limit]
    with ReadAhead(data, read_rows, slices, workers) as reader:
        yield from reader


def step_batch(data: SequenceData, item) -> dict:
    """`train_batch` with the dataset's own config (a `ReadAhead` function); `item` is a step, or (step, lo, hi)
    for rows lo:hi of that step's batch."""
    if isinstance(item, tuple):
        return train_batch(data, data.cfg, item[0], item[1:])
    return train_batch(data, data.cfg, item)


def read_rows(data: SequenceData, idx: np.ndarray) -> dict:
    """`SequenceData.read` (a `ReadAhead` function)."""
    return data.read(idx)


class InputWorkerDied(RuntimeError):
    """An input process of `ReadAhead` died (most often killed for memory)."""


class ReadAhead:
    """(item, fn(data, item)) for each of `items` in order, computed up to `ahead` items in advance by a
    background thread (h5py releases the GIL while decompressing) or, with `workers` > 0, by that many
    processes, each with the dataset open (a batch of 256 takes ~0.1 s, mostly chunk decompression, which
    h5py serialises across threads). `fn` is a module-level function of (SequenceData, item), so the results
    are the same either way. The processes hand results back through shared-memory slots, one per item in
    flight, sized from the first item (computed here); an error raised by `fn` is raised by the iteration,
    at its item."""

    def __init__(self, data: SequenceData, fn, items, workers: int = 0, ahead: int = 4):
        self._items = iter(items)
        self._pool, self._closed = None, False
        if workers > 0:
            import multiprocessing
            from collections import deque
            from concurrent.futures import ProcessPoolExecutor

            first = next(self._items, self)  # computed here: it sizes the shared-memory slots
            self._first = None if first is self else (first, fn(data, first))
            nbytes = sum(np.asarray(v).nbytes + 64 for v in self._first[1].values()) if self._first else 0
            size = nbytes * 5 // 4 + 4096
            n = max(ahead, 2 * workers)
            self._slots = _make_slots(n, size)
            # spawn: fork would copy the threads JAX and h5py run, and their locks, into the children
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start,
                                             initargs=(str(data.path), data.cfg, [b.name for b in self._slots]))
            self._fn, self._pending, self._count = fn, deque(), 0
            for _ in range(n):
                self._submit()
            return
        self._queue: queue.Queue = queue.Queue(maxsize=max(ahead, 1))
        self._stop = threading.Event()
        end = object()

        def work():
            for item in self._items:
                if self._stop.is_set():
                    return
                try:
                    result = (item, fn(data, item), None)
                except Exception as exc:  # handed to the consumer, raised there
                    result = (item, None, exc)
                self._queue.put(result)
                if result[2] is not None:
                    return
            self._queue.put((end, None, None))

        self._end = end
        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def _submit(self) -> None:
        item = next(self._items, self)
        if item is not self:
            slot = self._count % len(self._slots) if self._slots else None
            self._pending.append((item, slot, self._pool.submit(_worker_call, self._fn, item, slot)))
            self._count += 1

    def __iter__(self):
        return self

    def __next__(self):
        if self._closed:
            raise StopIteration
        if self._pool is not None:
            if self._first is not None:
                first, self._first = self._first, None
                return first
            if not self._pending:
                raise StopIteration
            item, slot, future = self._pending.popleft()
            try:
                result = future.result()
                if isinstance(result, list):  # a layout in the item's slot, not the dict itself
                    result = _from_slot(self._slots[slot], result)
                self._submit()  # into the slot just copied out
            except BrokenProcessPool as exc:
                raise InputWorkerDied("an input worker process died (out of memory? set loader_workers lower, or "
                                      "0 to read in a thread)") from exc
            return item, result
        item, result, exc = self._queue.get()
        if item is self._end:
            raise StopIteration
        if exc is not None:
            raise exc
        return item, result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            for _, _, future in self._pending:
                future.cancel()
            try:
                self._pool.shutdown(wait=True, cancel_futures=True)
            finally:  # also when a second Ctrl-C cuts the wait short (the processes are ended then)
                for block in self._slots:
                    block.close()
                    block.unlink()
                self._pending.clear()
            return
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

