"""Stamp throughput: the batched renderer + exact CCD noise vs plain per-stamp GalSim, in one run.

Prints one line: stamps/s of
- GalSim per stamp (drawImage of Moffat (x) point source, or + bulge/disk host, then CCDNoise), medians of
  repeats; the mix rate weights them by the host fraction of the simulated dataset;
- our pipeline in one process (`simulate_shard`: draws, light curves, rendering, noise; HiTS built-in
  conditions), and within it the rendering + exact noise alone (timed inside the same runs);
- `simulate` end to end with `--workers` processes: the command run in a fresh process, so imports,
  set-up, HDF5 writing, merging and the printed summary are included;
and the ratios to GalSim's mix rate. Usage: PYTHONPATH=. python benchmarks/render_speed.py [--workers 2]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np

from simulator.settings import ALL_CLASSES, SimConfig
from simulator.shard import simulate_shard


def galsim_rate(n: int, with_host: bool, repeats: int = 3) -> float:
    """Stamps/s of plain GalSim (draw + CCD noise), one thread: its OpenMP threads made every `addNoise` wait
    for a scheduler slice on a busy 2-core machine (~16 ms a stamp, against ~30 us on one thread)."""
    galsim.set_omp_threads(1)
    rng = np.random.default_rng(0)
    ud = galsim.UniformDeviate(1)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            psf = galsim.Moffat(beta=4.2, fwhm=rng.uniform(3.0, 6.0))
            obj = galsim.DeltaFunction(flux=rng.uniform(1e3, 1e5)).shift(*rng.uniform(-0.5, 0.5, 2))
            if with_host:
                gal = 0.7 * galsim.Exponential(half_light_radius=4.0).shear(g1=0.2, g2=0.1) + \
                    0.3 * galsim.DeVaucouleurs(half_light_radius=1.5).shear(g1=0.1, g2=0.0)
                obj = obj + gal.withFlux(2e4).shift(2.0, -1.0)
            img = galsim.Convolve(obj, psf).drawImage(nx=21, ny=21, scale=1.0)
            img += 120.0
            img.addNoise(galsim.CCDNoise(ud, gain=4.0, read_noise=6.0))
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def _time_render_and_noise(cfg: SimConfig) -> list:
    """Wrap the renderer and the CCD noise `simulate_shard` uses for `cfg` with timers; returns the running
    total in seconds (a one-element list)."""
    import simulator.shard as shard

    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper

    shard.add_ccd_noise_streams = timed(shard.add_ccd_noise_streams)
    renderer = shard._setup(cfg.content_json())[2]  # the cached instance simulate_shard uses
    renderer.render = timed(renderer.render)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-per-class", type=int, default=2000, help="end-to-end run size (default 14,000 objects)")
    ap.add_argument("--classes", default=",".join(ALL_CLASSES), help="comma-separated (default: all seven)")
    args = ap.parse_args()
    for option in ("workers", "n_per_class"):
        if getattr(args, option) < 1:
            ap.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    try:
        cfg = SimConfig(classes=tuple(args.classes.split(",")), n_per_class=args.n_per_class, seed=1, progress=False,
                        shard_size=256)
    except ValueError as exc:
        ap.error(str(exc))
    simulate_shard(cfg.content_json(), 0, 16)  # warm-up: tables, survey model
    spent = _time_render_and_noise(cfg)
    rates, render_rates, host_frac, n_stamps = [], [], 0.0, 0
    for rep in range(3):
        spent[0] = 0.0
        t0 = time.perf_counter()
        out = simulate_shard(cfg.content_json(), rep * 768, rep * 768 + 768)
        dt = time.perf_counter() - t0
        n_stamps = int(out["mask"].sum())
        host_frac = float((out["mask"] & out["truth/has_host"][:, None]).sum() / n_stamps)
        rates.append(n_stamps / dt)
        render_rates.append(n_stamps / spent[0])
    ours_1, render_1 = statistics.median(rates), statistics.median(render_rates)
    with tempfile.TemporaryDirectory() as tmp:  # the command a user runs, in a fresh process (imports included)
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "simulator.cli", "--survey", "hits", "--classes", ",".join(cfg.classes),
                        "--n-per-class", str(args.n_per_class), "--seed", "2", "--workers", str(args.workers),
                        "--out", str(path), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        import h5py

        with h5py.File(path) as f:
            total = int(f["mask"][()].sum())
    ours_w = total / dt
    gs_point, gs_host = galsim_rate(300, False), galsim_rate(150, True)
    gs_mix = 1.0 / ((1 - host_frac) / gs_point + host_frac / gs_host)
    print(f"render_speed: {len(cfg.classes)} classes | host fraction {host_frac:.2f} | GalSim per-stamp point {gs_point:.0f}/s host {gs_host:.0f}/s "
          f"mix {gs_mix:.0f}/s | ours 1 process {ours_1:.0f}/s ({ours_1 / gs_mix:.1f}x), of which rendering + noise "
          f"alone {render_1:.0f}/s ({render_1 / gs_mix:.1f}x) | simulate end-to-end "
          f"{args.workers} workers {ours_w:.0f}/s ({ours_w / gs_mix:.1f}x), {total} stamps in {dt:.1f} s")


if __name__ == "__main__":
    main()
