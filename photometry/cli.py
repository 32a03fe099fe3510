"""`photometry`: optimal (Naylor 1998) photometry of every stamp of a dataset, added as `photometry/`."""
from __future__ import annotations

import argparse
import sys

from simulator.stopping import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="photometry", description=__doc__)
    p.add_argument("dataset", help="HDF5 dataset written by `simulate` (updated in place, atomically)")
    p.add_argument("--sky", choices=("log", "border"), default="log",
                   help="sky level: the logged conditions/sky_adu (default) or the sigma-clipped median of the "
                        "stamp's 2-pixel border with the fitted star taken out (stamps of 7 px or more)")
    p.add_argument("--fwhm", choices=("log", "fit"), default="log",
                   help="PSF FWHM: from the logged seeing (default) or fitted per stamp for bright sources")
    p.add_argument("--batch-objects", type=int, default=128,
                   help="objects per batch (memory vs speed; default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@command("photometry")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from simulator.stopping import Stopped, stop_requests

    from .dataset import PhotometryError, run_photometry, working_copy

    with stop_requests():
        try:
            out = run_photometry(args.dataset, args.sky, args.fwhm, args.batch_objects, not args.no_progress)
        except (PhotometryError, OSError, KeyError) as exc:
            print(f"photometry: error: {exc}", file=sys.stderr)
            return 2
        except Stopped as exc:  # raised after a batch is written to the working copy
            print(f"photometry: {exc}; the objects measured so far are kept in {working_copy(args.dataset)}: rerun "
                  "the same command to go on", file=sys.stderr)
            return exc.exit_status
    import numpy as np

    from simulator.dataset import open_h5

    with open_h5(out) as f:
        g, mask = f["photometry"], f["mask"][()]
        snr = (g["flux_adu"][()] / g["flux_err_adu"][()])[mask]
        det = (g["first_detection"][()] >= 0).mean()
    print(f"{out}: photometry of {int(mask.sum())} stamps; median S/N {np.median(snr):.1f}; "
          f"{det:.0%} of objects detected at 5 sigma over their quiescent level")
    return 0


if __name__ == "__main__":
    sys.exit(main())
