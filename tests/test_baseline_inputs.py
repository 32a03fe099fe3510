"""`rcnn baseline` on bad inputs: one clear error line (file, array, value), never a traceback nor a silent
wrong answer; objects too short for the light-curve features are left out and counted; --cv/--test handling."""
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from rcnn.baseline import MIN_EPOCHS, run_baseline
from rcnn.cli import main


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """70 simulated HiTS objects (7 classes x 10; train/validation/test 8/1/1 per class)."""
    path = tmp_path_factory.mktemp("bl") / "d.h5"
    subprocess.run([sys.executable, "-m", "simulator.cli", "--survey", "hits", "--n-per-class", "10", "--seed", "1",
                    "--out", str(path)], check=True, capture_output=True)
    return path


def _replace(f, key, data):
    attrs = dict(f[key].attrs)
    del f[key]
    f.create_dataset(key, data=data)
    f[key].attrs.update(attrs)


def _corrupt(src, dst, change):
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        change(f)
    return dst


def _set(key, index, value):
    def change(f):
        a = f[key][()]
        a[index] = value
        f[key][...] = a
    return change


CORRUPTIONS = {  # name: (change, what the error must say)
    "mask_float_half": (lambda f: _replace(f, "mask", np.where(f["mask"][()], 0.5, 0.0).astype(np.float32)),
                        "'mask'[0, 0] = 0.5; expected true/false"),
    "mask_all_false": (lambda f: _replace(f, "mask", np.zeros(f["mask"].shape, bool)),
                       "no valid epochs ('mask' is all False)"),
    "mask_gap": (_set("mask", (2, 1), False), "'mask' of object 2 has valid epoch 2 after an invalid one"),
    "seeing_nan": (_set("conditions/seeing_arcsec", (0, 0), np.nan),
                   "'conditions/seeing_arcsec' is nan at row 0, epoch 0 (a valid epoch"),
    "zero_point_nan": (_set("conditions/zero_point", (3, 2), np.nan),
                       "'conditions/zero_point' is nan at row 3, epoch 2 (a valid epoch"),
    "gain_zero": (_set("conditions/gain", (1, 4), 0.0), "'conditions/gain' is 0.0 at row 1, epoch 4"),
    "exp_time_zero": (_set("conditions/exp_time_s", (6, 0), 0.0), "'conditions/exp_time_s' is 0.0 at row 6, epoch 0"),
    "mjd_nan": (_set("mjd", (5, 3), np.nan), "'mjd' is nan at row 5, epoch 3"),
    "label_99": (_set("label", 5, 99), "'label'[5] = 99 is not a class index (0..6)"),
    "label_float": (lambda f: _replace(f, "label", f["label"][()].astype(np.float32)),
                    "'label' holds float32; expected integers"),
    "stamps_15": (lambda f: _replace(f, "stamps", f["stamps"][:, :, 3:18, 3:18]),
                  "'stamps' has shape (70, 20, 15, 15); expected (N, T, 21, 21)"),
    "no_gain": (lambda f: f.__delitem__("conditions/gain"), "missing dataset(s) conditions/gain"),
}


@pytest.mark.parametrize("as_test", [False, True], ids=["data", "test"])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_dataset_one_clear_error(small, tmp_path, capsys, name, as_test):
    change, message = CORRUPTIONS[name]
    bad = _corrupt(small, tmp_path / f"{name}.h5", change)
    args = [str(small), "--test", str(bad)] if as_test else [str(bad)]
    rc = main(["baseline", *args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"rcnn baseline: error: {bad}: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_numeric_zero_one_mask_reads_as_bool(small, tmp_path):
    """A 0/1 float mask (accepted by `rcnn train`) gives the bool mask's answer (was a bitwise_and TypeError)."""
    ref = run_baseline(small, tmp_path / "a", n_trees=10, progress=False)
    ones = _corrupt(small, tmp_path / "f.h5", lambda f: _replace(f, "mask", f["mask"][()].astype(np.float32)))
    got = run_baseline(ones, tmp_path / "b", n_trees=10, progress=False)
    for key in ("recall", "balanced_recall", "confusion", "feature_importance", "n_test"):
        assert got[key] == ref[key], key


def test_conditions_after_max_epochs_are_not_read(small, tmp_path):
    with h5py.File(small, "r") as f:
        row = int(np.flatnonzero(f["mask"][:, 12])[0])  # an object with a valid 13th epoch
    bad = _corrupt(small, tmp_path / "late.h5", _set("conditions/seeing_arcsec", (row, slice(12, None)), np.nan))
    with pytest.raises(ValueError, match=f"seeing_arcsec' is nan at row {row}, epoch 12"):
        run_baseline(bad, tmp_path / "a", n_trees=5, max_epochs=13, progress=False)
    assert run_baseline(bad, tmp_path / "b", n_trees=5, max_epochs=12, progress=False)["n_test"] == 7


def test_objects_with_few_valid_epochs_left_out_and_counted(small, tmp_path):
    def short(f):  # object 4 (train split) and 65 (test split): 2 valid epochs
        m = f["mask"][()]
        m[[4, 65], MIN_EPOCHS - 1:] = False
        f["mask"][...] = m
    data = _corrupt(small, tmp_path / "short.h5", short)
    r = run_baseline(data, tmp_path / "a", n_trees=10, progress=False)
    assert r["objects_left_out"] == {str(data): 2} and r["min_valid_epochs"] == MIN_EPOCHS
    assert r["n_test"] == 6 and "left out (< 3 valid epochs): 2 of" in r["mode"]
    r = run_baseline(small, tmp_path / "b", test=data, n_trees=10, progress=False)
    assert r["n_test"] == 68 and r["objects_left_out"] == {str(small): 0, str(data): 2}
    none = _corrupt(small, tmp_path / "none.h5", lambda f: f["mask"].__setitem__((slice(None), slice(2, None)), False))
    with pytest.raises(ValueError, match=f"{none}: no object has 3 valid epochs"):
        run_baseline(none, tmp_path / "c", n_trees=10, progress=False)


@pytest.mark.parametrize("args, message", [
    (["--cv", "0"], "--cv 0: needs 2 <= K"),
    (["--cv", "-3"], "--cv -3: needs 2 <= K"),
    (["--test", "{data}", "--cv", "0"], "give at most one of --test and --cv"),
    (["--test", "{data}", "--cv", "5"], "give at most one of --test and --cv"),
])
def test_cv_and_test_options(small, tmp_path, capsys, args, message):
    """--cv 0 was taken for no --cv (a train/test run, exit 0) and slipped past the --test/--cv check."""
    args = [a.format(data=small) for a in args]
    rc = main(["baseline", str(small), *args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"rcnn baseline: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=message):
        run_baseline(small, tmp_path / "api", test=small if "--test" in args else None, cv=int(args[-1]), n_trees=5)


def test_a_class_map_without_test_is_refused(small, tmp_path, capsys):
    """--class-map maps --test's labels: with --cv or the dataset's own splits it was ignored, silently."""
    rc = main(["baseline", str(small), "--cv", "2", "--class-map", "SN=supernovae", "--out", str(tmp_path / "out"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--class-map maps the labels of --test's dataset" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
