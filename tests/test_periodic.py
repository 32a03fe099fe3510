"""Physics checks of the pulsating-star light curves: RR Lyrae (Sesar et al. 2010) and Cepheids (Yoachim et al.
2009), embedded default always, real-data mode when the shared templates are present."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from simulator import cepheid, derive_cepheid, derive_rrlyrae, rrlyrae, rrlyrae_builtin

PUBLIC_KEYS = {"period_d", "amplitude_mag", "template", "subtype", "epoch_mjd"}
N_DRAWS = 2000
MJD0 = 57070.0  # HiTS 2015 campaign
PHASE_GRID = np.arange(2000) / 2000


@pytest.fixture(params=["builtin", "real"])
def rr_model(request) -> rrlyrae.Model:
    if request.param == "builtin":
        return rrlyrae.load_model(None)
    return rrlyrae.load_model(request.getfixturevalue("templates_dir"))


@pytest.fixture(params=["builtin", "real"])
def cep_model(request) -> cepheid.Model:
    if request.param == "builtin":
        return cepheid.load_model(None)
    return cepheid.load_model(request.getfixturevalue("templates_dir"))


def _draws(model, n: int = N_DRAWS, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [model.draw(rng) for _ in range(n)]


def _one_cycle(params: dict) -> np.ndarray:
    return MJD0 + params["period_d"] * PHASE_GRID


def _rise_fraction(mag: np.ndarray) -> float:
    """Phase from minimum light (largest mag) forward to maximum light (smallest), on PHASE_GRID samples."""
    return ((int(np.argmin(mag)) - int(np.argmax(mag))) % len(mag)) / len(mag)


def _check_interface(model, params: dict) -> None:
    assert set(k for k in params if not k.startswith("_")) == PUBLIC_KEYS
    assert isinstance(params["template"], str) and isinstance(params["subtype"], str)
    assert 0.0 <= params["epoch_mjd"] < params["period_d"]
    mjd = MJD0 + np.linspace(0, 30, 12).reshape(3, 4)
    assert model.delta_mag(params, mjd).shape == (3, 4)


def _check_light_curve(model, params: dict, mean_atol_mag: float) -> None:
    """Periodic, zero phase average, peak-to-peak = amplitude_mag."""
    t = _one_cycle(params)
    dm = model.delta_mag(params, t)
    np.testing.assert_allclose(model.delta_mag(params, t + params["period_d"]), dm, atol=1e-8)
    np.testing.assert_allclose(model.delta_mag(params, t + 7 * params["period_d"]), dm, atol=1e-8)
    assert abs(dm.mean()) < mean_atol_mag
    assert np.ptp(dm) == pytest.approx(params["amplitude_mag"], rel=0.01)


# ---- RR Lyrae -------------------------------------------------------------------------------------------

def test_rrlyrae_sources(templates_dir: Path) -> None:
    assert rrlyrae.load_model(None).source == "builtin"
    assert rrlyrae.load_model(templates_dir).source == "sesar2010"


def test_rrlyrae_population(rr_model: rrlyrae.Model) -> None:
    draws = _draws(rr_model)
    for d in draws[:50]:
        _check_interface(rr_model, d)
    period_d = np.array([d["period_d"] for d in draws])
    amp_mag = np.array([d["amplitude_mag"] for d in draws])
    ab = np.array([d["subtype"] == "RRab" for d in draws])
    assert set(d["subtype"] for d in draws) == {"RRab", "RRc"}
    assert np.all((period_d >= 0.2) & (period_d <= 1.0))
    assert np.mean((amp_mag >= 0.2) & (amp_mag <= 1.5)) >= 0.95
    assert 0.70 < ab.mean() < 0.86  # Sesar: 379 RRab / 483
    # Bailey diagram: RRab pulsate slower and with larger amplitude than RRc (first overtone)
    assert period_d[ab].mean() > 1.4 * period_d[~ab].mean()
    assert amp_mag[ab].mean() > 1.5 * amp_mag[~ab].mean()
    assert 0.5 < np.median(period_d[ab]) < 0.7 and 0.28 < np.median(period_d[~ab]) < 0.40
    # within RRab, amplitude falls with period (Oosterhoff/Bailey slope)
    assert np.corrcoef(np.log10(period_d[ab]), amp_mag[ab])[0, 1] < -0.4


def test_rrlyrae_light_curves(rr_model: rrlyrae.Model) -> None:
    for d in _draws(rr_model, 60, seed=2):
        _check_light_curve(rr_model, d, mean_atol_mag=1e-3)


def test_rrab_fast_rise_slow_decline(rr_model: rrlyrae.Model) -> None:
    rrab = [d for d in _draws(rr_model, 400, seed=3) if d["subtype"] == "RRab"]
    assert len({d["template"] for d in rrab}) >= 15  # most of the 21 RRab templates exercised
    rise = np.array([_rise_fraction(rr_model.delta_mag(d, _one_cycle(d))) for d in rrab])
    assert np.all(rise < 0.3)
    assert np.median(rise) < 0.2


def test_fourier_templates_match_sesar(templates_dir: Path) -> None:
    builtin, real = rrlyrae.load_model(None), rrlyrae.load_model(templates_dir)
    data = rrlyrae.read_sesar2010(templates_dir / rrlyrae.SESAR_DIR)
    assert set(rrlyrae_builtin.TEMPLATES) == set(data.template_mag)
    for t, phase in data.template_phase.items():
        params = {"period_d": 1.0, "epoch_mjd": 0.0, "amplitude_mag": 1.0, "_template_id": t}
        residual = builtin.delta_mag(params, phase) - real.delta_mag(params, phase)
        assert np.sqrt(np.mean(residual ** 2)) < 0.01, t  # normalised units (template spans 0..1)


def test_rrlyrae_builtin_is_script_output(templates_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rrlyrae_builtin.py"
    derive_rrlyrae.main(["--templates", str(templates_dir), "--out", str(out)])
    spec = importlib.util.spec_from_file_location("regenerated", out)
    regenerated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerated)

    def same(a, b) -> bool:  # numbers are rounded to 6 digits: allow a last-digit flip between BLAS builds
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, str):
            return a == b
        return np.allclose(a, b, rtol=1e-5, atol=1e-10)

    for name in ("N_HARMONICS", "SUBTYPE_FRACTION", "WITHIN_TEMPLATE_COV", "TEMPLATES"):
        assert same(getattr(rrlyrae_builtin, name), getattr(regenerated, name)), name


# ---- Cepheids -------------------------------------------------------------------------------------------

def test_cepheid_sources(templates_dir: Path) -> None:
    assert cepheid.load_model(None).source == "builtin"
    assert cepheid.load_model(templates_dir).source == "yoachim2009"


@pytest.mark.parametrize("period_d, v_amp_mag, g_amp_mag",
                         [(3.0, 0.69, 0.875), (6.0, 0.60, 0.793), (15.0, 0.92, 1.240), (30.0, 0.99, 1.310)])
def test_cepheid_amplitude_period(cep_model: cepheid.Model, period_d: float, v_amp_mag: float,
                                  g_amp_mag: float) -> None:
    """The mean relation (no pc scatter) reproduces the PROVENANCE V amplitudes; g = 0.4 V + 0.6 B swings more."""
    angle = 2 * np.pi * PHASE_GRID[:, None] * np.arange(1, cepheid.N_HARMONICS + 1)

    def ptp(sin_cos: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.ptp(np.sin(angle) @ sin_cos[0] + np.cos(angle) @ sin_cos[1]))

    regime, coeffs = cep_model.coefficients(period_d, np.zeros(cepheid.N_PC))
    assert regime == ("short" if period_d < 10 else "long")
    v, b, i = (ptp(cepheid.band_fourier(coeffs, band)) for band in "VBI")
    g = ptp(cepheid.g_fourier(coeffs))
    assert v == pytest.approx(v_amp_mag, abs=0.01) and g == pytest.approx(g_amp_mag, abs=0.01)
    assert 1.2 * v < g < b and i < v
    g_sin, g_cos = cepheid.g_fourier(coeffs)
    rise = _rise_fraction(np.sin(angle) @ g_sin + np.cos(angle) @ g_cos)
    if period_d < 8:  # short-period Cepheids: fast rise, slow decline (the bump region near 10 d is symmetric)
        assert rise < 0.35


def test_cepheid_population(cep_model: cepheid.Model) -> None:
    draws = _draws(cep_model, 1000)
    for d in draws[:50]:
        _check_interface(cep_model, d)
    for d in draws[:60]:
        _check_light_curve(cep_model, d, mean_atol_mag=1e-9)
    period_d = np.array([d["period_d"] for d in draws])
    amp_mag = np.array([d["amplitude_mag"] for d in draws])
    assert np.all((period_d >= 1.0) & (period_d <= 80.0))
    assert 2.5 < np.median(period_d) < 4.0  # OGLE LMC fundamental-mode peak near 3 d
    assert all(d["subtype"] == ("short" if d["period_d"] < 10 else "long") for d in draws)
    assert all(d["template"] == f"yoachim-{d['subtype']}" for d in draws)
    assert np.mean((amp_mag > 0.2) & (amp_mag < 1.6)) >= 0.97
    assert 0.7 < np.median(amp_mag) < 1.0


def test_cepheid_builtin_equals_real(templates_dir: Path, tmp_path: Path) -> None:
    builtin, real = cepheid.load_model(None), cepheid.load_model(templates_dir)
    for name in ("short", "long"):
        for field in ("ave_vals", "eigenvectors", "poly_fits", "poly_spread"):
            assert np.array_equal(getattr(builtin.regimes[name], field), getattr(real.regimes[name], field))
    mjd = MJD0 + np.sort(np.random.default_rng(0).uniform(0, 100, 50))
    for a, b in zip(_draws(builtin, 200, seed=4), _draws(real, 200, seed=4)):
        assert a["period_d"] == b["period_d"] and a["amplitude_mag"] == b["amplitude_mag"]
        assert np.array_equal(builtin.delta_mag(a, mjd), real.delta_mag(b, mjd))
    out = tmp_path / "cepheid_builtin.py"
    derive_cepheid.main(["--templates", str(templates_dir), "--out", str(out)])
    assert out.read_text() == Path(cepheid.__file__).with_name("cepheid_builtin.py").read_text()


# ---- both -----------------------------------------------------------------------------------------------

def _check_deterministic(model) -> None:
    a, b = _draws(model, 20, seed=7), _draws(model, 20, seed=7)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert any(x["period_d"] != y["period_d"] for x, y in zip(a, _draws(model, 20, seed=8)))


def _check_phases_uniform(model) -> None:
    """epoch_mjd / period_d, the phase at MJD 0, is uniform on [0, 1): stars of one period are not in step."""
    draws = _draws(model, 500, seed=9)
    pvalue = stats.kstest([d["epoch_mjd"] / d["period_d"] for d in draws], "uniform").pvalue
    assert pvalue > 1e-3, pvalue


def test_rrlyrae_phases_uniform(rr_model: rrlyrae.Model) -> None:
    _check_phases_uniform(rr_model)


def test_cepheid_phases_uniform(cep_model: cepheid.Model) -> None:
    _check_phases_uniform(cep_model)


def test_rrlyrae_deterministic(rr_model: rrlyrae.Model) -> None:
    _check_deterministic(rr_model)


def test_cepheid_deterministic(cep_model: cepheid.Model) -> None:
    _check_deterministic(cep_model)


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        rrlyrae.load_model(tmp_path / "nowhere")
    for module in (rrlyrae, cepheid):  # a template directory without the model's folder is an error
        with pytest.raises(FileNotFoundError, match="template directory"):
            module.load_model(tmp_path)
    sesar = tmp_path / rrlyrae.SESAR_DIR
    sesar.mkdir()
    with pytest.raises(FileNotFoundError, match="table2.dat.gz"):
        rrlyrae.load_model(tmp_path)
    with gzip.open(sesar / rrlyrae.TABLE2, "wt") as f:
        f.write("#id type P\n1 ab 0.5\n")
    with pytest.raises(ValueError, match="table2.dat.gz"):
        rrlyrae.load_model(tmp_path)
    yoachim = tmp_path / cepheid.YOACHIM_DIR
    yoachim.mkdir()
    with pytest.raises(FileNotFoundError, match="short_struc.fits"):
        cepheid.load_model(tmp_path)
    (yoachim / "short_struc.fits").write_bytes(b"not a fits file")
    with pytest.raises(ValueError, match="short_struc.fits"):
        cepheid.load_model(tmp_path)
