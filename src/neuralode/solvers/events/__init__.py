"""Events: the :class:`~neuralode.solvers.events.core.Event` record, sign changes located on a step's
interpolant, resets and the event-time gradient (``core``), and their per-sample form (``per_sample``)."""
