"""Survey-conditions schema, validation of bad logs, real logs and the built-in HiTS model."""
import math

import numpy as np
import pytest
from astropy.table import Table

from survey_params import ConditionsError, LogSampler, ModelSampler, Survey, load_survey, make_sampler
from survey_params.derive_hits import derive
from survey_params.hits_builtin import HITS_MODEL


def tiny_survey() -> Survey:
    camera = Table({"ccd": [1, 2], "gain": [4.0, 3.8], "read_noise": [6.0, 6.5], "saturation": [40000.0, 45000.0]})
    epochs = Table({"field": [1, 1, 1, 2, 2], "mjd": [57070.1, 57070.2, 57071.1, 57070.15, 57070.25],
                    "filter": ["g", "g", "r", "g", "g"], "exp_time_s": [86.0] * 5,
                    "seeing_arcsec": [1.1, 2.5, 1.3, 1.2, 1.4], "airmass": [1.2, 1.3, 1.1, 1.2, 1.25],
                    "sky_adu": [110.0, 120.0, 300.0, 115.0, 118.0], "zero_point": [25.0, 25.1, 25.2, 25.0, 25.05],
                    "limmag5": [24.0, np.nan, 23.5, 24.1, 23.9]})
    return Survey("toy", "g", 0.27, camera, epochs, source="toy")


def write_logs(tmp_path, survey=None) -> Survey:
    survey = survey or tiny_survey()
    survey.write(tmp_path)
    return survey


def test_ecsv_round_trip(tmp_path):
    s = write_logs(tmp_path)
    back = Survey.read(tmp_path)
    assert (back.name, back.band, back.pixel_scale_arcsec) == ("toy", "g", 0.27)
    assert back.epochs["seeing_arcsec"].unit == "arcsec"
    np.testing.assert_allclose(back.epochs["sky_adu"], s.epochs["sky_adu"])
    assert list(back.camera["ccd"]) == [1, 2]


@pytest.mark.parametrize("column,row,value,message", [
    ("seeing_arcsec", 3, np.nan, "not finite"),
    ("seeing_arcsec", 1, -1.0, "must be > 0"),
    ("sky_adu", 4, 0.0, "must be > 0"),
    ("zero_point", 2, np.nan, "not finite"),
    ("airmass", 0, 0.5, "below 1"),
])
def test_bad_values_name_file_row_and_column(tmp_path, column, row, value, message):
    s = tiny_survey()
    s.epochs[column][row] = value
    s.write(tmp_path)
    with pytest.raises(ConditionsError) as err:
        Survey.read(tmp_path)
    text = str(err.value)
    assert "epochs.ecsv" in text and f"data row {row + 1}" in text and f"column '{column}'" in text
    assert message in text


def test_unknown_filter_is_an_error(tmp_path):
    s = tiny_survey()
    s.write(tmp_path)
    text = (tmp_path / "epochs.ecsv").read_text().replace(" r 86.0", " q 86.0")
    (tmp_path / "epochs.ecsv").write_text(text)
    with pytest.raises(ConditionsError, match=r"epochs.ecsv, data row 3, column 'filter': unknown filter 'q'"):
        Survey.read(tmp_path)


def test_unsorted_mjds_are_sorted_with_a_warning(tmp_path):
    s = tiny_survey()
    s.write(tmp_path)
    ep = Table.read(tmp_path / "epochs.ecsv")
    ep = ep[[1, 0, 2, 3, 4]]  # field 1 out of order
    ep.write(tmp_path / "epochs.ecsv", overwrite=True)
    with pytest.warns(UserWarning, match=r"epochs.ecsv, data row 2, column 'mjd'.*sorted"):
        back = Survey.read(tmp_path)
    f1 = back.epochs[back.epochs["field"] == 1]
    assert np.all(np.diff(f1["mjd"]) > 0)


def test_missing_column_and_missing_file(tmp_path):
    s = tiny_survey()
    s.write(tmp_path)
    ep = Table.read(tmp_path / "epochs.ecsv")
    del ep["airmass"]
    ep.write(tmp_path / "epochs.ecsv", overwrite=True)
    with pytest.raises(ConditionsError, match="missing column.*airmass"):
        Survey.read(tmp_path)
    with pytest.raises(ConditionsError, match="not found"):
        load_survey(tmp_path / "nowhere")


def test_log_sampler_drops_bad_seeing_and_fills_depth(tmp_path):
    sampler = LogSampler(tiny_survey(), seeing_limit_arcsec=2.0)
    assert sampler.n_epochs == 2  # field 1 keeps 1 g epoch (2.5" dropped), field 2 keeps 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = sampler.draw(rng)
        assert (c.seeing_arcsec[c.mask] <= 2.0).all()
        assert np.isfinite(c.limmag5[c.mask]).all()
        assert np.isnan(c.mjd[~c.mask]).all()
        assert c.gain in (4.0, 3.8)


def test_real_logs_load_and_sample(hits_dir):
    with pytest.warns(UserWarning, match="sorted"):  # the published log lists epochs by number, not MJD
        s = load_survey(hits_dir)
    assert s.band == "g" and len(s.fields()) == 49 and len(s.camera) == 47
    sampler = make_sampler("hits", str(hits_dir), 2.0)
    rng = np.random.default_rng(1)
    conds = [sampler.draw(rng) for _ in range(200)]
    assert all((c.seeing_arcsec[c.mask] <= 2.0).all() for c in conds)
    assert len({c.field for c in conds}) > 30 and len({c.ccd for c in conds}) > 30
    assert all(np.all(np.diff(c.mjd[c.mask]) > 0) for c in conds)


def test_builtin_model_matches_real_marginals(hits_dir):
    real = LogSampler(load_survey(hits_dir), 2.0)
    model = ModelSampler(HITS_MODEL, 2.0)
    rng = np.random.default_rng(2)
    a = [real.draw(rng) for _ in range(400)]
    b = [model.draw(rng) for _ in range(400)]
    for name, tol in (("seeing_arcsec", 0.03), ("zero_point", 0.002), ("airmass", 0.03), ("limmag5", 0.01)):
        ra = np.median(np.concatenate([getattr(c, name)[c.mask] for c in a]))
        rb = np.median(np.concatenate([getattr(c, name)[c.mask] for c in b]))
        assert rb == pytest.approx(ra, rel=tol), name
    # cadence: similar number of usable epochs and a multi-night baseline
    assert np.mean([c.mask.sum() for c in b]) == pytest.approx(np.mean([c.mask.sum() for c in a]), rel=0.1)
    span = [np.nanmax(c.mjd) - np.nanmin(c.mjd) for c in b]
    assert np.median(span) > 5


def test_committed_model_is_what_the_derivation_script_gives(hits_dir):
    with pytest.warns(UserWarning):
        derived = derive(hits_dir)
    assert derived == HITS_MODEL


def test_seeing_limit_must_be_positive():
    with pytest.raises(ConditionsError, match="seeing limit"):
        make_sampler("hits", None, 0.0)
    assert not math.isnan(make_sampler("hits", None, 2.0).n_epochs)


def test_model_draws_for_many_objects_equal_their_own_draws():
    # draw_many computes all objects at once; each object's conditions must still come from its stream
    # alone (the simulator relies on it: an object's stamps do not depend on its shard)
    import dataclasses

    model = ModelSampler(HITS_MODEL, 1.3)  # a strict seeing limit: some epochs dropped and packed
    together = model.draw_many([np.random.default_rng(s) for s in range(40)])
    for s in (0, 17, 39):
        alone = model.draw(np.random.default_rng(s))
        for f in dataclasses.fields(alone):
            a, b = getattr(alone, f.name), getattr(together[s], f.name)
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=f.name)
            else:
                assert a == b, f.name
        c = alone
        assert (c.seeing_arcsec[c.mask] <= 1.3).all() and np.isnan(c.mjd[~c.mask]).all()
        assert np.all(np.diff(c.mjd[c.mask]) > 0) and c.mask[:c.mask.sum()].all()
