"""Training runs: the shared run machinery and one module per task.

* :mod:`.config` -- :class:`RunConfig` (the settings every task shares) and :class:`ConfigError`.
* :mod:`.rundir` -- the run folder: config, metrics, checkpoint, lock, resume rules;
  :mod:`.checkpoints` -- integrity-checked checkpoint files.
* :mod:`.signals` -- the SIGINT/SIGTERM stop flag. :mod:`.seeding` -- seeds and RNG state.
* :mod:`.distributed` -- data parallel under ``torchrun`` (gloo on CPU, NCCL on CUDA).
* the tasks: :mod:`.mnist` (the Table 1 classifiers), :mod:`.cnf` (toy 2-D flows by maximum
  likelihood), :mod:`.flow` (flows by flow matching), :mod:`.latent` (the spirals);
  :mod:`.figures` draws any run's learning curves.

Each module is imported where it is used, so importing this package stays cheap.
"""
