"""The template directory: resolution order, `fetch-templates` (with a local stand-in for the network)."""
import io
from pathlib import Path

import pytest

from simulator import cepheid, rrlyrae
from simulator.templates import DOWNLOADS, TEMPLATES_ENV, fetch_templates, main, resolve_templates


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    assert resolve_templates(None) is None
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path))
    assert resolve_templates(None) == tmp_path
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_templates(tmp_path / "nope")


def _local_urlopen(templates_dir: Path, corrupt: bool = False):
    """Serve each download URL from the matching file of the shared template copy."""
    by_url = {url: templates_dir / rel for rel, url, _ in DOWNLOADS}

    def urlopen(url):
        data = by_url[url].read_bytes()
        return io.BytesIO(data[:-1] if corrupt else data)
    return urlopen


def test_fetch_templates_writes_a_usable_directory(tmp_path, templates_dir):
    out = tmp_path / "fetched"
    out.mkdir()
    (out / "sncosmo_data").symlink_to(templates_dir / "sncosmo_data")  # sncosmo's own files: no network here
    written = fetch_templates(out, urlopen=_local_urlopen(templates_dir))
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(rel for rel, _, _ in DOWNLOADS)
    assert rrlyrae.load_model(out).source == "sesar2010"
    assert cepheid.load_model(out).source == "yoachim2009"
    assert fetch_templates(out, urlopen=_local_urlopen(templates_dir)) == []  # present files are kept


def test_fetch_templates_rejects_a_corrupt_download(tmp_path, templates_dir):
    with pytest.raises(ValueError, match="sha256"):
        fetch_templates(tmp_path, urlopen=_local_urlopen(templates_dir, corrupt=True))
    assert not list(tmp_path.rglob("*.tar.gz"))  # nothing half-written under the final name


def test_fetch_templates_list(capsys, tmp_path):
    assert main([str(tmp_path), "--list"]) == 0
    out = capsys.readouterr().out
    assert "RRLyr_ugriz_templates.tar.gz" in out and "hsiao" in out


def test_fetch_templates_offline_names_the_url(tmp_path):
    import urllib.error

    def offline(url):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(OSError, match=r"https://\S+: cannot download it \(Name or service not known\); "
                                      r"fetch-templates needs the internet"):
        fetch_templates(tmp_path / "t", urlopen=offline)
    assert not (tmp_path / "t").exists()  # no empty folders left behind
