"""Training input pipeline throughput: batches of `rcnn train` read from a simulated HDF5 dataset.

Prints one line: the time of one batch in this process (chunk decompression, eq. 4 scaling, augmentation)
and its parts, then the batches/s and sequences/s that `rcnn train`'s `ReadAhead` delivers with 0 (a thread) and with
1..`--workers` input processes (`loader_workers`), their start-up time apart, and the same for the
evaluation reading of `rcnn evaluate`/`classify` (consecutive objects: fewer chunks per batch). An accelerator consumes
batches of 256 at 10,000 sequences/s (issue 5's H100 target) only if the pipeline keeps up: ~40 batches/s
(inference at 50,000/s: ~195).
Without `--data` it simulates a HiTS dataset (built-in model, `--n-per-class` objects per class) first.
Usage: PYTHONPATH=. python benchmarks/input_speed.py [--data DATA.h5] [--batch 256] [--workers 2]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rcnn.config import TrainConfig
from rcnn.data import ReadAhead, SequenceData, augment, read_ahead, step_batch, train_batch


def _parts(data: SequenceData, cfg: TrainConfig, steps: range) -> dict:
    """Median ms per batch: reading + scaling (`read`), augmentation, and the whole `train_batch`."""
    read, aug, whole = [], [], []
    for step in steps:
        rng = np.random.default_rng([cfg.seed, step])
        idx = data.sample(rng, "train", cfg.batch_size)
        t0 = time.perf_counter()
        batch = data.read(idx)
        t1 = time.perf_counter()
        augment(batch, rng)
        t2 = time.perf_counter()
        train_batch(data, cfg, step)
        t3 = time.perf_counter()
        read.append(t1 - t0)
        aug.append(t2 - t1)
        whole.append(t3 - t2)
    return {k: 1e3 * statistics.median(v) for k, v in (("read", read), ("augment", aug), ("batch", whole))}


def _rate(reader, warm: int) -> tuple[float, float]:
    """(items/s after the first `warm` items, seconds to the first item) of an iterator just created."""
    t0 = time.perf_counter()
    next(reader)
    first = time.perf_counter() - t0
    for _ in range(warm - 1):  # the processes start meanwhile
        next(reader)
    t1, n = time.perf_counter(), 0
    for _ in reader:
        n += 1
    return n / (time.perf_counter() - t1), first


def _prefetch_rate(data: SequenceData, cfg: TrainConfig, workers: int, n: int) -> tuple[float, float]:
    """`rcnn train`'s `ReadAhead` over n steps after 2 x workers + 4 warm-up steps."""
    warm = 2 * workers + 4
    with ReadAhead(data, step_batch, range(n + warm), workers, cfg.prefetch) as reader:
        return _rate(reader, warm)


def _evaluation_rate(data: SequenceData, batch: int, workers: int, n: int) -> float:
    """Batches/s of `rcnn evaluate`/`classify`'s reading (consecutive objects, no augmentation) over n
    batches after 2 x workers + 4 warm-up batches, going round the dataset as often as that takes."""
    warm = 2 * workers + 4
    index = np.resize(np.arange(data.n_objects), (warm + n) * batch)
    return _rate(read_ahead(data, index, batch, workers=workers), warm)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="a dataset (default: simulate one)")
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40, help="batches timed per setting")
    ap.add_argument("--workers", type=int, default=2, help="largest number of input processes tried")
    args = ap.parse_args()
    for option, low in (("n_per_class", 1), ("batch", 1), ("batches", 1), ("workers", 0)):
        if getattr(args, option) < low:
            ap.error(f"--{option.replace('_', '-')} must be >= {low}, got {getattr(args, option)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None:
            path = str(Path(tmp) / "input.h5")
            subprocess.run([sys.executable, "-m", "simulator.cli", "--survey", "hits", "--n-per-class",
                            str(args.n_per_class), "--seed", "3", "--out", path, "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
        cfg = TrainConfig(model="rcnn", batch_size=args.batch)
        data = SequenceData(path, cfg)
        train_batch(data, cfg, 0)  # warm caches
        parts = _parts(data, cfg, range(1, 21))
        rates = []
        for workers in range(args.workers + 1):
            rate, startup = _prefetch_rate(data, cfg, workers, args.batches)
            label = "thread" if workers == 0 else f"{workers} process{'es' if workers > 1 else ''}"
            rates.append(f"{label} {rate:.1f} batches/s = {rate * args.batch:.0f} seq/s (first batch {startup:.1f} s)")
        evaluation = [f"{w} {_evaluation_rate(data, args.batch, w, args.batches):.1f}" for w in range(args.workers + 1)]
    print(f"input_speed (batch {args.batch}, {data.n_objects} objects x {data.n_epochs} epochs): one batch "
          f"{parts['batch']:.0f} ms (read + eq. 4 {parts['read']:.0f} ms, augment {parts['augment']:.0f} ms) | "
          + " | ".join(rates) + " || evaluation reading, batches/s with 0 (thread) .. N processes: "
          + ", ".join(evaluation))


if __name__ == "__main__":
    main()
