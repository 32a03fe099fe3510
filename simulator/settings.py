"""Simulation defaults in one place: `SimConfig`, with YAML files and `key=value` overrides.

Every dataset records the full config it was made with (root attribute `config`), minus the
execution-only options (`EXECUTION_KEYS`), which change how fast a dataset is made but not its bytes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import yaml

#: Class names of the dataset contract, in label order (Carrasco-Davis et al. 2019, Table 2).
ALL_CLASSES = ("supernova", "rrlyrae", "cepheid", "eclipsing_binary", "nonvariable", "galaxy", "asteroid")
#: Classes whose first detection is the alert: their window starts `pre_alert_epochs` before it.
ALERT_CLASSES = ("supernova", "asteroid")

#: Options that do not change the dataset's contents, left out of its stored config (`shard_size` is not among
#: them: see its comment in `SimConfig`).
EXECUTION_KEYS = ("workers", "scheduler", "progress")


#: HiTS PSF FWHM = PSF_FWHM_PER_SEEING x logged seeing + PSF_FWHM_OFFSET_ARCSEC (fitted on real stars, below)
PSF_FWHM_PER_SEEING, PSF_FWHM_OFFSET_ARCSEC = 0.931, -0.159
#: Each PSF shear component is drawn ~ N(0, psf_shear_rms): up to 0.1, |g| >= 1 has probability e^-50 per epoch.
MAX_PSF_SHEAR_RMS = 0.1
#: Bounds of options whose values outside them either exhaust memory (an FFT grid or the PSF scatter's widest
#: epoch: a 76 GiB allocation was seen), underflow a sampler, or describe no survey or object.
SANE_RANGES = {
    "psf_shear_rms": (0.0, MAX_PSF_SHEAR_RMS, "a wider spread draws shears |g| >= 1, which no PSF has"),
    "psf_fwhm_scatter": (0.0, 0.5, "a log-normal sigma: 0.5 already spans a factor 2.7 at 2 sigma; HiTS's is 0.043"),
    "psf_fwhm_offset_arcsec": (-2.0, 2.0, "arcsec added to the fitted FWHM-seeing relation; HiTS's is -0.159"),
    "fft_size": (0, 512, "px; memory grows as its square"),
    "host_fft_size": (0, 512, "px; memory grows as its square"),
    "zero_point_error_mag": (0.0, 0.5, "mag"),
    "asteroid_rate_deg_per_day": (0.0, 50.0, "deg/day: near-Earth objects; main-belt ~0.25"),
    "host_abs_mag_g": (-25.0, -12.0, "mag: the brightest galaxies to dwarfs"),
    "host_abs_mag_sigma": (0.0, 2.0, "mag"),
    "star_depth_nsigma": (-3.0, 5.0, "standard deviations of limmag5"),
    "star_count_slope_dex": (-2.0, 2.0, "dex/mag; star counts ~0.2-0.4"),
    "host_count_slope_dex": (-2.0, 2.0, "dex/mag; galaxy counts ~0.45"),
}


@dataclass
class SimConfig:
    """What to simulate and how; units in the names."""

    survey: str = "hits"
    classes: tuple[str, ...] = ALL_CLASSES
    n_per_class: int = 100
    seed: int = 0
    conditions: str | None = None          # real-log directory; None: $STAMPSEQ_CONDITIONS or built-in model
    seeing_limit_arcsec: float = 2.0       # epochs with worse seeing are dropped (paper: 2")
    templates: str | None = None           # real light-curve templates; None: $STAMPSEQ_TEMPLATES or embedded defaults
    # sequences (Carrasco-Davis et al. 2019, sec. 3.1): supernovae and asteroids start pre_alert_epochs before
    # their first detection (the alert); other classes start at a random epoch leaving >= min_dates epochs
    max_epochs: int | None = 20            # cap on N_d, the epochs per object (paper: 20); None: no cap
    pre_alert_epochs: int = 5
    min_dates: int = 6
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test, per class
    # rendering
    stamp_size: int = 21
    psf: str = "moffat"                    # moffat | kolmogorov
    # Calibrated on the 30 real HiTS stars of real_dev.npz (NV, RR Lyrae, EB; 665 frames; Moffat fits by
    # benchmarks/compare_real.py): FWHM = 0.931 x logged seeing - 0.159" (median FWHM/seeing 0.81), beta ~ 4.2,
    # and each frame's FWHM scatters about that line by a robust 4.7% in log (the logged seeing is a field
    # average), 4.3% once the fit's own 1.9% (measured on simulated stamps) is taken out: a per-epoch jitter.
    moffat_beta: float = 4.2
    psf_fwhm_per_seeing: float = PSF_FWHM_PER_SEEING  # PSF FWHM = per_seeing x logged seeing + offset
    psf_fwhm_offset_arcsec: float = PSF_FWHM_OFFSET_ARCSEC
    psf_fwhm_scatter: float = 0.043        # per-epoch log-normal sigma of the FWHM about that relation
    psf_shear_rms: float = 0.0             # rms of each PSF shear component per epoch (0: round PSF)
    # Real HiTS non-variable stars scatter ~0.02-0.03 mag epoch to epoch beyond photon noise, shared by the
    # stars of an epoch (benchmarks/compare_lightcurves.py): a calibration error of the logged zero point.
    # The rendered flux uses zero_point + N(0, this); the dataset keeps the logged zero point.
    zero_point_error_mag: float = 0.02
    fft_size: int = 48                     # folding period (px) for stamps without a host
    host_fft_size: int = 64                # and for stamps with a host galaxy
    # stars (non-variables, asteroids): p(m) ~ 10^(slope m) (1 - erf(m - m_cut)) / 2 on [mag_min, mag_max]
    star_mag_min: float = 14.5
    star_mag_cut: float = 22.8
    star_count_slope_dex: float = 0.2
    star_depth_nsigma: float = 0.7         # mag_max = mean(limmag5) + nsigma * std(limmag5) of the object's epochs
    rrlyrae_mag_cut: float = 21.5          # RR Lyrae erf cutoff (paper, after Medina et al. 2018)
    # supernovae (simulator.supernova)
    sn_ia_model: str = "hsiao"             # hsiao | salt2 (salt2 needs the template directory)
    bandpass: str = "decam2014-g"          # decam2014-g (speclite) | desg (sncosmo, template directory)
    sn_depth_mag: float | None = None      # survey depth bounding SN redshifts; None: the deepest limmag5 seen
    # asteroids: apparent rate log-normal (main belt near opposition ~0.25 deg/day)
    asteroid_rate_deg_per_day: float = 0.25
    asteroid_rate_scatter_dex: float = 0.2
    # host galaxies
    host_fraction_supernova: float = 0.5
    host_fraction_other: float = 0.05
    host_mag_min: float = 17.0
    host_mag_max: float = 24.0
    host_mag_cut: float = 22.8
    host_count_slope_dex: float = 0.45     # SDSS g-band galaxy counts (Yasuda et al. 2001, AJ 122, 1104)
    host_disk_hlr_arcsec_at_g20: float = 1.2
    host_size_mag_slope_dex: float = -0.1  # d log10(hlr) / d mag
    host_size_scatter_dex: float = 0.2     # Shen et al. 2003, MNRAS 343, 978 (sigma_lnR ~ 0.45)
    host_disk_thickness: float = 0.2       # intrinsic axis ratio of disks (Hubble 1926 inclination formula)
    # supernova hosts at the supernova's redshift: SN hosts are typically ~L* star-forming galaxies
    host_abs_mag_g: float = -20.3          # mean absolute g magnitude (SN Ia/CC hosts, e.g. Kelly & Kirshner 2012, ApJ 759, 107)
    host_abs_mag_sigma: float = 1.0
    host_disk_hlr_kpc: float = 3.5         # median disk half-light radius at host_abs_mag_g (Shen et al. 2003)
    # execution. shard_size, unlike the keys after it (EXECUTION_KEYS), is part of the stored config, though the
    # arrays do not depend on it: the finished shards kept in OUT.parts/ for a resume are numbered in units of
    # it, so a rerun must cut the objects alike (an OUT.parts/ holding shards of another shard_size is refused,
    # and a complete OUT made with another shard_size counts as made with other options: --overwrite)
    shard_size: int = 1024                 # objects per shard (resume granularity; fewer, larger files merge faster)
    workers: int = 1
    scheduler: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):  # "a,b" from YAML, as from --set
            self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
        if not isinstance(self.classes, (list, tuple)):
            raise ValueError(f"classes must be a list of class names, got {self.classes!r}")
        self.classes = tuple(self.classes)
        try:
            parts = self.split_fractions.split(",") if isinstance(self.split_fractions, str) else self.split_fractions
            if any(isinstance(x, bool) for x in parts):
                raise TypeError
            self.split_fractions = tuple(float(x) for x in parts)
        except (TypeError, ValueError):
            raise ValueError(f"split_fractions must be three numbers, got {self.split_fractions!r}") from None
        check_field_types(self)
        check_finite(self)
        unknown = [c for c in self.classes if c not in ALL_CLASSES]
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; known: {', '.join(ALL_CLASSES)}")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"classes must be a non-empty list without repeats, got {self.classes}")
        if self.n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {self.n_per_class}")
        if not 0 <= self.seed < 2 ** 63:  # stored as an int64 attribute
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if (len(self.split_fractions) != 3 or not all(x >= 0 for x in self.split_fractions)
                or abs(sum(self.split_fractions) - 1) > 1e-9):
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {self.split_fractions}")
        if self.max_epochs is not None and self.max_epochs < self.pre_alert_epochs + 1:
            raise ValueError(f"max_epochs must be None or >= pre_alert_epochs + 1 = {self.pre_alert_epochs + 1}, "
                             f"got {self.max_epochs}")
        if self.pre_alert_epochs < 0 or self.min_dates < 1:
            raise ValueError(f"pre_alert_epochs must be >= 0 and min_dates >= 1, got {self.pre_alert_epochs}, {self.min_dates}")
        if self.max_epochs is not None and self.min_dates > self.max_epochs:  # no sequence is longer than max_epochs
            raise ValueError(f"min_dates must be <= max_epochs = {self.max_epochs}, got {self.min_dates}")
        if self.stamp_size < 3 or self.stamp_size % 2 != 1:
            raise ValueError(f"stamp_size must be an odd integer >= 3, got {self.stamp_size}")
        if min(self.fft_size, self.host_fft_size) < 2 * self.stamp_size:
            raise ValueError(f"fft_size and host_fft_size must be >= 2 x stamp_size = {2 * self.stamp_size}, got "
                             f"{self.fft_size}, {self.host_fft_size}")
        if self.psf == "moffat" and not self.moffat_beta > 1.1:
            raise ValueError(f"moffat_beta must be > 1.1 (GalSim's Moffat is untruncated), got {self.moffat_beta}")
        if not self.psf_fwhm_per_seeing > 0:
            raise ValueError(f"psf_fwhm_per_seeing must be > 0, got {self.psf_fwhm_per_seeing}")
        if self.shard_size < 1 or self.workers < 1:
            raise ValueError(f"shard_size and workers must be >= 1, got {self.shard_size}, {self.workers}")
        for key in ("host_fraction_supernova", "host_fraction_other"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if not 0 < self.host_disk_thickness <= 1:
            raise ValueError(f"host_disk_thickness (a disk's intrinsic axis ratio) must be in (0, 1], got "
                             f"{self.host_disk_thickness}")
        for key in ("host_size_scatter_dex", "asteroid_rate_scatter_dex"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("seeing_limit_arcsec", "asteroid_rate_deg_per_day", "host_disk_hlr_arcsec_at_g20",
                    "host_disk_hlr_kpc"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key, (low, high, why) in SANE_RANGES.items():
            if not low <= getattr(self, key) <= high:
                raise ValueError(f"{key} must be in [{low:g}, {high:g}] ({why}), got {getattr(self, key)}")
        for low, high in (("star_mag_min", "star_mag_cut"), ("star_mag_min", "rrlyrae_mag_cut"),
                          ("host_mag_min", "host_mag_max")):
            if not getattr(self, low) < getattr(self, high):
                raise ValueError(f"{low} must be < {high} = {getattr(self, high)}, got {getattr(self, low)}")

    def content_dict(self) -> dict:
        """The options that determine the dataset's bytes (stored with it)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in EXECUTION_KEYS}

    def content_json(self) -> str:
        return json.dumps(self.content_dict(), sort_keys=True)


#: Field annotations checked by `check_field_types`, and how its messages name them.
SCALAR_TYPES = {"bool": bool, "int": int, "float": float, "str": str}
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_field_types(config) -> None:
    """Each scalar field of the dataclass `config` of its annotated type (`X | None` fields may be None), so
    that a wrong `--set` or YAML value fails at once, naming the key, not deep in a run. Values that mean
    the same are converted: numpy numbers, ints for floats, numbers YAML 1.1 reads as strings (1e-3), paths."""
    for f in dataclasses.fields(config):
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        kind, value = SCALAR_TYPES.get(annotation.removesuffix(" | None")), getattr(config, f.name)
        if kind is None or (optional and value is None):
            continue
        value = _as_type(value, kind)
        if type(value) is kind:
            setattr(config, f.name, value)
        else:
            raise ValueError(f"{f.name} must be {TYPE_NAMES[kind]}{' or null' if optional else ''}; got {value!r}")


def check_finite(config) -> None:
    """Each float field of the dataclass `config` (once `check_field_types` has run) finite or None: NaN
    passes every range check (`x < 0` is false), inf crashes deep in a run or makes a silent nonsense."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if str(f.type) in ("float", "float | None") and value is not None and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it, naming it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_value(text: str, where: str):
    """`text` parsed as YAML, or a ValueError naming `where` (a config file, or `--set key=value`) and the
    place of the syntax error (or of a key given twice), instead of a traceback."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{where}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None


def yaml_mapping(path: str | Path) -> dict:
    """A `--config` YAML file's mapping of keys (empty file: none), or an error naming the file: missing, not
    valid YAML, or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") \
            from None
    data = yaml_value(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def build_config(cls, values: dict, file_values: dict, path: str | Path | None):
    """`cls(**values)` (values merged from a config file, `--set` and options); an error the file's values give on
    their own too (with the defaults) is prefixed with the file's path: its key and value are in the file."""
    try:
        return cls(**values)
    except ValueError as exc:
        if path and file_values:
            try:
                cls(**file_values)
            except ValueError as alone:
                if str(alone) == str(exc):
                    raise ValueError(f"{path}: {exc}") from None
        raise


def _as_type(value, kind: type):
    """`value` as `kind` where it means the same (else unchanged, for the caller to refuse)."""
    if isinstance(value, bool) or type(value) is kind:
        return value
    if kind is int and isinstance(value, numbers.Integral):
        return int(value)
    if kind is float and isinstance(value, (numbers.Real, str)):
        try:
            return float(value)
        except ValueError:
            return value
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _coerce(name: str, text: str):
    """Parse a `key=value` string into the type of SimConfig field `name`."""
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    if name not in fields:
        raise ValueError(f"unknown config key {name!r}; known: {', '.join(sorted(fields))}")
    value = yaml_value(text, f"--set {name}={text}")
    if name in ("classes", "split_fractions") and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
        if name == "split_fractions":
            try:
                value = [float(v) for v in value]
            except ValueError:
                raise ValueError(f"--set {name}={text}: split_fractions must be comma-separated numbers") from None
    return value


def load_config(yaml_path: str | Path | None = None, overrides: dict | list[str] | None = None,
                sets: list[str] | None = None) -> SimConfig:
    """Defaults, then a YAML file, then `sets` (`--set key=value` strings), then explicit `overrides` (key ->
    value, CLI flags; None values skipped). `overrides` may also be a list of `key=value` strings, taken as
    `sets` (`rcnn.config.load_config` takes those second); other types are a TypeError. A bad key or value of
    the file is an error naming the file."""
    if isinstance(overrides, (list, tuple)):
        overrides, sets = None, [*overrides, *(sets or [])]
    if not isinstance(overrides, (dict, type(None))):
        raise TypeError(f"load_config: overrides must be a dict of key -> value or a list of 'key=value' strings, "
                        f"got {overrides!r}")
    if sets is not None and (not isinstance(sets, (list, tuple)) or not all(isinstance(x, str) for x in sets)):
        raise TypeError(f"load_config: sets must be a list of 'key=value' strings, got {sets!r}")
    file_values = yaml_mapping(yaml_path) if yaml_path else {}
    for k in file_values:
        try:
            _coerce(k, "null")  # validates the key name
        except ValueError as exc:
            raise ValueError(f"{yaml_path}: {exc}") from None
    values = dict(file_values)
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        values[k.strip()] = _coerce(k.strip(), v)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(SimConfig, values, file_values, yaml_path)


def psf_fwhm_arcsec(seeing_arcsec, per_seeing: float = PSF_FWHM_PER_SEEING, offset_arcsec: float = PSF_FWHM_OFFSET_ARCSEC):
    """The PSF FWHM (arcsec) expected for a logged seeing: the relation calibrated on real HiTS stamps."""
    return per_seeing * seeing_arcsec + offset_arcsec
