"""The classifiers of stamp sequences in JAX/Flax/Optax: the RCNN of Carrasco-Davis et al. (2019, Table 3),
the light-curve and dm-dt models, their training (`train`), evaluation on simulated and real data
(`evaluate`, `import-real`, `finetune`), classification (`classify`) and the random-forest baseline
(`baseline`). `rcnn.cli` is the command line; the modules load JAX only when a command needs it."""
