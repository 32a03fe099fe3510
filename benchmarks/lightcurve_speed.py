"""Light-curve throughput per class: conditions draw + class model (+ rejection for supernovae), no rendering.

Prints one line: objects/s per class (median of 3 repeats of `--n` objects) and the one-off model set-up
time (template loading and tables). Usage: PYTHONPATH=. python benchmarks/lightcurve_speed.py [--templates DIR]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from simulator.classes import MODELS, load_models
from simulator.settings import ALL_CLASSES, SimConfig
from simulator.shard import survey_depth
from simulator.templates import resolve_templates
from survey_params import make_sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--templates", default=None)
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    cfg = SimConfig(progress=False, templates=args.templates)
    sampler = make_sampler(cfg.survey, cfg.conditions, cfg.seeing_limit_arcsec)
    t0 = time.perf_counter()
    try:
        models = load_models(cfg, resolve_templates(cfg.templates), survey_depth(sampler))
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    setup_s = time.perf_counter() - t0
    parts = []
    for name in ALL_CLASSES:
        rates = []
        for rep in range(3):
            rng = np.random.default_rng(rep)
            t0 = time.perf_counter()
            done = 0
            while done < args.n:
                done += MODELS[name](rng, sampler.draw(rng), cfg, models) is not None
            rates.append(args.n / (time.perf_counter() - t0))
        parts.append(f"{name} {statistics.median(rates):.0f}/s")
    mode = "templates" if args.templates else "embedded"
    print(f"lightcurve_speed ({mode}): set-up {setup_s:.1f} s | " + " | ".join(parts))


if __name__ == "__main__":
    main()
