"""The optional light-curve template directory: where it is, and `fetch-templates` to download it.

Without a directory every class uses its embedded default (sncosmo's `hsiao-subsampled`, speclite's DECam
curves, coefficients written into the code). With one (`--templates DIR` or $STAMPSEQ_TEMPLATES), the real
templates are read from it, in this layout (the one `fetch-templates` writes):

    sncosmo_data/                 an sncosmo data directory: hsiao v3, salt2 v2.4, snana-* and v19-* SN II,
                                  bandpasses/des (sncosmo downloads these itself)
    rrlyrae_sesar2010/            Sesar et al. 2010: RRLyr_ugriz_templates.tar.gz, table2.dat.gz
    cepheid_yoachim2009/          Yoachim et al. 2009: short_struc.fits, long_struc.fits
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

from .stopping import check as check_stop, command

#: Environment variable naming the template directory, used when `--templates` is not given.
TEMPLATES_ENV = "STAMPSEQ_TEMPLATES"

_ASTROML = "https://raw.githubusercontent.com/astroML/astroML-data"
_YOACHIM = "https://raw.githubusercontent.com/alexji/PDPSupernovaCepheid/69d8ec7c9f04bc5ddb08857b64086e82f36457cf"
#: Non-sncosmo files: (relative path, URL, sha256). Commits as in the PROVENANCE files: each URL names a
#: commit, so its bytes never change, and a download that differs is refused.
DOWNLOADS = (
    ("rrlyrae_sesar2010/RRLyr_ugriz_templates.tar.gz",
     f"{_ASTROML}/7ab744e8f520c801af83a0ecc828744536259d5d/datasets/RRLyr_ugriz_templates.tar.gz",
     "f88cbdb35d6ba98945fae198c4e7c80aaadd22f0a132e10ad894e080838e7565"),
    ("rrlyrae_sesar2010/table2.dat.gz",
     f"{_ASTROML}/b3e2bb5bfd0981a8ce2c14665bc6ffc0eb16ec39/datasets/S82_RRLyr/table2.dat.gz",
     "17dfa90d65d2c91b15b21d76f00d7067266058cc9b2885b44d366f464fcb7614"),
    ("cepheid_yoachim2009/short_struc.fits", f"{_YOACHIM}/BVI_templates/short_struc.fits",
     "94b236c4d9ae97515c4dc573d6a7242f12be60d31a2cb2ee4c79009670eebd3b"),
    ("cepheid_yoachim2009/long_struc.fits", f"{_YOACHIM}/BVI_templates/long_struc.fits",
     "9e781300482cfb3a1231fee6fc5c62d24bfa2c1905dcfba3737797d8141b777e"),
)
#: Seconds without an answer before a download is given up (a stalled connection would wait for ever).
DOWNLOAD_TIMEOUT_S = 60
#: sncosmo registry names fetched into `sncosmo_data/` (sncosmo downloads them from its own server).
SNCOSMO_SOURCES = (("hsiao", None), ("salt2", "2.4"), ("snana-2004hx", None), ("snana-2005gi", None),
                   ("snana-2006gq", None), ("snana-2006jl", None), ("snana-2006kv", None), ("snana-2007lj", None),
                   ("v19-2013fs-corr", None), ("v19-2009n-corr", None), ("v19-2009kr-corr", None))
SNCOSMO_BANDPASSES = ("desg",)


def resolve_templates(directory: str | Path | None) -> Path | None:
    """The template directory to use: `directory`, else $STAMPSEQ_TEMPLATES, else None (embedded defaults)."""
    directory = directory or os.environ.get(TEMPLATES_ENV) or None
    if directory is None:
        return None
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"template directory {path} not found (from --templates or ${TEMPLATES_ENV})")
    return path


def template_folder(templates_dir: str | Path, folder: str) -> Path:
    """`templates_dir/folder`, with a clear error if either is missing (asking for real templates and silently
    getting an embedded default would be a wrong answer)."""
    root = Path(templates_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: templates directory not found")
    if not (root / folder).is_dir():
        raise FileNotFoundError(f"{root / folder}: no {folder} folder in the template directory "
                                "(run `fetch-templates DIR`, or leave --templates unset for the embedded model)")
    return root / folder


_OFFLINE_HINT = ("fetch-templates needs the internet, or copy a template directory made elsewhere "
                 "(fetch-templates --list says what goes where)")


def fetch_templates(out: str | Path, urlopen=urllib.request.urlopen) -> list[Path]:
    """Download every real template into `out` (the layout above; files already present are kept), then
    check that the directory is usable (`check_templates`). Returns the files this call wrote."""
    from .dataset import check_output

    out = Path(out)
    check_output(out, "DIR", directory=True, error=NotADirectoryError)
    written = []
    for rel, url, sha256 in DOWNLOADS:
        check_stop()
        target = out / rel
        if target.exists():
            continue
        try:
            with urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
        except OSError as exc:  # URLError, HTTPError, timeouts
            raise OSError(f"{url}: cannot download it ({getattr(exc, 'reason', exc)}); {_OFFLINE_HINT}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{url}: sha256 {hashlib.sha256(data).hexdigest()} differs from the expected {sha256} "
                             f"(a truncated or altered download; nothing was written to {target})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written.append(target)
    import sncosmo

    saved = sncosmo.conf.data_dir
    sncosmo.conf.data_dir = str(out / "sncosmo_data")  # sncosmo downloads into its data directory
    (out / "sncosmo_data").mkdir(parents=True, exist_ok=True)
    try:
        for kind, get, name, version in ([("source", sncosmo.get_source, n, v) for n, v in SNCOSMO_SOURCES]
                                         + [("bandpass", sncosmo.get_bandpass, n, None) for n in SNCOSMO_BANDPASSES]):
            check_stop()
            try:
                get(name, **({"version": version} if version else {}))
            except Exception as exc:  # sncosmo's download and registry errors come in several types
                raise OSError(f"sncosmo {kind} {name!r}{f' version {version}' if version else ''}: cannot fetch it "
                              f"into {out / 'sncosmo_data'} ({exc}); {_OFFLINE_HINT}") from None
    finally:
        sncosmo.conf.data_dir = saved
    check_templates(out)
    return written


def check_templates(directory: str | Path) -> None:
    """Load what the simulator reads from a template directory (RR Lyrae, Cepheid models; the supernova SED
    and bandpass files with their checks), so a bad directory fails here, naming its file, and not in a later
    `simulate`."""
    from . import cepheid, rrlyrae
    from .supernova import check_sncosmo_files

    directory = Path(directory)
    rrlyrae.load_model(directory)
    cepheid.load_model(directory)
    for ia_model in ("hsiao", "salt2"):
        check_sncosmo_files(directory / "sncosmo_data", ia_model, "desg")


@command("fetch-templates")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fetch-templates", description="Download the real light-curve templates "
                                "(Hsiao, SALT2.4, SN II, DECam, Sesar RR Lyrae, Yoachim Cepheids) into DIR.")
    p.add_argument("out", metavar="DIR", help=f"template directory to fill (then use --templates DIR or ${TEMPLATES_ENV})")
    p.add_argument("--list", action="store_true", help="print what would be fetched and from where, fetch nothing")
    args = p.parse_args(argv)
    if args.list:
        for rel, url, _ in DOWNLOADS:
            print(f"{Path(args.out) / rel}  <-  {url}")
        for name, version in SNCOSMO_SOURCES:
            print(f"{Path(args.out) / 'sncosmo_data'}  <-  sncosmo source {name}" + (f" version {version}" if version else ""))
        for name in SNCOSMO_BANDPASSES:
            print(f"{Path(args.out) / 'sncosmo_data'}  <-  sncosmo bandpass {name}")
        return 0
    from .stopping import Stopped, stop_requests

    with stop_requests():
        try:
            written = fetch_templates(args.out)
        except Exception as exc:  # network and server failures come in many types; report, do not trace back
            print(f"fetch-templates: error: {exc}", file=sys.stderr)
            return 2
        except Stopped as exc:
            print(f"fetch-templates: {exc}; the files fetched so far are kept in {args.out}: rerun the same "
                  "command to fetch the rest", file=sys.stderr)
            return exc.exit_status
    print(f"fetched {len(written)} files and the sncosmo sources into {args.out}; checked: usable as --templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
