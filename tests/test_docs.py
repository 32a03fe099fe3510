"""docs/configuration.md names every key of `TrainConfig` and `SimConfig`, no other, with the code's defaults."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from rcnn.config import TrainConfig
from simulator.settings import SimConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \|")


def _documented(config) -> list[tuple[str, str]]:
    """(key, default text) of each table row in the doc's section of `config` (`## \\`Name\\``)."""
    sections = re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)
    section = [s for s in sections if s.startswith(f"`{config.__name__}`")]
    assert len(section) == 1, f"{DOC}: no single section for {config.__name__}"
    return [m.groups() for m in map(ROW.match, section[0].splitlines()) if m]


def _same(documented, default) -> bool:
    if isinstance(default, (list, tuple)):
        return isinstance(documented, list) and list(default) == documented
    if isinstance(default, float) and not isinstance(documented, bool):
        return isinstance(documented, (int, float)) and float(documented) == default
    return type(documented) is type(default) and documented == default


@pytest.mark.parametrize("config", [TrainConfig, SimConfig])
def test_every_key_documented_once_and_no_other(config):
    keys = [k for k, _ in _documented(config)]
    fields = [f.name for f in dataclasses.fields(config)]
    twice, missing, unknown = {k for k in keys if keys.count(k) > 1}, set(fields) - set(keys), set(keys) - set(fields)
    assert not twice, f"{DOC.name}: {config.__name__} keys documented twice: {sorted(twice)}"
    assert not missing, f"{config.__name__} keys missing from {DOC.name}: {sorted(missing)}"
    assert not unknown, f"{DOC.name} names keys {config.__name__} lacks: {sorted(unknown)}"


@pytest.mark.parametrize("config", [TrainConfig, SimConfig])
def test_documented_defaults_are_the_code_defaults(config):
    defaults = config()  # after __post_init__'s normalisation (e.g. `classes` a tuple)
    wrong = {}
    for key, text in _documented(config):
        value = yaml.safe_load(text)
        if hasattr(defaults, key) and not _same(value, getattr(defaults, key)):
            wrong[key] = (text, getattr(defaults, key))
    assert not wrong, f"{DOC.name}: defaults differ from the code's (documented, code): {wrong}"
