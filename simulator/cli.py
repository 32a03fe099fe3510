"""`simulate`: write a simulated stamp-sequence dataset (HDF5) for a survey."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .stopping import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulate", description=__doc__)
    p.add_argument("--survey", help="survey name (default hits, the built-in one)")
    p.add_argument("--n-per-class", type=int, help="objects per class (default 100)")
    p.add_argument("--classes", help="comma-separated class names (default: every implemented class)")
    p.add_argument("--seed", type=int, help="random seed (default 0); same seed and options give identical bytes")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--conditions", help="directory of real survey logs (HiTS: camera.csv + field_epochs.csv or "
                                        "blind15a_epochs.csv; any survey: camera.ecsv + epochs.ecsv); the survey they "
                                        "hold (hits for the CSV files) must be --survey; default $STAMPSEQ_CONDITIONS, "
                                        "else built-in model")
    p.add_argument("--templates", help="directory of real light-curve templates (see `fetch-templates`); default "
                                       "$STAMPSEQ_TEMPLATES, else the embedded defaults")
    p.add_argument("--max-epochs", type=int, help="cap on N_d, the epochs per object (default 20, as the paper)")
    p.add_argument("--gallery", metavar="PNG", help="also write a gallery: a light curve and its stamps per class")
    p.add_argument("--workers", type=int, help="local processes (default 1)")
    p.add_argument("--scheduler", help="address of a Dask.distributed scheduler to run the shards on")
    p.add_argument("--config", help="YAML file of SimConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any SimConfig key")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT made with other options")
    p.add_argument("--plot", metavar="PNG", help="also write a summary figure")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command("simulate")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from survey_params import ConditionsError

    from .dataset import check_output
    from .run import SimulationError, simulate
    from .settings import load_config
    from .stopping import Stopped, stop_requests
    from .summary import plot_gallery, plot_summary, summarize

    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    overrides = {"survey": args.survey, "n_per_class": args.n_per_class, "seed": args.seed,
                 "conditions": args.conditions, "templates": args.templates, "max_epochs": args.max_epochs,
                 "workers": args.workers, "scheduler": args.scheduler,
                 "classes": classes}
    if args.no_progress:
        overrides["progress"] = False
    with stop_requests():
        try:
            cfg = load_config(args.config, overrides, args.set)
            for option, png in (("--plot", args.plot), ("--gallery", args.gallery)):  # before the work, not after it
                if png:
                    check_output(png, option, error=SimulationError)
                    Path(png).parent.mkdir(parents=True, exist_ok=True)
            out = simulate(cfg, args.out, overwrite=args.overwrite)
            print(summarize(out))
            if args.plot:
                print(f"figure: {plot_summary(out, args.plot)}")
            if args.gallery:
                print(f"gallery: {plot_gallery(out, args.gallery)}")
        except (ValueError, NotImplementedError, ConditionsError, SimulationError, OSError) as exc:
            print(f"simulate: error: {exc}", file=sys.stderr)
            return 2
        except Stopped as exc:  # raised after a shard is written (`simulator.stopping.check`)
            n = len(list(Path(args.out + ".parts").glob("shard-*.h5")))
            print(f"simulate: {exc}; {n} finished shard{'s' * (n != 1)} kept in {args.out}.parts: rerun the same "
                  "command to go on", file=sys.stderr)
            return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
