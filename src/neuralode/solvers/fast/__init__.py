"""The fast paths: drivers that the api runs instead of the host clock, or ahead of it, when a solve
needs none of the loop's decisions between steps.

A fixed grid with no error control decides nothing between its steps: every step is accepted and
ends on the next grid point. When nothing else watches the steps either, the loop's per-step
bookkeeping is pure overhead, and three drivers skip it:

* :mod:`.fixed_grid`, the lean fixed grid: the explicit Runge-Kutta arithmetic of each step in one
  tight eager loop, the same operations in the same order as the loop's stepper, so the same bits;
* :mod:`.grid_run`, under ``options={"compile": ...}`` on the CPU: the grid's steps as one compiled
  ``while_loop`` whose body is one step (and, where autograd records through a module's parameters, a compiled
  reverse run of each step's vector-Jacobian product as its backward pass);
* :mod:`.compiled_chunks`, under ``options={"compile": ...}`` otherwise (another device, a plain function under
  autograd, a ``func`` the ``while_loop`` cannot capture): ``compile_steps`` whole steps unrolled into one
  ``torch.compile`` graph.

An adaptive solve decides between its steps, but those decisions are arithmetic: :mod:`.device_run` (under
``compile``, for ``dopri5``, ``tsit5``, ``bosh3`` and, without autograd, ``rodas5p`` and ``rosenbrock23``; for
the first three under autograd with a compiled reverse run as its backward pass, :mod:`.backprop`) keeps the
clock on the device and compiles up to ``compile_steps`` attempts as one ``while_loop``, handing the solve to the
host clock (:class:`Handover`, with the step and the controller's memory) where the host clock decides something
the run does not (an error, the stiffness watch). A Rosenbrock solve the run does not take runs in the loop
eagerly, with a warning naming why (there is no compiled Rosenbrock step).

Under ``compile`` a solve the chunks cannot take still runs in the loop, whose stepper is then the
method's compiled step (:func:`~neuralode.solvers.methods.compiled.compiled_stepper`, one compiled step per call, built by
:meth:`~neuralode.solvers.methods.explicit.ExplicitRK.stepper`).

The api asks :func:`choose` which path a solve takes, then calls :func:`run`, which runs that path
as far as it goes; the loop (:func:`~neuralode.solvers.loop.integrate`) takes whatever is left.
The fast paths know nothing of the loop and the loop nothing of them: what passes between them
is a record of :mod:`~neuralode.solvers.solution` (:class:`~neuralode.solvers.solution.LoopResult`,
:class:`~neuralode.solvers.solution.Handover`).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..methods.rosenbrock_tableaus import RosenbrockTableau
from ..solution import Handover, LoopResult
from . import compiled_chunks, device_run, fixed_grid, grid_run

LOOP = "loop"  # the host clock with the method's own stepper
FIXED_GRID = "fixed_grid"  # the lean fixed grid, then the loop from where it stopped (if it stopped early)
CHUNKS = "chunks"  # compiled chunks of steps; the loop with compiled steps if the grid has a sliver step
GRID_RUN = "grid_run"  # the grid's steps as a compiled while_loop; the chunks where it cannot (the loop: a sliver)
COMPILED = "compiled"  # the host clock stepping with the method's compiled step
DEVICE = "device"  # the run compiled, its clock on the device; the host clock from where it stops short, if it does


def choose(problem, method, opts, stops, events, dense, error, method_config, f0=None) -> str:
    """Which driver takes the solve: :data:`GRID_RUN`, :data:`CHUNKS`, :data:`DEVICE` or :data:`COMPILED` under
    ``options["compile"]`` (on a fixed grid the compiled grid run where :func:`.grid_run.applies`, else chunks where
    :func:`.compiled_chunks.can_chunk` allows; the device run where :func:`.device_run.applies`),
    :data:`FIXED_GRID` for a fixed-grid
    explicit Runge-Kutta solve with nothing to watch between steps (:func:`.fixed_grid.applies`:
    no error control, events, step callbacks, dense output, ``perturb``, method state,
    checkpointing under autograd; a plain tensor state and a finite grid), else :data:`LOOP`.

    The arguments are those the loop is given: the adapted ``problem``, the ``method``, its
    parsed ``opts``, the ``stops``, the :class:`~neuralode.solvers.events.core.EventSet` (or ``None``),
    the :class:`~neuralode.solvers.dense.DenseOutput` (or ``None``), the error norm (``None`` on
    a fixed grid) and ``method_config`` (an Adams method's, else ``None``). Called where the solve
    runs, under the same autograd mode: checkpointing matters only while autograd records.
    """
    if opts.execution.compile:
        if compiled_chunks.can_chunk(problem, method, opts, stops, events, dense, error):
            return GRID_RUN if grid_run.applies(problem, method, opts, stops, events, dense, error) else CHUNKS
        if device_run.applies(problem, method, opts, stops, events, dense, error, f0):
            return DEVICE
        if isinstance(method.tableau, RosenbrockTableau):  # no compiled Rosenbrock step: the eager loop, said once
            reason = device_run.rosenbrock_refusal(problem, method, opts) or (
                "events, dense output, step callbacks, perturb, jump_t or non-finite output times"
            )
            warnings.warn(
                f"options['compile']: the compiled run of {method.name} does not take this solve ({reason}); it "
                "runs eagerly.",
                RuntimeWarning,
                stacklevel=4,
            )
            return LOOP
        return COMPILED
    on_step = problem.callbacks[0]
    perturb = bool(opts.stops.perturb) and error is None  # as the loop reads it
    if fixed_grid.applies(problem, method, opts, error, events, dense, on_step, perturb, stops, method_config):
        return FIXED_GRID
    return LOOP


def run(path: str, problem, y0, f0, times: list[float], stops, method, opts, stats, dt0=math.inf, error=None):
    """Run the fast path ``path`` (:func:`choose`'s answer) from ``(times[0], y0)``, ``f0`` the
    derivative there (``None``: not evaluated yet).

    Returns ``(result, handover)``:

    * ``result``, a :class:`~neuralode.solvers.solution.LoopResult`, when the fast path finished
      the solve (``handover`` is then ``None``); else ``None`` and the loop runs, from
    * ``handover``: the :class:`~neuralode.solvers.solution.Handover` the loop starts from, where
      the lean fixed grid stopped early (a step within rounding of its start), ``None`` to start
      from ``(times[0], y0, f0)``.

    ``stats`` is updated in place, as the loop would have: evaluations, accepted steps, the last
    step and, for a finished solve, ``next_step`` (``inf``, the constant controller's proposal; the
    controller's proposal on the device run). ``dt0`` and ``error``, the first step and the error norm,
    are read by the device run alone.
    """
    tableau = method.tableau
    if path == DEVICE:
        # (result, None): finished; (None, handover): the host clock goes on from where the run stopped (an error
        # to raise, the stiffness watch); (None, None): the run could not compile, the loop takes the whole solve
        # with the method's compiled step.
        return device_run.integrate_on_device(problem, y0, f0, times, stops, method, opts, stats, dt0, error)
    if path == GRID_RUN:
        backend = "inductor" if opts.execution.compile is True else opts.execution.compile
        # None: a step within rounding of its start: the loop, with the method's compiled step (COMPILED). (A run
        # that cannot be compiled, or a gradient it cannot take, goes to the chunks inside.)
        return grid_run.integrate_grid(problem, y0, times, stops, tableau, opts, backend, stats), None
    if path == CHUNKS:
        backend = "inductor" if opts.execution.compile is True else opts.execution.compile
        result = compiled_chunks.integrate_chunked(problem, y0, times, stops, tableau, opts, backend, stats)
        if result is not None:
            return result, None
        # A step within rounding of its start: the loop, with the method's compiled step (COMPILED).
    if path == FIXED_GRID:
        ys: list[torch.Tensor] = [y0]
        out_steps: list[tuple[float, int]] = []
        t, y, f, i_stop, i_out = fixed_grid.run(
            problem, y0, f0, times, stops, tableau, method.interpolant(opts), ys, out_steps
        )
        if i_out == len(times):
            stats.next_step = math.inf
            return LoopResult(ys, out_steps, [], False), None
        return None, Handover(t, y, f, i_stop, i_out, ys, out_steps)
    return None, None
