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


@pytest.mark.parametrize("mean", [0.0, 3.2, 10.0, 10.7, 47.0, 950.0, 2.4e5])
def test_poisson_counts_follow_the_poisson_law(mean):
    # the vectorised PTRS trial + numpy fallback: exact, so a chi-square against the Poisson pmf passes
    # (and a sampler off by a fraction of a percent in any bin fails it at this sample size)
    from scipy import stats

    n = 2_000_000
    rng = np.random.default_rng(11)
    adu = add_ccd_noise(rng, np.full((n // 400, 20, 20), mean), 0.0, 1.0, 0.0, 1e12).ravel().astype(np.float64)
    counts = np.rint(adu)
    assert np.array_equal(counts, adu)  # integers: no read noise here
    if mean == 0:
        assert not counts.any()
        return
    lo, hi = stats.poisson.ppf([1e-5, 1 - 1e-5], mean)
    edges = np.unique(np.linspace(lo, hi + 1, 60).astype(int))
    observed = np.histogram(counts, np.concatenate([[-np.inf], edges[1:-1], [np.inf]]))[0]
    cdf = stats.poisson.cdf(edges[1:-1] - 1, mean)
    expected = n * np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, len(expected) - 1) > 1e-3
    assert counts.mean() == pytest.approx(mean, abs=4 * np.sqrt(mean / n))
    assert counts.var() == pytest.approx(mean, rel=4 * np.sqrt(2 / n))


def test_read_noise_is_gaussian():
    from scipy import stats

    rng = np.random.default_rng(12)
    z = add_ccd_noise(rng, np.zeros((2001, 21, 21)), 0.0, 1.0, 1.0, 1e12).ravel()  # odd number of pixels
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert z.var() == pytest.approx(1.0, abs=0.01)
    assert abs(stats.skew(z)) < 0.01 and abs(stats.kurtosis(z)) < 0.02


def test_each_stream_noise_does_not_depend_on_the_others():
    from simulator.noise import add_ccd_noise_streams

    rng = np.random.default_rng(3)
    image = rng.gamma(0.5, 50.0, (7, 21, 21))
    counts = [3, 1, 3]  # odd pixel counts too
    args = lambda sl: (np.full(7, 90.0)[sl], np.full(7, 4.0)[sl], np.full(7, 6.0)[sl], np.full(7, 6e4)[sl])  # noqa: E731
    together = add_ccd_noise_streams([np.random.default_rng(s) for s in (1, 2, 3)], image, counts, *args(slice(None)))
    alone = add_ccd_noise_streams([np.random.default_rng(2)], image[3:4], [1], *args(slice(3, 4)))
    np.testing.assert_array_equal(together[3:4], alone)
    single = add_ccd_noise(np.random.default_rng(3), image[4:], 90.0, 4.0, 6.0, 6e4)
    np.testing.assert_array_equal(together[4:], single)
