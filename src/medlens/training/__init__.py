"""medlens.training: ``train(cfg)`` in ``trainer.py`` turns a TrainConfig into a self-contained run folder.

``prepare`` (data -> plan -> split -> cache), ``batches`` (index sampling), ``optim``/``schedule``,
``losses``, ``validation`` (metrics, calibration), ``checkpoint``/``runfolder`` (files) and ``distributed``
(torchrun) are the trainer's parts. Nothing here imports the web app.
"""
