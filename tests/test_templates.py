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

    def urlopen(url, timeout=None):
        assert timeout and timeout > 0  # a stalled connection must not wait for ever
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


def test_every_download_is_pinned_to_the_shared_copy(templates_dir):
    """Each URL names a commit, so its sha256 is fixed: the pinned hashes are those of the shared copies."""
    import hashlib

    for rel, url, sha256 in DOWNLOADS:
        assert sha256 == hashlib.sha256((templates_dir / rel).read_bytes()).hexdigest(), rel


def test_fetch_templates_refuses_a_file_as_dir(tmp_path, capsys):
    f = tmp_path / "templates"
    f.write_text("not a directory")
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"fetch-templates: error: {f}: exists and is not a directory; DIR names a directory"


def test_fetch_templates_names_the_sncosmo_source_it_cannot_get(tmp_path, templates_dir, monkeypatch):
    import sncosmo

    saved = sncosmo.conf.data_dir

    def offline(name, version=None):
        raise RuntimeError("Failed to download https://sncosmo.example/hsiao: no network")

    monkeypatch.setattr(sncosmo, "get_source", offline)
    with pytest.raises(OSError, match=r"sncosmo source 'hsiao': cannot fetch it into \S+sncosmo_data "
                                      r"\(Failed to download .*\); fetch-templates needs the internet"):
        fetch_templates(tmp_path / "t", urlopen=_local_urlopen(templates_dir))
    assert sncosmo.conf.data_dir == saved  # the process's sncosmo set-up is left as it was


def test_fetched_directory_is_checked(tmp_path, templates_dir):
    """A directory whose sncosmo files are bad fails at fetch time, naming the file (not in a later run)."""
    out = tmp_path / "fetched"
    _linked_copy(templates_dir, out, "sncosmo_data", DESG, _truncate_lines(0.5))
    with pytest.raises(ValueError, match=r"des_g.dat: .*a truncated file\?"):
        fetch_templates(out, urlopen=_local_urlopen(templates_dir))


def test_fetch_templates_list(capsys, tmp_path):
    assert main([str(tmp_path), "--list"]) == 0
    out = capsys.readouterr().out
    assert "RRLyr_ugriz_templates.tar.gz" in out and "hsiao" in out
    assert "sncosmo bandpass desg" in out  # fetched and checked, so listed (a directory built by hand lacked it)


def test_fetch_templates_offline_names_the_url(tmp_path):
    import urllib.error

    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(OSError, match=r"https://\S+: cannot download it \(Name or service not known\); "
                                      r"fetch-templates needs the internet"):
        fetch_templates(tmp_path / "t", urlopen=offline)
    assert not (tmp_path / "t").exists()  # no empty folders left behind


# --- corrupted copies of the real template files: one clear error naming file, line/row, column, value ---

SD = "sncosmo_data"
HSIAO, SALT0 = f"{SD}/models/hsiao/Hsiao_SED_V3.fits", f"{SD}/models/salt2/salt2-4/salt2_template_0.dat"
PIEREL, VINC = f"{SD}/models/pierel/SDSS-000018.SED", f"{SD}/models/vincenzi/V19_SN2013fs_HostExtCorr.SED"
DESG = f"{SD}/bandpasses/des/des_g.dat"


def _linked_copy(src: Path, dst: Path, folder: str, replace: str, edit) -> Path:
    """`dst/folder` with every file of `src/folder` symlinked, except `replace`: a copy passed through `edit`."""
    for f in (src / folder).rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    target = dst / replace
    target.unlink()
    target.write_bytes((src / replace).read_bytes())
    edit(target)
    return dst / folder


def _text_edit(col: int, value: str, rows=slice(100, 101)):
    def edit(path: Path):
        lines = path.read_text().splitlines()
        for i in range(len(lines))[rows]:
            fields = lines[i].split()
            fields[col] = value
            lines[i] = " ".join(fields)
        path.write_text("\n".join(lines) + "\n")
    return edit


def _fits_edit(fn):
    def edit(path: Path):
        from astropy.io import fits
        with fits.open(path) as hdul:
            hdul = fits.HDUList([h.copy() for h in hdul])
        fn(hdul)
        hdul.writeto(path, overwrite=True)
    return edit


def _truncate_lines(frac):
    def edit(path: Path):
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:int(len(lines) * frac)]) + "\n")
    return edit


def _drop_line(n: int):
    def edit(path: Path):
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:n - 1] + lines[n:]) + "\n")
    return edit


def _move_block_to_end(first: int, count: int):
    def edit(path: Path):
        lines = path.read_text().splitlines()
        block = lines[first - 1:first - 1 + count]
        path.write_text("\n".join(lines[:first - 1] + lines[first - 1 + count:] + block) + "\n")
    return edit


def test_real_sncosmo_files_pass_the_checks(templates_dir):
    from simulator.supernova import check_sncosmo_files
    for ia_model in ("hsiao", "salt2"):
        check_sncosmo_files(templates_dir / SD, ia_model, "desg")


@pytest.mark.parametrize("rel, ia_model, edit, match", [
    (HSIAO, "hsiao", _fits_edit(lambda h: h[0].data.__setitem__((10, 100), float("nan"))),
     r"Hsiao_SED_V3.fits, HDU 0, row 10 .*column 100 .*flux nan is not finite"),
    (HSIAO, "hsiao", _fits_edit(lambda h: h[0].data.__setitem__(Ellipsis, 0.0)), r"Hsiao_SED_V3.fits: every flux value is zero"),
    (HSIAO, "hsiao", _fits_edit(lambda h: h[0].data.__setitem__((10, 100), -1.0)), r"row 10 .*flux -1 is negative"),
    (SALT0, "salt2", _text_edit(2, "nan"), r"salt2_template_0.dat, line 101, column 3: flux nan is not finite"),
    (SALT0, "salt2", _text_edit(2, "inf"), r"salt2_template_0.dat, line 101, column 3: flux inf is not finite"),
    (SALT0, "salt2", _text_edit(2, "-1"), r"salt2_template_0.dat, line 101, column 3: flux -1 is negative"),
    (SALT0, "salt2", _text_edit(2, "0", slice(None)), r"salt2_template_0.dat: every flux value is zero"),
    (PIEREL, "hsiao", _text_edit(2, "inf"), r"SDSS-000018.SED, line 101, column 3: flux inf is not finite"),
    (PIEREL, "hsiao", _text_edit(2, "abc"), r"SDSS-000018.SED, line 101, column 3: 'abc' is not a number"),
    (VINC, "hsiao", _text_edit(2, "nan"), r"V19_SN2013fs_HostExtCorr.SED, line 101, column 3: flux nan"),
    (VINC, "hsiao", _text_edit(2, "-1"), r"V19_SN2013fs_HostExtCorr.SED, line 101, column 3: flux -1 is negative"),
    (DESG, "hsiao", _text_edit(1, "inf"), r"des_g.dat, line 101, column 2: transmission inf is not finite"),
    (DESG, "hsiao", _text_edit(1, "-1"), r"des_g.dat, line 101, column 2: transmission -1 is negative"),
    (DESG, "hsiao", _truncate_lines(0.3), r"des_g.dat: not a whole g band: lines 1-62 span 3690-4300 A"),
    # a huge but finite value: an exponent typo
    (HSIAO, "hsiao", _fits_edit(lambda h: h[0].data.__setitem__((10, 100), 1e3 * h[0].data.max())),
     r"Hsiao_SED_V3.fits, HDU 0, row 10 .*column 100 .*flux \S+ is more than 100 x the file's 99th percentile"),
    (VINC, "hsiao", _text_edit(2, "1e3"), r"V19_SN2013fs_HostExtCorr.SED, line 101, column 3: flux 1000 is more "
                                           r"than 100 x the file's 99th percentile"),
    # not one wavelength grid for every phase: a line lost, a phase block out of place
    (PIEREL, "hsiao", _drop_line(101), r"SDSS-000018.SED, lines \d+-\d+: phase \S+ has \d+ wavelengths .* sncosmo needs "
                                       r"one wavelength grid for every phase: a truncated file\?"),
    (VINC, "hsiao", _truncate_lines(0.5), r"V19_SN2013fs_HostExtCorr.SED, lines \d+-\d+: phase \S+ has \d+ wavelengths"),
    (PIEREL, "hsiao", _move_block_to_end(2261, 2260), r"SDSS-000018.SED, line \d+: phase -27.9 follows phase \S+; "
                                                      r"sncosmo needs each phase's lines together, phases increasing"),
], ids=["hsiao-nan", "hsiao-zero", "hsiao-neg", "salt0-nan", "salt0-inf", "salt0-neg", "salt0-zero", "pierel-inf",
        "pierel-text", "vincenzi-nan", "vincenzi-neg", "desg-inf", "desg-neg", "desg-truncated", "hsiao-spike",
        "vincenzi-spike", "pierel-lost-line", "vincenzi-truncated", "pierel-phase-split"])
def test_corrupt_sncosmo_file_is_refused(tmp_path, templates_dir, rel, ia_model, edit, match):
    from simulator.supernova import SupernovaModel
    _linked_copy(templates_dir, tmp_path, SD, rel, edit)
    with pytest.raises(ValueError, match=match):  # before sncosmo reads anything: its cache cannot hide it
        SupernovaModel(tmp_path, 23.0, ia_model=ia_model, bandpass="desg")


RR, T2, TAR = "rrlyrae_sesar2010", "rrlyrae_sesar2010/table2.dat.gz", "rrlyrae_sesar2010/RRLyr_ugriz_templates.tar.gz"


def _table2_edit(col: str, value: str, rows=slice(1, 2), append_copy=False):
    def edit(path: Path):
        import gzip
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        j = lines[0].lstrip("#").split().index(col)
        for i in range(len(lines))[rows]:
            fields = lines[i].split()
            fields[j] = value
            lines[i] = " ".join(fields)
        if append_copy:
            lines.append(lines[1])
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return edit


def _member_edit(member: str, fn):
    def edit(path: Path):
        import tarfile
        buf = io.BytesIO()
        with tarfile.open(path, "r:gz") as src, tarfile.open(fileobj=buf, mode="w:gz") as out:
            for m in src.getmembers():
                data = src.extractfile(m).read() if m.isfile() else None
                if m.isfile() and Path(m.name).name == member:
                    data = fn(data.decode()).encode()
                    m.size = len(data)
                out.addfile(m, io.BytesIO(data) if data is not None else None)
        path.write_bytes(buf.getvalue())
    return edit


def _replace_line(n: int, text: str):
    return lambda t: "\n".join(t.splitlines()[:n - 1] + [text] + t.splitlines()[n:]) + "\n"


@pytest.mark.parametrize("rel, edit, match", [
    (T2, _table2_edit("P", "inf", slice(1, None)), r"table2.dat.gz, line 2, column P: 'inf' is outside .* \[0.2, 1.2\] d"),
    (T2, _table2_edit("P", "1e300", slice(5, 6)), r"table2.dat.gz, line 6, column P: '1e300' is outside"),
    (T2, _table2_edit("P", "nan"), r"line 2, column P: 'nan' is outside"),
    (T2, _table2_edit("P", "0"), r"line 2, column P: '0' is outside"),
    (T2, _table2_edit("gA", "50", slice(1, None)), r"line 2, column gA: '50' is outside .* \(0, 2.5\] mag"),
    (T2, _table2_edit("gA", "inf", slice(3, 4)), r"line 4, column gA: 'inf' is outside"),
    (T2, _table2_edit("gA", "-1"), r"line 2, column gA: '-1' is outside"),
    (T2, _table2_edit("P", "0.5", slice(0, 0), append_copy=True), r"line 485, column id: star \d+ repeats line 2"),
    (TAR, _member_edit("101g.dat", _replace_line(4, "abc def")), r"tar.gz: member 101g.dat, line 4, column 1 \(phase\): 'abc'"),
    (TAR, _member_edit("101g.dat", _replace_line(3, "0.5 nan")), r"member 101g.dat, line 3, column 2 \(mag\): 'nan'"),
    (TAR, _member_edit("101g.dat", lambda t: t + "0.9999\n"), r"member 101g.dat, line \d+: 1 columns, expected 2"),
], ids=["P-inf-all", "P-huge", "P-nan", "P-zero", "gA-50-all", "gA-inf", "gA-neg", "duplicate", "member-text",
        "member-nan", "member-ragged"])
def test_corrupt_sesar_file_is_refused(tmp_path, templates_dir, rel, edit, match):
    folder = _linked_copy(templates_dir, tmp_path, RR, rel, edit)
    with pytest.raises(ValueError, match=match):
        rrlyrae.read_sesar2010(folder)


def test_real_sesar_and_yoachim_files_pass_the_checks(templates_dir):
    assert len(rrlyrae.read_sesar2010(templates_dir / RR).period_d) == 483
    assert set(cepheid.read_yoachim2009(templates_dir / "cepheid_yoachim2009")) == {"short", "long"}


def _set(column, value, index=0):
    def fn(hdul):
        hdul[1].data[column][0].flat[index] = value
    return fn


@pytest.mark.parametrize("edit, match", [
    (_set("AVE_VALS", 1e30), r"column AVE_VALS, row 0, element \(0,\): value 1e\+30 is implausible"),
    (_set("AVE_VALS", float("nan"), 5), r"column AVE_VALS, row 0, element \(5,\): value nan is not finite"),
    (_set("POLY_SPREAD", -5.0, 2), r"column POLY_SPREAD, row 0, element \(2,\): value -5 is implausible"),
    (_set("POLY_FITS", 1e30, 5), r"column POLY_FITS, row 0, element \(1, 1\): value 1e\+30"),
    (_set("EIGENVECTORS", float("inf"), 50), r"column EIGENVECTORS, row 0, element \(1, 2\): value inf is not finite"),
    (lambda h: h[1].data["AVE_VALS"][0].__setitem__(slice(16, 24), 1.9), r"give a g amplitude of .* mag at P = "),
], ids=["ave-huge", "ave-nan", "spread-neg", "poly-huge", "eigen-inf", "amplitude"])
def test_corrupt_yoachim_file_is_refused(tmp_path, templates_dir, edit, match):
    rel = "cepheid_yoachim2009/short_struc.fits"
    folder = _linked_copy(templates_dir, tmp_path, "cepheid_yoachim2009", rel, _fits_edit(edit))
    with pytest.raises(ValueError, match=rf"short_struc.fits: .*{match}"):
        cepheid.read_yoachim2009(folder)
