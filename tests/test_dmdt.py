"""dm-dt images: exact histograms of a hand-made light curve, prefixes, normalisation."""
import numpy as np
import pytest

from rcnn.dmdt import DM_EDGES_MAG, DT_EDGES_D, SHAPE, asinh_mag, dmdt_images


def test_bins_are_the_papers():
    assert SHAPE == (22, 23)
    assert DT_EDGES_D[0] == pytest.approx(1 / 145) and DT_EDGES_D[-1] == 4000
    assert DM_EDGES_MAG.tolist()[10:13] == [-0.1, 0.0, 0.1] and DM_EDGES_MAG[0] == -8


def test_hand_made_light_curve_gives_the_expected_histograms():
    # pairs: (0,1) dt 0.01 d, dm +0.5; (0,2) dt 1.0, dm -1.0; (1,2) dt 0.99, dm -1.5; and with epoch 3 (dt 3, 2.99, 2;
    # dm +1.0, +0.5, +2.0)
    mag = np.array([[20.0, 20.5, 19.0, 21.0]])
    mjd = np.array([[0.0, 0.01, 1.0, 3.0]])
    im = dmdt_images(mag, mjd, np.ones((1, 4), bool), n_w=3)
    assert im.shape == (1, 2) + SHAPE
    first = np.zeros(SHAPE)
    first[15, 0] = first[6, 6] = first[5, 6] = 1 / 3        # dm bin [0.5, 1) / dt [1/145, 2/145); [-1, -0.5) / [0.12, 1.5) ...
    assert np.allclose(im[0, 0], first)
    second = first * 3
    second[16, 8] += 1   # dm +1.0 -> [1, 1.5), dt 3.0 -> [2.5, 3.5)
    second[15, 8] += 1   # dm +0.5, dt 2.99
    second[18, 7] += 1   # dm +2.0 -> [2, 2.5), dt 2.0 -> [1.5, 2.5)
    assert np.allclose(im[0, 1], second / 6)


def test_padding_and_out_of_range_pairs_are_ignored():
    mag = np.array([[20.0, 20.2, 99.0, np.nan]])
    mjd = np.array([[0.0, 0.5, 1.0, np.nan]])
    mask = np.array([[True, True, True, False]])
    im = dmdt_images(mag, mjd, mask, n_w=2)
    assert im[0, 0].sum() == pytest.approx(1.0)       # one pair, in range
    assert im[0, 1].sum() == pytest.approx(1.0)       # dm 79 is out of range: still only that pair
    assert np.allclose(im[0, 1], im[0, 2])            # the padded epoch adds nothing
    assert np.isfinite(asinh_mag(np.array([-5.0, 0.0, 1e4]), np.array([10.0, 10.0, 10.0]))).all()
