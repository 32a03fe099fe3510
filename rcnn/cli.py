"""`rcnn train|evaluate|classify`: the recurrent convolutional classifier and the light-curve baseline."""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rcnn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on a dataset (resumes an interrupted run in --out)")
    t.add_argument("data", help="HDF5 dataset from `simulate` (for --model lc, after `photometry`)")
    t.add_argument("--model", choices=("rcnn", "lc"), help="image-sequence RCNN (default) or light-curve classifier")
    t.add_argument("--config", help="YAML file of TrainConfig keys (rcnn/config.py)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    t.add_argument("--out", required=True, help="run directory: config.yaml, metrics.jsonl, checkpoints/")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name in ("evaluate", "classify"):
        sub.add_parser(name, help="arrives with the evaluation issue")
    return p


#: XLA CPU flag measured 3x faster for this network's training on 2 cores (benchmarks/rcnn_speed.py); set
#: unless the user's XLA_FLAGS already mention it. XLA reads its flags once, before jax is first used.
CPU_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def use_fast_cpu_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAG}".strip()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    use_fast_cpu_flags()
    if args.command != "train":
        print(f"rcnn {args.command}: not implemented yet; it arrives with the evaluation issue", file=sys.stderr)
        return 2
    from .config import load_config
    from .data import DatasetError
    from .train import RunError, train

    try:
        cfg = load_config(args.config, args.set, {"model": args.model})
        result = train(args.data, args.out, cfg, progress=not args.no_progress)
    except (DatasetError, RunError, ValueError, OSError) as exc:
        print(f"rcnn train: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
