"""Shared fixtures: the optional real-data directory (`../shared` beside the checkout, or $STAMPSEQ_SHARED)."""
from __future__ import annotations

import os
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
