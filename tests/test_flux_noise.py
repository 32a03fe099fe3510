"""Physics of counts and noise: eq. 1, enclosed flux, CCD noise variance, saturation."""
import galsim
import numpy as np
import pytest

from simulator.flux import adu_to_mag, mag_to_adu
from simulator.noise import add_ccd_noise
from simulator.profiles import REFERENCE_GSPARAMS, galsim_profile
from simulator.render import Renderer, StampParams


def test_eq1_values_and_inverse():
    # m = zp - 2.5 log10(ADU / T): a 20 mag source with zp 25 in 86 s gives 86 * 100 ADU
    assert mag_to_adu(20.0, 25.0, 86.0) == pytest.approx(8600.0)
    assert adu_to_mag(8600.0, 25.0, 86.0) == pytest.approx(20.0)
    assert mag_to_adu(np.inf, 25.0, 86.0) == 0.0
    assert adu_to_mag(0.0, 25.0, 86.0) == np.inf


@pytest.mark.parametrize("seeing_px,dx,dy", [(3.7, 0.0, 0.0), (5.0, 0.31, -0.22), (7.4, -0.49, 0.45)])
def test_noiseless_flux_is_eq1_times_enclosed_fraction(seeing_px, dx, dy):
    mag, zp, t_exp = 19.3, 25.05, 86.0
    flux = mag_to_adu(mag, zp, t_exp)
    stamp = Renderer().render(StampParams.point_sources(flux, seeing_px, dx, dy))[0]
    # enclosed fraction of the pixel-convolved PSF in the 21x21 stamp, from a large GalSim image
    big = galsim_profile("moffat", seeing_px, 2.5, REFERENCE_GSPARAMS).drawImage(
        nx=401, ny=401, scale=1.0, offset=(dx, dy)).array
    enclosed = big[190:211, 190:211].sum() / big.sum()
    assert 0.8 < enclosed < 1.0  # beta=2.5 Moffat wings: up to ~12% falls outside 21x21 at 2" seeing
    assert stamp.sum() == pytest.approx(flux * enclosed, rel=2e-3)


def test_noise_mean_and_variance_match_gain_read_noise_sky():
    rng = np.random.default_rng(1)
    image = np.zeros((21, 21))
    image[8:13, 8:13] = 800.0  # a bright patch: source photons add their own Poisson noise
    sky, gain, rn = 120.0, 4.0, 7.0
    noisy = add_ccd_noise(rng, np.broadcast_to(image, (4000, 21, 21)), np.full(4000, sky), gain, rn, 1e9)
    expected_var = (image + sky) / gain + (rn / gain) ** 2
    var = noisy.var(axis=0, ddof=1)
    assert np.allclose(noisy.mean(axis=0), image + sky, rtol=0, atol=5 * np.sqrt(expected_var / 4000).max())
    # 4000 samples: the variance estimate has ~2.2% rms; average over regions to test to ~1%
    assert var[10, 10] / expected_var[10, 10] == pytest.approx(1.0, abs=0.1)
    assert var[image > 0].mean() / expected_var[image > 0].mean() == pytest.approx(1.0, abs=0.02)
    assert var[image == 0].mean() / expected_var[image == 0].mean() == pytest.approx(1.0, abs=0.02)


def test_saturation_clips_bright_pixels_only():
    rng = np.random.default_rng(2)
    flux = mag_to_adu(12.0, 25.0, 86.0)
    clean = Renderer().render(StampParams.point_sources(flux, 4.0))
    noisy = add_ccd_noise(rng, clean, [100.0], 4.0, 6.0, 40000.0)[0]
    assert noisy.max() == pytest.approx(40000.0)
    saturated = noisy >= 40000.0
    assert saturated[10, 10] and not saturated[0, 0]
    assert (clean[0][saturated] + 100.0 > 40000.0 - 6 * np.sqrt(40000.0 / 4.0)).all()


def test_galsim_ccdnoise_has_the_same_variance():
    """Cross-check against GalSim's own CCDNoise on a flat image (same gain, read noise, sky)."""
    sky, gain, rn = 150.0, 3.8, 6.0
    img = galsim.ImageD(200, 200, init_value=sky)
    img.addNoise(galsim.CCDNoise(galsim.BaseDeviate(5), gain=gain, read_noise=rn))
    ours = add_ccd_noise(np.random.default_rng(5), np.zeros((1, 200, 200)), [sky], gain, rn, 1e9)[0]
    assert ours.var() == pytest.approx(img.array.var(), rel=0.03)
