"""Classical Cepheid g-band light curves from the Yoachim et al. 2009 (AJ 137, 4697) PCA/Fourier model.

Yoachim et al. fit 8-harmonic Fourier series to the B, V, I light curves of a training set of Cepheids
(526 with P < 10 d, "short"; 74 with P >= 10 d, "long": the rows of the files' PCA column), ran a PCA on the
48 coefficients of each set and fit the first 4 principal components as 7th-order polynomials in log10 P.
For a period P (days):
    pc_i   = sum_j POLY_FITS[j, i] log10(min(P, 85))^j + POLY_SPREAD[i] * N(0, 1),    i = 0..3
    coeffs = AVE_VALS + EIGENVECTORS[0:4].T @ pc  = [alpha_I, beta_I, alpha_V, beta_V, alpha_B, beta_B] (8 each)
    m_band(phase) - <m_band> = sum_k alpha_k sin(2 pi k phase) + beta_k cos(2 pi k phase),  k = 1..8.
POLY_SPREAD is taken as the Gaussian scatter of each pc about its polynomial: it is in the units of the
training stars' pc scores (the PCA column) and just below their total spread (short: 0.024, 0.0023, 0.0009,
0.0005 vs score sd 0.025, 0.0041, 0.0010, 0.0005), i.e. the rms about the period trend. Components are drawn
independently (PCA scores are uncorrelated). This reproduces the training set's V amplitudes: 1-99th
percentiles 0.22-1.09 mag drawn vs 0.24-1.09 (short), 0.49-1.28 vs 0.38-1.21 (long).

g from B and V (Jester et al. 2005, AJ 130, 873, stars with R-I < 1.15): g = V + 0.60 (B - V) - 0.12, applied
to the variable part: delta_g = 0.40 delta_V + 0.60 delta_B (SDSS g; DECam g differs by a colour term of a few
hundredths of the amplitude, neglected).

Periods: log10 P ~ N(0.5, 0.25) truncated to 1-80 d, approximating the fundamental-mode classical Cepheids
of the OGLE-III LMC catalogue (Soszynski et al. 2008, Acta Astron. 58, 163: 1848 F-mode stars, period
histogram peaking near 3 d with a tail past 30 d). Epoch uniform in one period (random phase).

Sources: real (`load_model(templates_dir)` with `templates_dir/cepheid_yoachim2009/{short,long}_struc.fits`,
Yoachim's files, see PROVENANCE.txt) or builtin (`cepheid_builtin`, the same published coefficients written
out by `python -m simulator.derive_cepheid`); the two give identical light curves.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

YOACHIM_DIR = "cepheid_yoachim2009"
REGIME_FILES = {"short": "short_struc.fits", "long": "long_struc.fits"}
N_PC = 4
N_HARMONICS = 8
N_COEFFS = 6 * N_HARMONICS  # alpha/beta for I, V, B
N_POLY = 8
LONG_PERIOD_D = 10.0        # short_struc below, long_struc at and above
MAX_MODEL_PERIOD_D = 85.0   # the polynomials are evaluated at min(P, 85 d)
BAND_SLICES = {"I": (slice(0, 8), slice(8, 16)), "V": (slice(16, 24), slice(24, 32)),
               "B": (slice(32, 40), slice(40, 48))}  # (sin, cos) coefficients in the 48-vector
G_FROM_B = 0.60             # Jester et al. 2005: g = V + 0.60 (B - V) - 0.12
LOG10_PERIOD_MEAN, LOG10_PERIOD_SIGMA = 0.5, 0.25
PERIOD_RANGE_D = (1.0, 80.0)
AMPLITUDE_GRID = 2048       # phase points on which the peak-to-peak amplitude is measured
#: Plausible values in a *_struc.fits, element by element: (low, high), inclusive. The real files: |AVE_VALS| <=
#: 0.57 mag, |EIGENVECTORS| <= 538, |POLY_FITS| <= 2594, POLY_SPREAD 0.0005-0.024.
COLUMN_RANGES = {"AVE_VALS": (-2.0, 2.0), "EIGENVECTORS": (-1e4, 1e4), "POLY_FITS": (-1e5, 1e5),
                 "POLY_SPREAD": (0.0, 1.0)}
#: The model's g peak-to-peak amplitude at the period trend and at +-3 sigma of every pc, across each regime's
#: periods, must stay below this (real files: 0.28-2.1 mag).
MAX_MODEL_AMPLITUDE_MAG = 4.0
REGIME_PERIODS_D = {"short": (PERIOD_RANGE_D[0], LONG_PERIOD_D), "long": (LONG_PERIOD_D, MAX_MODEL_PERIOD_D)}


@dataclass(frozen=True)
class Regime:
    """Yoachim's PCA model for one period range (the columns of one *_struc.fits)."""

    ave_vals: np.ndarray      # (48,)
    eigenvectors: np.ndarray  # (4, 48): the first N_PC rows of EIGENVECTORS
    poly_fits: np.ndarray     # (8, 4): pc_i = sum_j poly_fits[j, i] x^j
    poly_spread: np.ndarray   # (4,)


def _read_regime(path: Path) -> Regime:
    """One *_struc.fits (MWRFITS binary table, one row)."""
    from astropy.io import fits  # only the real mode needs astropy

    if not path.is_file():
        raise FileNotFoundError(f"{path}: Yoachim et al. 2009 Cepheid model file not found")
    expected = {"AVE_VALS": (N_COEFFS,), "EIGENVECTORS": (N_COEFFS, N_COEFFS), "POLY_FITS": (N_POLY, N_PC),
                "POLY_SPREAD": (N_PC,)}
    try:
        with fits.open(path) as hdul:
            table = hdul[1].data
            columns = {name: np.array(table[name][0], dtype=float) for name in expected}
    except (OSError, IndexError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a Yoachim model table with columns {sorted(expected)} ({err})") from err
    for name, shape in expected.items():
        if columns[name].shape != shape:
            raise ValueError(f"{path}: column {name} has shape {columns[name].shape}, expected {shape}")
        lo, hi = COLUMN_RANGES[name]
        bad = np.flatnonzero(~((columns[name] >= lo) & (columns[name] <= hi)))  # NaN and inf fail too
        if len(bad):
            index = np.unravel_index(bad[0], shape)
            value = columns[name].flat[bad[0]]
            raise ValueError(f"{path}: HDU 1, column {name}, row 0, element {tuple(int(i) for i in index)}: value "
                             f"{value:g} is {'implausible' if np.isfinite(value) else 'not finite'} "
                             f"(expected {lo:g} to {hi:g}; {len(bad)} such value{'s' * (len(bad) > 1)})")
    return Regime(columns["AVE_VALS"], columns["EIGENVECTORS"][:N_PC], columns["POLY_FITS"], columns["POLY_SPREAD"])


def _check_amplitudes(path: Path, regime: str, model: Regime) -> None:
    """Refuse a model whose g light curves are implausible anywhere in the regime (see MAX_MODEL_AMPLITUDE_MAG)."""
    lo, hi = REGIME_PERIODS_D[regime]
    angle = 2.0 * np.pi * np.arange(256)[:, None] / 256 * np.arange(1, N_HARMONICS + 1)
    for period_d in np.geomspace(lo, hi, 30):
        powers = np.log10(period_d) ** np.arange(N_POLY)
        for sigma in (-3.0, 0.0, 3.0):
            coeffs = model.ave_vals + model.eigenvectors.T @ (powers @ model.poly_fits + sigma * model.poly_spread)
            sin, cos = g_fourier(coeffs)
            amplitude = float(np.ptp(np.sin(angle) @ sin + np.cos(angle) @ cos))
            if not amplitude <= MAX_MODEL_AMPLITUDE_MAG:
                raise ValueError(f"{path}: columns AVE_VALS, EIGENVECTORS, POLY_FITS, POLY_SPREAD give a g amplitude "
                                 f"of {amplitude:.3g} mag at P = {period_d:.3g} d ({sigma:+g} sigma), above "
                                 f"{MAX_MODEL_AMPLITUDE_MAG:g} mag: not a Cepheid model")


@functools.lru_cache(maxsize=4)
def _read_yoachim2009_cached(directory: str) -> dict[str, Regime]:
    regimes = {regime: _read_regime(Path(directory) / name) for regime, name in REGIME_FILES.items()}
    for regime, model in regimes.items():
        _check_amplitudes(Path(directory) / REGIME_FILES[regime], regime, model)
    return regimes


def read_yoachim2009(directory: str | Path) -> dict[str, Regime]:
    """Parse (once per directory) short_struc.fits and long_struc.fits in `directory` (= .../cepheid_yoachim2009)."""
    return _read_yoachim2009_cached(str(Path(directory).resolve()))


def band_fourier(coeffs: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) Fourier coefficients (mag, harmonics 1..8) of band I, V or B."""
    sin, cos = BAND_SLICES[band]
    return coeffs[sin], coeffs[cos]


def g_fourier(coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of g - <g> = (1 - 0.60) (V - <V>) + 0.60 (B - <B>) (Jester et al. 2005)."""
    (v_sin, v_cos), (b_sin, b_cos) = band_fourier(coeffs, "V"), band_fourier(coeffs, "B")
    return (1.0 - G_FROM_B) * v_sin + G_FROM_B * b_sin, (1.0 - G_FROM_B) * v_cos + G_FROM_B * b_cos


class Model:
    """Cepheid g light-curve model: `draw` one star, `delta_mag` its light curve."""

    def __init__(self, regimes: dict[str, Regime], source: str):
        self.regimes = regimes
        self.source = source
        angle = 2.0 * np.pi * np.arange(AMPLITUDE_GRID)[:, None] / AMPLITUDE_GRID * np.arange(1, N_HARMONICS + 1)
        self._grid_sin, self._grid_cos = np.sin(angle), np.cos(angle)

    def coefficients(self, period_d: float, pc_noise: np.ndarray) -> tuple[str, np.ndarray]:
        """(regime, 48 I/V/B Fourier coefficients in mag) at `period_d`, pc offset by pc_noise * POLY_SPREAD."""
        regime = "short" if period_d < LONG_PERIOD_D else "long"
        model = self.regimes[regime]
        powers = np.log10(min(period_d, MAX_MODEL_PERIOD_D)) ** np.arange(N_POLY)
        pc = powers @ model.poly_fits + model.poly_spread * pc_noise
        return regime, model.ave_vals + model.eigenvectors.T @ pc

    def draw(self, rng: np.random.Generator) -> dict:
        """One Cepheid: log-normal period, Yoachim coefficients with pc scatter, random phase."""
        lo, hi = np.log10(PERIOD_RANGE_D)
        while True:  # truncated normal in log10 P
            log10_period_d = rng.normal(LOG10_PERIOD_MEAN, LOG10_PERIOD_SIGMA)
            if lo <= log10_period_d <= hi:
                break
        period_d = float(10.0 ** log10_period_d)
        regime, coeffs = self.coefficients(period_d, rng.standard_normal(N_PC))
        sin, cos = g_fourier(coeffs)
        curve = self._grid_sin @ sin + self._grid_cos @ cos
        return {"period_d": period_d, "amplitude_mag": float(np.ptp(curve)), "template": f"yoachim-{regime}",
                "subtype": regime, "epoch_mjd": float(rng.uniform(0.0, period_d)), "_g_sin_mag": sin,
                "_g_cos_mag": cos}

    def delta_mag(self, params: dict, mjd: np.ndarray) -> np.ndarray:
        """g minus the phase-averaged g (mag) at `mjd`, same shape."""
        phase = np.mod((np.asarray(mjd, dtype=float) - params["epoch_mjd"]) / params["period_d"], 1.0)
        angle = 2.0 * np.pi * phase[..., None] * np.arange(1, N_HARMONICS + 1)
        return np.sin(angle) @ params["_g_sin_mag"] + np.cos(angle) @ params["_g_cos_mag"]


@functools.lru_cache(maxsize=1)
def _builtin_model() -> Model:
    from . import cepheid_builtin
    regimes = {name: Regime(np.array(r["AVE_VALS"]), np.array(r["EIGENVECTORS"]), np.array(r["POLY_FITS"]),
                            np.array(r["POLY_SPREAD"])) for name, r in cepheid_builtin.REGIMES.items()}
    return Model(regimes, "builtin")


def load_model(templates_dir: str | Path | None) -> Model:
    """Yoachim et al. 2009 from `templates_dir/cepheid_yoachim2009/` (None: the embedded copy).

    A missing `templates_dir`, or one without the Yoachim folder, raises FileNotFoundError.
    """
    if templates_dir is None:
        return _builtin_model()
    from .templates import template_folder

    folder = template_folder(templates_dir, YOACHIM_DIR)
    return Model(read_yoachim2009(folder), "yoachim2009")
