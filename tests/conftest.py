"""Shared fixtures: the optional real-data directory (`../shared` beside the checkout, or $STAMPSEQ_SHARED)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcnn.cli import use_fast_cpu_flags

use_fast_cpu_flags()  # as `rcnn train` does (the tests mostly train): XLA reads its flags once, before jax is used

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("STAMPSEQ_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def hits_dir() -> Path:
    d = shared_dir() / "hits2015"
    if not (d / "camera.csv").exists():
        pytest.skip(f"real HiTS logs not found at {d} (set STAMPSEQ_SHARED to the folder holding hits2015/)")
    return d


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    d = shared_dir() / "templates"
    if not (d / "README.md").exists():
        pytest.skip(f"real light-curve templates not found at {d} (set STAMPSEQ_SHARED to the folder holding templates/)")
    return d


@pytest.fixture
def signal_command():
    """A function that runs `python -m MODULE ARGS...` as a terminal would (SIGINT and SIGTERM at their default
    actions, whatever this test process inherited: a background job ignores SIGINT, and so would the command,
    as Python does) in a process group of its own, sends `sig` to the group once `ready()` holds, and returns
    (exit status, stderr, seconds from the signal to the exit). No process is left running."""
    procs = []

    def run(module: str, args: list[str], ready, sig: int, env: dict | None = None, poll_s: float = 0.05):
        cmd = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, '-m', "
               "*sys.argv[1:]])", module, *args]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(poll_s)
        t0 = time.monotonic()
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err, time.monotonic() - t0

    yield run
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
