"""The classifiers of stamp sequences in JAX/Flax/Optax: the RCNN of Carrasco-Davis et al. (2019, Table 3),
the light-curve and dm-dt models, their training (`train.train`), evaluation on simulated and real data
(`evaluate.evaluate`, `import_real`, `finetune.finetune`), classification (`classify.classify`,
`Classifier` for arrays) and the random-forest baseline (`run_baseline`): one function per `rcnn` command.
`rcnn.cli` is the command line. The names below load on first use (PEP 562), so JAX is imported only when
a command needs it; `train`, `evaluate`, `classify` and `finetune` are not among them, since importing a
submodule makes its name the package's attribute."""
from importlib import import_module

#: Public names -> the submodule defining them.
_EXPORTS = {"TrainConfig": "config", "load_config": "config", "import_real": "real", "Classifier": "inference",
            "run_baseline": "baseline", "use_fast_cpu_flags": "cli"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
