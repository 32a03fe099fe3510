"""Metrics by hand, the real-data importer, class mapping, evaluation reports and `classify` output."""
import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rcnn import metrics as M
from rcnn.config import TrainConfig
from rcnn.evaluate import ClassMapError, evaluate, map_labels, parse_class_map
from rcnn.train import train
from simulator.run import simulate
from simulator.settings import SimConfig


def test_metrics_on_hand_made_predictions():
    # 4 objects, 3 steps, 2 classes; object 3 has only 2 valid steps
    p = np.zeros((4, 3, 2))
    p[:, :, 0] = [[0.9, 0.8, 0.7], [0.6, 0.4, 0.2], [0.3, 0.3, 0.6], [0.2, 0.9, 0.5]]
    p[:, :, 1] = 1 - p[:, :, 0]
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    labels = np.array([0, 1, 1, 0])
    # step 1: predictions 0, 0, 1, 1 -> 2 of 4 right; step 2: 0, 1, 1, 0 -> 4 of 4;
    # step 3 (object 3 keeps its step 2): 0, 1, 0, 0 -> 3 of 4
    assert M.accuracy_vs_step(p, mask, labels).tolist() == [0.5, 1.0, 0.75]
    pred = M.at_step(p, mask, 3).argmax(1)
    assert pred.tolist() == [0, 1, 0, 0]
    assert M.recall_per_class(labels, pred, 2).tolist() == [1.0, 0.5]
    # dataset labels 0, 1, 2 -> classes 0, 1, 1 (objects 1 and 2 hold labels 1 and 2): each label its own recall
    assert M.recall_by_label(p, mask, np.array([0, 1, 2, 0]), np.array([0, 1, 1]), 3) == {0: 1.0, 1: 1.0, 2: 0.0}
    assert M.confusion(labels, pred, 2).tolist() == [[1.0, 0.0], [0.5, 0.5]]
    # class 0: TP 2, FP 1, FN 0 -> F1 = 4 / 5; class 1: TP 1, FP 0, FN 1 -> 2 / 3
    assert M.f1_per_class(labels, pred, 2) == pytest.approx([0.8, 2 / 3])
    # AUC for class 1 with scores p1 at the last step [0.3, 0.8, 0.4, 0.1]: positives {0.8, 0.4} vs {0.3, 0.1}: 1.0
    assert M.roc_auc_ovr(labels, M.at_step(p, mask, 3))[1] == pytest.approx(1.0)
    # Hand & Till on 3 classes, 6 objects: pairs (0,1): A(0|1) = 1, A(1|0) = 3/4 -> 0.875; (0,2): 1, 1 -> 1;
    # (1,2): A(1|2) = 3/4, A(2|1) = 3.5/4 (one tie) -> 0.8125
    sc = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6],
                   [0.1, 0.1, 0.8]])
    lab = np.array([0, 0, 1, 1, 2, 2])
    assert M.hand_till_auc(lab, sc) == pytest.approx((0.875 + 1.0 + 0.8125) / 3)
    s = M.summary(p, mask, labels, ["a", "b"])
    assert s["balanced_recall"] == pytest.approx(0.75) and s["recall"] == {"a": 1.0, "b": 0.5}
    assert M.accuracy_vs_magnitude(p, mask, labels, np.array([15.5, 15.7, 20.1, 22.0]), np.array([15, 16, 21, 23]),
                                   steps=(3,))[3] == [1.0, 0.0, 1.0]


def test_class_mapping():
    model = ["supernova", "rrlyrae", "nonvariable"]
    assert map_labels(["SN", "NV", "rrlyrae"], model, parse_class_map(None), "x").tolist() == [0, 2, 1]
    with pytest.raises(ClassMapError, match="'EB' maps to 'eclipsing_binary', which the model does not have"):
        map_labels(["EB"], model, parse_class_map(None), "x")
    with pytest.raises(ClassMapError, match="'QSO' has no mapping"):
        map_labels(["QSO"], model, parse_class_map(None), "x")
    assert map_labels(["EB"], model, parse_class_map("EB=rrlyrae"), "x").tolist() == [1]
    # a label named as a model class was mapped to itself whatever the --class-map said
    assert map_labels(["supernova", "rrlyrae"], model, parse_class_map("supernova=rrlyrae"), "x").tolist() == [1, 1]
    # a label mapped twice took the last; one the data lacks (a typo) left the default in place, silently
    with pytest.raises(ClassMapError, match=r"--class-map maps 'EB' twice \(EB=rrlyrae, EB=supernova\)"):
        parse_class_map("EB=rrlyrae, EB=supernova")
    with pytest.raises(ClassMapError, match=r"x: --class-map maps \['Sn'\], which are not labels of this dataset "
                                            r"\(its labels: \['SN', 'EB'\]\)"):
        map_labels(["SN", "EB"], model, parse_class_map("EB=rrlyrae,Sn=rrlyrae"), "x")
    with pytest.raises(ClassMapError, match="LABEL=model_class"):
        parse_class_map("EB")


@pytest.fixture(scope="module")
def real_h5(tmp_path_factory, hits_dir):
    """real_dev.npz imported, with some conditions blanked to exercise the estimates."""
    d = dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False))
    g = np.flatnonzero(d["filter_code"] == 0)
    blank = g[[3, 40, 200]]
    for k in ("sky_adu", "zero_point", "seeing_arcsec", "limmag5"):
        d[k] = d[k].copy()
        d[k][blank] = np.nan
    src = tmp_path_factory.mktemp("real") / "real_nan.npz"
    np.savez(src, **d)
    from rcnn.real import import_real

    out = import_real(src, src.with_suffix(".h5"), hits_dir / "camera.csv")
    return out, d, blank


def test_importer_estimates_missing_conditions(real_h5):
    out, d, blank = real_h5
    with h5py.File(out, "r") as f:
        mask, est = f["mask"][()], f["conditions/estimated"][()]
        names = [c.decode() if isinstance(c, bytes) else c for c in f["label"].attrs["class_names"]]
        assert names == ["SN", "RRLyrae", "EB", "NV"] and f["stamps"].shape[2:] == (21, 21)
        for k in ("sky_adu", "zero_point", "seeing_arcsec", "limmag5"):
            assert np.isfinite(f[f"conditions/{k}"][()][mask]).all()
        assert est.sum() == len(blank)  # exactly the blanked frames are flagged
        zp = f["conditions/zero_point"][()][est]
        assert np.all(np.abs(zp - 25.0) < 0.5)  # estimated from the same field's epochs
        fd, label = f["photometry/first_detection"][()], f["label"][()]
        assert (f["split"][()] == 2).all()
        # supernova sequences start at most 5 images before the first 5-sigma detection
        assert all(0 <= x <= 5 for x in fd[label == 0] if x >= 0)
        # ... over their quiescent level (the host's light): by the flux itself 7 of the 10 real SNe were
        # "detected" at their first frame and their windows began there; over the level 1 is
        assert (fd[label == 0] == 5).sum() >= 4 and (fd[label == 0] == 0).sum() <= 2
        # a RAPID run's pre-detection labels: only the transients have an alert, as in the simulator's truth
        from rcnn.config import TrainConfig
        from rcnn.data import SequenceData

        alert = SequenceData(out, TrainConfig(pre_detection_label=True)).alert
        assert np.array_equal(alert, np.where(label == 0, fd, -1)) and (fd[label != 0] >= 0).any()
        assert f["photometry/lc_flux"].shape == mask.shape
        # eq. 4's reference: each object's first usable exposure, also for supernovae cut to their window
        ref, zp = f["conditions/zero_point_ref"][()], f["conditions/zero_point"][()]
        assert ref.shape == (len(mask),) and np.isfinite(ref).all()
        scale = 10 ** ((ref[:, None] - zp) / 2.5)
        np.testing.assert_allclose(f["photometry/lc_flux"][()][mask], (f["photometry/flux_adu"][()] * scale)[mask],
                                   rtol=1e-5)
        assert (np.abs(ref - zp[:, 0]) > 1e-3)[label == 0].any()  # supernova windows start after the first exposure


def test_importer_measures_frames_without_a_logged_sky_from_their_border(hits_dir):
    """Frames whose log has no sky are measured with the sky from the stamp's border (the star taken out):
    those frames only, with errors no smaller than the logged sky's. The fluxes agree within a few tenths of
    a percent for bright stars: the local background differs from the log's by a few ADU (median -0.5 ADU,
    10-90% -3.8 to +9.6 over real_dev's g frames)."""
    from photometry.real import camera_medians, measure_frames
    from rcnn.real import _photometry

    d = np.load(hits_dir / "real_dev.npz", allow_pickle=False)
    frames = np.flatnonzero((d["filter_code"] == 0) & np.isfinite(d["sky_adu"]))[:300]
    cond = {"seeing_arcsec": d["seeing_arcsec"], "sky_adu": d["sky_adu"]}
    stamps, camera = d["stamps"].astype(float), camera_medians(hits_dir / "camera.csv")
    logged = np.ones(len(stamps), bool)
    flux, err = _photometry(stamps, frames, cond, logged, camera, 0.27, False, "")
    b = frames[::2]
    logged[b] = False  # as if these had no sky in the log
    flux_b, err_b = _photometry(stamps, frames, cond, logged, camera, 0.27, False, "")
    assert np.array_equal(flux_b[frames[1::2]], flux[frames[1::2]])
    border, _ = measure_frames(stamps[b], d["seeing_arcsec"][b], None, *camera)
    assert np.array_equal(flux_b[b], border.flux_adu) and np.array_equal(err_b[b], border.flux_err_adu)
    assert (err_b[b] >= err[b]).all() and np.median(err_b[b] / err[b]) < 1.2
    bright = flux[b] > 100 * err[b]
    assert bright.sum() > 100 and np.median(np.abs(flux_b[b] / flux[b] - 1)[bright]) < 0.01


@pytest.fixture(scope="module")
def run_4class(tmp_path_factory):
    path = tmp_path_factory.mktemp("r4") / "four.h5"
    simulate(SimConfig(classes=("supernova", "rrlyrae", "eclipsing_binary", "nonvariable"), n_per_class=16, seed=2,
                       progress=False), path)
    run = path.parent / "run"
    train(path, run, TrainConfig(iterations=20, eval_every=10, conv_filters=8, dense_units=16, rnn_units=8,
                                 batch_size=16, bn_momentum=0.9), progress=False)
    return run, path


def test_evaluate_simulated_writes_report(run_4class, tmp_path, monkeypatch):
    run, data = run_4class
    report = evaluate([run], data, tmp_path / "rep")
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(m["recall"]) <= {"supernova", "rrlyrae", "eclipsing_binary", "nonvariable"}
    e = next(iter(m["runs"].values()))
    assert len(e["accuracy_vs_step"]) == e["step"] and 0 <= e["balanced_recall"] <= 1
    assert "accuracy_vs_magnitude" in e and set(e["roc_auc"]) <= set(m["recall"]) | {"supernova"}
    for png in ("accuracy_vs_step.png", "confusion.png", "accuracy_vs_magnitude.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 10_000
    assert report["balanced_recall"] == m["balanced_recall"]
    # the numbers are those of the run's predictions on the test split (same batches as evaluate's: same bits)
    from rcnn.inference import Classifier, predict

    clf = Classifier(run)
    _check_report_against_predictions(m, predict(clf, data, split="test", progress=False), data, clf.step)
    # the tiny run predicts nearly one class for all: the same report of varied predictions (each step's
    # probabilities drawn at random) checks the confusion matrix, F1 and AUC off their trivial values
    import rcnn.evaluate

    drawn, rng = [], np.random.default_rng(0)

    def varied(*args, **kwargs):
        pred = predict(*args, **kwargs)
        pred.probs = rng.dirichlet(np.full(pred.probs.shape[2], 0.5), pred.probs.shape[:2]).astype(np.float32)
        drawn.append(pred)
        return pred

    monkeypatch.setattr(rcnn.evaluate, "predict", varied)
    evaluate([run], data, tmp_path / "varied", progress=False)
    m = json.loads((tmp_path / "varied" / "metrics.json").read_text())
    conf = np.array(m["runs"]["run (rcnn)"]["confusion"])
    assert (conf > 0).sum() > 4 and len(drawn) == 1  # not one column
    _check_report_against_predictions(m, drawn[0], data, clf.step)


def _check_report_against_predictions(m, pred, data, checkpoint_step):
    """metrics.json's numbers recomputed from per-object predictions `pred` (N, S, C) of the test split with
    scikit-learn's metrics (not rcnn.metrics), the classes in the dataset's order."""
    from sklearn import metrics as skm

    from simulator.dataset import class_names

    names = class_names(data)
    assert pred.class_names == names  # the run's classes are the dataset's, in its order
    with h5py.File(data, "r") as f:
        split, label, mag = f["split"][()], f["label"][()], f["truth/mag"][()]
    test = np.flatnonzero(split == 2)
    assert pred.index.tolist() == test.tolist() and pred.step_mask.any(1).all()
    y, rows = label[test], np.arange(len(test))
    n_steps = pred.probs.shape[1]
    last = pred.step_mask.sum(1) - 1  # each object's last valid step (the report's cap of 20 is beyond S)

    def predicted(k):  # after k + 1 steps, or all an object has
        return pred.probs[rows, np.minimum(k, last)].argmax(1)

    yhat = predicted(n_steps - 1)
    e = m["runs"]["run (rcnn)"]
    assert e["step"] == min(20, n_steps) and e["n_objects"] == len(test) and e["objects_without_step"] == 0
    assert e["checkpoint_step"] == checkpoint_step and e["model"] == "rcnn"
    assert e["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat))
    present = [c for c in range(len(names)) if (y == c).any()]
    assert list(e["recall"]) == [names[c] for c in present]  # keys in the dataset's class order
    recall = skm.recall_score(y, yhat, labels=present, average=None)
    assert list(e["recall"].values()) == pytest.approx(recall.tolist())
    assert e["balanced_recall"] == pytest.approx(recall.mean())
    assert m["recall"] == e["recall"] and m["balanced_recall"] == e["balanced_recall"]
    assert m["recall_run"] == "run (rcnn)"  # whose they are
    cm = skm.confusion_matrix(y, yhat, labels=range(len(names))).astype(float)
    cm /= np.maximum(cm.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(e["confusion"], cm)  # rows true, columns predicted, both in the dataset's order
    in_either = [c for c in range(len(names)) if (y == c).any() or (yhat == c).any()]
    f1 = skm.f1_score(y, yhat, labels=in_either, average=None, zero_division=0)
    assert list(e["f1"]) == [names[c] for c in in_either] and list(e["f1"].values()) == pytest.approx(f1.tolist())
    scores = pred.probs[rows, last]
    assert e["roc_auc"] == pytest.approx({names[c]: skm.roc_auc_score(y == c, scores[:, c]) for c in present})
    assert e["accuracy_vs_step"] == pytest.approx([np.mean(predicted(k) == y) for k in range(n_steps)])
    for c in present:
        assert e["recall_vs_step"][names[c]] == pytest.approx(
            [np.mean(predicted(k)[y == c] == c) for k in range(n_steps)]), names[c]
    # accuracy in bins of the brightest true magnitude (1 mag from 14 to 26) after 1, 5, 10 and 20 steps, or
    # the last there is (18 with 20 images of n_w = 3), keyed by the step used (it was "20")
    brightest = np.where(np.isfinite(mag[test]), mag[test], np.inf).min(1)
    assert np.isfinite(brightest).all()  # no galaxies here (their host's magnitude)
    bins = np.arange(14.0, 26.01, 1.0)
    assert e["accuracy_vs_magnitude"]["bins"] == bins.tolist()
    which = np.digitize(brightest, bins) - 1
    assert n_steps == 18 and list(e["accuracy_vs_magnitude"]) == ["bins", "1", "5", "10", "18"]
    for k in (1, 5, 10, n_steps):
        ok = predicted(k - 1) == y
        expect = [np.mean(ok[which == b]) if (which == b).any() else None for b in range(len(bins) - 1)]
        got = e["accuracy_vs_magnitude"][str(k)]
        assert [x is None for x in got] == [x is None for x in expect], k
        assert [x for x in got if x is not None] == pytest.approx([x for x in expect if x is not None]), k


def _strict_json(path: Path):
    """A JSON file parsed as strict JSON (no NaN or Infinity, which most parsers outside Python refuse)."""
    def refuse(name):
        raise AssertionError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_counts_test_objects_without_a_step_and_names_every_run(run_4class, tmp_path):
    """Test objects with fewer than n_w valid epochs were dropped and reported as 0 `objects_without_step`;
    a third run of the same directory name replaced the second in the report; NaN (empty magnitude bins)
    made metrics.json invalid JSON."""
    run, data = run_4class
    masked = tmp_path / "masked.h5"
    masked.write_bytes(data.read_bytes())
    with h5py.File(masked, "r+") as f:
        test = np.flatnonzero(f["split"][()] == 2)
        m = f["mask"][()]
        m[test[:3]] = False
        f["mask"][...] = m
    copies = []
    for parent in ("a", "b", "c"):
        copies.append(Path(shutil.copytree(run, tmp_path / parent / "run")))  # three runs named `run`
    report = evaluate(copies, masked, tmp_path / "rep", progress=False)
    assert list(report["runs"]) == ["run (rcnn)", "b/run (rcnn)", "c/run (rcnn)"]
    m = _strict_json(tmp_path / "rep" / "metrics.json")
    for e in m["runs"].values():
        assert e["objects_without_step"] == 3 and e["n_objects"] == len(test) - 3
    assert None in m["runs"]["run (rcnn)"]["accuracy_vs_magnitude"]["1"]  # an empty bin: null, not NaN
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(ValueError, match=f"run directories given more than once: {run}, {tmp_path / 'link'}"):
        evaluate([run, tmp_path / "link"], masked, tmp_path / "rep2", progress=False)
    with pytest.raises(ClassMapError, match=r"--class-map maps \['FOO'\], which are not labels of this dataset"):
        evaluate([run], data, tmp_path / "rep3", class_map=parse_class_map("FOO=bar"), progress=False)


def test_runs_of_different_n_w_are_each_scored_on_their_own_objects(run_4class, tmp_path):
    """Test objects with 3 valid epochs have a step for a run of n_w = 3, none for one of n_w = 4: each run's
    magnitudes are its own objects' (they were the first run's: an IndexError), its last step its own."""
    from rcnn.evaluate import _magnitudes
    from rcnn.inference import Classifier, predict

    run, data = run_4class
    nw4 = tmp_path / "nw4"
    train(data, nw4, TrainConfig(n_w=4, iterations=2, eval_every=2, conv_filters=4, dense_units=8, rnn_units=4,
                                 batch_size=16), progress=False)
    short = tmp_path / "short.h5"
    short.write_bytes(data.read_bytes())
    with h5py.File(short, "r+") as f:
        test = np.flatnonzero(f["split"][()] == 2)
        m = f["mask"][()]
        m[test[:3], 3:] = False
        f["mask"][...] = m
    report = evaluate([run, nw4], short, tmp_path / "rep", progress=False)
    e3, e4 = report["runs"]["run (rcnn)"], report["runs"]["nw4 (rcnn)"]
    assert (e3["n_objects"], e3["objects_without_step"], e4["n_objects"], e4["objects_without_step"]) == (
        len(test), 0, len(test) - 3, 3)
    assert list(e3["accuracy_vs_magnitude"])[-1] == "18" and list(e4["accuracy_vs_magnitude"])[-1] == "17"
    pred = predict(Classifier(nw4), short, split="test", progress=False).scored()
    expect = M.accuracy_vs_magnitude(pred.probs, pred.step_mask, pred.labels, _magnitudes(short, pred.index),
                                     np.array(e4["accuracy_vs_magnitude"]["bins"]), steps=(1, 5, 10, 17))
    assert json.loads(M.to_json(e4["accuracy_vs_magnitude"])) == json.loads(M.to_json(
        {"bins": e4["accuracy_vs_magnitude"]["bins"], **{str(k): v for k, v in expect.items()}}))
    assert report["recall_run"] == "run (rcnn)" and report["recall"] == e3["recall"]


def test_a_report_killed_while_drawn_has_no_metrics_file(run_4class, tmp_path, monkeypatch):
    """evaluate, baseline and classify write their JSON last, each figure under a temporary name: one killed
    while drawing leaves no metrics.json / probabilities.json (a report that looks complete) and no truncated
    PNG under a final name; the rerun completes it."""
    import rcnn.baseline
    import rcnn.classify
    import rcnn.evaluate
    import simulator.dataset
    from rcnn.baseline import run_baseline
    from rcnn.classify import classify

    run, data = run_4class
    real_save = simulator.dataset.save_figure
    calls = []

    def killed_in_second(fig, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(str(path) + ".tmp").write_bytes(b"\x89PNG half")  # cut off mid-write
            raise KeyboardInterrupt
        return real_save(fig, path, **kwargs)

    jobs = {"evaluate": (rcnn.evaluate, "metrics.json", lambda out: evaluate([run], data, out)),
            "baseline": (rcnn.baseline, "metrics.json", lambda out: run_baseline(data, out, cv=2, progress=False)),
            "classify": (rcnn.classify, "probabilities.json", lambda out: classify(run, data, out, 3, False))}
    for name, (module, marker, job) in jobs.items():
        out = tmp_path / name
        calls.clear()
        monkeypatch.setattr(module, "save_figure", killed_in_second)
        if name == "baseline":  # one figure: killed in the first
            calls.append(None)
        with pytest.raises(KeyboardInterrupt):
            job(out)
        monkeypatch.undo()
        assert not (out / marker).exists(), name
        assert all(p.stat().st_size > 1000 for p in out.glob("*.png")), name  # finished ones only
        job(out)
        assert (out / marker).exists() and not list(out.glob("*.png.tmp")), name


def test_evaluate_real_and_classify(run_4class, real_h5, tmp_path):
    run, data = run_4class
    real, _, _ = real_h5
    evaluate([run], data, tmp_path / "rep", progress=False)  # a simulated report first, into the same DIR
    assert (tmp_path / "rep" / "accuracy_vs_magnitude.png").exists()
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "evaluate", str(run), "--real", str(real),
                           "--out", str(tmp_path / "rep"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "predict rcnn" not in proc.stderr  # --no-progress: no bar
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(m["recall"]) == {"supernova", "rrlyrae", "eclipsing_binary", "nonvariable"}
    e = next(iter(m["runs"].values()))
    assert set(e["recall_real_labels"]) == {"SN", "RRLyrae", "EB", "NV"} and e["step"] <= 20
    assert e["n_objects"] == 40 and e["objects_without_step"] == 0
    assert not (tmp_path / "rep" / "accuracy_vs_magnitude.png").exists()  # the earlier report's, not of this one
    # two real labels mapped to one class: each has its own recall
    merged = evaluate([run], real, tmp_path / "merged", real=True, class_map=parse_class_map("EB=rrlyrae"),
                      progress=False)["runs"]
    e2 = next(iter(merged.values()))
    assert set(e2["recall_real_labels"]) == {"SN", "RRLyrae", "EB", "NV"}
    assert e2["recall_real_labels"]["SN"] == e["recall_real_labels"]["SN"]
    js_rep = _strict_json(tmp_path / "merged" / "metrics.json")
    from simulator.dataset import class_names

    with h5py.File(real, "r") as f:
        labels = f["label"][()]
    names = class_names(real)
    n_eb, n_rr = (labels == names.index("EB")).sum(), (labels == names.index("RRLyrae")).sum()
    assert e2["recall"]["rrlyrae"] == pytest.approx((e2["recall_real_labels"]["EB"] * n_eb
                                                     + e2["recall_real_labels"]["RRLyrae"] * n_rr) / (n_eb + n_rr))
    assert js_rep["runs"] == json.loads(json.dumps(merged))
    assert m["balanced_recall"] == pytest.approx(np.mean(list(m["recall"].values())))
    # classify: the output schema
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(run), str(real), "--out",
                           str(tmp_path / "cls"), "--figures", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "predict rcnn" in proc.stderr  # the bar, by default
    rows = list(csv.DictReader((tmp_path / "cls" / "probabilities.csv").open()))
    classes = ["supernova", "rrlyrae", "eclipsing_binary", "nonvariable"]
    assert list(rows[0]) == ["object", "step", "mjd", "predicted"] + [f"p_{c}" for c in classes]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in classes) - 1) < 1e-4 for r in rows[:50])
    js = json.loads((tmp_path / "cls" / "probabilities.json").read_text())
    assert js["classes"] == classes and len(js["objects"]) == 40 and js["objects"][0]["predicted"] in classes
    with h5py.File(real, "r") as f:  # each object's own name from the real file
        assert [o["name"] for o in js["objects"]] == [n.decode() for n in f["truth/name"][()]]
    assert (tmp_path / "cls" / "object_000000.png").exists()
    (tmp_path / "cls" / "object_000039.png").write_bytes(b"")  # as an earlier classify --figures 40 left
    from rcnn.classify import classify

    classify(run, real, tmp_path / "cls", figures=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "cls").glob("*.png")) == ["object_000000.png"]


def test_classify_arrays_for_brokers(run_4class):
    from rcnn.inference import Classifier

    run, data = run_4class
    clf = Classifier(run)
    with h5py.File(data, "r") as f:
        sl = slice(0, 3)
        probs, step_mask = clf.classify_arrays(f["mjd"][sl], f["mask"][sl], f["conditions/sky_adu"][sl],
                                               f["conditions/zero_point"][sl], stamps=f["stamps"][sl])
    assert probs.shape == (3, 18, 4) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    assert step_mask.shape == (3, 18)


def test_classify_arrays_checks_its_arguments(run_4class, tmp_path):
    """Each bad argument is one ValueError naming it, its shape or value and what is needed (they were KeyErrors,
    Flax shape errors, numpy broadcast errors, or named the wrong array); one object's arrays need no batch axis."""
    import shutil

    from photometry.dataset import run_photometry
    from rcnn.inference import Classifier

    run, data = run_4class
    clf = Classifier(run)
    with h5py.File(data, "r") as f:
        sl = slice(0, 3)
        mjd, mask, sky, zp, stamps = (f[k][sl] for k in ("mjd", "mask", "conditions/sky_adu", "conditions/zero_point",
                                                          "stamps"))
    args = dict(mjd=mjd, mask=mask, sky_adu=sky, zero_point=zp, stamps=stamps)

    def refused(match, **changed):
        with pytest.raises(ValueError, match=match):
            clf.classify_arrays(**{**args, **changed})

    refused(r"stamps= not given; this run \(model rcnn\) reads stamps in ADU with sky", stamps=None)
    refused(r"stamps has shape \(3, 20, 15, 15\); expected \(3, 20, 21, 21\) .*21 x 21 px",
            stamps=stamps[..., 3:18, 3:18])
    refused(r"mjd has shape \(3, 10\); expected \(3, 20\)", mjd=mjd[:, :10])
    refused(r"stamps has shape \(20, 21, 21\); expected \(3, 20, 21, 21\)", stamps=stamps[0])
    refused(r"mask has shape \(3, 20, 1\); expected \(N, T\)", mask=mask[..., None])
    refused(r"mask has 2 epochs; the run stacks n_w = 3", **{k: v[:, :2] for k, v in args.items()})
    bad_sky = sky.copy()
    bad_sky[1, 0] = np.nan
    refused(r"sky_adu\[1, 0\] = nan at a valid epoch", sky_adu=bad_sky)  # was "stamps: not finite"
    bad_stamps = stamps.copy()
    bad_stamps[2, 1, 5, 5] = np.nan
    refused(r"stamps\[2, 1\] has a pixel that is not finite", stamps=bad_stamps)
    late = mask[:, ::-1].copy()  # valid epochs last: was "mjd: not finite at row 0"
    refused(r"mask of object 0 has valid epoch \d+ after an invalid one; an object's valid epochs must come first",
            mask=late)
    probs, step_mask = clf.classify_arrays(**args)
    one, one_mask = clf.classify_arrays(mjd[1], mask[1], sky[1], zp[1], stamps=stamps[1])  # no batch axis
    assert one.shape == probs.shape[1:] and np.array_equal(one_mask, step_mask[1])
    np.testing.assert_allclose(one, probs[1], atol=1e-5)
    with pytest.raises(ValueError, match=r"sky_adu\[4\] = inf"):
        clf.classify_arrays(mjd[1], mask[1], np.where(np.arange(20) == 4, np.inf, sky[1]), zp[1], stamps=stamps[1])
    lc_data = tmp_path / "lc.h5"
    shutil.copy(data, lc_data)
    run_photometry(lc_data, progress=False)
    train(lc_data, tmp_path / "lc", TrainConfig(model="lc", iterations=2, eval_every=2, dense_units=16, rnn_units=8,
                                                batch_size=16), progress=False)
    with pytest.raises(ValueError, match=r"lc_flux= and lc_flux_err= not given; this run \(model lc\) reads "
                                         r"photometry's eq. 4 scaled fluxes"):
        Classifier(tmp_path / "lc").classify_arrays(**args)


def test_predict_in_batches_equals_one_batch(run_4class):
    """`predict` fetches each batch's probabilities after launching the next: same rows, same order."""
    from rcnn.inference import Classifier, predict

    run, data = run_4class
    clf = Classifier(run)
    whole = predict(clf, data, split=None, batch_size=10_000)
    parts = predict(clf, data, split=None, batch_size=7)  # several batches, the last one shorter
    assert len(whole.index) > 14 and np.array_equal(parts.index, whole.index)
    assert np.array_equal(parts.step_mask, whole.step_mask) and np.array_equal(parts.labels, whole.labels)
    np.testing.assert_allclose(parts.probs, whole.probs, atol=1e-5)  # other batch shapes: other roundings

def test_a_stop_signal_ends_classify_after_the_batch_in_flight(run_4class, tmp_path, monkeypatch, capsys):
    """SIGTERM while predicting: the batch in flight finishes, nothing is written, exit 143 with one line."""
    import signal

    from rcnn.cli import main
    from rcnn.inference import Classifier

    run, data = run_4class
    real_launch = Classifier._launch

    def signalling(self, batch):
        signal.raise_signal(signal.SIGTERM)  # recorded: the batch is still computed
        return real_launch(self, batch)

    def unhandled(signum, frame):
        raise AssertionError("the command did not handle the signal")

    monkeypatch.setattr(Classifier, "_launch", signalling)
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main(["classify", str(run), str(data), "--out", str(tmp_path / "cls"), "--no-progress"]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.strip() == "rcnn classify: stopped by SIGTERM"
    assert not (tmp_path / "cls").exists()


def test_evaluate_bad_inputs(run_4class, tmp_path):
    run, data = run_4class
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "evaluate", str(run), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "exactly one of --data" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "evaluate", str(tmp_path / "norun"), "--data", str(data),
                           "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2 and "config.yaml: not found" in proc.stderr and "Traceback" not in proc.stderr
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    with (newer / "config.yaml").open("a") as f:
        f.write("a_key_from_the_future: 1\n")
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(newer), str(data), "--out",
                           str(tmp_path / "c")], capture_output=True, text=True)
    assert proc.returncode == 2 and "['a_key_from_the_future'] are unknown to this version" in proc.stderr


def test_classifying_a_dataset_without_labels_or_splits_says_what_is_needed(run_4class, tmp_path):
    """A dataset without 'label' or 'split' said only "missing dataset(s) label", though the README calls labels
    optional (in import-real's sources): the message says what the layout holds and how unlabelled stamps get it."""
    from rcnn.classify import classify
    from rcnn.data import DatasetError

    run, data = run_4class
    for key in ("label", "split"):
        bare = tmp_path / f"no_{key}.h5"
        bare.write_bytes(data.read_bytes())
        with h5py.File(bare, "r+") as f:
            del f[key]
        with pytest.raises(DatasetError, match=rf"no_{key}.h5: missing dataset\(s\) {key}; every command reads each "
                                               r"object's class \('label'.*\) and split \('split': 0 train, 1 "
                                               r"validation, 2 test\), classify too: `rcnn import-real` gives stamps "
                                               r"without labels the class 'unlabelled' and split 2"):
            classify(run, bare, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_simulated_dataset_given_for_a_real_one_is_refused(run_4class, tmp_path):
    """`evaluate --real` and `finetune` take a file from `rcnn import-real`: a simulated dataset is refused, naming
    the option that takes it (evaluate scored all its objects, the training split too; finetune trained on it)."""
    from rcnn.finetune import finetune

    run, data = run_4class
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "evaluate", str(run), "--real", str(data), "--out",
                           str(tmp_path / "rep"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert (f"{data}: a simulated dataset (it has truth/mag): --real takes a real labelled file from `rcnn import-real`"
            in proc.stderr and "give a simulated one with --data" in proc.stderr)
    with pytest.raises(ValueError, match=re.escape(f"{data}: a simulated dataset (it has truth/mag): `rcnn finetune "
                                                   "RUN_DIR REAL.h5` takes a real labelled file from `rcnn import-real`")):
        finetune(run, data, tmp_path / "ft", per_class=3, iterations=2, progress=False)
    assert not (tmp_path / "rep").exists() and not (tmp_path / "ft").exists()


def test_a_training_run_directory_is_refused_as_out(run_4class, tmp_path):
    """`--out` of evaluate, classify and finetune naming a training run's directory is refused before any work (the
    reports were written among the run's config.yaml, metrics.jsonl and checkpoints)."""
    from rcnn.finetune import finetune
    from rcnn.train import RunError

    run, data = run_4class
    before = sorted(p.name for p in run.iterdir())
    refused = f"--out {run}: a training run's directory (it holds config.yaml and checkpoints/); the "
    with pytest.raises(RunError, match=re.escape(refused + "report would be written among the run's files")):
        evaluate([run], data, run, progress=False)
    with pytest.raises(RunError, match=re.escape(refused + "fine-tuned run, its data and report would")):
        finetune(run, data, run, per_class=3, iterations=2, progress=False)
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(run), str(data), "--out", str(run),
                           "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"rcnn classify: error: {refused}probabilities would be written" in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == before


def test_evaluating_an_empty_split_or_dataset_names_the_file(run_4class, tmp_path):
    """A simulated set without test objects names the split's counts (as training's checks do); a dataset of
    no objects is refused when opened, before any split is looked at."""
    from rcnn.data import DatasetError

    run, data = run_4class
    no_test = tmp_path / "no_test.h5"
    no_test.write_bytes(data.read_bytes())
    with h5py.File(no_test, "r+") as f:
        f["split"][...] = np.where(f["split"][()] == 2, 0, f["split"][()])
    with pytest.raises(DatasetError, match=r"no_test.h5: its test split is empty \(objects per split: train \d+, "
                                           r"validation \d+, test 0\)"):
        evaluate([run], no_test, tmp_path / "rep")
    empty = tmp_path / "empty.h5"
    with h5py.File(data, "r") as src, h5py.File(empty, "w") as f:
        per_object = []
        src.visititems(lambda name, obj: per_object.append(name) if isinstance(obj, h5py.Dataset)
                       and obj.shape[:1] == src["label"].shape else None)
        for name in per_object:
            f[name] = src[name][:0]
        f["label"].attrs["class_names"] = src["label"].attrs["class_names"]
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(run), str(empty), "--out",
                           str(tmp_path / "c")], capture_output=True, text=True)
    assert proc.returncode == 2 and "empty.h5: holds no objects" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists() and not (tmp_path / "c").exists()


def test_real_objects_without_a_step_are_classified_as_none_and_not_scored(run_4class, real_h5, tmp_path):
    """A real object with fewer than n_w valid epochs has no prediction: it was scored by the output of the
    first step computed on padding."""
    from rcnn.classify import classify

    run, _ = run_4class
    short = tmp_path / "short.h5"
    short.write_bytes(real_h5[0].read_bytes())
    with h5py.File(short, "r+") as f:
        m = f["mask"][()]
        m[5, 2:] = False
        f["mask"][...] = m
    e = next(iter(evaluate([run], short, tmp_path / "rep", real=True, progress=False)["runs"].values()))
    assert e["n_objects"] == 39 and e["objects_without_step"] == 1
    classify(run, short, tmp_path / "cls", progress=False)
    objects = json.loads((tmp_path / "cls" / "probabilities.json").read_text())["objects"]
    assert len(objects) == 40 and objects[5]["predicted"] is None and objects[4]["predicted"] is not None


def test_a_checkpoint_of_non_finite_weights_is_refused(run_4class, tmp_path):
    """Its predictions were argmax(NaN) = the first class, scored and written without a word."""
    import shutil

    import orbax.checkpoint as ocp

    run, data = run_4class
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    best = ocp.CheckpointManager((bad / "checkpoints" / "best").resolve())
    step = best.latest_step()
    state = best.restore(step, args=ocp.args.StandardRestore())
    layer = next(k for k, v in state["params"].items() if "kernel" in v)
    state["params"][layer]["kernel"] = np.full_like(state["params"][layer]["kernel"], np.nan)
    step += 1  # a later checkpoint, the one a Classifier loads
    best.save(step, args=ocp.args.StandardSave(state))
    best.wait_until_finished()
    best.close()
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(bad), str(data), "--out",
                           str(tmp_path / "c")], capture_output=True, text=True)
    assert proc.returncode == 2 and f"best: step {step} has non-finite weights in ['params']['{layer}']['kernel']" \
        in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "c").exists()


def test_finetune_on_a_few_real_objects(run_4class, real_h5, tmp_path, capsys):
    """Fine-tuning trains on per_class real objects of each class and reports on the others only."""
    from rcnn.finetune import finetune

    run, _ = run_4class
    real, _, _ = real_h5
    report = finetune(run, real, tmp_path / "ft", per_class=3, iterations=6, freeze="conv", progress=False)
    assert len(report["runs"]) == 2  # the original run and the fine-tuned one, on the same held-out objects
    for e in report["runs"].values():
        assert e["n_objects"] == 40 - 4 * 3
    with h5py.File(tmp_path / "ft" / "finetune_data.h5", "r") as f:
        split, label = f["split"][()], f["label"][()]
        assert [(split[label == c] == 0).sum() for c in np.unique(label)] == [3, 3, 3, 3]
    # frozen convolutions: the fine-tuned run's conv kernels are the original's
    from rcnn.inference import Classifier

    a, b = Classifier(run).variables["params"], Classifier(tmp_path / "ft" / "run").variables["params"]
    assert np.array_equal(a["Conv_0"]["kernel"], b["Conv_0"]["kernel"])
    assert not np.array_equal(a["_Head_0"]["Dense_1"]["kernel"], b["_Head_0"]["Dense_1"]["kernel"])
    # a rerun choosing other objects reused the run trained on the first ones (some now "held out")
    from rcnn.train import RunError

    before = (tmp_path / "ft" / "finetune_data.h5").read_bytes()
    with pytest.raises(RunError, match=r"ft: fine-tuned with other objects or labels \{'per_class': \(3, 4\)\}"):
        finetune(run, real, tmp_path / "ft", per_class=4, iterations=6, progress=False)
    assert (tmp_path / "ft" / "finetune_data.h5").read_bytes() == before
    # more iterations extend it (the evaluation interval derived from the first run's iterations is kept)
    more = finetune(run, real, tmp_path / "ft", per_class=3, iterations=11, freeze="conv", progress=False)
    assert [e["checkpoint_step"] for e in more["runs"].values()][1] <= 11
    steps = [json.loads(x)["step"] for x in (tmp_path / "ft" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 11 and steps[:5] == [1, 2, 3, 4, 5]
    assert (tmp_path / "ft" / "finetune_data.h5").read_bytes() == before
    # the real file is known by its content: a copy elsewhere goes on (it was refused by path, size and mtime)
    copy = tmp_path / "moved" / "real.h5"
    copy.parent.mkdir()
    shutil.copyfile(real, copy)
    capsys.readouterr()
    again = finetune(run, copy, tmp_path / "ft", per_class=3, iterations=11, freeze="conv", progress=False)
    assert json.dumps(again["runs"]) == json.dumps(more["runs"])  # (NaN where no object reaches a step)
    assert f"{copy} holds the same real data as {real}" in capsys.readouterr().err
    # ... and other labels at the same path are refused, the training data left as it was
    with h5py.File(copy, "r+") as f:
        f["label"][0] = (f["label"][0] + 1) % 4
    with pytest.raises(RunError, match=r"ft: fine-tuned with other objects or labels \{'real_fingerprint'"):
        finetune(run, copy, tmp_path / "ft", per_class=3, iterations=11, progress=False)
    assert (tmp_path / "ft" / "finetune_data.h5").read_bytes() == before


def test_finetune_command_line(run_4class, real_h5, tmp_path, capsys):
    """`rcnn finetune RUN REAL --out DIR` with its options: finetune.json says what chose the objects, the
    fine-tuning copy trains on per-class objects of each class (labels mapped to the run's classes), the new
    checkpoint (nothing frozen) differs from the run's in every layer, and the report scores both runs on
    the held-out objects only."""
    from rcnn.cli import main
    from rcnn.inference import Classifier, predict
    from rcnn.train import data_fingerprint, read_run_config

    run, _ = run_4class
    real, _, _ = real_h5
    out = tmp_path / "ft"
    assert main(["finetune", str(run), str(real), "--out", str(out), "--per-class", "2", "--iterations", "5",
                 "--learning-rate", "3e-4", "--freeze", "none", "--seed", "7", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["run (rcnn)", "ft/run (rcnn)"]
    chosen = json.loads((out / "finetune.json").read_text())
    assert chosen["run"] == str(run.resolve()) and chosen["real"] == str(real.resolve())
    assert chosen["per_class"] == 2 and chosen["seed"] == 7 and chosen["real_fingerprint"] == data_fingerprint(real)
    assert chosen["labels"] == {"SN": "supernova", "RRLyrae": "rrlyrae", "EB": "eclipsing_binary",
                                "NV": "nonvariable"}
    model_classes = Classifier(run).class_names
    with h5py.File(real, "r") as f, h5py.File(out / "finetune_data.h5", "r") as g:
        real_names = [n.decode() if isinstance(n, bytes) else n for n in f["label"].attrs["class_names"]]
        ft_names = [n.decode() if isinstance(n, bytes) else n for n in g["label"].attrs["class_names"]]
        assert ft_names == model_classes
        real_label, label, split = f["label"][()], g["label"][()], g["split"][()]
        assert [ft_names[x] for x in label] == [chosen["labels"][real_names[x]] for x in real_label]
        assert np.array_equal(f["stamps"][()], g["stamps"][()]) and np.array_equal(f["mask"][()], g["mask"][()])
    assert set(np.unique(split)) == {0, 2}  # train on the chosen objects, hold out the rest; no validation split
    assert [int((split[label == c] == 0).sum()) for c in np.unique(label)] == [2, 2, 2, 2]
    # the fine-tuned run: the options as given, started from the run, trained on the 8 chosen objects
    cfg, extra = read_run_config(out / "run" / "config.yaml")
    assert (cfg.iterations, cfg.learning_rate, cfg.freeze, cfg.seed) == (5, 3e-4, "none", 7)
    assert cfg.init_from == str(run) and extra["_class_names"] == model_classes
    steps = [json.loads(x)["step"] for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # evaluated every iterations // 5
    base, tuned = Classifier(run), Classifier(out / "run")
    a, b = base.variables["params"], tuned.variables["params"]
    for key in ("Conv_0", "Conv_5"):  # not frozen: the convolutions moved too
        assert not np.array_equal(a[key]["kernel"], b[key]["kernel"]), key
    assert not np.array_equal(a["_Head_0"]["Dense_1"]["kernel"], b["_Head_0"]["Dense_1"]["kernel"])
    import jax

    delta = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert delta < 5 * 5 * 3e-4  # Adam moves a weight by ~lr a step: started from the run, not from scratch
    # the report: both runs on the 32 held-out objects, the numbers those of each run's own predictions
    m = json.loads((out / "report" / "metrics.json").read_text())
    held_out = np.flatnonzero(split == 2)
    assert len(held_out) == 40 - 4 * 2 and m["data"] == str(out / "finetune_data.h5")
    for name, clf in (("run (rcnn)", base), ("ft/run (rcnn)", tuned)):
        e = m["runs"][name]
        assert e["n_objects"] == len(held_out) and e["checkpoint_step"] == clf.step
        pred = predict(clf, out / "finetune_data.h5", split="test", progress=False)
        assert pred.index.tolist() == held_out.tolist()  # none of the objects it was fine-tuned on
        last = pred.step_mask.sum(1) - 1
        yhat = pred.probs[np.arange(len(held_out)), last].argmax(1)
        assert e["accuracy"] == pytest.approx(np.mean(yhat == label[held_out])), name
        assert set(e["recall"]) == set(model_classes)


def test_finetune_names_the_real_file_and_leaves_nothing(run_4class, real_h5, tmp_path):
    """A real file that training would refuse was copied first, the error naming the copy (and left there)."""
    from rcnn.data import DatasetError
    from rcnn.finetune import finetune

    bad = tmp_path / "nosplit.h5"
    bad.write_bytes(real_h5[0].read_bytes())
    with h5py.File(bad, "r+") as f:
        del f["split"]
    with pytest.raises(DatasetError, match=f"^{bad}: missing dataset"):
        finetune(run_4class[0], bad, tmp_path / "ft", per_class=3, iterations=2, progress=False)
    assert not (tmp_path / "ft").exists()


def test_fits_import_matches_the_npz_import(tmp_path, hits_dir, real_h5):
    """Objects written in the FITS layout import to the same dataset as the npz they came from."""
    from rcnn.real import FITS_FILTERS, CONDITIONS, import_real, write_fits_object

    d = dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False))
    code_to_filter = {v: k for k, v in FITS_FILTERS.items()}
    fdir = tmp_path / "fits"
    fdir.mkdir()
    keep = [0, 10, 20, 30]  # one object per class
    for k in keep:
        s = slice(d["offsets"][k], d["offsets"][k + 1])
        epochs = {"mjd": d["mjd"][s], "filter": [code_to_filter[int(c)] if np.isfinite(c) else ""
                                                 for c in d["filter_code"][s]],
                  "hits_epoch": d["hits_epoch"][s], **{c: d[c][s] for c in CONDITIONS}}
        write_fits_object(fdir / f"obj{k:02d}.fits", d["stamps"][s], epochs, str(d["class_names"][d["label"][k]]),
                          int(d["field"][k]), str(d["name"][k]))
    out = import_real(fdir, tmp_path / "fits.h5", hits_dir / "camera.csv")
    npz_out = import_real(hits_dir / "real_dev.npz", tmp_path / "npz.h5", hits_dir / "camera.csv")
    with h5py.File(out, "r") as f, h5py.File(npz_out, "r") as g:
        names_f = [c.decode() if isinstance(c, bytes) else c for c in f["label"].attrs["class_names"]]
        names_g = [c.decode() if isinstance(c, bytes) else c for c in g["label"].attrs["class_names"]]
        assert [names_f[x] for x in f["label"][()]] == [names_g[g["label"][k]] for k in keep]
        t = f["mask"].shape[1]
        for i, k in enumerate(keep):
            n = int(f["mask"][i].sum())
            assert n == int(g["mask"][k].sum())
            assert np.array_equal(f["stamps"][i][:n], g["stamps"][k][:n])
            assert np.allclose(f["photometry/flux_adu"][i][:n], g["photometry/flux_adu"][k][:n], rtol=1e-5)
        assert t <= g["mask"].shape[1]
    bad = tmp_path / "bad"
    bad.mkdir()
    write_fits_object(bad / "x.fits", np.zeros((2, 21, 21)), {"mjd": [1.0, 2.0], "filter": ["g", "z"],
                                                               **{c: [v, v] for c, v in PLAUSIBLE.items()}}, "NV")
    from rcnn.real import ImportError_

    with pytest.raises(ImportError_, match=r"unknown FILTER value\(s\) \['z'\]"):
        import_real(bad, tmp_path / "bad.h5")
    write_fits_object(bad / "x.fits", np.zeros((2, 21, 21)), {"mjd": [1.0, np.nan], "filter": ["g", "g"],
                                                               **{c: [1.0, 1.0] for c in CONDITIONS}}, "NV")
    with pytest.raises(ImportError_, match=r"x\.fits: EPOCHS row 2, column MJD: nan; every image needs"):
        import_real(bad, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


#: Conditions of a g-band HiTS exposure, each inside `survey_params.schema.PLAUSIBLE_RANGES`.
PLAUSIBLE = {"exp_time_s": 87.0, "seeing_arcsec": 1.2, "airmass": 1.2, "sky_adu": 500.0, "zero_point": 25.0,
             "limmag5": 23.5}


def test_fits_conditions_must_be_plausible_in_g_band_images(tmp_path):
    """A FITS object whose g-band image logs an impossible condition (or text) is refused naming the file, the
    EPOCHS row and column and the value; other bands' rows and NaN (missing: estimated) are left alone."""
    from rcnn.real import ImportError_, import_real, write_fits_object

    rng = np.random.default_rng(0)
    stamps = rng.normal(500.0, 20.0, (3, 21, 21))
    epochs = {"mjd": [1.0, 2.0, 3.0], "filter": ["g", "r", "g"], **{c: [v] * 3 for c, v in PLAUSIBLE.items()}}
    for column, values, message in (
            ("seeing_arcsec", [1.2, 1.2, -1.2], r"EPOCHS row 3, column SEEING_ARCSEC: -1\.2 in a g-band image: outside "
                                                r"the plausible range \[0\.01, 20\] arcsec"),
            ("exp_time_s", [0.0, 87.0, 0.0], r"EPOCHS row 1, column EXP_TIME_S: 0\.0 in a g-band image: outside the "
                                             r"plausible range \[0\.001, 100000\] s .*\(1 more row\(s\) too\)"),
            ("sky_adu", [-500.0, 500.0, 500.0], r"EPOCHS row 1, column SKY_ADU: -500\.0 in a g-band image: outside "
                                                r"the plausible range \(0, 1e\+06\] adu"),
            ("sky_adu", ["500", "x", "500"], r"EPOCHS column SKY_ADU is not numbers")):
        f = write_fits_object(tmp_path / "x.fits", stamps, {**epochs, column: values}, "NV")
        with pytest.raises(ImportError_, match=rf"^{re.escape(str(f))}: {message}"):
            import_real(tmp_path, tmp_path / "out.h5")
        assert not (tmp_path / "out.h5").exists()
    write_fits_object(tmp_path / "x.fits", stamps, {**epochs, "exp_time_s": [87.0, 0.0, 87.0],
                                                    "seeing_arcsec": [1.2, -1.0, np.nan]}, "NV")
    with h5py.File(import_real(tmp_path, tmp_path / "out.h5", progress=False)) as h:
        assert h["mask"][()].sum() == 2 and h["conditions/estimated"][0, 1]


def test_a_fits_source_is_a_directory_of_readable_fits_files(tmp_path):
    """A *.fits file in a FITS source that is not FITS (or is cut short) is named, not astropy's bare "No SIMPLE
    card found"; a single FITS file given as the source is told to be a directory ("is not an .npz archive")."""
    from rcnn.real import ImportError_, import_real, write_fits_object

    stamps = np.random.default_rng(0).normal(500.0, 20.0, (3, 21, 21))
    epochs = {"mjd": [1.0, 2.0, 3.0], "filter": ["g"] * 3, **{c: [v] * 3 for c, v in PLAUSIBLE.items()}}
    good = write_fits_object(tmp_path / "a.fits", stamps, epochs, "NV")
    with pytest.raises(ImportError_, match=rf"^{re.escape(str(good))}: is a FITS file; a FITS source is a "
                                           r"directory of FITS files, one per object"):
        import_real(good, tmp_path / "out.h5")
    for name, content, message in (("notes.fits", b"not a FITS file\n", r"OSError: No SIMPLE card found"),
                                   ("cut.fits", good.read_bytes()[:5000], r"File may have been truncated")):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ImportError_, match=rf"^{re.escape(str(bad))}: is not a readable FITS file \(.*{message}"
                                               rf".*\); every \*\.fits file of {re.escape(str(tmp_path))} is read as "
                                               r"one object"):
            import_real(tmp_path, tmp_path / "out.h5")
        bad.unlink()
    assert not (tmp_path / "out.h5").exists()


def test_real_conditions_are_checked_only_in_the_frames_imported(tmp_path, hits_dir):
    """Impossible conditions of frames not imported (r band, band unknown) do not stop the import; NaN ones
    are estimated."""
    from rcnn.real import import_real

    d = _objects(dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False)), [10])  # an EB: all g frames kept
    g = d["filter_code"] == 0
    assert (~g).sum() == 2 and (d["filter_code"][~g] == 1).any()
    d = _with(_with(d, "seeing_arcsec", ~g, -1.0), "exp_time_s", ~g, 0.0)
    d = _with(d, "sky_adu", np.flatnonzero(g)[3], np.nan)
    np.savez(tmp_path / "r.npz", **d)
    with h5py.File(import_real(tmp_path / "r.npz", tmp_path / "r.h5", hits_dir / "camera.csv", progress=False)) as f:
        assert f["mask"][()].sum() == g.sum() and f["conditions/estimated"][()].sum() == 1


def test_malformed_real_files_name_the_array(tmp_path, hits_dir):
    """Arrays that disagree with each other are refused before any work, naming the file and the array."""
    from rcnn.real import ImportError_, import_real

    d = dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False))
    cases = {"mjd": (lambda a: a["mjd"][:-5], r"'mjd' has shape \(1076,\); expected \(1081,\): one per frame"),
             "field": (lambda a: a["field"][:-1], r"'field' has shape \(39,\); expected \(40,\): one per object"),
             "stamps": (lambda a: a["stamps"][:, :20, :20], r"'stamps' has shape \(1081, 20, 20\); .* S odd"),
             "label": (lambda a: a["label"] + 10, r"'label' must be integers indexing 'class_names' \(0..3\)"),
             "offsets": (lambda a: a["offsets"][::-1], r"'offsets' has 41 entries from 1081 to 0"),
             "class_names": (lambda a: np.array([{"x": 1}] * 4, dtype=object), r"array 'class_names' holds Python objects")}
    for key, (change, message) in cases.items():
        path = tmp_path / f"{key}.npz"
        np.savez(path, **{**d, key: change(d)})
        with pytest.raises(ImportError_, match=f"{path.name}: {message}"):
            import_real(path, tmp_path / f"{key}.h5", hits_dir / "camera.csv")
        assert not (tmp_path / f"{key}.h5").exists()


def _objects(d: dict, keep) -> dict:
    """The arrays of real_dev.npz for the objects `keep` only."""
    frames = np.concatenate([np.arange(d["offsets"][k], d["offsets"][k + 1]) for k in keep])
    out = {k: v[frames] for k, v in d.items() if np.shape(v)[:1] == (len(d["stamps"]),)}
    out.update({k: d[k][keep] for k in ("label", "name", "field")}, class_names=d["class_names"],
               offsets=np.concatenate([[0], np.cumsum(np.diff(d["offsets"])[keep])]))
    return out


def _with(d: dict, key: str, index, value) -> dict:
    v = d[key].copy()
    v[index] = value
    return {**d, key: v}


def _no_objects(d: dict) -> dict:
    return {**{k: v[:0] for k, v in d.items() if k not in ("offsets", "class_names")}, "offsets": np.array([0]),
            "class_names": d["class_names"]}


def _write_npz(content):
    def write(path, d):
        np.savez(path, **content(d))
    return write


#: Input files `rcnn import-real` must refuse with one line naming the file: case -> (write(path, real_dev
#: arrays), the input's option (None: the source; the others get real_dev.npz as source), message pattern).
BAD_REAL_INPUTS = {
    "text file named .npz": (lambda p, d: p.write_text("name,mjd\nx,1\n"), None, r"is not an \.npz archive"),
    "empty file": (lambda p, d: p.write_bytes(b""), None, r"is not an \.npz archive"),
    "npy file named .npz": (lambda p, d: np.save(open(p, "wb"), d["mjd"]), None, r"is not an \.npz archive"),
    "empty archive": (lambda p, d: __import__("zipfile").ZipFile(p, "w").close(), None, r"holds no arrays"),
    "damaged archive": (lambda p, d: p.write_bytes(b"PK\x03\x04" + bytes(60)), None, r"is not a readable \.npz"),
    "no objects": (_write_npz(_no_objects), None, r"holds no objects \('offsets' is \[0\], 'stamps' has 0 frames\)"),
    "mjd as text": (_write_npz(lambda d: {**d, "mjd": d["mjd"].astype(str)}), None,
                    r"'mjd' has dtype <U\d+; expected numbers"),
    "a frame without mjd": (_write_npz(lambda d: _with(d, "mjd", 30, np.nan)), None,
                            r"'mjd'\[30\] is nan: frame 5 of object 1 \('.+'\) has no observation time"),
    "all frames r band": (_write_npz(lambda d: {**d, "filter_code": np.ones_like(d["filter_code"])}), None,
                          r"object 0 \('.+'\) has no usable frame: none of its 25 frames is g band .*\[1\.0\]\) "
                          r"\(39 more object\(s\) too\)"),
    "no seeing": (_write_npz(lambda d: _with(d, "seeing_arcsec", slice(None), np.nan)), None,
                  r"object 0 .* has no usable frame: .*NaN: seeing_arcsec in \d+\)"),
    "negative seeing": (_write_npz(lambda d: {**d, "seeing_arcsec": -d["seeing_arcsec"]}), None,
                        r"'seeing_arcsec'\[0\] is -1\.2177 in g-band frame 0 of object 0 \('.+'\): outside the "
                        r"plausible range \[0\.01, 20\] arcsec .*\(1072 more frame\(s\) too\)$"),
    "zero exposure time": (_write_npz(lambda d: _with(d, "exp_time_s", 30, 0.0)), None,
                           r"'exp_time_s'\[30\] is 0\.0 in g-band frame 5 of object 1 \('.+'\): outside the "
                           r"plausible range \[0\.001, 100000\] s \(from a millisecond shutter"),
    "negative sky": (_write_npz(lambda d: {**d, "sky_adu": -d["sky_adu"]}), None,
                     r"'sky_adu'\[0\] is -111\.61\d* in g-band frame 0 .*: outside the plausible range "
                     r"\(0, 1e\+06\] adu"),
    "class_names 0-d": (_write_npz(lambda d: {**d, "class_names": np.array("SN")}), None,
                        r"'class_names' has shape \(\); expected \(classes,\): one name per class"),
    "duplicate class_names": (_write_npz(lambda d: {**d, "class_names": np.array(["SN", "SN", "EB", "NV"])}), None,
                              r"'class_names' holds 'SN' twice \(classes 0 and 1\); each class needs its own name"),
    "no zero point": (_write_npz(lambda d: _with(d, "zero_point", slice(None), np.nan)), None,
                      r"object 0 .* has no usable frame: .*NaN: zero_point in \d+\)"),
    # the camera table is read by the survey logs' reader (survey_params.hits_logs.read_camera_csv)
    "empty camera table": (lambda p, d: p.write_text(""), "--camera",
                           r": is empty; expected a CSV table with a header row \(ccd, gain, read_noise, saturation\)"),
    "camera not a CSV table": (lambda p, d: p.write_text("just text\nmore text\n"), "--camera",
                               r": missing column\(s\) \['ccd', 'gain', 'read_noise', 'saturation'\]"),
    "camera binary": (lambda p, d: p.write_bytes(b"\xff\xfe\x00\x93" * 20), "--camera", r": cannot be read as CSV"),
    "camera bad gain": (lambda p, d: p.write_text("ccd,gain,read_noise,saturation\n1,4.0,6.1,38000\n2,,6.2,40000\n"),
                        "--camera", r", data row 2, column 'gain': value is empty"),
    "camera implausible gain": (lambda p, d: p.write_text("ccd,gain,read_noise,saturation\n1,1e30,6.1,38000\n"),
                                "--camera", r", data row 1, column 'gain': value 1e\+30 is above 100 electron/adu"),
    "camera without CCD ids": (lambda p, d: p.write_text("gain,read_noise,saturation\n4.0,6.1,38000\n"), "--camera",
                               r": missing column\(s\) \['ccd'\]"),
    "camera a directory": (lambda p, d: p.mkdir(), "--camera", r": is a directory; expected a camera table"),
    "fields not a table": (lambda p, d: p.write_bytes(b"\x00\x01 not a table"), "--fields",
                           r"cannot be read as a table of field, ra_deg, dec_deg"),
}


@pytest.mark.parametrize("case", list(BAD_REAL_INPUTS))
def test_unusable_real_inputs_are_refused_in_one_line(case, tmp_path, hits_dir, capsys):
    """Each refused by `rcnn import-real` with exit 2 and one line naming the file, the array or column and the
    value: no traceback, no output file."""
    from rcnn.cli import main

    write, option, message = BAD_REAL_INPUTS[case]
    d = dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False))
    bad = tmp_path / ("bad.npz" if option is None else f"bad.{option[2:]}")  # bad.fields: no format by its name
    write(bad, d)
    source = bad if option is None else hits_dir / "real_dev.npz"
    extra = [] if option is None else [option, str(bad)]
    if option != "--camera":
        extra += ["--camera", str(hits_dir / "camera.csv")]
    out = tmp_path / "out" / "real.h5"
    assert main(["import-real", str(source), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"rcnn import-real: error: {bad}: ") or err.startswith(f"rcnn import-real: error: {bad}, "), err
    assert re.search(message, err), err
    assert not out.exists()


def test_import_real_refuses_an_existing_output_without_overwrite(tmp_path, hits_dir, capsys, monkeypatch):
    """As `simulate`: an existing --out is kept unless --overwrite; a directory, an output under a file or the
    source itself are refused before any work."""
    from rcnn.cli import main

    src = tmp_path / "four.npz"
    np.savez(src, **_objects(dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False)), [0, 10, 20, 30]))
    out = tmp_path / "real.h5"
    out.write_bytes(b"a simulated dataset")
    (tmp_path / "file").write_text("x")
    argv = ["import-real", str(src), "--camera", str(hits_dir / "camera.csv"), "--out"]
    for target, message in ((out, f"{out}: exists and is not an import of {src}; pass --overwrite to replace it"),
                            (tmp_path, f"{tmp_path}: is a directory; --out names a file"),
                            (tmp_path / "file" / "x.h5", f"{tmp_path / 'file'}: is not a directory, so --out"),
                            (src, f"{src}: is the source itself")):
        assert main(argv + [str(target)] + (["--overwrite"] if target == src else [])) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rcnn import-real: error: {message}") and len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == b"a simulated dataset" and not (tmp_path / "file" / "x.h5").exists()
    assert main(argv + [str(out), "--overwrite"]) == 0
    with h5py.File(out, "r") as f:
        assert f["mask"].shape[0] == 4
    assert main(argv + [str(out)]) == 0  # an import of the same source is redone (a pipeline rerun)
    monkeypatch.chdir(tmp_path)  # the same source named by a relative path: still a rerun
    assert main(["import-real", "four.npz", "--camera", str(hits_dir / "camera.csv"), "--out", "real.h5"]) == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["source"] == str(src.resolve())


def test_imported_sequences_put_valid_epochs_first(tmp_path, hits_dir):
    """Frames dropped mid-sequence (r band, band unknown), conditions estimated, frames out of time order:
    each row still holds its valid epochs first, in time order (rcnn.data.SequenceData requires it)."""
    from rcnn.data import SequenceData
    from rcnn.real import import_real

    d = _objects(dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False)), [0, 1, 10, 20, 30])
    g = np.flatnonzero(d["filter_code"] == 0)
    d = _with(d, "filter_code", g[[2, 30, 31, 60]], 1)  # dropped: not g band
    d = _with(d, "filter_code", g[[5, 90]], np.nan)  # dropped: band unknown
    for k in ("seeing_arcsec", "zero_point"):  # estimated, kept: conditions missing for a whole exposure
        d = _with(d, k, d["hits_epoch"] == d["hits_epoch"][g[8]], np.nan)
    dropped = d["mjd"][g[[2, 30, 31, 60, 5, 90]]]
    lo, hi = d["offsets"][2], d["offsets"][3]
    order = np.concatenate([np.arange(lo), np.arange(lo, hi)[::-1], np.arange(hi, len(d["mjd"]))])
    d = {k: (v[order] if np.shape(v)[:1] == (len(order),) else v) for k, v in d.items()}  # object 2 backwards
    src = tmp_path / "gaps.npz"
    np.savez(src, **d)
    out = import_real(src, tmp_path / "gaps.h5", hits_dir / "camera.csv")
    with h5py.File(out, "r") as f:
        mask, mjd = f["mask"][()], f["mjd"][()]
        first, estimated = f["photometry/first_detection"][()], f["conditions/estimated"][()]
    n = mask.sum(1)
    assert estimated[mask].any() and not estimated[~mask].any()
    assert np.array_equal(mask, np.arange(mask.shape[1])[None] < n[:, None])  # packed
    assert not np.isin(dropped, mjd[mask]).any()
    assert any(((mjd[i, 0] < dropped) & (dropped < mjd[i, n[i] - 1])).any() for i in range(len(n)))  # mid-sequence
    for i in range(len(n)):
        assert np.isfinite(mjd[i, :n[i]]).all() and (np.diff(mjd[i, :n[i]]) > 0).all()
        assert np.isnan(mjd[i, n[i]:]).all()
    assert (first >= -1).all()
    assert len(SequenceData(out, TrainConfig()).label) == 5  # it refuses a valid epoch after an invalid one


def test_unlabelled_real_stamps_are_classified_not_evaluated(run_4class, real_h5, hits_dir, tmp_path):
    """No label/class_names: one class `unlabelled`, alert windows (5 images before the first detection, as
    the labelled supernovae), `rcnn classify` works and `rcnn evaluate` says why it cannot."""
    from rcnn.real import import_real

    run, _ = run_4class
    labelled, _, _ = real_h5
    d = dict(np.load(hits_dir / "real_dev.npz", allow_pickle=False))
    src = tmp_path / "alerts.npz"
    np.savez(src, **{k: v for k, v in d.items() if k not in ("label", "class_names")})
    out = import_real(src, tmp_path / "alerts.h5", hits_dir / "camera.csv")
    with h5py.File(out) as f, h5py.File(labelled) as g:
        assert list(f["label"].attrs["class_names"]) == ["unlabelled"] and (f["label"][()] == 0).all()
        det = f["photometry/first_detection"][()]
        assert ((det >= -1) & (det <= 5)).all()  # every window starts at most 5 images before the detection
        sn = [i for i, c in enumerate(g["label"][()]) if list(g["label"].attrs["class_names"])[c] == "SN"]
        assert np.array_equal(f["mjd"][sn, 0], g["mjd"][sn, 0])  # supernovae: the same windows as labelled
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(run), str(out), "--out",
                           str(tmp_path / "cls")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "cls" / "probabilities.json").read_text())["objects"]) == 40
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "evaluate", str(run), "--real", str(out), "--out",
                           str(tmp_path / "rep")], capture_output=True, text=True)
    assert proc.returncode == 2 and "imported without labels" in proc.stderr and not (tmp_path / "rep").exists()
    from rcnn.baseline import run_baseline

    with pytest.raises(ValueError, match="imported without labels; the forest trains on labelled ones"):
        run_baseline(out, tmp_path / "forest", cv=5, progress=False)
    np.savez(src, **{k: v for k, v in d.items() if k != "class_names"})
    with pytest.raises(ValueError, match="missing array.*class_names .*label and class_names go together"):
        import_real(src, tmp_path / "half.h5", hits_dir / "camera.csv")


def test_import_real_photometry_in_chunks_and_a_stop_between_them(hits_dir, tmp_path, monkeypatch):
    """import-real measures its frames chunk by chunk under a progress bar: small chunks give the same
    fluxes as one call, and a stop signal recorded during the photometry stops after that chunk, writing
    nothing (no output, no temporary file)."""
    import rcnn.real
    from rcnn.real import import_real
    from simulator.stopping import Stopped, stop_requests

    one = import_real(hits_dir / "real_dev.npz", tmp_path / "one.h5", hits_dir / "camera.csv", progress=False)
    monkeypatch.setattr(rcnn.real, "PHOTOMETRY_CHUNK", 100)
    calls = []
    real_measure = rcnn.real.measure_frames

    def counted(stamps, *args):
        calls.append(len(stamps))
        return real_measure(stamps, *args)

    monkeypatch.setattr(rcnn.real, "measure_frames", counted)
    chunked = import_real(hits_dir / "real_dev.npz", tmp_path / "chunked.h5", hits_dir / "camera.csv", progress=False)
    assert len(calls) > 5 and max(calls) == 100
    with h5py.File(one) as a, h5py.File(chunked) as b:
        for key in ("photometry/flux_adu", "photometry/flux_err_adu", "photometry/first_detection", "mask"):
            assert np.array_equal(a[key][()], b[key][()], equal_nan=a[key].dtype.kind == "f"), key
    calls.clear()
    with stop_requests() as caught:
        def stop_after_two(stamps, *args):
            if len(calls) == 1:
                caught.append(signal.SIGINT)  # as the handler records Ctrl-C
            return counted(stamps, *args)

        monkeypatch.setattr(rcnn.real, "measure_frames", stop_after_two)
        with pytest.raises(Stopped):
            import_real(hits_dir / "real_dev.npz", tmp_path / "stopped.h5", hits_dir / "camera.csv", progress=False)
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["chunked.h5", "one.h5"]


@pytest.mark.parametrize("damage", ["metadata", "arrays", "empty_step"])
def test_a_damaged_checkpoint_is_named(run_4class, tmp_path, damage):
    """A checkpoint damaged on disk gave a JSON error naming no file, orbax's 'Unable to retrieve default item'
    or a 150-line TensorStore traceback."""
    from rcnn.inference import Classifier
    from rcnn.train import RunError

    run = Path(shutil.copytree(run_4class[0], tmp_path / "run"))
    best = run / "checkpoints" / "best"
    step = max(int(p.name) for p in best.iterdir() if p.name.isdigit())
    if damage == "metadata":
        (best / str(step) / "default" / "_METADATA").write_text("garbage")
    elif damage == "arrays":
        for f in (best / str(step)).rglob("d/*"):
            f.write_bytes(f.read_bytes()[:10])
    else:
        step += 10
        (best / str(step)).mkdir()
    with pytest.raises(RunError, match=rf"{best}: checkpoint {step} cannot be read: it is damaged or incomplete "
                                       rf"\(.*\); remove {best / str(step)} to use the one before it"):
        Classifier(run)
    if damage == "metadata":  # evaluate checks every run before predicting with the first (minutes each)
        import rcnn.evaluate

        def predict(*args, **kwargs):
            raise AssertionError("predicted before every run was checked")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rcnn.evaluate, "predict", predict)
            with pytest.raises(RunError, match="cannot be read"):
                evaluate([run_4class[0], run], run_4class[1], tmp_path / "rep", progress=False)
