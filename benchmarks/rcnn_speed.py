"""RCNN training and inference throughput (Table 3 sizes, T = 20, n_w = 3) against the machine's matmul peak.

Prints one line: matmul peak GFLOP/s (jit, best of 10: f32 2048^2 on CPU, 8192^2 in `--dtype` on an
accelerator), training sequences/s (one jit train step: forward, backward, Adam; median), inference
sequences/s, the model FLOPs per training sequence (and XLA's count), the achieved model GFLOP/s as a fraction of the peak and the kernel's share of the CPU time
(mostly page zeroing), each in its own process (XLA reads its flags, glibc its tunables, once):
  - as `rcnn train` runs: its XLA flags (rcnn.cli.use_fast_cpu_flags), glibc tunables
    (rcnn.cli.with_runtime_tunables) and computations on the calling thread (rcnn.cli.run_on_calling_thread);
  - as `rcnn evaluate`/`classify` run (inference only): XLA's default flags, the same tunables and thread;
  - as `rcnn train` with plain lax convolutions: the same, with rcnn.conv's CPU gradients (identity dot,
    narrow-input gradient) off;
  - XLA's defaults alone: default flags and tunables, a worker thread, plain lax convolutions.
With --masks DATA.h5 the sequences take mask rows drawn from that dataset (padding as in real sets), and
one more variant runs as `rcnn train` with `pack_steps: false` (the convolutions on every step): the
model FLOPs then count the convolutions on valid steps only, the work `pack_steps` leaves.
With --repeats R the variants run R times interleaved (timings on a shared machine drift by ~10% between
runs): medians are printed, each run's training figure after them, and the median ratio of paired runs
as `rcnn train` / with plain lax convolutions.
Synthetic inputs: this measures the model, not I/O.
On an accelerator only `train`, `every-step` and `evaluate` run by default (the others differ from them in
CPU settings only); `--variants` picks any subset.
Usage: PYTHONPATH=. python benchmarks/rcnn_speed.py [--batch 256] [--steps 3] [--repeats 1] [--model rcnn|lc]
       [--masks DATA.h5] [--dtype float32|bfloat16] [--variants train,evaluate,...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from rcnn.cli import (HUGE_PAGE_TUNABLE, KEEP_MEMORY_TUNABLES, run_on_calling_thread, use_fast_cpu_flags,
                       with_runtime_tunables)


def _timed(fn, repeats: int, best: bool = False) -> float:
    """Median (or best) wall time of `repeats` calls after one warm-up call."""
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


def model_gflop_per_sequence(cfg, t: int, n_classes: int = 7, conv_fraction: float = 1.0) -> float:
    """Model FLOPs of one training sequence of T images, the usual count for a utilisation figure: 2 x the
    multiply-adds of the convolutions, dense layers and recurrent cell per step, times 3 for training
    (forward, input gradient, weight gradient). XLA's own count (also printed) leaves some of the
    convolution gradients out. `conv_fraction`: the share of steps the convolutions run on."""
    steps = t - cfg.n_w + 1
    madds = 0
    if cfg.model == "rcnn":
        size, channels = 21, cfg.n_w
        for _ in range(2):
            for _ in range(cfg.conv_blocks):
                madds += size * size * 9 * channels * cfg.conv_filters
                channels = cfg.conv_filters
            size = (size + 1) // 2
        madds *= conv_fraction
        features = size * size * channels
    else:
        features = 2 * cfg.n_w  # fluxes and errors of the stacked epochs
    gates = {"lstm": 4, "gru": 3}[cfg.cell]
    madds += (features * cfg.dense_units + (cfg.dense_units + cfg.n_w + cfg.rnn_units) * gates * cfg.rnn_units
              + cfg.rnn_units * n_classes)
    return 3 * 2 * madds * steps / 1e9


def child(args) -> dict:
    if args.sync:
        run_on_calling_thread()
    if args.plain_conv:
        import rcnn.conv
        rcnn.conv.MIN_CHANNELS = sys.maxsize  # every convolution takes plain lax
        rcnn.conv.NARROW_MAX_CHANNELS = 0
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from rcnn.config import TrainConfig
    from rcnn.models import build_model
    from rcnn.train import cnn_rows, init_state, make_functions

    device = str(jax.devices()[0].platform)
    n = 2048 if device == "cpu" else 8192  # an accelerator needs a larger product to reach its peak
    a = jnp.ones((n, n), jnp.float32 if device == "cpu" else args.dtype)  # on an accelerator: the step's dtype
    mm = jax.jit(lambda x: x @ x)
    peak = 2 * n ** 3 / _timed(lambda: mm(a).block_until_ready(), 10, best=True) / 1e9
    cfg = TrainConfig(model=args.model, batch_size=args.batch, dtype=args.dtype, pack_steps=not args.no_pack)
    rng = np.random.default_rng(0)
    b, t = args.batch, 20
    mask = np.ones((b, t), bool)
    if args.masks:
        import h5py

        with h5py.File(args.masks, "r") as f:
            rows = f["mask"][:, :t]
        mask[:, :rows.shape[1]] = rows[rng.choice(len(rows), b)]
        mask[:, rows.shape[1]:] = False
    batch = {"mask": mask, "dt": np.cumsum(rng.uniform(0, 1, (b, t)), 1).astype(np.float32),
             "label": rng.integers(0, 7, b).astype(np.int32), "weight": np.ones(b, np.float32)}
    if args.model == "rcnn":
        batch["images"] = np.where(mask[..., None, None], rng.normal(size=(b, t, 21, 21)), 0).astype(np.float32)
    else:
        batch["flux"], batch["flux_err"] = rng.normal(size=(2, b, t)).astype(np.float32)
    batch = jax.device_put(batch)
    model = build_model(cfg, 7)
    n_rows = cnn_rows(model, cfg, mask, devices=1)  # the batch sits on one device
    tx = optax.adam(cfg.learning_rate)
    train_step, eval_step = make_functions(model, tx, cfg, np.ones(7, np.float32))
    state = init_state(model, tx, cfg, batch)
    key = jax.random.PRNGKey(0)
    if args.infer_only:
        t_infer = _timed(lambda: jax.block_until_ready(eval_step(state, batch, n_rows)), args.steps)
        return {"peak_gflops": peak, "infer_seq_s": b / t_infer, "device": device}
    flops = train_step.lower(state, batch, key, n_rows).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    holder = {"state": state}

    def step():
        holder["state"], loss = train_step(holder["state"], batch, key, n_rows)
        loss.block_until_ready()

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t_train = _timed(step, args.steps)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime  # over the warm-up and timed steps
    t_infer = _timed(lambda: jax.block_until_ready(eval_step(holder["state"], batch, n_rows)), args.steps)
    step_mask = mask[:, cfg.n_w - 1:]
    model_gflop = model_gflop_per_sequence(cfg, t, conv_fraction=1.0 if n_rows is None else step_mask.mean())
    return {"peak_gflops": peak, "train_seq_s": b / t_train, "infer_seq_s": b / t_infer,
            "gflop_per_seq": model_gflop, "xla_gflop_per_seq": flops / b / 1e9,
            "achieved_gflops": model_gflop * b / t_train, "kernel_share": system / (user + system),
            "device": device}


@dataclass(frozen=True)
class Variant:
    """One child configuration: its short name (`--variants`), XLA_FLAGS, GLIBC_TUNABLES, XLA on the calling
    thread, training timed (else inference only), plain lax convolutions, run in the first repeat only,
    `pack_steps` off."""
    name: str
    label: str
    flags: str
    tunables: str
    sync: bool
    train: bool
    plain_conv: bool
    once: bool = False
    no_pack: bool = False


def _backend() -> str:
    """JAX's default backend, asked of a child process (this one must not import jax: XLA reads its flags
    once, and each variant sets its own)."""
    proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="rcnn", choices=("rcnn", "lc"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved runs of each variant (medians printed; XLA defaults run once)")
    ap.add_argument("--masks", help="dataset (HDF5) whose mask rows the sequences take (default: every image valid)")
    ap.add_argument("--variants", help="comma-separated subset of train, every-step (with --masks), evaluate, "
                                       "plain, defaults (default: all on CPU; on an accelerator, where the others "
                                       "differ only in CPU settings, train, every-step and evaluate)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-pack", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--infer-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plain-conv", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for option in ("batch", "steps", "repeats"):
        if getattr(args, option) < 1:
            ap.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    if args.masks and not os.path.isfile(args.masks):
        ap.error(f"--masks {args.masks}: file not found")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    base = os.environ.get("XLA_FLAGS", "")
    use_fast_cpu_flags(args.batch, args.model)
    train_flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = base
    ours = (HUGE_PAGE_TUNABLE,) + KEEP_MEMORY_TUNABLES
    plain = ":".join(t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and t not in ours)
    tuned = with_runtime_tunables(plain)
    as_train = Variant("train", "as rcnn train", train_flags, tuned, sync=True, train=True, plain_conv=False)
    plain_lax = Variant("plain", "rcnn train with plain lax convolutions", train_flags, tuned, sync=True, train=True,
                        plain_conv=True)
    every_step = Variant("every-step", "as rcnn train with pack_steps false", train_flags, tuned, sync=True, train=True,
                         plain_conv=False, no_pack=True)
    variants = (as_train, Variant("evaluate", "as rcnn evaluate", base, tuned, sync=True, train=False, plain_conv=False), plain_lax,
                Variant("defaults", "XLA defaults", base, plain, sync=False, train=True, plain_conv=True, once=True))
    if args.masks:
        variants = variants[:1] + (every_step,) + variants[1:]
    if args.variants:
        chosen = args.variants.split(",")
    else:
        cpu = _backend() == "cpu"
        chosen = [v.name for v in variants if cpu or v.name in ("train", "every-step", "evaluate")]
    unknown = sorted(set(chosen) - {v.name for v in variants})
    if unknown:
        needs = " (every-step needs --masks)" if "every-step" in unknown else ""
        ap.error(f"--variants: unknown {unknown}; choose from {[v.name for v in variants]}{needs}")
    variants = tuple(v for v in variants if v.name in chosen)
    runs: dict[str, list] = {v.label: [] for v in variants}
    for repeat in range(args.repeats):  # interleaved, so that drift hits every variant alike
        for v in variants:
            if v.once and repeat:  # the slow reference runs once
                continue
            env = {**os.environ, "XLA_FLAGS": v.flags, "GLIBC_TUNABLES": v.tunables}
            cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--steps", str(args.steps),
                   "--model", args.model, "--dtype", args.dtype] + (["--sync"] if v.sync else []) + (
                       [] if v.train else ["--infer-only"]) + (["--plain-conv"] if v.plain_conv else []) + (
                       ["--masks", args.masks] if args.masks else []) + (["--no-pack"] if v.no_pack else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                runs[v.label].append(proc.stderr.strip().splitlines()[-1] if proc.stderr else str(proc.returncode))
                continue
            runs[v.label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    parts = []
    for v in variants:
        label, ok = v.label, [r for r in runs[v.label] if isinstance(r, dict)]
        if not ok:
            parts.append(f"{label}: failed ({runs[label][-1]})")
            continue
        r = {k: statistics.median(x[k] for x in ok) if isinstance(ok[0][k], float) else ok[0][k] for k in ok[0]}
        each = lambda key: " " + "/".join(f"{x[key]:.1f}" for x in ok) if len(ok) > 1 else ""  # noqa: E731
        head = f"{label} [{r['device']}]: matmul peak {r['peak_gflops']:.0f} GFLOP/s | "
        if not v.train:  # evaluate only runs inference
            parts.append(head + f"inference {r['infer_seq_s']:.1f} seq/s{each('infer_seq_s')}")
            continue
        parts.append(head + f"train {r['train_seq_s']:.1f} seq/s{each('train_seq_s')} "
                     f"({r['gflop_per_seq']:.2f} model GFLOP/seq [XLA counts {r['xla_gflop_per_seq']:.2f}], "
                     f"{r['achieved_gflops']:.0f} GFLOP/s = "
                     f"{r['achieved_gflops'] / r['peak_gflops']:.0%} of peak; kernel {r['kernel_share']:.0%} of CPU time) "
                     f"| inference {r['infer_seq_s']:.1f} seq/s")
    for ref, name in ((plain_lax, "plain lax"), (every_step, "every step")):
        pairs = [a["train_seq_s"] / b["train_seq_s"] for a, b in zip(runs.get(as_train.label, []), runs.get(ref.label, []))
                 if isinstance(a, dict) and isinstance(b, dict)]
        if pairs:
            parts.append(f"train / {name}, median of {len(pairs)} paired runs: {statistics.median(pairs):.3f}")
    masks = f", masks of {args.masks}" if args.masks else ""
    print(f"rcnn_speed ({args.model}, T=20, batch {args.batch}, {args.dtype}{masks}): " + " || ".join(parts))
    return 1 if any(": failed (" in p for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
