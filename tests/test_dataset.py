"""Datasets end to end: the HDF5 contract, determinism across workers, resume after a kill, CLI errors."""
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from simulator.run import SimulationError, simulate
from simulator.settings import SimConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONDITION_KEYS = ("exp_time_s", "seeing_arcsec", "airmass", "sky_adu", "zero_point", "limmag5", "gain",
                  "read_noise", "saturation")


def run_cli(*args, check=True, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STAMPSEQ_CONDITIONS", None)
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True,
                          env=env, cwd=kw.get("cwd"))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cli_writes_the_dataset_contract(tmp_path):
    out = tmp_path / "d.h5"
    png = tmp_path / "figures" / "d.png"  # a folder that does not exist yet
    proc = run_cli("--survey", "hits", "--n-per-class", "20", "--classes", "nonvariable,galaxy,asteroid",
                   "--seed", "7", "--out", str(out), "--plot", str(png), "--no-progress", "--workers", "2",
                   "--set", "shard_size=32")  # two forked workers (no JAX in this process)
    assert "nonvariable" in proc.stdout and png.stat().st_size > 10_000
    with h5py.File(out, "r") as f:
        n, t = f["mask"].shape
        assert n == 60
        assert f["stamps"].shape == (n, t, 21, 21) and f["stamps"].dtype == np.float32
        assert f["stamps"].chunks[0] <= 64 and f["stamps"].compression == "gzip"
        assert f["mjd"].shape == (n, t) and f["mask"].dtype == bool
        names = [c.decode() if isinstance(c, bytes) else c for c in f["label"].attrs["class_names"]]
        assert names == ["nonvariable", "galaxy", "asteroid"]
        label, split, mask = f["label"][()], f["split"][()], f["mask"][()]
        assert np.bincount(label).tolist() == [20, 20, 20]
        for c in range(3):  # balanced splits per class: 16 / 2 / 2
            assert np.bincount(split[label == c], minlength=3).tolist() == [16, 2, 2]
        for k in CONDITION_KEYS:
            a = f[f"conditions/{k}"][()]
            assert a.shape == (n, t) and np.isfinite(a[mask]).all() and np.isnan(a[~mask]).all()
        stamps, mag = f["stamps"][()], f["truth/mag"][()]
        assert (stamps[~mask] == 0).all() and (stamps[mask].reshape(-1, 441).std(1) > 0).all()
        assert np.isinf(mag[~mask]).all()
        assert (np.isfinite(mag[label == 2]).sum(1) == 1).all()          # asteroid: one epoch
        assert np.isinf(mag[label == 1]).all() and f["truth/has_host"][()][label == 1].all()  # galaxy: host alone
        nv = mag[label == 0]
        assert (np.isfinite(nv) == mask[label == 0]).all()
        assert all((row[np.isfinite(row)] == row[0]).all() for row in nv)  # constant brightness
        # sky-subtracted flux of bright non-variables follows eq. 1 (noise and stamp-size losses aside)
        zp, texp, sky = (f[f"conditions/{k}"][()] for k in ("zero_point", "exp_time_s", "sky_adu"))
        zp_true = zp + f["truth/zero_point_error_mag"][()]   # the logged zero point is off by ~0.02 mag
        assert 0.01 < np.nanstd(zp_true - zp) < 0.03
        sel = (label[:, None] == 0) & mask & (mag < 20)
        if sel.any():
            measured = (stamps - sky[..., None, None]).sum((2, 3))[sel]
            expected = texp[sel] * 10 ** (0.4 * (zp_true[sel] - mag[sel]))
            # a 21x21 stamp holds ~99% of a Moffat(beta 4.2) star's flux at HiTS seeing
            assert np.median(measured / expected) == pytest.approx(0.99, abs=0.015)
        assert f.attrs["survey"] == "hits" and f.attrs["seed"] == 7 and "version" in f.attrs
        assert '"n_per_class": 20' in f.attrs["config"]


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, monkeypatch):
    # 150 objects: chunks of 64 copied whole from aligned shards (64) or rebuilt across shards (8, 5);
    # workers as this process would start them (forked unless JAX is loaded) and spawned (their own set-up)
    from multiprocessing import get_context

    import simulator.run

    base = dict(classes=("nonvariable", "galaxy", "asteroid"), n_per_class=50, seed=3, shard_size=64, progress=False)
    a = simulate(SimConfig(**base), tmp_path / "a.h5")
    b = simulate(SimConfig(**base, workers=2), tmp_path / "b.h5")
    c = simulate(SimConfig(**{**base, "shard_size": 5}), tmp_path / "c.h5")
    monkeypatch.setattr(simulator.run, "_worker_context", lambda: get_context("spawn"))
    e = simulate(SimConfig(**{**base, "shard_size": 8, "workers": 2}), tmp_path / "e.h5")
    d = simulate(SimConfig(**{**base, "seed": 4}), tmp_path / "d.h5")
    assert sha(a) == sha(b)
    with h5py.File(a) as fa, h5py.File(d) as fd:
        assert not np.array_equal(fa["stamps"][()], fd["stamps"][()])
        for other in (c, e):  # other shard sizes (recorded in the config): the same compressed chunks
            with h5py.File(other) as fo:
                keys = []
                fa.visititems(lambda n, obj: keys.append(n) if isinstance(obj, h5py.Dataset) else None)
                for key in keys:  # every dataset, stamps and the per-object arrays alike
                    zeros = (0,) * (fa[key].ndim - 1)
                    for lo in range(0, 150, 64):
                        assert fa[key].id.read_direct_chunk((lo,) + zeros) == fo[key].id.read_direct_chunk((lo,) + zeros), key
                np.testing.assert_array_equal(fa["truth/mag"][()], fo["truth/mag"][()])
    # the stamps equal a direct simulation of the objects
    from simulator.shard import simulate_shard

    with h5py.File(a) as fa:
        direct = simulate_shard(fa.attrs["config"], 60, 150)["stamps"]
        np.testing.assert_array_equal(fa["stamps"][60:150], direct)


def test_a_bad_scheduler_address_names_the_option(tmp_path):
    with pytest.raises(SimulationError, match="^--scheduler foo: missing port number in address 'foo'$"):
        simulate(SimConfig(classes=("nonvariable",), n_per_class=2, progress=False, scheduler="foo"), tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_dask_scheduler_gives_the_same_bytes(tmp_path):
    # --scheduler: shards computed on a Dask cluster (here an in-process one), written by this process
    from distributed import LocalCluster

    base = dict(classes=("nonvariable", "galaxy", "asteroid"), n_per_class=40, seed=3, shard_size=32, progress=False)
    local = simulate(SimConfig(**base), tmp_path / "local.h5")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = simulate(SimConfig(**base, scheduler=cluster.scheduler_address), tmp_path / "dask.h5")
    assert sha(local) == sha(remote)


def test_merger_appends_shards_in_order_whatever_their_arrival(tmp_path):
    from simulator.dataset import Merger, read_arrays, write_arrays

    rng = np.random.default_rng(0)
    parts = [{"label": np.arange(a, b, dtype=np.int16), "stamps": rng.normal(size=(b - a, 3, 5, 5)).astype(np.float32)}
             for a, b in ((0, 70), (70, 100), (100, 101))]
    paths = [tmp_path / f"shard-{i}.h5" for i in range(3)]
    for p, arrays in zip(paths, parts):
        write_arrays(p, arrays, {}, ["a"])
    out = tmp_path / "out.h5"
    with Merger(paths, out, {"seed": 1}, ["a"], 101) as merger:
        for i in (2, 0, 1):  # shard 2 waits for 0 and 1
            merger.add(i)
            assert not out.exists()
    arrays, attrs = read_arrays(out)
    np.testing.assert_array_equal(arrays["label"], np.arange(101))
    np.testing.assert_array_equal(arrays["stamps"], np.concatenate([p["stamps"] for p in parts]))
    assert attrs["seed"] == 1
    incomplete = tmp_path / "incomplete.h5"
    with pytest.raises(RuntimeError, match="after 1 of 3 shards"):
        with Merger(paths, incomplete, {}, ["a"], 101) as merger:
            merger.add(0)
            merger.add(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"] + [p.name for p in paths]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resume_after_kill_loses_nothing(tmp_path, workers):
    """SIGKILL part-way, rerun: the same bytes. With worker processes the rerun runs at once: the killed
    parent's workers exit and do not keep the output locked (they waited on the pool's pipe for good)."""
    args = ["--n-per-class", "150", "--seed", "5", "--no-progress", "--set", "shard_size=10"]
    ref = tmp_path / "ref.h5"
    run_cli(*args, "--out", str(ref))
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", *args, "--workers", workers, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = Path(str(out) + ".parts")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("shard-*.h5"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(parts.glob("shard-*.h5"))
    assert 2 <= len(done) < 45 and not out.exists(), "the run should have been killed part-way"
    run_cli(*args, "--out", str(out))
    assert sha(out) == sha(ref)
    assert not parts.exists()  # the parts were merged and removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.h5", "ref.h5"]  # no partial output left beside


def test_ctrl_c_stops_simulate_at_once_keeping_its_shards(tmp_path, signal_command):
    """Ctrl-C reaches the whole process group: the workers ignore it, the command drops the shards not
    started (it used to wait for all of them to be computed, then throw them away), says what it kept and
    exits 130; the rerun gives the bytes of an uninterrupted run."""
    args = ["--n-per-class", "1000", "--seed", "5", "--no-progress", "--workers", "2", "--set", "shard_size=40"]
    ref = tmp_path / "ref.h5"
    t0 = time.monotonic()
    run_cli(*args, "--out", str(ref))
    full_s = time.monotonic() - t0
    out = tmp_path / "stopped.h5"
    parts = Path(str(out) + ".parts")
    status, err, stop_s = signal_command("simulator.cli", [*args, "--out", str(out)],
                                         lambda: len(list(parts.glob("shard-*.h5"))) >= 2, signal.SIGINT,
                                         env={**os.environ, "PYTHONPATH": str(REPO)}, poll_s=0.005)
    kept = len(list(parts.glob("shard-*.h5")))
    assert status == 130 and "Traceback" not in err, err[-2000:]
    assert f"simulate: stopped by SIGINT; {kept} finished shards kept in {parts}: rerun the same command" in err
    assert 2 <= kept < 175 and not out.exists()
    assert stop_s < full_s / 3, (stop_s, full_s)  # it did not compute the other ~170 shards first
    run_cli(*args, "--out", str(out))
    assert sha(out) == sha(ref) and not parts.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="needs the resource module (POSIX)")
def test_merge_of_more_shards_than_the_open_file_limit(tmp_path):
    # 90 shards under a limit of 60 open files: the merge must not hold every shard open (paper-scale
    # runs have ~840 shards; common limits are 256-1024)
    args = ["--classes", "nonvariable,galaxy,asteroid", "--n-per-class", "30", "--seed", "2", "--no-progress"]
    ref = tmp_path / "ref.h5"
    run_cli(*args, "--out", str(ref), "--set", "shard_size=64")
    out = tmp_path / "many.h5"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (60, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); from simulator.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *args, "--out", str(out), "--set", "shard_size=1"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with h5py.File(ref) as fr, h5py.File(out) as fo:
        keys = []
        fr.visititems(lambda n, obj: keys.append(n) if isinstance(obj, h5py.Dataset) else None)
        for key in keys:
            np.testing.assert_array_equal(fr[key][()], fo[key][()], err_msg=key)
            first = (0,) * fr[key].ndim  # a chunk rebuilt from 64 one-object shards: the same bytes
            assert fr[key].id.read_direct_chunk(first) == fo[key].id.read_direct_chunk(first), key


def test_rerun_with_other_options_is_refused(tmp_path):
    out = tmp_path / "x.h5"
    run_cli("--n-per-class", "3", "--out", str(out), "--no-progress")
    proc = run_cli("--n-per-class", "4", "--out", str(out), "--no-progress", check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--classes", "quasar"], "unknown class"),
    (["--templates", "/nonexistent/templates"], "/nonexistent/templates not found"),
    (["--max-epochs", "3"], "max_epochs must be None or >= pre_alert_epochs + 1"),
    (["--conditions", "/nonexistent/logs"], "/nonexistent/logs: conditions directory not found"),
    (["--set", "moffat_bta=3"], "unknown config key 'moffat_bta'"),
    (["--set", "psf_shear_rms=abc"], "psf_shear_rms must be a number; got 'abc'"),
    (["--set", "max_epochs=7.5"], "max_epochs must be an integer or null; got 7.5"),
    (["--set", "host_fraction_other=2"], "host_fraction_other must be in [0, 1]"),
    (["--set", "psf=["], "--set psf=[: not valid YAML at line 1, column 2"),
    (["--set", "split_fractions=a,b,c"], "--set split_fractions=a,b,c: split_fractions must be comma-separated numbers"),
    (["--set", "zero_point_error_mag=nan"], "zero_point_error_mag must be a finite number, got nan"),
    (["--set", "psf_fwhm_offset_arcsec=-2"], "psf_fwhm_offset_arcsec (the PSF FWHM) must be >= 0.5 px = 0.135\" at the survey's best"),
    (["--config", "/nonexistent/sim.yaml"], "/nonexistent/sim.yaml: config file not found"),
    (["--set", "seeing_limit_arcsec=0.1"], "none of 300 objects drawn has an epoch within the seeing limit (0.1\")"),
    (["--survey", "ztf"], "survey 'ztf' has no built-in model"),
])
def test_cli_bad_input_gives_a_clear_message(tmp_path, args, message):
    proc = run_cli("--out", str(tmp_path / "y.h5"), "--no-progress", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no output, no parts directory to trip a rerun


def test_a_tight_seeing_limit_redraws_objects_without_epochs(tmp_path):
    """Under a 1.05" limit most built-in-model objects keep no epoch: they are drawn again, not crashed on."""
    out = simulate(SimConfig(n_per_class=2, seed=0, seeing_limit_arcsec=1.05, progress=False), tmp_path / "x.h5")
    with h5py.File(out) as f:
        assert f["mask"][()].any(axis=1).all() and (f["conditions/seeing_arcsec"][()][f["mask"][()]] <= 1.05).all()


def test_config_values_are_typed():
    """Values that mean the same are converted (YAML 1.1 reads 1e-3 as a string), others refused by key."""
    cfg = load_config(sets=["seeing_limit_arcsec=1e-3", "n_per_class=5"], overrides={"conditions": Path("/logs")})
    assert cfg.seeing_limit_arcsec == 1e-3 and cfg.n_per_class == 5 and cfg.conditions == "/logs"
    assert SimConfig(n_per_class=np.int64(3)).n_per_class == 3 and type(SimConfig(seed=np.int32(1)).seed) is int
    with pytest.raises(ValueError, match="n_per_class must be an integer; got True"):
        SimConfig(n_per_class=True)
    with pytest.raises(ValueError, match="progress must be true or false; got 'yes please'"):
        load_config(sets=["progress=yes please"])


def test_load_config_takes_set_strings_second_too():
    """`load_config(None, ["n_per_class=3"])`, the CLI's strings where rcnn's load_config takes them, was an
    AttributeError ('list' object has no attribute 'items'); a dict there is as before, other types a TypeError."""
    assert load_config(None, ["n_per_class=3", "seed=4"]) == load_config(sets=["n_per_class=3", "seed=4"])
    assert load_config(None, ["n_per_class=3"], ["n_per_class=5"]).n_per_class == 5  # then `sets`
    assert load_config(None, {"n_per_class": 6, "seed": None}, ["n_per_class=5"]).n_per_class == 6
    for args, message in (((None, "n_per_class=3"), "overrides must be a dict of key -> value or a list of"),
                          ((None, None, {"n_per_class": 3}), "sets must be a list of 'key=value' strings"),
                          ((None, None, "n_per_class=3"), "sets must be a list of 'key=value' strings")):
        with pytest.raises(TypeError, match=message):
            load_config(*args)


def test_a_run_that_fails_before_any_shard_leaves_no_parts(tmp_path, monkeypatch):
    import simulator.run

    def no_cluster(*args):
        raise OSError("Timed out trying to connect to tcp://nowhere:8786")

    monkeypatch.setattr(simulator.run, "_shards_written", no_cluster)
    with pytest.raises(OSError, match="Timed out"):
        simulate(SimConfig(n_per_class=2, progress=False), tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []

def test_a_killed_worker_is_a_clear_error(tmp_path, monkeypatch):
    """A worker process killed (for memory, most often) while shards are pending: a SimulationError saying
    so, not BrokenProcessPool's traceback; the rerun makes the dataset. (Killed as the shards are handed
    out; the next test kills one in the middle of its output.)"""
    import multiprocessing

    import simulator.run

    cfg = SimConfig(n_per_class=20, seed=4, workers=2, shard_size=10, progress=False)
    ref = tmp_path / "ref.h5"
    simulate(dataclasses.replace(cfg, workers=1), ref)
    killed = []

    def kill_then_wait(futures):
        killed.extend(multiprocessing.active_children())
        for child in killed:
            os.kill(child.pid, signal.SIGKILL)
        return real_as_completed(futures)
    real_as_completed = simulator.run.as_completed
    monkeypatch.setattr(simulator.run, "as_completed", kill_then_wait)
    out = tmp_path / "x.h5"
    with pytest.raises(SimulationError, match=r"a worker process died \(out of memory\? use fewer --workers\)"):
        simulate(cfg, out)
    assert killed and not out.exists()
    monkeypatch.undo()
    simulate(cfg, out)
    assert sha(out) == sha(ref)


def test_a_worker_killed_while_writing_its_shard(tmp_path):
    """Local workers write their own shard files and send back only the range: a worker killed with its
    output half written (its temporary file left) is a clear error, not a hang, which a large result cut
    off in the pool's pipe would be; shards finished meanwhile are kept and the rerun completes the
    dataset, byte for byte the serial one. (In a fresh interpreter without JAX, whose threads make forking
    this test process unsafe, so that the workers fork and inherit the patched writer.)"""
    cfg = SimConfig(n_per_class=20, seed=4, workers=2, shard_size=10, progress=False)
    ref = tmp_path / "ref.h5"
    simulate(dataclasses.replace(cfg, workers=1), ref)
    out = tmp_path / "x.h5"
    script = f"""
import os, signal, sys
from pathlib import Path
import simulator.run
from simulator.run import SimulationError, simulate
from simulator.settings import SimConfig

real_write = simulator.run.write_arrays

def die_in_shard_3(path, arrays, attrs, class_names):
    if attrs["start"] == 30:
        Path(str(path) + ".tmp-half").write_bytes(b"HDF half")
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, arrays, attrs, class_names)

simulator.run.write_arrays = die_in_shard_3
assert simulator.run._worker_context().get_start_method() == "fork"
try:
    simulate(SimConfig(n_per_class=20, seed=4, workers=2, shard_size=10, progress=False), {str(out)!r})
except SimulationError as exc:
    print(exc)
    sys.exit(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 3 and "a worker process died" in proc.stdout, proc.stdout + proc.stderr
    parts = Path(str(out) + ".parts")
    assert not out.exists() and (parts / "shard-000003.h5.tmp-half").exists()
    assert not (parts / "shard-000003.h5").exists()
    simulate(cfg, out)
    assert sha(out) == sha(ref) and not parts.exists()


def test_a_run_killed_after_its_output_is_complete_leaves_no_shards(tmp_path, monkeypatch):
    """Killed between renaming OUT into place and removing OUT.parts: the rerun finds OUT complete and
    removes the shards left beside it (they stayed for good before)."""
    import simulator.run

    cfg = SimConfig(n_per_class=4, seed=2, shard_size=10, progress=False)
    out = tmp_path / "x.h5"

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # nothing after it runs

    monkeypatch.setattr(simulator.run.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        simulate(cfg, out)
    monkeypatch.undo()
    parts = Path(str(out) + ".parts")
    assert out.exists() and any(parts.glob("shard-*.h5"))
    before = sha(out)
    simulate(cfg, out)
    assert not parts.exists() and sha(out) == before


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    """`OUT.tmp<PID>` left by a writer killed before its rename (e.g. `rcnn import-real`) is removed by the next
    write of OUT; one of a writer still running is not."""
    from simulator.dataset import read_arrays, write_arrays

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "real.h5"
        stale, live = (tmp_path / f"real.h5.tmp{pid}" for pid in (int(dead.stdout), alive.pid))
        for f in (stale, live, tmp_path / "real.h5.tmpnotapid", tmp_path / "other.h5.tmp1"):
            f.write_bytes(b"half an HDF5 file")
        write_arrays(out, {"label": np.arange(3, dtype=np.int16)}, {"source": "x"}, ["a", "b", "c"])
        assert read_arrays(out)[0]["label"].tolist() == [0, 1, 2]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["real.h5", live.name, "real.h5.tmpnotapid", "other.h5.tmp1"])
    finally:
        alive.kill()
        alive.wait()


def test_a_second_simulate_to_the_same_output_stops_at_once(tmp_path):
    from simulator.lock import LockedError, exclusive

    out = tmp_path / "x.h5"
    parts = Path(str(out) + ".parts")
    parts.mkdir()
    with exclusive(parts / "lock", "the first run"):  # as a running `simulate` holds it
        proc = run_cli("--n-per-class", "2", "--out", str(out), "--no-progress", check=False)
        assert proc.returncode == 2 and f"{out} is being written by another process" in proc.stderr
        with pytest.raises(LockedError):
            simulate(SimConfig(n_per_class=2, progress=False), out)
    simulate(SimConfig(n_per_class=2, progress=False), out)  # released: it runs
    assert out.exists() and not parts.exists()


def test_parts_of_a_run_that_finished_no_shard_do_not_block_other_options(tmp_path):
    out = tmp_path / "x.h5"
    parts = Path(str(out) + ".parts")
    parts.mkdir()
    (parts / "config.json").write_text('{"from": "a run killed before its first shard"}')
    run_cli("--n-per-class", "2", "--out", str(out), "--no-progress")
    assert out.exists() and not parts.exists()


def test_real_logs_dataset(tmp_path, hits_dir):
    out = tmp_path / "r.h5"
    simulate(SimConfig(n_per_class=5, conditions=str(hits_dir), seed=1, progress=False), out)
    with h5py.File(out) as f:
        mask, seeing = f["mask"][()], f["conditions/seeing_arcsec"][()]
        assert (seeing[mask] <= 2.0).all() and f["mask"].shape[1] <= 29
        gains = np.genfromtxt(hits_dir / "camera.csv", delimiter=",", names=True)["gain"]
        used = f["conditions/gain"][()][mask]
        assert np.isclose(used[:, None], gains[None, :], rtol=1e-6).any(axis=1).all()


def test_packed_stamp_chunks_are_plain_gzip_and_shuffle(tmp_path):
    """Chunks compressed in the workers decode with HDF5's standard filters to the exact array (any HDF5
    reader can open the stamps), including a partial last chunk."""
    from simulator.dataset import pack_chunks, write_arrays

    rng = np.random.default_rng(0)
    stamps = (500 + rng.normal(0, 25, (70, 20, 21, 21))).astype(np.float32)  # sky-like noise
    stamps[:, 13:] = 0  # padded epochs
    arrays = {"stamps": pack_chunks(stamps), "label": np.zeros(70, np.int16)}
    path = tmp_path / "packed.h5"
    write_arrays(path, arrays, {}, ["a"])
    with h5py.File(path) as f:
        ds = f["stamps"]
        assert ds.compression == "gzip" and ds.shuffle
        np.testing.assert_array_equal(ds[()], stamps)
    # each chunk is one standard zlib stream (stored blocks for the noisy low mantissa bytes), as small as
    # deflating it whole; small per-object arrays too
    import zlib

    from simulator.dataset import _deflate_chunk

    for block in (stamps[:64], stamps[64:], stamps[:64, :, 0, 0].astype(np.float64)):
        packed = _deflate_chunk(block, 64, shuffle=True)
        padded = np.zeros((64,) + block.shape[1:], block.dtype)
        padded[:len(block)] = block
        shuffled = padded.view(np.uint8).reshape(-1, block.dtype.itemsize).T.tobytes()
        assert zlib.decompress(packed) == shuffled
        whole = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
        assert len(packed) <= 1.01 * len(whole.compress(shuffled) + whole.flush())


def test_workers_fork_only_without_jax(monkeypatch):
    """Local workers are forked on Linux (they inherit the parent's set-up) unless JAX, multithreaded, is
    loaded in this process; then they are spawned."""
    import simulator.run

    monkeypatch.setitem(sys.modules, "jax", object())
    assert simulator.run._worker_context().get_start_method() == "spawn"
    monkeypatch.delitem(sys.modules, "jax")
    expected = "fork" if sys.platform == "linux" else "spawn"
    assert simulator.run._worker_context().get_start_method() == expected


def test_a_file_system_without_flock_runs_unguarded(tmp_path, monkeypatch):
    """Some NFS and Lustre mounts refuse flock (ENOLCK, ENOSYS): the commands must still run there."""
    import errno
    import fcntl

    from simulator.lock import exclusive

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with exclusive(tmp_path / "lock", "x"):
        pass
    out = simulate(SimConfig(n_per_class=1, classes=("nonvariable",), progress=False), tmp_path / "x.h5")
    assert out.exists()


FLOAT_KEYS = [f.name for f in dataclasses.fields(SimConfig) if f.type in ("float", "float | None")]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_option_must_be_finite(key, value):
    """NaN passes every range check (and shard.py's `> 0` tests), inf crashes deep in a run: both are refused."""
    with pytest.raises(ValueError, match=f"^{key} must be a finite number, got {value}$"):
        SimConfig(**{key: value})


@pytest.mark.parametrize("values,message", [
    ({"stamp_size": -5}, "stamp_size must be an odd integer >= 3, got -5"),
    ({"stamp_size": 1}, "stamp_size must be an odd integer >= 3, got 1"),
    ({"stamp_size": 20}, "stamp_size must be an odd integer >= 3, got 20"),
    ({"fft_size": 40}, "fft_size and host_fft_size must be >= 2 x stamp_size = 42, got 40, 64"),
    ({"moffat_beta": 0}, "moffat_beta must be > 1.1 (GalSim's Moffat is untruncated), got 0.0"),
    ({"moffat_beta": 1.1}, "moffat_beta must be > 1.1"),
    ({"host_disk_thickness": -1}, "host_disk_thickness (a disk's intrinsic axis ratio) must be in (0, 1], got -1.0"),
    ({"host_disk_thickness": 0}, "host_disk_thickness (a disk's intrinsic axis ratio) must be in (0, 1]"),
    ({"host_disk_thickness": 1.5}, "host_disk_thickness (a disk's intrinsic axis ratio) must be in (0, 1]"),
    ({"min_dates": 100}, "min_dates must be <= max_epochs = 20, got 100"),
    ({"psf_shear_rms": 0.7}, "psf_shear_rms must be in [0, 0.1]"),
    ({"psf_shear_rms": -0.01}, "psf_shear_rms must be in [0, 0.1]"),
    ({"seeing_limit_arcsec": 0}, "seeing_limit_arcsec must be > 0, got 0.0"),
    ({"host_disk_hlr_kpc": -3.5}, "host_disk_hlr_kpc must be > 0, got -3.5"),
    ({"host_disk_hlr_arcsec_at_g20": 0}, "host_disk_hlr_arcsec_at_g20 must be > 0, got 0.0"),
    ({"host_mag_max": 16}, "host_mag_min must be < host_mag_max = 16.0, got 17.0"),
    ({"star_mag_min": 23}, "star_mag_min must be < star_mag_cut = 22.8, got 23.0"),
    ({"rrlyrae_mag_cut": 14}, "star_mag_min must be < rrlyrae_mag_cut = 14.0, got 14.5"),
    ({"split_fractions": (float("nan"), 0.5, 0.5)}, "split_fractions must be three non-negative numbers summing to 1"),
    ({"split_fractions": ("a", "b", "c")}, "split_fractions must be three numbers, got ('a', 'b', 'c')"),
    ({"split_fractions": 0.8}, "split_fractions must be three numbers, got 0.8"),
    ({"seed": -5}, "seed must be in [0, 2**63), got -5"),  # numpy's message without the key
    ({"seed": 10 ** 29}, "seed must be in [0, 2**63), got 10000"),  # an h5py traceback when stored
    ({"classes": {"supernova": 1}}, "classes must be a list of class names, got {'supernova': 1}"),  # its keys, used
    # memory: a 76 GiB allocation, or the kernel's OOM killer
    ({"psf_fwhm_scatter": 3}, "psf_fwhm_scatter must be in [0, 0.5] (a log-normal sigma"),
    ({"fft_size": 100000}, "fft_size must be in [0, 512] (px; memory grows as its square), got 100000"),
    # silent nonsense: 89-123 arcsec PSFs, hosts at magnitude 0, stars clamped to 14.5-14.9, overflowing counts
    ({"psf_fwhm_offset_arcsec": 100}, "psf_fwhm_offset_arcsec must be in [-2, 2]"),
    ({"host_abs_mag_g": -40}, "host_abs_mag_g must be in [-25, -12]"),
    ({"star_depth_nsigma": -100}, "star_depth_nsigma must be in [-3, 5]"),
    ({"star_count_slope_dex": 400}, "star_count_slope_dex must be in [-2, 2]"),
    ({"zero_point_error_mag": 30}, "zero_point_error_mag must be in [0, 0.5] (mag), got 30.0"),
    ({"asteroid_rate_deg_per_day": 1000}, "asteroid_rate_deg_per_day must be in [0, 50]"),
    # a YAML string read letter by letter as (1, 0, 0); booleans taken as numbers
    ({"split_fractions": "100"}, "split_fractions must be three non-negative numbers summing to 1, got (100.0,)"),
    ({"split_fractions": [True, False, False]}, "split_fractions must be three numbers, got [True, False, False]"),
])
def test_out_of_range_options_are_refused_by_key(values, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        SimConfig(**values)


@pytest.mark.parametrize("fractions, n, counts", [
    ((0.5, 0.5, 0.0), 5, [3, 2, 0]),  # a fraction of 0 had an object (2/2/1: each part rounded half to even)
    ((0.5, 0.5, 0.0), 1, [1, 0, 0]),  # (0/0/1: the only object in the split of fraction 0)
    ((0.9, 0.0, 0.1), 7, [6, 0, 1]),
    ((0.25, 0.25, 0.5), 5, [1, 2, 2]),  # train + validation 2.5 rounds up, also where half to even gives 2
    ((0.8, 0.1, 0.1), 200, [160, 20, 20]),
])
def test_split_counts_follow_the_fractions(fractions, n, counts):
    from simulator.shard import split_of

    cfg = SimConfig(n_per_class=n, split_fractions=fractions)
    assert np.bincount(split_of(cfg, np.arange(n)), minlength=3).tolist() == counts


def test_a_magnitude_law_without_mass_on_its_range_is_an_error_not_35():
    """host_mag_cut 10 with hosts from 17: 1 - erf rounded to 0 over the range and every host was 35.002."""
    from simulator.magnitudes import exp_erf_sample

    m = [exp_erf_sample(u, 0.45, 10.0, 17.0, 24.0) for u in (0.1, 0.5, 0.9)]  # erfc keeps the tail
    assert 17.0 <= min(m) and max(m) < 17.5
    with pytest.raises(ValueError, match=r"magnitude law \(slope 0.45 dex/mag, cutoff -20.0\) has no probability"):
        exp_erf_sample(0.5, 0.45, -20.0, 17.0, 24.0)


def test_an_empty_classes_option_is_refused(tmp_path, capsys):
    """`--classes ""` simulated all seven classes (an empty string taken as not given)."""
    from simulator.cli import main

    assert main(["--classes", "", "--out", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    assert "classes must be a non-empty list" in capsys.readouterr().err


def test_a_config_file_survey_is_not_overridden_by_the_cli_default(tmp_path, capsys):
    """`--survey` defaulted to hits, which replaced a config file's `survey:` (options beat the file)."""
    from simulator.cli import main

    (tmp_path / "cfg.yaml").write_text("survey: nosuch\nn_per_class: 2\n")
    assert main(["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    assert "survey 'nosuch' has no built-in model" in capsys.readouterr().err


def test_config_files_refuse_keys_given_twice_and_other_encodings(tmp_path):
    """YAML keys given twice silently took the last value; a Latin-1 file gave a codec error naming no file."""
    (tmp_path / "twice.yaml").write_text("seed: 1\nn_per_class: 2\nseed: 2\n")
    with pytest.raises(ValueError, match=r"twice.yaml: not valid YAML at line 3, column 1 \(key 'seed' given twice\)"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "latin.yaml").write_bytes("survey: hits  # Sébastien's\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.yaml: not a UTF-8 text file \(byte 17: b'\\xe9'\)"):
        load_config(tmp_path / "latin.yaml")
    (tmp_path / "classes.yaml").write_text("classes: nonvariable, asteroid\n")  # was split into letters
    assert load_config(tmp_path / "classes.yaml").classes == ("nonvariable", "asteroid")


def test_bad_config_file_values_name_the_file(tmp_path, capsys):
    """`simulate --config FILE` with a bad key or value names the file (it named only the key); a value an
    option replaces is not blamed on it."""
    from simulator.cli import main

    cfg = tmp_path / "cfg.yaml"
    for text, message in (("n_per_class: ten\n", "n_per_class must be an integer; got 'ten'"),
                          ("seeing_limit_arcsec: .nan\n", "seeing_limit_arcsec must be a finite number, got nan"),
                          ("n_per_clas: 3\n", "unknown config key 'n_per_clas'")):
        cfg.write_text(text)
        with pytest.raises(ValueError) as err:
            load_config(cfg)
        assert str(err.value).startswith(f"{cfg}: {message}"), err.value
    cfg.write_text("n_per_class: ten\n")
    assert load_config(cfg, {"n_per_class": 4}).n_per_class == 4
    with pytest.raises(ValueError, match="^n_per_class must be >= 1, got 0$"):
        load_config(cfg, {"n_per_class": 0})
    assert main(["--survey", "hits", "--config", str(cfg), "--out", str(tmp_path / "x.h5")]) == 2
    assert capsys.readouterr().err == f"simulate: error: {cfg}: n_per_class must be an integer; got 'ten'\n"


def test_a_survey_too_shallow_for_any_supernova_says_so():
    """It was blamed on the template's SED file."""
    from simulator.shard import n_epochs

    with pytest.raises(ValueError, match=r"no 'hsiao-subsampled' supernova would be visible: at z = 0.01 its "
                                         r"brightest peak is already fainter than the survey depth 6.00 mag"):
        n_epochs(SimConfig(classes=("supernova",), sn_depth_mag=6.0, progress=False))


def test_sensible_edge_values_are_accepted():
    SimConfig(stamp_size=3, fft_size=6, host_fft_size=6, moffat_beta=1.11, host_disk_thickness=1.0, min_dates=20,
              psf_shear_rms=0.1, psf="kolmogorov")
    SimConfig(moffat_beta=0, psf="kolmogorov")  # moffat_beta is not used then
    SimConfig(min_dates=10_000, max_epochs=None)  # no cap: every object's whole sequence


def test_psf_fwhm_must_be_half_a_pixel_at_the_surveys_best_seeing():
    """The FWHM (per_seeing x seeing + offset) is checked at the best seeing the conditions can give,
    before anything is written: one that is negative there (an IndexError in profiles.py) or narrower than
    half a pixel (FWHM 0.004 px took 24 GB in the direct sums' tables) is refused, half a pixel is not."""
    from survey_params import make_sampler
    from simulator.shard import MIN_PSF_FWHM_PX, n_epochs

    model = make_sampler("hits", None, 2.0)
    best = model.best_seeing_arcsec()
    seeing = np.concatenate([c.seeing_arcsec[c.mask] for c in model.draw_many([np.random.default_rng(1)] * 300)])
    assert best <= seeing.min() < best + 0.05
    cfg = SimConfig(classes=("nonvariable",), psf_fwhm_per_seeing=1.0)
    least = MIN_PSF_FWHM_PX * model.pixel_scale_arcsec
    n_epochs(dataclasses.replace(cfg, psf_fwhm_offset_arcsec=least + 1e-6 - best))  # valid: just half a pixel
    for offset in (-2.0, least / 2 - best):
        with pytest.raises(ValueError, match=re.escape(f"must be >= 0.5 px = {least:.4g}\" at the survey's best "
                                                       f"seeing, {best:g}\", got 1 x {best:g} + {offset:g} = ")):
            n_epochs(dataclasses.replace(cfg, psf_fwhm_offset_arcsec=offset))


def test_best_seeing_of_real_logs(hits_dir):
    from survey_params import make_sampler

    logs = make_sampler("hits", str(hits_dir), 1.5)
    logged = np.concatenate([np.asarray(logs.survey.field_epochs(f, 1.5)["seeing_arcsec"]) for f in logs.survey.fields()])
    assert logs.best_seeing_arcsec() == logged.min()


def test_output_paths_that_cannot_be_written_are_refused_at_once(tmp_path, capsys):
    """An --out that is a directory, or under a file, and a --plot under a file: one line, exit 2, before
    any simulating, and nothing left behind."""
    from simulator.cli import main

    (tmp_path / "somedir").mkdir()
    (tmp_path / "afile").write_text("")
    for args, message in [
        (["--out", str(tmp_path / "somedir")], f"{tmp_path / 'somedir'}: is a directory; --out names a file"),
        (["--out", str(tmp_path / "somedir"), "--overwrite"], "somedir: is a directory; --out names a file"),
        (["--out", str(tmp_path / "afile" / "x.h5")], f"{tmp_path / 'afile'}: is not a directory, so --out "),
        (["--out", str(tmp_path / "afile" / "sub" / "x.h5")], f"{tmp_path / 'afile'}: is not a directory"),
        (["--out", str(tmp_path / "x.h5"), "--plot", str(tmp_path / "afile" / "p.png")],
         f"{tmp_path / 'afile'}: is not a directory, so --plot "),
        (["--out", str(tmp_path / "x.h5"), "--gallery", str(tmp_path / "somedir")], "is a directory; --gallery names a file"),
        # a place no file can be made (Linux's sysfs: not even by root, whom permissions do not stop): it
        # failed at the end
        *([(["--out", "/sys/x.h5"], "/sys: cannot write there (")] if sys.platform == "linux" else []),
    ]:
        assert main(["--n-per-class", "2", "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "somedir"]
    (tmp_path / "x.h5.parts").write_text("")
    with pytest.raises(SimulationError, match="x.h5.parts: is not a directory"):
        simulate(SimConfig(n_per_class=2, progress=False), tmp_path / "x.h5")


def test_max_epochs_keeps_the_first_epochs_of_each_sequence(tmp_path, capsys):
    """`simulate --max-epochs N`: the epoch axis is N long and each object's sequence is the first N epochs of
    the one it has without the cap (the default 20 here): same window start, alert, epochs, conditions and
    true magnitudes (`choose_window` takes the first N of the object's epochs from its start). The draws made
    after the window are not promised equal: centring offsets are drawn N per axis, so the y offsets,
    orientation and noise (hence the stamps) differ."""
    from simulator.cli import main

    common = ["--n-per-class", "2", "--seed", "11", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "capped.h5"), "--max-epochs", "8"]) == 0
    assert main([*common, "--out", str(tmp_path / "full.h5")]) == 0
    capsys.readouterr()
    with h5py.File(tmp_path / "capped.h5") as c, h5py.File(tmp_path / "full.h5") as f:
        assert json.loads(c.attrs["config"])["max_epochs"] == 8 and json.loads(f.attrs["config"])["max_epochs"] == 20
        assert c["mask"].shape == (14, 8) and f["mask"].shape == (14, 20)
        for key in ("stamps", "mjd", "truth/mag", "truth/dx_px", *(f"conditions/{k}" for k in CONDITION_KEYS)):
            assert c[key].shape[:2] == (14, 8), key
        mask = c["mask"][()]
        assert (mask.sum(1) <= 8).all() and (mask.sum(1) == 8).any()
        full_mask = f["mask"][()]
        assert (full_mask.sum(1) > 8).any()  # the cap cut some sequences short
        np.testing.assert_array_equal(mask, full_mask[:, :8])
        for key in ("mjd", "truth/mag", *(f"conditions/{k}" for k in CONDITION_KEYS)):
            np.testing.assert_array_equal(c[key][()], f[key][()][:, :8], err_msg=key)
        for key in ("label", "split", "truth/alert_epoch", "truth/window_start", "truth/field", "truth/ccd",
                    "truth/has_host", "truth/host_mag", "truth/redshift", "truth/period_d",
                    "conditions/zero_point_ref"):
            np.testing.assert_array_equal(c[key][()], f[key][()], err_msg=key)
        alerts = c["truth/alert_epoch"][()]
        assert ((alerts >= 0) & (alerts < 8)).sum() >= 4  # supernovae and asteroids keep their alert in the window
        stamps = c["stamps"][()]
        assert (stamps[~mask] == 0).all() and (stamps[mask].reshape(mask.sum(), -1).std(1) > 0).all()


def _simulate_in_process(out, *args) -> tuple[int, str]:
    from simulator.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["--n-per-class", "2", "--seed", "4", "--no-progress", "--out", str(out), *args])
    return status, err.getvalue()


def test_stampseq_conditions_is_the_default_of_conditions_and_the_option_wins(tmp_path, hits_dir, monkeypatch):
    """$STAMPSEQ_CONDITIONS does what --conditions does (the same bytes, the directory recorded in the
    config); --conditions wins over it (a variable naming no directory is not read); unset, the built-in model."""
    classes = ("--classes", "nonvariable,asteroid")
    monkeypatch.delenv("STAMPSEQ_TEMPLATES", raising=False)
    monkeypatch.setenv("STAMPSEQ_CONDITIONS", str(hits_dir))
    assert _simulate_in_process(tmp_path / "env.h5", *classes) == (0, "")
    monkeypatch.setenv("STAMPSEQ_CONDITIONS", str(tmp_path / "no-such-logs"))
    assert _simulate_in_process(tmp_path / "option.h5", *classes, "--conditions", str(hits_dir)) == (0, "")
    status, err = _simulate_in_process(tmp_path / "bad.h5", *classes)  # the variable alone: read, and refused
    assert status == 2 and f"{tmp_path / 'no-such-logs'}: conditions directory not found" in err
    monkeypatch.delenv("STAMPSEQ_CONDITIONS")
    assert _simulate_in_process(tmp_path / "builtin.h5", *classes) == (0, "")
    assert sha(tmp_path / "env.h5") == sha(tmp_path / "option.h5") != sha(tmp_path / "builtin.h5")
    mjd = {}
    for name, conditions in (("env", str(hits_dir)), ("builtin", None)):
        with h5py.File(tmp_path / f"{name}.h5") as f:
            assert json.loads(f.attrs["config"])["conditions"] == conditions
            mjd[name] = f["mjd"][()]
    assert not np.array_equal(mjd["env"], mjd["builtin"], equal_nan=True)  # other epochs, not only another config


def test_stampseq_templates_is_the_default_of_templates_and_the_option_wins(tmp_path, templates_dir, monkeypatch):
    """$STAMPSEQ_TEMPLATES does what --templates does; --templates wins over it; unset, the embedded models."""
    classes = ("--classes", "rrlyrae,cepheid")
    monkeypatch.delenv("STAMPSEQ_CONDITIONS", raising=False)
    monkeypatch.setenv("STAMPSEQ_TEMPLATES", str(templates_dir))
    assert _simulate_in_process(tmp_path / "env.h5", *classes) == (0, "")
    monkeypatch.setenv("STAMPSEQ_TEMPLATES", str(tmp_path / "no-such-templates"))
    assert _simulate_in_process(tmp_path / "option.h5", *classes, "--templates", str(templates_dir)) == (0, "")
    status, err = _simulate_in_process(tmp_path / "bad.h5", *classes)
    assert status == 2 and f"{tmp_path / 'no-such-templates'} not found" in err and "STAMPSEQ_TEMPLATES" in err
    monkeypatch.delenv("STAMPSEQ_TEMPLATES")
    assert _simulate_in_process(tmp_path / "embedded.h5", *classes) == (0, "")
    assert sha(tmp_path / "env.h5") == sha(tmp_path / "option.h5") != sha(tmp_path / "embedded.h5")
    for name, real in (("env", True), ("embedded", False)):
        with h5py.File(tmp_path / f"{name}.h5") as f:
            assert json.loads(f.attrs["config"])["templates"] == (str(templates_dir) if real else None)
            template, label = f["truth/template"].asstr()[()], f["label"][()]
        # RR Lyrae: Sesar's light curves, or the embedded Fourier fits (both Cepheid models are Yoachim's)
        assert all(t.startswith("sesar:" if real else "fourier:") for t in template[label == 0]), template


def test_simulate_warns_when_the_disk_looks_too_small(tmp_path, monkeypatch, capsys):
    """The size estimate is close to what a run writes (a slight overestimate), and a disk with less free than
    the shards and the merged file take together gets a warning before any work; the run still goes on."""
    from collections import namedtuple

    import simulator.run as run
    from simulator.settings import SimConfig

    cfg = SimConfig(n_per_class=20, seed=3, progress=False, shard_size=35)
    out = run.simulate(cfg, tmp_path / "a.h5")
    assert "warning" not in capsys.readouterr().err  # this disk has room
    assert 0.85 < out.stat().st_size / run.estimated_bytes(cfg) < 1.0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run.shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 10 ** 6, 10 ** 6))
    out = run.simulate(cfg, tmp_path / "b.h5")
    need = 2 * run.estimated_bytes(cfg) / 1e9
    assert (f"warning: simulating {out} needs about {need:.1f} GB more on its disk (its shards in {out}.parts and "
            f"the merged file, ~{need / 2:.1f} GB each), which has 0.0 GB free") in capsys.readouterr().err
    assert sha(out) == sha(tmp_path / "a.h5")


def test_a_run_finished_while_another_started_is_not_replaced(tmp_path, monkeypatch, capsys):
    """Two `simulate` to one OUT: if the first finishes (renames OUT, removes its parts) while the second is
    between its first look at OUT and taking the lock, the second looks again under the lock: another run's
    dataset is refused (it was replaced without --overwrite), the same run's is left as it is."""
    import simulator.run as run

    first = SimConfig(n_per_class=3, seed=1, progress=False)
    warn = run._warn_disk_space

    def first_finishes(cfg, out, parts):  # runs after the second's first check, before its lock
        monkeypatch.setattr(run, "_warn_disk_space", warn)
        run.simulate(first, out)
        parts.mkdir(exist_ok=True)  # (the first removed the directory the second had made)

    for second, out in ((SimConfig(n_per_class=3, seed=2, progress=False), tmp_path / "a.h5"), (first, tmp_path / "b.h5")):
        monkeypatch.setattr(run, "_warn_disk_space", first_finishes)
        if second is first:
            capsys.readouterr()
            assert run.simulate(second, out) == out
            assert "already complete with these options" in capsys.readouterr().out
        else:
            with pytest.raises(SimulationError, match="exists and was made with other options"):
                run.simulate(second, out)
        with h5py.File(out, "r") as f:
            assert f.attrs["seed"] == 1
        assert not Path(f"{out}.parts").exists()
    assert sha(tmp_path / "a.h5") == sha(tmp_path / "b.h5")
