"""Simulated vs real HiTS stamps of non-variable stars: sky level, pixel noise and PSF width.

Why: Carrasco-Davis et al. (2019, PASP 131, 108006), Appendix A, check that their simulated stamps look
like the real HiTS ones before training on them: the simulator draws each epoch's sky, seeing, zero point
and CCD (gain, read noise) from the survey logs, so stamps measured the same way should agree with the
logs (and with each other) on

(a) sky level:   median of the border pixels (the outer 3-pixel ring of the 21x21 stamp), against the
                 logged `sky_adu` of the epoch;
(b) pixel noise: robust std (1.4826 * MAD) of the same border pixels, against the expectation
                 sqrt(sky/gain + (read_noise/gain)^2) in ADU, with sky the measured level;
(c) PSF FWHM:    of the central source, from a least-squares fit (`scipy.optimize.least_squares`) of a
                 circular Moffat profile with free beta plus a constant (and, for reference, a circular
                 Gaussian plus a constant), only where the source is clearly detected (peak above the
                 sky > 10 sigma) and far from saturation; against the logged `seeing_arcsec`.

This script simulates non-variable stars with the real HiTS 2015 logs (`DATA/hits2015`), measures them and
the 10 real non-variable (NV) objects of `DATA/hits2015/real_dev.npz` with the functions below, writes a
figure (`compare_real.png`) and prints one line of figures (median ratios, real and simulated).

Details that matter when reading the numbers:
- The real stamps' CCDs are not recorded in `real_dev.npz`, so their expected noise uses the median gain
  and read noise of `camera.csv` (gains of the individual CCDs scatter by ~3%).
- Border statistics include whatever else lies in the border: the wings of a bright central star, and
  for real stamps neighbouring sources. `noise_clean` is the same robust std after subtracting the fitted
  source profile; it isolates the pixel noise from the wings and is the fairer noise comparison.
- The sim drops epochs with seeing above `SimConfig.seeing_limit_arcsec` (2"); real frames are cut the same way.

Usage: python benchmarks/compare_real.py [--data DIR] [--n-per-class N] [--out-dir DIR] [--seed S]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PIXEL_SCALE_ARCSEC = 0.27      # DECam, as in the HiTS logs
BORDER_WIDTH_PX = 3            # the outer ring used for sky and noise
DETECT_NSIGMA = 10.0           # peak above sky, in units of the border noise, to fit the PSF
CENTRE_HALF_WIDTH_PX = 2       # the source peak is searched within +-2 px of the stamp centre
MAX_ADU = 30000.0              # stamps with a pixel above this are not fitted (DECam saturates at 34-51k ADU)
SHARED_ENV = "STAMPSEQ_SHARED"
NV_CLASS = "NV"
STAR_CLASSES = ("NV", "RRLyrae", "EB")  # point sources of real_dev.npz, for the PSF-width relation
MAD_TO_SIGMA = 1.4826
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


# ----------------------------------------------------------------------------------------------- measuring
def border_mask(size: int, width: int = BORDER_WIDTH_PX) -> np.ndarray:
    """Boolean (size, size) mask of the outer `width`-pixel ring."""
    i = np.arange(size)
    d = np.minimum(i, size - 1 - i)
    return np.minimum(d[:, None], d[None, :]) < width


def robust_std(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """1.4826 * median absolute deviation: the std of Gaussian noise, insensitive to a few outliers."""
    med = np.median(x, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(x - med), axis=axis)


def expected_noise(sky_adu, gain, read_noise_e):
    """Per-pixel noise in ADU of a CCD pixel at sky level `sky_adu`: sqrt(sky/gain + (rn/gain)^2)."""
    sky_adu, gain, read_noise_e = (np.asarray(v, dtype=float) for v in (sky_adu, gain, read_noise_e))
    return np.sqrt(np.maximum(sky_adu, 0.0) / gain + (read_noise_e / gain) ** 2)


def moffat(params, xx, yy):
    """Circular Moffat (no background): amplitude, x0, y0, FWHM (px), beta."""
    amp, x0, y0, fwhm, beta = params
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return amp * (1.0 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha ** 2) ** (-beta)


def gaussian(params, xx, yy):
    """Circular Gaussian (no background): amplitude, x0, y0, FWHM (px)."""
    amp, x0, y0, fwhm = params
    sigma = fwhm / _FWHM_PER_SIGMA
    return amp * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / sigma ** 2)


def _fit(profile, stamp, p0, lower, upper):
    """Least-squares fit of `profile` + constant; returns (params, ok)."""
    size = stamp.shape[-1]
    yy, xx = np.mgrid[:size, :size].astype(float)
    data = stamp.ravel()

    def resid(p):
        return (profile(p[:-1], xx, yy) + p[-1]).ravel() - data

    try:
        r = least_squares(resid, p0, bounds=(lower, upper), x_scale="jac")
    except (ValueError, np.linalg.LinAlgError):
        return np.full(len(p0), np.nan), False
    return r.x, bool(r.success)


def fit_psf(stamp: np.ndarray, sky: float, model: str = "moffat"):
    """Fit a circular Moffat (free beta) or Gaussian plus constant to a stamp with a central source.

    Returns the parameter vector ([amp, x0, y0, fwhm_px, (beta,) background]) or NaNs when the fit fails.
    """
    stamp = np.asarray(stamp, dtype=float)
    size = stamp.shape[-1]
    c, h = size // 2, CENTRE_HALF_WIDTH_PX
    box = stamp[c - h:c + h + 1, c - h:c + h + 1]
    jy, jx = np.unravel_index(np.argmax(box), box.shape)
    amp0 = max(box.max() - sky, 1e-3)
    pos = (c - h + jx, c - h + jy)
    lo_pos, hi_pos = c - h - 1.0, c + h + 1.0
    if model == "moffat":
        p0 = [amp0, *pos, 4.0, 3.0, sky]
        lower = [0.0, lo_pos, lo_pos, 0.5, 1.01, -np.inf]
        upper = [np.inf, hi_pos, hi_pos, float(size), 20.0, np.inf]
        params, ok = _fit(moffat, stamp, p0, lower, upper)
    elif model == "gaussian":
        p0 = [amp0, *pos, 4.0, sky]
        lower = [0.0, lo_pos, lo_pos, 0.5, -np.inf]
        upper = [np.inf, hi_pos, hi_pos, float(size), np.inf]
        params, ok = _fit(gaussian, stamp, p0, lower, upper)
    else:
        raise ValueError(f"unknown PSF model {model!r}; use 'moffat' or 'gaussian'")
    return params if ok else np.full(len(params), np.nan)


def measure_stamps(stamps, pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC, detect_nsigma: float = DETECT_NSIGMA,
                   max_adu: float = MAX_ADU, gaussian_fit: bool = True) -> dict:
    """Measure sky, noise and PSF width of stamps (N, S, S) in ADU with sky included.

    Returns a dict of (N,) arrays:
    - `sky`: median of the outer 3-pixel ring (ADU);
    - `noise`: robust std (1.4826 MAD) of that ring (ADU);
    - `peak_snr`: (max of the central 5x5 pixels - sky) / noise;
    - `fitted`: the source was fitted (peak_snr > detect_nsigma, no pixel above max_adu, fit converged);
    - `fwhm_arcsec`, `beta`: FWHM and beta of a circular Moffat + constant fit (NaN where not fitted);
    - `fwhm_gauss_arcsec`: FWHM of a circular Gaussian + constant fit (NaN where not fitted or not asked);
    - `noise_clean`: robust std of the ring after subtracting the fitted Moffat (= `noise` where not fitted).
    """
    st = np.asarray(stamps, dtype=float)
    if st.ndim != 3 or st.shape[1] != st.shape[2]:
        raise ValueError(f"stamps must have shape (N, S, S), got {st.shape}")
    n, size = st.shape[0], st.shape[1]
    ring = border_mask(size)
    edge = st[:, ring]
    sky = np.median(edge, axis=1)
    noise = robust_std(edge)
    c, h = size // 2, CENTRE_HALF_WIDTH_PX
    peak = st[:, c - h:c + h + 1, c - h:c + h + 1].max(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        peak_snr = (peak - sky) / noise
    out = {"sky": sky, "noise": noise, "peak_snr": peak_snr, "fitted": np.zeros(n, bool),
           "fwhm_arcsec": np.full(n, np.nan), "beta": np.full(n, np.nan),
           "fwhm_gauss_arcsec": np.full(n, np.nan), "noise_clean": noise.copy()}
    yy, xx = np.mgrid[:size, :size].astype(float)
    candidates = np.flatnonzero((peak_snr > detect_nsigma) & (st.max(axis=(1, 2)) <= max_adu))
    for i in candidates:
        p = fit_psf(st[i], sky[i], "moffat")
        if not np.all(np.isfinite(p)):
            continue
        out["fitted"][i] = True
        out["fwhm_arcsec"][i] = p[3] * pixel_scale_arcsec
        out["beta"][i] = p[4]
        out["noise_clean"][i] = robust_std((st[i] - moffat(p[:5], xx, yy))[ring])
        if gaussian_fit:
            g = fit_psf(st[i], sky[i], "gaussian")
            out["fwhm_gauss_arcsec"][i] = g[3] * pixel_scale_arcsec
    return out


def ratios(meas: dict, sky_logged, seeing_logged, gain, read_noise_e) -> dict:
    """Per-stamp measured/expected ratios: sky/logged sky, noise (and noise_clean)/expected, FWHM/seeing."""
    exp = expected_noise(meas["sky"], gain, read_noise_e)
    return {"sky": meas["sky"] / np.asarray(sky_logged, float),
            "noise": meas["noise"] / exp,
            "noise_clean": meas["noise_clean"] / exp,
            "fwhm": meas["fwhm_arcsec"] / np.asarray(seeing_logged, float),
            "fwhm_gauss": meas["fwhm_gauss_arcsec"] / np.asarray(seeing_logged, float)}


def summary(r: dict, meas: dict) -> dict:
    """Median ratios (NaNs ignored) and counts."""
    med = lambda a: float(np.nanmedian(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    return {"n": len(meas["sky"]), "n_fit": int(meas["fitted"].sum()), "sky": med(r["sky"]),
            "noise": med(r["noise"]), "noise_clean": med(r["noise_clean"]), "fwhm": med(r["fwhm"]),
            "fwhm_gauss": med(r["fwhm_gauss"]), "beta": med(meas["beta"])}


# ----------------------------------------------------------------------------------------------- data
def default_shared_dir() -> Path:
    """$STAMPSEQ_SHARED, else `<repo root>/../shared`."""
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared"


def load_real(npz_path, class_name: str = NV_CLASS, seeing_limit_arcsec: float | None = 2.0) -> dict:
    """Frames of the real objects of `class_name` (g band, logged seeing and sky known, seeing <= limit).

    Returns stamps (F, S, S) float32, seeing_arcsec, sky_adu, object (index of the object per frame) and
    n_dropped (frames left out by the cuts).
    """
    d = np.load(npz_path)
    names = [str(x) for x in d["class_names"]]
    if class_name not in names:
        raise ValueError(f"{npz_path}: no class {class_name!r} in {names}")
    off, label = d["offsets"], d["label"]
    objs = np.flatnonzero(label == names.index(class_name))
    frames = np.concatenate([np.arange(off[k], off[k + 1]) for k in objs])
    obj = np.concatenate([np.full(off[k + 1] - off[k], k) for k in objs])
    see, sky = d["seeing_arcsec"][frames], d["sky_adu"][frames]
    keep = (d["filter_code"][frames] == 0) & np.isfinite(see) & np.isfinite(sky)
    if seeing_limit_arcsec is not None:
        keep &= see <= seeing_limit_arcsec
    return {"stamps": d["stamps"][frames[keep]], "seeing_arcsec": see[keep], "sky_adu": sky[keep],
            "object": obj[keep], "n_dropped": int((~keep).sum())}


def simulate_nonvariables(conditions_dir, n_per_class: int, seed: int, out_h5) -> dict:
    """Simulate non-variable stars with the real logs; valid epochs flattened to frames."""
    import h5py

    from simulator.run import simulate
    from simulator.settings import SimConfig

    # whole field sequences (no N_d cap, start at the first epoch), like the real stamps' full sequences
    cfg = SimConfig(classes=("nonvariable",), n_per_class=n_per_class, seed=seed, max_epochs=None, min_dates=10_000,
                    conditions=str(conditions_dir), progress=False, shard_size=64)
    simulate(cfg, out_h5, overwrite=True)
    with h5py.File(out_h5, "r") as f:
        m = f["mask"][:]
        out = {"stamps": f["stamps"][:][m]}
        for k in ("seeing_arcsec", "sky_adu", "gain", "read_noise"):
            out[k] = f[f"conditions/{k}"][:][m].astype(float)
        out["mag"] = f["truth/mag"][:][m].astype(float)
        out["true_fwhm_arcsec"] = f["truth/psf_fwhm_arcsec"][:][m].astype(float)
    out["seeing_limit_arcsec"] = cfg.seeing_limit_arcsec
    return out


def compare(data_dir, n_per_class: int = 200, seed: int = 0, workdir=None) -> dict:
    """Simulate, load the real NV frames, measure both; everything the figure and the summary need."""
    data_dir = Path(data_dir)
    cond = data_dir / "hits2015"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        sim = simulate_nonvariables(cond, n_per_class, seed, Path(tmp) / "nonvariable.h5")
    real = load_real(cond / "real_dev.npz", seeing_limit_arcsec=sim["seeing_limit_arcsec"])
    from photometry.real import camera_medians

    gain, rn, _ = camera_medians(cond / "camera.csv")  # the CCDs' medians: a stamp does not say its CCD
    mr, ms = measure_stamps(real["stamps"]), measure_stamps(sim["stamps"])
    rr = ratios(mr, real["sky_adu"], real["seeing_arcsec"], gain, rn)
    rs = ratios(ms, sim["sky_adu"], sim["seeing_arcsec"], sim["gain"], sim["read_noise"])
    # the PSF-width relation of the real stars of every class (the simulator's calibration), and how well the
    # fit measures a known width on simulated stamps (its own scatter, to subtract from the real scatter)
    stars = [load_real(cond / "real_dev.npz", c, sim["seeing_limit_arcsec"]) for c in STAR_CLASSES]
    seeing = np.concatenate([x["seeing_arcsec"] for x in stars])
    fwhm = np.concatenate([measure_stamps(x["stamps"])["fwhm_arcsec"] for x in stars])
    ok = np.isfinite(fwhm)
    slope, offset = np.polyfit(seeing[ok], fwhm[ok], 1)
    fit_scatter = robust_std(np.log(ms["fwhm_arcsec"] / sim["true_fwhm_arcsec"])[ms["fitted"]])
    relation = {"n": int(ok.sum()), "slope": float(slope), "offset_arcsec": float(offset),
                "scatter": float(robust_std(np.log(fwhm[ok] / (slope * seeing[ok] + offset)))),
                "fit_scatter": float(fit_scatter)}
    return {"real": real, "sim": sim, "meas_real": mr, "meas_sim": ms, "ratio_real": rr, "ratio_sim": rs,
            "sum_real": summary(rr, mr), "sum_sim": summary(rs, ms), "real_gain": gain, "real_read_noise": rn,
            "psf_relation": relation}


# ----------------------------------------------------------------------------------------------- output
def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rr, rs, mr, ms = res["ratio_real"], res["ratio_sim"], res["meas_real"], res["meas_sim"]
    real, sim = res["real"], res["sim"]
    kw_r = dict(color="C3", alpha=0.55, density=True, label="real NV")
    kw_s = dict(color="C0", alpha=0.55, density=True, label="sim nonvariable")
    fig, ax = plt.subplots(2, 3, figsize=(14, 8.5))

    def hist(a, key, bins, title):
        for r, kw in ((rs, kw_s), (rr, kw_r)):
            x = r[key][np.isfinite(r[key])]
            a.hist(np.clip(x, bins[0], bins[-1]), bins=bins, **kw)
            a.axvline(np.median(x), color=kw["color"], ls="--")
        a.axvline(1.0, color="k", lw=0.8)
        a.set_title(title)
        a.legend(fontsize=8)

    hist(ax[0, 0], "sky", np.linspace(0.9, 1.1, 41), "(a) sky: border median / logged sky")
    hist(ax[0, 1], "noise_clean", np.linspace(0.7, 1.5, 41),
         "(b) noise: border 1.4826 MAD / expected\n(source model subtracted)")
    hist(ax[0, 2], "fwhm", np.linspace(0.5, 1.5, 41), "(c) FWHM (Moffat fit) / logged seeing")

    a = ax[1, 0]
    a.scatter(sim["sky_adu"], ms["sky"], s=3, color="C0", alpha=0.4, label="sim")
    a.scatter(real["sky_adu"], mr["sky"], s=8, color="C3", alpha=0.7, label="real NV")
    lim = [min(sim["sky_adu"].min(), real["sky_adu"].min()), max(sim["sky_adu"].max(), real["sky_adu"].max())]
    a.plot(lim, lim, "k-", lw=0.8)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("logged sky [ADU]")
    a.set_ylabel("measured sky [ADU]")
    a.legend(fontsize=8)

    a = ax[1, 1]
    for r, kw, lab in ((rs, kw_s, "sim"), (rr, kw_r, "real NV")):
        a.hist(np.clip(r["noise"], 0.7, 2.0), bins=np.linspace(0.7, 2.0, 53), color=kw["color"], alpha=0.55,
               density=True, label=f"{lab} (raw border)")
    a.axvline(1.0, color="k", lw=0.8)
    a.set_title("(b') noise / expected, raw border ring\n(includes star wings, neighbours)")
    a.legend(fontsize=8)

    a = ax[1, 2]
    fs, fr = ms["fitted"], mr["fitted"]
    a.scatter(sim["seeing_arcsec"][fs], ms["fwhm_arcsec"][fs], s=3, color="C0", alpha=0.4, label="sim, Moffat")
    a.scatter(real["seeing_arcsec"][fr], mr["fwhm_arcsec"][fr], s=8, color="C3", alpha=0.7, label="real, Moffat")
    a.scatter(real["seeing_arcsec"][fr], mr["fwhm_gauss_arcsec"][fr], s=8, marker="x", color="C1", alpha=0.6,
              label="real, Gaussian")
    lim = [0.7, 2.1]
    a.plot(lim, lim, "k-", lw=0.8)
    a.set_xlabel("logged seeing [arcsec]")
    a.set_ylabel("measured FWHM [arcsec]")
    a.legend(fontsize=8)

    srl, ssm = res["sum_real"], res["sum_sim"]
    fig.suptitle(f"HiTS 2015 non-variable stars, real ({srl['n']} frames of 10 objects) vs simulated "
                 f"({ssm['n']} frames); real noise uses median CCD gain {res['real_gain']:.2f}, "
                 f"read noise {res['real_read_noise']:.2f} e-", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_line(res: dict, seconds: float) -> str:
    r, s, p = res["sum_real"], res["sum_sim"], res["psf_relation"]
    return (f"compare_real: frames real {r['n']} (fitted {r['n_fit']}) sim {s['n']} (fitted {s['n_fit']}) | "
            f"median sky/logged real {r['sky']:.3f} sim {s['sky']:.3f} | "
            f"noise/expected real {r['noise']:.3f} sim {s['noise']:.3f} "
            f"(source-subtracted real {r['noise_clean']:.3f} sim {s['noise_clean']:.3f}) | "
            f"FWHM/seeing Moffat real {r['fwhm']:.3f} sim {s['fwhm']:.3f} "
            f"(Gaussian real {r['fwhm_gauss']:.3f} sim {s['fwhm_gauss']:.3f}; "
            f"beta real {r['beta']:.2f} sim {s['beta']:.2f}) | real PSF relation ({p['n']} star frames) FWHM = "
            f"{p['slope']:.3f} seeing {p['offset_arcsec']:+.3f}\", scatter {p['scatter']:.3f} "
            f"(fit alone {p['fit_scatter']:.3f}) | {seconds:.1f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=default_shared_dir(),
                   help=f"shared data directory holding hits2015/ (default: ${SHARED_ENV} or <repo>/../shared)")
    p.add_argument("--n-per-class", type=int, default=200, help="simulated non-variable stars (default 200)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                   help="where compare_real.png goes (default benchmarks/results)")
    args = p.parse_args(argv)
    cond = args.data / "hits2015"
    if not (cond / "real_dev.npz").exists() or not (cond / "camera.csv").exists():
        p.error(f"{cond}: real_dev.npz and the HiTS logs not found; give --data or set ${SHARED_ENV}")
    t0 = time.perf_counter()
    res = compare(args.data, args.n_per_class, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(res, args.out_dir / "compare_real.png")
    print(figure_line(res, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
