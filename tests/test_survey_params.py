"""Survey-conditions schema, validation of bad logs, real logs and the built-in HiTS model."""
import math
import warnings

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


def test_unsorted_mjds_are_sorted_silently(tmp_path):
    s = tiny_survey()
    s.write(tmp_path)
    ep = Table.read(tmp_path / "epochs.ecsv")
    ep = ep[[1, 0, 2, 3, 4]]  # field 1 out of order
    ep.write(tmp_path / "epochs.ecsv", overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # row order means nothing: no warning for it
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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the published log lists epochs by number, not MJD: no warning
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


def _nights(conds, t0):
    """(times of night (d), gaps between epochs (d), visits per object-night, seeing pairs within nights)."""
    frac, gaps, visits, pairs = [], [], [], []
    for c in conds:
        t, seeing = c.mjd[c.mask], c.seeing_arcsec[c.mask]
        frac.append((t - t0) % 1.0)
        gaps.append(np.diff(t))
        night = np.floor(t - t0)
        for n in np.unique(night):
            i = np.flatnonzero(night == n)
            visits.append(len(i))
            pairs += [(seeing[p], seeing[q]) for p in i for q in i if p != q]
    return np.concatenate(frac), np.concatenate(gaps), np.array(visits), np.array(pairs)


def test_builtin_model_nights_follow_the_logs(hits_dir):
    """The built-in model's nights look like the campaign's: no visit after the latest time of night in the
    logs (an independent spacing per visit put 12% of epochs in daylight), few gaps of 0.2-0.5 d (5%;
    real 0), five-visit nights as often, and a night's seeing shared by its visits (Spearman 0 before)."""
    from scipy import stats

    t0 = HITS_MODEL["cadence"]["mjd_start"]
    real = LogSampler(load_survey(hits_dir), 2.0)
    model = ModelSampler(HITS_MODEL, 2.0)
    a = _nights([real.draw(np.random.default_rng(s)) for s in range(800)], t0)
    b = _nights(model.draw_many([np.random.default_rng(s) for s in range(800)]), t0)
    assert a[0].max() == pytest.approx(HITS_MODEL["cadence"]["night_end_frac"]) and b[0].max() <= a[0].max() + 1e-6
    assert ((a[1] > 0.2) & (a[1] < 0.5)).mean() == 0 and ((b[1] > 0.2) & (b[1] < 0.5)).mean() < 0.035
    assert np.mean(b[2] == 5) == pytest.approx(np.mean(a[2] == 5), rel=0.15)
    rho_real, rho_model = (stats.spearmanr(*p.T)[0] for p in (a[3], b[3]))
    assert rho_real > 0.4 and rho_model == pytest.approx(rho_real, abs=0.15)


def test_committed_model_is_what_the_derivation_script_gives(hits_dir):
    derived = derive(hits_dir)
    assert derived == HITS_MODEL


def test_derivation_script_without_the_logs_says_which_file_is_missing(tmp_path, capsys):
    """It ended in a ConditionsError traceback; now one line and exit status 2, nothing written."""
    from survey_params.derive_hits import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "model.py")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"error: {tmp_path / 'camera.csv'}: file not found" in err and list(tmp_path.iterdir()) == []


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


# --- bad user logs: one ConditionsError naming file, data row, column and value (corrupted copies of the real logs)

def hits_copy(hits_dir, tmp_path, fname=None, edit=None):
    """camera.csv and field_epochs.csv of the real logs in tmp_path; `edit(header, rows)` changes `fname`."""
    import csv
    import shutil

    for f in ("camera.csv", "field_epochs.csv"):
        shutil.copy(hits_dir / f, tmp_path / f)
    if edit is not None:
        with open(tmp_path / fname, newline="") as fh:
            header, *rows = list(csv.reader(fh))
        rows = edit(header, rows)
        with open(tmp_path / fname, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    return tmp_path


def set_cell(column, value, row=3):
    def edit(header, rows):
        rows[row][header.index(column)] = value
        return rows
    return edit


def fails(directory, *parts):
    with pytest.raises(ConditionsError) as err:
        make_sampler("hits", str(directory), 2.0)
    text = str(err.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, (part, text)
    return text


@pytest.mark.parametrize("fname,column,name", [
    ("camera.csv", "gain", "gain"), ("camera.csv", "read_noise", "read_noise"), ("camera.csv", "saturation", "saturation"),
    ("field_epochs.csv", "mjd", "mjd"), ("field_epochs.csv", "exp_time_s", "exp_time_s"),
    ("field_epochs.csv", "seeing", "seeing_arcsec"), ("field_epochs.csv", "airmass", "airmass"),
    ("field_epochs.csv", "sky_adu", "sky_adu"), ("field_epochs.csv", "zero_point", "zero_point"),
    ("field_epochs.csv", "limmag5", "limmag5"),
])
def test_text_in_a_numeric_column_names_file_row_column_value(hits_dir, tmp_path, fname, column, name):
    d = hits_copy(hits_dir, tmp_path, fname, set_cell(column, "abc"))
    fails(d, f"{fname}, data row 4, column '{name}': value 'abc' is not a number")


@pytest.mark.parametrize("value,message", [
    ("abc", "value 'abc' is not a number"), ("nan", "value nan is not an integer"),
    ("inf", "value inf is not an integer"), ("", "value is empty"), ("2.5", "value 2.5 is not an integer"),
])
def test_bad_ccd_ids_are_refused(hits_dir, tmp_path, value, message):
    d = hits_copy(hits_dir, tmp_path, "camera.csv", set_cell("ccd", value))
    fails(d, "camera.csv, data row 4, column 'ccd'", message)


def test_integral_float_ccd_ids_are_integers(hits_dir, tmp_path):
    d = hits_copy(hits_dir, tmp_path, "camera.csv", set_cell("ccd", "99.0"))
    s = load_survey(d)
    assert s.camera["ccd"].dtype.kind == "i" and s.camera["ccd"][3] == 99


@pytest.mark.parametrize("fname,message", [
    ("camera.csv", "camera.csv: no data rows; the camera table needs at least one CCD"),
    ("field_epochs.csv", "field_epochs.csv: no data rows"),
])
def test_a_header_without_rows_is_refused(hits_dir, tmp_path, fname, message):
    fails(hits_copy(hits_dir, tmp_path, fname, lambda header, rows: []), message)


@pytest.mark.parametrize("fname,column,name,value,message", [
    # C4 zero point: positive and plausible
    ("field_epochs.csv", "zero_point", "zero_point", "0", "value 0.0 must be > 0"),
    ("field_epochs.csv", "zero_point", "zero_point", "-3", "value -3.0 must be > 0"),
    ("field_epochs.csv", "zero_point", "zero_point", "5", "value 5.0 is below 10 mag"),
    ("field_epochs.csv", "zero_point", "zero_point", "1e6", "value 1000000.0 is above 40 mag"),
    # C5 limmag5: finite (NaN allowed), positive and plausible
    ("field_epochs.csv", "limmag5", "limmag5", "-3", "value -3.0 must be > 0"),
    ("field_epochs.csv", "limmag5", "limmag5", "0", "value 0.0 must be > 0"),
    ("field_epochs.csv", "limmag5", "limmag5", "99", "value 99.0 is above 32 mag"),
    ("field_epochs.csv", "limmag5", "limmag5", "inf", "value inf is not finite"),
    # C6 absurd positive values
    ("camera.csv", "gain", "gain", "1e-30", "value 1e-30 is below 0.01 electron/adu"),
    ("camera.csv", "gain", "gain", "1e30", "value 1e+30 is above 100 electron/adu"),
    ("camera.csv", "read_noise", "read_noise", "1e30", "value 1e+30 is above 1000 electron"),
    ("camera.csv", "saturation", "saturation", "1e-3", "value 0.001 is below 100 adu"),
    ("camera.csv", "saturation", "saturation", "1e9", "value 1000000000.0 is above 1e+07 adu"),
    ("field_epochs.csv", "sky_adu", "sky_adu", "1e30", "value 1e+30 is above 1e+06 adu"),
    ("field_epochs.csv", "seeing", "seeing_arcsec", "1e-6", "value 1e-06 is below 0.01 arcsec"),
    ("field_epochs.csv", "seeing", "seeing_arcsec", "50", "value 50.0 is above 20 arcsec"),
    ("field_epochs.csv", "exp_time_s", "exp_time_s", "1e-9", "value 1e-09 is below 0.001 s"),
    ("field_epochs.csv", "exp_time_s", "exp_time_s", "1e9", "value 1000000000.0 is above 100000 s"),
    ("field_epochs.csv", "airmass", "airmass", "1e9", "value 1000000000.0 is above 10,"),
    ("field_epochs.csv", "mjd", "mjd", "2457070.5", "value 2457070.5 is above 1e+06 d"),  # a JD, not an MJD
])
def test_implausible_values_name_file_row_column_value(hits_dir, tmp_path, fname, column, name, value, message):
    d = hits_copy(hits_dir, tmp_path, fname, set_cell(column, value))
    text = fails(d, f"{fname}, data row 4, column '{name}': {message}")
    if " is above " in text or " is below " in text:
        assert "outside the plausible range" in text


def test_campaign_records_alone_give_the_published_table(hits_dir, tmp_path):
    """Without field_epochs.csv the campaign records are used: the 3 exposures of field 25 without a
    zero point take the field's previous g one, as the published table does, so both tables agree."""
    import shutil

    shutil.copy(hits_dir / "camera.csv", tmp_path / "camera.csv")
    shutil.copy(hits_dir / "blind15a_epochs.csv", tmp_path / "blind15a_epochs.csv")
    with pytest.warns(UserWarning, match=r"blind15a_epochs.csv: 3 exposure\(s\) without a zero point "
                                         r"\(first: data row 751, column 'zp_ps'\)"):
        fallback = load_survey(tmp_path).epochs
    published = load_survey(hits_dir).epochs
    assert len(fallback) == len(published) == 1626
    for name in published.colnames:
        a, b = np.asarray(fallback[name]), np.asarray(published[name])
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name


def test_a_first_exposure_without_zero_point_is_still_refused(hits_dir, tmp_path):
    import csv
    import shutil

    shutil.copy(hits_dir / "camera.csv", tmp_path / "camera.csv")
    with open(hits_dir / "blind15a_epochs.csv", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    rows[0][header.index("zp_ps")] = "nan"  # field 1's first exposure (r): nothing earlier to take
    with open(tmp_path / "blind15a_epochs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the three carried zero points
        fails(tmp_path, "blind15a_epochs.csv, data row 1, column 'zero_point': value nan is not finite")


def test_plausible_ranges_hold_the_real_logs(hits_dir):
    from survey_params.schema import PLAUSIBLE_RANGES

    s = load_survey(hits_dir)
    for name, (low, high, unit, why) in PLAUSIBLE_RANGES.items():
        table = s.camera if name in s.camera.colnames else s.epochs
        values = np.asarray(table[name], float)
        assert low < values.min() and values.max() < high, name
        assert why


@pytest.mark.parametrize("value", ["nan", ""])
def test_missing_limmag5_is_still_recomputed(hits_dir, tmp_path, value):
    d = hits_copy(hits_dir, tmp_path, "field_epochs.csv", set_cell("limmag5", value))
    s = load_survey(d)
    assert np.isnan(s.epochs["limmag5"]).sum() == 1
    sampler = LogSampler(s, 2.0)
    rng = np.random.default_rng(0)
    assert all(np.isfinite(c.limmag5[c.mask]).all() for c in sampler.draw_many([rng] * 50))


@pytest.mark.parametrize("value,message", [("", "value is empty"), ("nan", "value nan is not an identifier"),
                                           ("inf", "value inf is not an identifier")])
def test_missing_field_ids_are_refused(hits_dir, tmp_path, value, message):
    d = hits_copy(hits_dir, tmp_path, "field_epochs.csv", set_cell("field", value))
    fails(d, "field_epochs.csv, data row 4, column 'field'", message)


@pytest.mark.parametrize("edit,row,first", [
    (lambda header, rows: [r for r in rows for _ in (0, 1)], 2, 1),      # every row doubled
    (lambda header, rows: rows + [rows[7]], 1627, 8),                    # one exposure listed again at the end
    (lambda header, rows: [r[:2] + ["57070.5"] + r[3:] for r in rows], 2, 1),  # one MJD for all
])
def test_duplicate_exposures_are_refused(hits_dir, tmp_path, edit, row, first):
    d = hits_copy(hits_dir, tmp_path, "field_epochs.csv", edit)
    fails(d, f"field_epochs.csv, data row {row}, column 'mjd': duplicate exposure", f"already data row {first}")


def _corrupt_ecsv(path, old, new):
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("fname,corrupt,message", [
    ("epochs.ecsv", lambda p: _corrupt_ecsv(p, "\n1 57070.1 ", "\n1 abc "),
     "epochs.ecsv, data row 1, column 'mjd', value 'abc': cannot be read as ECSV"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "\n2 3.8 ", "\n2 x3.8 "),
     "camera.ecsv, data row 2, column 'gain', value 'x3.8': cannot be read as ECSV"),
    ("epochs.ecsv", lambda p: p.write_text(""), "epochs.ecsv: cannot be read as ECSV"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "# meta: !!omap", "# meta: [{: !!omap"), "camera.ecsv: cannot be read as ECSV"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "\n1 4.0 6.0 40000.0", "\n1 4.0"), "camera.ecsv: cannot be read as ECSV"),
    ("epochs.ecsv", lambda p: (p.unlink(), p.mkdir()), "epochs.ecsv: cannot be read as ECSV"),
    ("epochs.ecsv", lambda p: p.write_bytes(bytes(range(256)) * 8), "epochs.ecsv: cannot be read as ECSV"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: abc"),
     "camera.ecsv: pixel_scale_arcsec must be a number of arcsec per pixel in [0.01, 30], got 'abc'"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: [1, 2]"),
     "got [1, 2]"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: .inf"), "got inf"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: 0.0"), "got 0.0"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: 300"), "got 300"),
    ("camera.ecsv", lambda p: _corrupt_ecsv(p, "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: true"), "got True"),
    ("fields.ecsv", lambda p: p.write_text(p.read_text() + "1 10.0 -5.0\n"),
     "fields.ecsv, data row 3, column 'field': duplicate field '1' (already data row 1)"),
    ("fields.ecsv", lambda p: p.write_text("not ecsv\n"), "fields.ecsv: cannot be read as ECSV"),
])
def test_bad_ecsv_files_name_the_file(tmp_path, fname, corrupt, message):
    s = tiny_survey()
    s.fields_table = Table({"field": [1, 2], "ra_deg": [150.0, 151.0], "dec_deg": [2.0, 2.5]})
    s.write(tmp_path)
    corrupt(tmp_path / fname)
    with pytest.raises(ConditionsError) as err:
        load_survey(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_quoted_pixel_scale_is_a_number(tmp_path):
    write_logs(tmp_path)
    _corrupt_ecsv(tmp_path / "camera.ecsv", "pixel_scale_arcsec: 0.27", "pixel_scale_arcsec: '0.27'")
    assert load_survey(tmp_path).pixel_scale_arcsec == 0.27
