"""Training runs: the shared run machinery and one module per task.

* :mod:`.config` -- :class:`RunConfig` (the settings every task shares) and :class:`ConfigError`.
* :mod:`.rundir` -- the run folder: config, metrics, checkpoint, lock, resume rules.
* :mod:`.signals` -- the SIGINT/SIGTERM stop flag. :mod:`.seeding` -- seeds and RNG state.
* :mod:`.distributed` -- data parallel under ``torchrun`` (gloo on CPU, NCCL on CUDA).
* the tasks: :mod:`.mnist` (the Table 1 classifiers), :mod:`.cnf` (toy 2-D flows by maximum
  likelihood), :mod:`.flow` (flows by flow matching), :mod:`.latent` (the spirals);
  :mod:`.figures` draws any run's learning curves.

``neuralode.training`` was the MNIST module before the tasks shared one machinery; its names
(``TrainConfig``, ``train``, ``evaluate``, ``read_metrics``, ...) still resolve here, imported on
first use so that importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_MNIST_NAMES = frozenset({
    "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CONFIG_NAME", "CURVES_NAME", "DEVICES", "LR_REFERENCE_BATCH", "METRICS_NAME",
    "CheckpointError", "ConfigError", "TrainConfig", "epoch_batches", "epoch_records", "evaluate", "evaluate_model",
    "load_checkpoint", "read_config", "read_metrics", "save_checkpoint", "train",
})


def __getattr__(name: str) -> Any:
    if name in _MNIST_NAMES:
        return getattr(importlib.import_module(".mnist", __name__), name)
    if name == "plot_run":
        return importlib.import_module(".figures", __name__).plot_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
