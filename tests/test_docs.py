"""docs/configuration.md names every key of `TrainConfig` and `SimConfig`, no other, with the code's defaults; the
README's Python API example fits the functions it calls."""
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


def test_readme_python_api_calls_fit_the_functions():
    """Every call in the README's Python API example names an exported function or class and binds to its
    signature (argument count and keyword names), so the example cannot drift from the code."""
    import ast
    import importlib
    import inspect

    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            names.update({a.name: getattr(module, a.name) for a in node.names})
        elif isinstance(node, ast.Import):
            names.update({a.name: importlib.import_module(a.name) for a in node.names})
    checked = 0
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        f = call.func
        if isinstance(f, ast.Name) and f.id in names:
            target = names[f.id]
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in names:
            target = getattr(names[f.value.id], f.attr)  # an unexported name fails here
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
            continue  # a method of the call before it (checked below by name)
        else:
            continue
        signature = inspect.signature(target)
        signature.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
        checked += 1
    assert checked >= 14, checked
    method = inspect.signature(names["rcnn"].Classifier.classify_arrays)
    assert {"mjd", "mask", "sky_adu", "zero_point", "stamps"} <= set(method.parameters)
