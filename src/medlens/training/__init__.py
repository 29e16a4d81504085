"""medlens.training: ``train(cfg)`` in ``trainer.py`` turns a TrainConfig into a self-contained run folder.

The trainer (``trainer``: the loop, its state and the checkpoints) is composed of parts with their own
state: ``datamodule`` (cached splits, sampler, batches), ``learner`` (network, optimizer, schedule, loss),
``selection`` (validation, best epoch) and ``reports`` (metrics.csv, final val / test reports). They use
``prepare`` (data -> plan -> split -> cache), ``batches`` (index sampling), ``optim``/``schedule``,
``losses``, ``validation`` (metrics, calibration), ``decisions`` (rules fitted on validation),
``checkpoint``/``runfolder`` (files) and ``distributed`` (torchrun). Nothing here imports the web app.
"""
