"""Gradients by the adjoint method: ``backsolve`` (:func:`~neuralode.solvers.adjoint.backsolve.odeint_adjoint`,
the adjoint system solved backwards with the state re-integrated alongside, and the events' adjoint),
``interpolating`` (the backward solve reads the forward solution from its dense output instead: the stiff
methods' default), ``gauss`` (interpolating too, the backward solve integrating ``a`` alone and ``dL/dθ``
summed by Gauss–Legendre quadrature over its steps, for ``adjoint_options={"quadrature": True}``), ``per_sample`` (one backward solve landing on every sample's output times, for
``options={"per_sample": True}``) and, below the three, ``common`` (the configuration record
:class:`~neuralode.solvers.adjoint.common.AdjointConfig`, the sweep over output intervals, the backward-work
flag). ``backsolve`` imports ``gauss``, ``interpolating`` and ``per_sample``; ``gauss`` imports ``interpolating``;
they import ``common``, never ``backsolve``. Above them all, ``modes`` runs ``solve(..., adjoint=...)`` (every mode
by name, and ``adjoint="auto"``'s choice), installing its entry points in the api, which never imports it."""
