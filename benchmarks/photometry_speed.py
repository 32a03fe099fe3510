"""Photometry throughput: stamps/s of `photometry DATASET.h5` end to end (read, measure, write) and of the
optimal-photometry step alone, on a simulated dataset of all seven classes.

Prints one line. Usage: PYTHONPATH=. python benchmarks/photometry_speed.py [--n-per-class 300]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py

from photometry.dataset import run_photometry
from photometry.optimal import OptimalPhotometry
from simulator.run import simulate
from simulator.settings import SimConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=300)
    args = ap.parse_args()
    if args.n_per_class < 1:
        ap.error(f"--n-per-class must be >= 1, got {args.n_per_class}")
    with tempfile.TemporaryDirectory() as tmp:
        path = simulate(SimConfig(n_per_class=args.n_per_class, seed=1, progress=False, workers=2), Path(tmp) / "d.h5")
        with h5py.File(path, "r") as f:
            m = f["mask"][()]
            stamps = f["stamps"][()][m][:4096]
            cond = {k: f[f"conditions/{k}"][()][m][:4096] for k in ("seeing_arcsec", "sky_adu", "gain", "read_noise",
                                                                      "saturation")}
        op = OptimalPhotometry()
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            op.measure(stamps, cond["seeing_arcsec"] * 0.81 / 0.27, cond["gain"], cond["read_noise"], cond["sky_adu"],
                       cond["saturation"])
            rates.append(len(stamps) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        run_photometry(path, progress=False)
        dt = time.perf_counter() - t0
    n = int(m.sum())
    print(f"photometry_speed: measure {statistics.median(rates):.0f} stamps/s (median of 3 x {len(stamps)}) | "
          f"photometry DATASET end to end {n / dt:.0f} stamps/s ({n} stamps in {dt:.1f} s, 1 process)")


if __name__ == "__main__":
    main()
