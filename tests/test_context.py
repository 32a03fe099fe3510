"""GOTO's contextual inputs: field centres from airmasses, galactic latitude and host context in datasets,
on real data, in the config and through `classify_arrays`."""
import h5py
import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from astropy.time import Time

from rcnn.config import TrainConfig
from rcnn.data import DatasetError, SequenceData
from simulator.run import simulate
from simulator.settings import SimConfig
from survey_params import ConditionsError, Survey, load_survey
from survey_params.fields import CTIO_LAT_DEG, CTIO_LON_DEG, fit_field_coordinates, galactic_latitude_deg
from survey_params.hits_fields import HITS_FIELDS


def synthetic_airmass_log(ra_deg, dec_deg, seed=0) -> Table:
    """Exposures of fields at known positions over three nights, airmass rounded to 0.01 as in the HiTS logs."""
    rng = np.random.default_rng(seed)
    rows = []
    for f, (ra, dec) in enumerate(zip(ra_deg, dec_deg)):
        mjd = 57070.0 + np.concatenate([n + rng.uniform(0.05, 0.35, 5) for n in range(3)])
        lst = Time(mjd + 43 / 86400, format="mjd").sidereal_time("mean", longitude=CTIO_LON_DEG * u.deg).rad
        phi, d = np.radians(CTIO_LAT_DEG), np.radians(dec)
        cos_z = np.sin(phi) * np.sin(d) + np.cos(phi) * np.cos(d) * np.cos(lst - np.radians(ra))
        up = cos_z > 0.35
        rows += [(f, m, 86.0, round(1 / c, 2)) for m, c in zip(mjd[up], cos_z[up])]
    return Table(rows=rows, names=("field", "mjd", "exp_time_s", "airmass"))


def test_field_centres_fitted_from_airmasses():
    ra, dec = [110.0, 150.0, 190.0], [-60.0, 2.0, -25.0]  # up in February nights at CTIO
    fit = fit_field_coordinates(synthetic_airmass_log(ra, dec))
    dra = (np.asarray(fit["ra_deg"]) - ra + 180) % 360 - 180
    assert np.all(np.abs(dra * np.cos(np.radians(dec))) < 0.5) and np.allclose(fit["dec_deg"], dec, atol=0.5)
    assert np.all(fit["airmass_rms"] < 0.005)  # what rounding to 0.01 leaves


def test_field_fit_script_without_the_logs_says_which_file_is_missing(tmp_path, capsys):
    """It ended in astropy's FileNotFoundError traceback; now one line and exit status 2, nothing written."""
    from survey_params.fields import main

    for content, message in ((None, "file not found"), ("a,b\n1,2\n", "missing column(s) ['field', 'mjd', 'exp_time'")):
        if content is not None:
            (tmp_path / "blind15a_epochs.csv").write_text(content)
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path), "--out", str(tmp_path / "fields.py")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"error: {tmp_path / 'blind15a_epochs.csv'}: {message}" in err
    assert not (tmp_path / "fields.py").exists()


def test_hits_fields_are_a_grid_at_high_latitude():
    """The fitted HiTS Blind15A centres form the survey's grid of pointings about 2 deg apart at high |b|."""
    ra, dec = np.asarray(HITS_FIELDS["ra_deg"]), np.asarray(HITS_FIELDS["dec_deg"])
    assert len(ra) == 49 and HITS_FIELDS["airmass_rms_max"] < 0.005
    assert 135 < ra.min() and ra.max() < 165 and -8 < dec.min() and dec.max() < 3
    sep = np.hypot((ra[:, None] - ra) * np.cos(np.radians(dec)), dec[:, None] - dec) + 99 * np.eye(len(ra))
    assert np.all((sep.min(1) > 1.5) & (sep.min(1) < 2.6))
    b = galactic_latitude_deg(ra, dec)
    assert 25 < b.min() and b.max() < 52


def test_survey_fields_table_round_trip_and_errors(tmp_path):
    camera = Table({"ccd": [1], "gain": [4.0], "read_noise": [6.0], "saturation": [40000.0]})
    epochs = Table({"field": [7, 7], "mjd": [57070.1, 57070.2], "filter": ["g", "g"], "exp_time_s": [86.0] * 2,
                    "seeing_arcsec": [1.1, 1.2], "airmass": [1.2, 1.3], "sky_adu": [110.0, 120.0],
                    "zero_point": [25.0, 25.1], "limmag5": [24.0, 24.1]})
    fields = Table({"field": [7], "ra_deg": [266.4], "dec_deg": [-28.9]})  # the Galactic centre
    Survey("toy", "g", 0.27, camera, epochs, fields_table=fields).write(tmp_path)
    s = load_survey(tmp_path)
    assert abs(s.galactic_latitude_deg(7)) < 0.1 and np.isnan(s.galactic_latitude_deg(8))
    with pytest.raises(ConditionsError, match="column 'dec_deg'.*not a sky position"):
        Survey("toy", "g", 0.27, camera, epochs, fields_table=Table({"field": [7], "ra_deg": [1.0], "dec_deg": [95.0]}))


def test_simulated_context_datasets(tmp_path):
    path = tmp_path / "c.h5"
    simulate(SimConfig(classes=("supernova", "nonvariable", "galaxy"), n_per_class=8, seed=3, progress=False), path)
    b_of = dict(zip((str(f) for f in HITS_FIELDS["field"]), galactic_latitude_deg(HITS_FIELDS["ra_deg"], HITS_FIELDS["dec_deg"])))
    with h5py.File(path, "r") as f:
        field = [x.decode() for x in f["truth/field"][()]]
        assert np.allclose(f["context/galactic_latitude_deg"][()], [b_of[x] for x in field], atol=1e-4)
        has = f["context/has_host"][()].astype(bool)
        assert np.array_equal(has, f["truth/has_host"][()]) and has[f["label"][()] == 2].all()
        dist = np.hypot(f["truth/host/dx_px"][()], f["truth/host/dy_px"][()]) * 0.27
        assert np.allclose(f["context/host_distance_arcsec"][()][has], dist[has], rtol=1e-5)
        assert np.isnan(f["context/host_distance_arcsec"][()][~has]).all()
    data = SequenceData(path, TrainConfig(context="all"))
    ctx = data.read(np.arange(6))["context"]
    assert ctx.shape == (6, 3) and np.allclose(ctx[:, 2], np.abs([b_of[x] for x in field[:6]]) / 90, atol=1e-5)
    assert np.array_equal(ctx[:, 1] == 0, ~has[:6])


def test_context_config_names():
    assert TrainConfig(context=True).context == ["has_host", "host_distance"]
    assert TrainConfig(context="galactic_latitude,has_host").context == ["galactic_latitude", "has_host"]
    assert TrainConfig(context="all").n_context == 3 and TrainConfig().context == []
    with pytest.raises(ValueError, match="among has_host, host_distance, galactic_latitude"):
        TrainConfig(context="redshift")


def test_real_context(tmp_path, hits_dir):
    """Real data: latitude from the HiTS field table, host inputs only from a cross-match CSV (checked)."""
    from rcnn.real import ImportError_, import_real

    npz = np.load(hits_dir / "real_dev.npz", allow_pickle=False)
    names = [str(x) for x in npz["name"]]
    out = import_real(hits_dir / "real_dev.npz", tmp_path / "r.h5", hits_dir / "camera.csv")
    with h5py.File(out, "r") as f:
        b = f["context/galactic_latitude_deg"][()]
        assert "context/has_host" not in f
    b_of = dict(zip(HITS_FIELDS["field"], galactic_latitude_deg(HITS_FIELDS["ra_deg"], HITS_FIELDS["dec_deg"])))
    assert np.allclose(b, [b_of[int(x)] for x in npz["field"]], atol=1e-4)
    with pytest.raises(DatasetError, match="context input 'has_host' needs dataset 'context/has_host'"):
        SequenceData(out, TrainConfig(context="has_host"))
    csv = tmp_path / "hosts.csv"
    csv.write_text("name,has_host,host_distance_arcsec\n" + "".join(
        f"{n},{int(i % 2)},{1.5 if i % 2 else ''}\n" for i, n in enumerate(names)))
    out2 = import_real(hits_dir / "real_dev.npz", tmp_path / "r2.h5", hits_dir / "camera.csv", context_csv=csv)
    ctx = SequenceData(out2, TrainConfig(context="all")).read(np.arange(4))["context"]
    assert np.allclose(ctx[:, :2], [[0, 0], [1, 0.5], [0, 0], [1, 0.5]])
    csv.write_text("name,has_host,host_distance_arcsec\n" + f"{names[0]},maybe,1\n")
    with pytest.raises(ImportError_, match="no row for object"):
        import_real(hits_dir / "real_dev.npz", tmp_path / "r3.h5", hits_dir / "camera.csv", context_csv=csv)
