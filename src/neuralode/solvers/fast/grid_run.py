"""Fixed-grid solves under ``options={"compile": ...}``: the grid's steps as one compiled ``while_loop``, and, where
autograd records, a compiled reverse run as their backward pass.

A fixed grid decides nothing between its steps, so its steps need not be unrolled to be traced
(:mod:`.compiled_chunks` unrolls ``compile_steps`` of them into one graph, whose compilation grows with ``K``:
44 s for ``K = 32`` and 378 s for ``K = 200`` on the tiny MLP, ``benchmarks/results/compile.md``). Here the graph
is one step, the body of a ``torch._higher_order_ops.while_loop`` over the step index, compiled with
``torch.compile(fullgraph=True)`` (with :data:`~neuralode.solvers.methods.compiled.CPU_INDUCTOR_OPTIONS`: inductor's
C++ wrapper makes the loop's kernel calls, and tests its condition, without returning to Python). The body reads
its stage times and step size from the whole grid's tensors by the index (:func:`.compiled_chunks.grid_plan`,
computed in Python as the eager loop computes them, so ``func`` sees the eager path's times), takes the step
with the compiled step's own arithmetic (:func:`~neuralode.solvers.methods.compiled.rk_stages`), and writes the
states the outputs need into a buffer of ``R`` rows carried by the loop (every other state into a scratch row).

Calls. A call costs about 0.1 ms beside its steps (``torch.compile``'s wrapper and guards: 70–100 µs for a call
taking no step, measured on the tiny MLP), and the host has nothing to decide between steps, so a call takes as
many as it can: it returns to Python with the state and its buffer once the buffer is full, or after
:data:`CALL_STEPS` steps (so that an interrupt is seen); ``compile_steps > 1`` selects the run and does not bound
its calls. ``while_loop`` carries the buffer functionally, so each step copies it: ``R`` (:func:`buffer_rows`) is
as many states as fit in :data:`ROW_BYTES`, at least 1 and at most 32, which keeps that copy small beside a step.
A solve of ``n`` steps whose outputs need ``m`` grid states makes about ``max(n / CALL_STEPS, m / R)`` calls. The
graph is the same for every call and every grid (a grid of another length recompiles it once, as dynamo's dynamic
shapes then make it; ``Solution.stats.n_compiles`` counts it).

Backpropagation. ``while_loop``'s own backward in torch 2.13 differentiates its last iteration alone
(:mod:`.device_run`), so it is not used. Where autograd records, the run keeps every grid state (the forward
pass above, all states needed) and the solve is one autograd node (:class:`_Backprop`) whose backward pass is a
second compiled ``while_loop`` (:func:`.backprop.make_back`), over the steps last first: the cotangent of each step's
end state (from the outputs, plus what the step after it passed back) is pulled back through the step by
``torch.func.vjp`` at the kept state, with ``func``'s parameters passed by name through
``torch.func.functional_call``, and the parameters' gradients are summed over the steps. That needs the tensors a
gradient may reach to be named: ``func`` must be a ``torch.nn.Module`` whose parameters that require grad are all
that one evaluation's graph reaches (:func:`differentiated`, one evaluation at the start, counted in
``stats.nfe``); otherwise (a plain function, a tensor captured from outside) the chunks take the solve, whose
backward autograd traces. The gradients are backpropagation's through the same steps, to rounding; memory is the
grid's states (as ``options={"checkpoint": True}``), not every stage's. A second derivative (``create_graph``) is
refused: the backward run records no graph. The backward graph is compiled without inductor's GEMM autotuning,
which fails on ``torch.func.vjp`` inside a ``while_loop`` in this torch.

Exactness and counts: as the chunks, the states equal the eager solve's to rounding (inductor may fuse a
multiply-add), output times between grid points take the eager path's linear interpolant between the two grid
states, and each step evaluates its own first stage in the graph: ``stats.nfe`` is the eager solve's plus one
(the input check's evaluation is not reused; plus one more for :func:`differentiated` where autograd is on). No
step is padded. Under autograd the backward pass is counted in ``Solution.adjoint_stats`` (its evaluations, the
steps it re-runs, the graphs it compiles), as the checkpointed modes count theirs, and the forward counters'
``n_recomputed_steps`` is its plan (every step).

It takes what the chunks take (:func:`.compiled_chunks.can_chunk`: an explicit Runge-Kutta method on a finite
grid, ``interp="linear"``, no events, step callbacks, ``perturb`` or dense output, ``compile_steps > 1``), on the
CPU (no GPU has run it yet), in float32 or float64, not in forward mode. A grid with a step within rounding of
its start time, which the eager loop arrives at without a step, runs in the loop with one compiled step per call.
A ``func`` that ``torch.compile`` cannot capture inside a ``while_loop`` (a call counter, ``.item()``) makes the
solve warn once, naming dynamo's reason, and the chunks take it (they take a call counter: it becomes a graph
input), for this func and these settings from then on. A ``func`` that counts its calls and lets the solver count
them (:mod:`neuralode.solvers.counting`, as :class:`neuralode.models.ODEFunc` does) runs in the run, forward and
backward: the api suspends its counting around the solve, and the backward pass around its reverse run.
"""

from __future__ import annotations

import bisect
import math
import weakref
from collections.abc import Callable

import torch

from ..methods.compiled import rk_stages
from ..methods.stepper import _plan
from ..methods.tableau import ButcherTableau
from ..solution import BackwardRecord, LoopResult
from .backprop import check_backward, differentiated, hold, make_back, problem_field, reverse
from .compiled_chunks import can_chunk, grid_outputs, grid_plan, integrate_chunked, output_points
from .graphs import call, dynamo_settings, graph

# The bytes of grid states one call's buffer holds (see buffer_rows), and the most steps one call takes.
ROW_BYTES = 64 * 1024
CALL_STEPS = 4096

_PLANS: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def applies(problem, method, opts, stops, events, dense, error) -> bool:
    """Whether the compiled grid run takes this solve (see the module docstring): what the chunks take, on the CPU
    in float32 or float64, without autograd or with ``func`` a ``torch.nn.Module`` (whose gradients
    :func:`differentiated` then checks), not in forward mode."""
    return (
        can_chunk(problem, method, opts, stops, events, dense, error)
        and (not torch.is_grad_enabled() or isinstance(problem.func, torch.nn.Module))
        and not problem.forward_mode
        and problem.dtype in (torch.float32, torch.float64)
        and problem.device.type == "cpu"
    )


def buffer_rows(state_bytes: int) -> int:
    """``R``, the grid states one call's buffer holds: as many as fit in :data:`ROW_BYTES`, from 1 to 32."""
    return max(1, min(32, ROW_BYTES // max(1, state_bytes)))


def _make_run(raw: Callable, tableau: ButcherTableau, rows: int):
    """``run(y, ts, hs, slot, i0, i1, base) -> (y, buf)``: steps ``i0 .. i1 - 1`` of the grid from the state ``y`` at
    grid point ``i0``; ``ts[k]`` are step ``k``'s stage times and ``hs[k]`` its size. The state step ``k`` ends
    on is written to row ``slot[k] - base`` of ``buf`` (``rows + 1`` rows) where ``slot[k] >= 0``, else to the
    scratch row ``rows``."""
    plan = _plan(tableau)

    def run(y, ts, hs, slot, i0, i1, base):
        from torch._higher_order_ops import while_loop

        def cond(i, y, buf):
            return i < i1

        def body(i, y, buf):
            j = i.reshape(1)
            tn = ts.index_select(0, j)[0]
            h = hs.index_select(0, j)[0]
            y, _ = rk_stages(raw, plan, y, raw(tn[0], y), h, lambda s: tn[s])
            k = slot.index_select(0, j)
            buf = buf.index_copy(0, torch.where(k >= 0, k - base, rows), y.unsqueeze(0))
            return i + 1, y, buf

        buf = torch.zeros((rows + 1, *y.shape), dtype=y.dtype, device=y.device)
        _, y, buf = while_loop(cond, body, (i0.clone(), y, buf))
        return y, buf

    return run


class _Backprop(torch.autograd.Function):
    """The grid run's states as one autograd node: forward, the states the compiled run computed (given); backward,
    the compiled reverse run (:func:`.backprop.make_back`)."""

    @staticmethod
    def forward(ctx, job: dict, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.job = job
        ctx.save_for_backward(y0, job["states"])
        return job["states"]

    @staticmethod
    def backward(ctx, cot: torch.Tensor):
        check_backward(ctx.job, "fixed-grid solve")
        y0, states = ctx.saved_tensors
        job = ctx.job
        ys = torch.cat([y0.detach()[None], states[:-1]])
        n = states.shape[0]
        out = reverse(job, (ys, (job["ts"], job["hs"]), cot, torch.tensor(n - 1, device=y0.device), *job["params"]), n)
        return (None, out[0] if ctx.needs_input_grad[1] else None, *out[1:])


def integrate_grid(problem, y0, times, stops, tableau: ButcherTableau, opts, backend: str, stats):
    """The fixed-grid solve as compiled runs of steps (:func:`applies` said it may): its :class:`LoopResult`, or
    ``None`` where the loop takes the whole solve (a step within rounding of its start). Where the run cannot be
    compiled, or autograd records a gradient it cannot take (:func:`differentiated`), the compiled chunks take
    the solve (:func:`.compiled_chunks.integrate_chunked`)."""

    def chunks():
        return integrate_chunked(problem, y0, times, stops, tableau, opts, backend, stats)

    diff: tuple[tuple[str, ...], tuple] | None = ((), ())
    if torch.is_grad_enabled():
        diff = differentiated(problem, y0, times[0], stats)
        if diff is None:
            return chunks()
    assert diff is not None
    names, params = diff
    record = bool(params) or y0.requires_grad  # backpropagation through the run: every grid state is kept
    grid = [times[0]] + list(stops)
    func = problem.func
    shapes = tuple(tuple(s) for s in problem.shapes)
    state_bytes = y0.numel() * y0.element_size()
    R = buffer_rows(state_bytes)
    key = ("grid", tableau.name, backend, problem.is_tuple, shapes, problem.dtype, str(problem.device), R)
    try:
        plans = _PLANS.setdefault(func, {})
    except TypeError:  # not weak-referenceable: plan for this solve only
        plans = {}
    last = plans.get((key, record))  # (grid, times, plan, need, slot) of the last solve: a training loop reuses it
    if last is not None and last[0] == grid and last[1] == times:
        _, _, plan, need, slot = last
    else:
        n_steps = len(grid) - 1
        plan = grid_plan(grid, tableau, n_steps, problem)
        if plan is None:
            return None
        if record:
            need = list(range(1, n_steps + 1))
        else:
            # The grid states the outputs need (the state at an output's grid point, or at both ends of its step).
            wanted = {j - d for j, theta in output_points(grid, times) for d in ((0,) if theta is None else (0, 1))}
            need = sorted(wanted - {0})
        where = [-1] * n_steps
        for r, j in enumerate(need):
            where[j - 1] = r  # the state at grid point j is step j - 1's end
        slot = torch.tensor(where, dtype=torch.long, device=problem.device)
        plans[(key, record)] = (grid, list(times), plan, need, slot)

    def make():
        return _make_run(problem.flat_func(), tableau, R), tableau.stages

    entry = graph(func, key, backend, problem.device, make)
    if entry["failed"] is not None:
        return chunks()
    n = plan.n
    ts, hs_t = plan.ts[0], plan.hs_t[0]  # one "chunk": the whole grid
    states: dict[int, torch.Tensor] = {0: y0}
    y, i0, base = y0.detach(), 0, 0

    def index(i: int) -> torch.Tensor:
        return torch.tensor(i, dtype=torch.long, device=problem.device)

    with dynamo_settings(), torch.no_grad():  # the configuration set once for the solve's calls
        while i0 < n:
            i1 = min(n, i0 + CALL_STEPS)
            if base + R < len(need):
                i1 = min(i1, need[base + R - 1])  # the last state this call's buffer can hold
            out = call(
                entry,
                (y, ts, hs_t, slot, index(i0), index(i1), index(base)),
                stats,
                "the solve runs in compiled chunks of compile_steps steps instead",
            )
            if out is None:
                break
            y, buf = out
            filled = bisect.bisect_right(need, i1) - base
            for r in range(filled):
                states[need[base + r]] = buf[r]
            base += filled
            i0 = i1
    if i0 < n:
        # Not compiled (at the first call; a later one only where dynamo recompiles and then fails): the chunks take
        # the whole solve, under the caller's autograd mode. The calls before had no effect but their states (a func
        # with side effects cannot be captured in a while_loop), so nothing is counted twice.
        return chunks()
    stats.nfe += n * entry["n_new"]
    stats.n_accepted += n
    stats.last_step = plan.hs[-1]
    stats.next_step = math.inf  # what the constant controller proposes after every step
    if record:
        # The backward pass's counters (Solution.adjoint_stats): it re-runs every step, as the plan says here.
        problem.backward = BackwardRecord()
        stats.n_recomputed_steps += n

        def backward_run():
            return make_back(problem_field(problem, names), tableau)

        job = {
            "func": func,
            "states": torch.stack([states[j] for j in range(1, n + 1)]),
            "ts": ts,
            "hs": hs_t,
            "params": params,
            "versions": [p._version for p in params],
            "stats": problem.backward.stats,
            "stages": tableau.stages,
            "make_back": backward_run,
            "entry": graph(
                func, ("grid back", *key[1:], names), backend, problem.device, lambda: (backward_run(), 0), tune=False
            ),
        }
        hold(problem.backward, job["states"])
        stacked = _Backprop.apply(job, y0, *params)
        rows = stacked.unbind(0)
        ys, out_steps = grid_outputs(grid, plan.hs, times, lambda j: y0 if j == 0 else rows[j - 1])
    else:
        ys, out_steps = grid_outputs(grid, plan.hs, times, states.__getitem__)
    return LoopResult(ys, out_steps, [], False)
