"""`rcnn`: classifiers of stamp sequences (the RCNN of Carrasco-Davis et al. 2019, a light-curve model, a dm-dt
CNN): train, evaluate, classify, fine-tune on real objects; the random-forest baseline; importing real stamps."""
from __future__ import annotations

import argparse
import os
import platform
import sys

from simulator.stopping import Stopped, StoppedAtOnce, command, stop_requests


def _at_least(minimum: int):
    """argparse type: an integer >= `minimum` (argparse names the option in its error)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse's "invalid ... value" message
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rcnn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on a dataset (resumes an interrupted run in --out)")
    t.add_argument("data", help="HDF5 dataset from `simulate` (for --model lc or dmdt, after `photometry`)")
    t.add_argument("--model", choices=("rcnn", "lc", "dmdt"),
                   help="image-sequence RCNN (default, unless the --config file sets `model`), light-curve "
                        "classifier, or dm-dt CNN (Mahabal et al. 2017); lc and dmdt read `photometry`'s light curves")
    t.add_argument("--config", help="YAML file of TrainConfig keys (rcnn/config.py)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    t.add_argument("--out", required=True, help="run directory: config.yaml, metrics.jsonl, checkpoints/, training.png")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-host run: process 0's address (or JAX_COORDINATOR_ADDRESS); any of these three "
                        "options sets distributed=true, and those left out JAX detects (SLURM, Open MPI, ...)")
    t.add_argument("--num-processes", type=int, metavar="N", help="multi-host run: processes in all")
    t.add_argument("--process-id", type=int, metavar="I", help="multi-host run: this process's index, 0..N-1")
    e = sub.add_parser("evaluate", help="metrics and figures on a simulated test split or real labelled stamps")
    e.add_argument("run", nargs="+", help="run directories (several: drawn side by side, e.g. rcnn and lc)")
    e.add_argument("--data", help="simulated dataset (its test split is evaluated)")
    e.add_argument("--real", help="real labelled dataset from `rcnn import-real` (every object is evaluated)")
    e.add_argument("--class-map", help="dataset label -> model class, e.g. SN=supernova,NV=nonvariable "
                                       "(default: a model class's own name, and the HiTS labels SN, RRLyrae, EB, NV)")
    e.add_argument("--out", required=True, help="report directory: metrics.json and PNG figures")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    c = sub.add_parser("classify", help="class probabilities after every step of every object")
    c.add_argument("run", help="run directory")
    c.add_argument("data", help="dataset (simulated, or real from `rcnn import-real`, labelled or not)")
    c.add_argument("--out", required=True, help="output directory: probabilities.csv, probabilities.json, PNGs")
    c.add_argument("--figures", type=_at_least(0), default=0,
                   help="draw the paper's Appendix B figure for the first N objects (default 0: none)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    ft = sub.add_parser("finetune", help="continue training on a few real labelled objects, evaluate on the rest")
    ft.add_argument("run", help="run directory to start from (its best checkpoint)")
    ft.add_argument("real", help="real labelled dataset from `rcnn import-real`")
    ft.add_argument("--out", required=True, help="output: finetune_data.h5, run/, report/")
    ft.add_argument("--per-class", type=_at_least(1), default=5, help="real objects per class to train on (default 5)")
    ft.add_argument("--iterations", type=_at_least(1), default=300, help="training iterations (default %(default)s)")
    ft.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (default %(default)s)")
    ft.add_argument("--freeze", choices=("none", "conv"), default="conv",
                    help="conv: freeze the convolutional stack (its batch-norm statistics still adapt); none: train "
                         "every layer (default %(default)s)")
    ft.add_argument("--class-map", help="real label -> model class (default: the HiTS labels)")
    ft.add_argument("--seed", type=int, default=0,
                    help="random seed: the objects that train, the batches (default %(default)s)")
    ft.add_argument("--no-progress", action="store_true", help="no progress bars")
    baseline_help = ("random forest on aperture-photometry light-curve features (the bar to beat); without --test or "
                     "--cv: trained on DATA's train split, tested on its test split")
    b = sub.add_parser("baseline", help=baseline_help, description=baseline_help)
    b.add_argument("data", help="labelled dataset to train on (simulated, or real from `rcnn import-real`)")
    b.add_argument("--test", help="dataset to test on (e.g. real; labels mapped as in evaluate); the forest then "
                                "trains on every split of DATA")
    b.add_argument("--cv", type=int, help="stratified K-fold cross-validation on DATA instead (e.g. the real set)")
    b.add_argument("--class-map", help="test label -> training class (default: the HiTS labels)")
    b.add_argument("--max-epochs", type=_at_least(3), default=20, help="epochs per object used (the RCNN's N_d cap)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True, help="report directory: metrics.json, confusion.png")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    r = sub.add_parser("import-real", help="real stamp sequences (real_dev.npz layout, or a directory of FITS files, "
                                           "one per object) -> the dataset layout")
    r.add_argument("source", help="real stamps, labelled or not: an npz in the real_dev layout (../shared/hits2015/README.md) or a "
                                   "directory of FITS files, one per object (rcnn/real.py: FITS layout)")
    r.add_argument("--camera", help="camera table (camera.csv) for gain, read noise, saturation")
    r.add_argument("--fields", help="field centres (table with field, ra_deg, dec_deg; default: the HiTS fields) "
                                    "for the galactic-latitude context input")
    r.add_argument("--context", help="host cross-match CSV (name, has_host, host_distance_arcsec) for the host "
                                     "context inputs")
    r.add_argument("--out", required=True, help="output HDF5 dataset (an earlier import of the same source is redone; "
                                                 "any other existing file is refused without --overwrite)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing OUT that is not an import of SOURCE")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


#: XLA CPU flag for training (benchmarks/rcnn_speed.py, 2 cores): with XLA's default YNNPACK fusions this
#: network trains 3x slower (its convolutions), with them all off its batch-norm reductions are 4-10x
#: slower than they need be; YNNPACK for reductions only trains ~6% faster than all off, and YNNPACK's
#: matmuls (`dot`: the dense layers, LSTM, identity dots) a further 3% at batch 256 and 10% at batch 64
#: (Zen 5, steps compiled both ways in one process; on jaxlib 0.11 and 0.12, `reduce,dot` against all off:
#: 1.15x at batch 256). The type names were checked on each jaxlib in `CHECKED_JAXLIB` (an unknown name
#: is a fatal XLA error), so other versions get all off. Inference is fastest with the defaults, so only the
#: commands that train set it, unless the user's XLA_FLAGS mention it. XLA reads its flags once, before jax
#: is used.
CPU_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
YNN_TYPES = "reduce,dot"
#: XLA's memory-optimised CPU scheduler, for training batches of at least `MEMORY_SCHEDULER_MIN_BATCH`: a
#: Table 3 step's buffers at batch 256 take 3.5 GB instead of 6.6 GB, at the same speed (batch 128 ~10%
#: faster, fewer pages to zero; batch 64 ~5% slower, so smaller batches keep the default). On 0.11 and
#: 0.12 with YNNPACK's matmuls: 4.49 against 4.50 GB, steps 0.97x.
MEMORY_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
MEMORY_SCHEDULER_MIN_BATCH = 128
#: The jaxlib versions (major.minor) on which both flags' names and their speed were checked.
CHECKED_JAXLIB = ("0.10", "0.11", "0.12")


def _jaxlib_minor() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return ".".join(version("jaxlib").split(".")[:2])
    except PackageNotFoundError:
        return ""


def use_fast_cpu_flags(batch_size: int | None = None, model: str = "rcnn") -> None:
    """Add the training flags above to XLA_FLAGS, each unless the user's flags already set it. Measured
    on the RCNN; the light-curve model (no convolutions) trains ~15-20% faster with XLA's default fusions
    (rcnn_speed.py --model lc), so it gets neither."""
    if model == "lc":
        return
    flags, jaxlib = os.environ.get("XLA_FLAGS", ""), _jaxlib_minor()
    extra = []
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        extra.append(CPU_XLA_FLAG + (YNN_TYPES if jaxlib in CHECKED_JAXLIB else ""))
    if (model == "rcnn" and (batch_size or 0) >= MEMORY_SCHEDULER_MIN_BATCH and "xla_cpu_scheduler_type" not in flags
            and jaxlib in CHECKED_JAXLIB):
        extra.append(MEMORY_SCHEDULER_FLAG)
    os.environ["XLA_FLAGS"] = " ".join([flags] + extra).strip()


#: glibc tunables for the commands that run a network (benchmarks/rcnn_speed.py, 2 cores, batch 256). XLA
#: allocates each step's buffers (GBs at batch 256) anew with malloc. glibc maps any block over 32 MB
#: afresh and unmaps it when freed, so every step the kernel faults in and zeroes them: ~11 million 4 KiB
#: faults per benchmark run. With transparent huge pages (glibc >= 2.35 then madvises its mappings) the
#: faults drop ~60x and training runs ~20% faster, inference ~15%; the zeroing remains (3-5 s of kernel
#: time per 15 s step). `KEEP_MEMORY_TUNABLES` end it: no mmap for large blocks and no trimming, so the
#: process keeps its peak heap and reuses it (kernel time ~0.05 s per step, training a further ~25%
#: faster), provided the blocks come from glibc's main arena, i.e. XLA runs on the calling thread
#: (`run_on_calling_thread`): a worker thread's arena maps large blocks whatever `mmap_max` says. glibc reads
#: tunables only at process start, hence `reexec_with_tunables`.
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
KEEP_MEMORY_TUNABLES = ("glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=17179869184")
NETWORK_COMMANDS = ("train", "finetune", "evaluate", "classify")


def glibc_linux() -> bool:
    """Whether glibc's malloc tunables can act here: Linux with glibc."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def huge_pages_available() -> bool:
    """Whether glibc's huge-page tunable can act here: Linux, glibc, transparent huge pages not "never"."""
    if not glibc_linux():
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def with_runtime_tunables(tunables: str) -> str:
    """A GLIBC_TUNABLES value: `tunables` (possibly empty) with each of `HUGE_PAGE_TUNABLE` (where
    `huge_pages_available`) and `KEEP_MEMORY_TUNABLES` appended that it does not already name: a user's own
    value (e.g. glibc.malloc.hugetlb=0 to opt out) wins."""
    given = [t for t in tunables.split(":") if t]
    named = {t.split("=")[0] for t in given}
    ours = ((HUGE_PAGE_TUNABLE,) if huge_pages_available() else ()) + KEEP_MEMORY_TUNABLES
    return ":".join(given + [t for t in ours if t.split("=")[0] not in named])


def reexec_with_tunables() -> None:
    """Restart this command line once (Linux with glibc) with `with_runtime_tunables` of GLIBC_TUNABLES, unless
    that adds nothing, which also stops a second restart."""
    if not glibc_linux() or not getattr(sys, "orig_argv", None):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    wanted = with_runtime_tunables(tunables)
    if wanted == tunables:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": wanted})


def run_on_calling_thread() -> None:
    """Run XLA's CPU computations on the calling thread instead of a worker thread (JAX's
    `jax_cpu_enable_async_dispatch`), for `KEEP_MEMORY_TUNABLES` to act. Before jax's first computation:
    JAX reads it when it makes the CPU client. Nothing is lost on CPU, where a step keeps every core busy."""
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


@command("rcnn")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command_line = argv is None and args.command in NETWORK_COMMANDS  # an API call keeps its process
    if command_line:
        reexec_with_tunables()
    cfg = None
    if args.command == "train":
        from .config import load_config

        try:
            cfg = load_config(args.config, args.set, {"model": args.model})
        except (ValueError, OSError) as exc:
            print(f"rcnn train: error: {exc}", file=sys.stderr)
            return 2
        use_fast_cpu_flags(cfg.batch_size, cfg.model)  # XLA_FLAGS: before jax is imported
    elif args.command == "finetune":
        use_fast_cpu_flags()
    if command_line:
        run_on_calling_thread()
    launch = (args.coordinator, args.num_processes, args.process_id) if cfg is not None else ()
    cluster = None
    if any(v is not None for v in launch):
        from .train import Cluster

        cluster = Cluster(*launch)
    # a multi-host run's processes would have to agree on a step to stop at: SIGINT and SIGTERM end them as before
    with stop_requests(enabled=cluster is None and not (cfg is not None and cfg.distributed)):
        try:
            return _other(args) if cfg is None else _train(args, cfg, cluster)
        except Stopped as exc:  # train's (`Interrupted`) names the step it saved
            at_once = isinstance(exc, StoppedAtOnce)  # a second signal: no step saved for it
            again = "; rerun the same command to go on from the last step saved" if at_once and cfg else ""
            print(f"rcnn {args.command}: {exc}{again}", file=sys.stderr)
            if at_once and command_line:  # JAX's and orbax's threads may be mid-work: Python's finalisation
                sys.stdout.flush()  # crashed on them (SIGSEGV), so end here, as asked; a save cut off leaves
                sys.stderr.flush()  # a temporary directory that the rerun removes
                os._exit(exc.exit_status)
            return exc.exit_status


def _train(args, cfg, cluster) -> int:
    from .curves import FIGURE, kept_evaluation, read_metrics
    from .data import DatasetError
    from .train import RunError, train

    try:
        result = train(args.data, args.out, cfg, progress=not args.no_progress, cluster=cluster)
    except (DatasetError, RunError, ValueError, OSError) as exc:
        print(f"rcnn train: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    kept = kept_evaluation(read_metrics(args.out))
    if kept is not None:
        print(f"{args.out}: kept checkpoint from step {kept['step']} (val_loss {kept['val_loss']:.4g}, val_accuracy "
              f"{kept.get('val_accuracy', float('nan')):.4g}); curves in {os.path.join(args.out, FIGURE)}")
    return 0


def _other(args) -> int:
    """evaluate, baseline, classify, finetune, import-real."""
    from .data import DatasetError, InputWorkerDied
    from .evaluate import ClassMapError, evaluate, parse_class_map
    from .train import RunError

    try:
        if args.command == "evaluate":
            if bool(args.data) == bool(args.real):
                raise ValueError("give exactly one of --data (simulated) or --real (real labelled)")
            report = evaluate(args.run, args.real or args.data, args.out, real=bool(args.real),
                              class_map=parse_class_map(args.class_map), progress=not args.no_progress)
            for name, e in report["runs"].items():
                recall = ", ".join(f"{k} {v:.2f}" for k, v in e["recall"].items())
                print(f"{name}: step {e['step']} accuracy {e['accuracy']:.3f} balanced recall "
                      f"{e['balanced_recall']:.3f} | recall {recall}")
            print(f"report: {args.out}")
        elif args.command == "baseline":
            from .baseline import run_baseline

            r = run_baseline(args.data, args.out, args.test, args.cv, parse_class_map(args.class_map), args.seed,
                             args.max_epochs, progress=not args.no_progress)
            print(f"random forest ({r['mode']}): balanced recall {r['balanced_recall']:.3f} | "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r["recall"].items()))
        elif args.command == "classify":
            from .classify import classify

            print(f"probabilities: {classify(args.run, args.data, args.out, args.figures, not args.no_progress)}")
        elif args.command == "finetune":
            from .finetune import finetune

            report = finetune(args.run, args.real, args.out, args.per_class, args.iterations, args.learning_rate,
                              args.freeze, parse_class_map(args.class_map), args.seed, progress=not args.no_progress)
            for name, e in report["runs"].items():
                print(f"{name}: held-out balanced recall {e['balanced_recall']:.3f} | "
                      + ", ".join(f"{k} {v:.2f}" for k, v in e["recall"].items()))
        else:
            from .real import import_real  # its errors (ImportError_) are ValueErrors

            print(f"dataset: {import_real(args.source, args.out, args.camera, fields_file=args.fields, context_csv=args.context, overwrite=args.overwrite, progress=not args.no_progress)}")
    except (DatasetError, RunError, ClassMapError, ValueError, OSError, KeyError, InputWorkerDied) as exc:
        print(f"rcnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
