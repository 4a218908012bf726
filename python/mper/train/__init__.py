"""Training: a whole run, from its settings to ``best.pt``. Where to start reading:

* :mod:`~mper.train.runner`: a whole run (pre-training, prototype initialisation,
  self-training or a baseline, resume), the entry point :func:`mper.pipeline.train` calls;
* :mod:`~mper.train.loop`: the :class:`~mper.train.loop.Trainer` (networks, optimizer,
  progress, checkpoints) and the loop every stage shares;
* the stages: :mod:`~mper.train.pretrain` (copy-paste pre-training, the supervised
  baselines) and :mod:`~mper.train.selftrain` (Mean Teacher with bidirectional copy-paste
  and the prototype head), made of :mod:`~mper.train.teacher`, :mod:`~mper.train.mixing`
  and :mod:`~mper.train.prototypes` (the gate of the bank update);
* the settings: :mod:`~mper.train.config` (the schema), :mod:`~mper.train.config_checks`,
  :mod:`~mper.train.config_io` (TOML, overrides) and :mod:`~mper.train.resume` (what a
  resumed run may change);
* the data: :mod:`~mper.train.loaders` (which cases train and validate, the loaders);
* where and how it runs: :mod:`~mper.train.runtime` (device, ops, precision, signals),
  :mod:`~mper.train.distributed` (``torchrun``), :mod:`~mper.train.compiled`
  (``torch.compile``, channels-last), :mod:`~mper.train.footprint` (memory of an
  iteration), :mod:`~mper.train.checkpoint` and :mod:`~mper.train.lock` (the run folder);
* what it records: :mod:`~mper.train.diagnostics` (self-training's monitor, ``training.json``),
  :mod:`~mper.train.usage` (prototype usage) and :mod:`~mper.train.slowdown` (a machine
  slowing the run down).
"""
