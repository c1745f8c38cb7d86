"""Fixed-grid solves under ``options={"compile": ...}`` that the grid run (:mod:`.grid_run`: one step as the body of
a compiled ``while_loop``, which compiles in seconds whatever the grid and makes fewer calls) does not take: off the
CPU, a plain function (not a module) under autograd, a gradient reaching a tensor that is not a parameter of
``func``, a ``func`` the ``while_loop`` cannot capture (a call counter): ``K`` whole steps per compiled call.

A compiled single step (:mod:`neuralode.solvers.methods.compiled`) still returns to Python after every
step, and on a small network (an MLP 2→16→2 on a batch of 8) that round trip, the loop's
bookkeeping and the compiled call's own overhead cost more than the step's arithmetic. A
fixed-step method needs no decision between steps (no error estimate, no controller), so the
loop over ``K`` consecutive steps can itself be traced: the compiled graph is the ``K`` steps
unrolled, and it returns the ``K`` states it passes through, stacked. ``K`` is
``options["compile_steps"]`` (default :data:`DEFAULT_STEPS`; ``1`` selects the per-step
compiled path).

Exactness. The graph receives the stage times ``t_n + c_i h_n`` (in the dtype ``func`` sees) and
the step sizes ``h_n`` (float64 where the device has it) as tensors, computed in Python exactly as
the eager loop computes them, so the graph is reused for every chunk and every solve on a grid of
the same length, and ``func`` sees the eager path's times. Output times on grid points take the
state straight from the stacked chunk; output times between grid points take the linear
interpolant of the eager path (``options["interp"] = "linear"``) between the two grid states. The
result equals the eager solve to rounding (inductor may fuse a multiply-add).

Chunk size and the last chunk. A grid of ``n`` steps takes ``m = ceil(n / K)`` compiled calls;
the chunk size is the largest ``k <= K`` with the same ``m`` calls that divides ``n``, else
``ceil(n / m)`` (:func:`chunk_size`; 200 steps: ``K = 32`` runs 7 chunks of 29, ``K = 64`` 4 of
50). When ``k`` does not divide ``n`` the last chunk is padded with (fewer than ``m``) steps of
size zero at the last grid time: a zero step leaves the state unchanged, those states are
discarded, and no second graph is compiled. ``func`` is evaluated in those padded steps (counted in
``stats.nfe``), so its results must not depend on being called only on the grid. The first
evaluation ``f(t0, y0)`` that the solve's input check makes is not reused (each step evaluates its
own first stage inside the graph), one evaluation more than eager.

What it does not do, and leaves to the loop with the per-step compiled path
(:func:`~neuralode.solvers.methods.compiled.compiled_stepper`, chosen by
:func:`~neuralode.solvers.fast.choose`): events, torchdiffeq's step
callbacks, ``perturb``, dense output, cubic interpolation, float16/bfloat16 states, grids
without a last time (``odeint`` until an event), and steps within rounding of their start time.

Backpropagation works through the chunk: ``torch.compile`` traces the backward of the unrolled
graph too (``benchmarks/bench_compile.py`` times it). A solve recording autograd compiles its own
graph (forward and backward), with inductor's default configuration. That compilation is long on
a CPU, minutes for the tiny MLP's first training step, for later steps about half the eager
one's time (``benchmarks/results/compile.md``, the training rows of its last section); a smaller
``compile_steps`` compiles faster.

Inductor settings on the CPU. With the inductor backend on a CPU device and autograd off, the
chunk is compiled with ``cpp_wrapper`` and the CPP GEMM autotuning
(:data:`~neuralode.solvers.methods.compiled.CPU_INDUCTOR_OPTIONS`, see
:func:`~neuralode.solvers.methods.compiled.inductor_options`), scoped to this compilation, not the user's
global inductor configuration; they were measured faster on the tiny MLP (see
``benchmarks/results/compile.md``) and make the first call slower.

Choosing ``K``. Fewer, longer chunks save the per-call cost (dynamo's guards and wrappers around
the compiled graph, the ``per call`` column of ``benchmarks/results/compile.md``) but compile
longer: the graph is the ``K`` steps unrolled. ``benchmarks/results/compile.md`` times ``K`` = 32
to 200 on the tiny MLP, each compiled from an empty cache.
"""

from __future__ import annotations

import bisect
import math
import time
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..grid import TIME_EPS
from ..methods.compiled import CompiledGraph, compile_graph, rk_stages
from ..methods.stepper import _plan
from ..methods.tableau import ButcherTableau
from ..solution import LoopResult

DEFAULT_STEPS = 32
_CACHE: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def _make_chunk(raw: Callable, tableau: ButcherTableau, n_steps: int) -> Callable:
    """``chunk(ts, hs, y) -> (n_steps, *y.shape)``: the states after each of ``n_steps`` steps.

    ``ts[n, i]`` is the time of stage ``i`` of step ``n`` and ``hs[n]`` its step size."""
    plan = _plan(tableau)

    def chunk(ts: torch.Tensor, hs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = []
        for n in range(n_steps):
            tn = ts[n]
            y, _ = rk_stages(raw, plan, y, raw(tn[0], y), hs[n], lambda i: tn[i])
            out.append(y)
        return torch.stack(out)

    return chunk


class _Compiled:
    """A compiled chunk and whether it has been called (compiled) yet."""

    __slots__ = ("fn", "called")

    def __init__(self, fn: CompiledGraph):
        self.fn, self.called = fn, False


class _GridPlan(NamedTuple):
    n: int  # steps
    k: int  # steps per chunk
    n_chunks: int
    hs: list[float]  # step sizes, as the eager loop takes them
    ts: tuple  # per chunk: (k, stages) stage times, the dtype func receives
    hs_t: tuple  # per chunk: (k,) step sizes


def chunk_size(n: int, k_max: int) -> int:
    """Steps per compiled chunk for a grid of ``n`` steps, at most ``k_max``.

    The solve makes ``m = ceil(n / k_max)`` compiled calls whatever the chunk size, so the size is
    chosen among those that keep ``m`` calls, ``ceil(n / m) <= k <= k_max``: the largest that
    divides ``n`` (no padded steps), else ``ceil(n / m)``, whose last chunk carries fewer than
    ``m`` padded steps. ``k = k_max`` would pad up to ``k_max - 1`` steps (24 of 224 for 200 steps
    in chunks of 32), and compiling the remainder as a second graph would double the first call's
    compile time for a fraction of a chunk's work. Every grid of ``n`` steps gets the same ``k``,
    so a training loop on one grid compiles one graph.
    """
    if n <= k_max:
        return n
    m = -(-n // k_max)
    k_min = -(-n // m)
    for k in range(k_max, k_min - 1, -1):
        if n % k == 0:
            return k
    return k_min


def grid_plan(grid: list[float], tableau: ButcherTableau, k_max: int, problem) -> _GridPlan | None:
    """The chunks' input tensors for ``grid``; ``None`` when a step is within rounding of its
    start time (the eager loop arrives there without a step)."""
    hs = [b - a for a, b in zip(grid, grid[1:])]
    if any(abs(h) <= 4 * TIME_EPS * abs(a) for a, h in zip(grid, hs)):
        return None
    n = len(hs)
    k = chunk_size(n, k_max)
    n_chunks = -(-n // k)
    pad = n_chunks * k - n
    c = [float(ci) for ci in tableau.c]
    stage_t = [a + ci * h for a, h in zip(grid, hs) for ci in c] + [grid[-1]] * (len(c) * pad)
    h_dtype = torch.float64 if problem.device.type in ("cpu", "cuda") else problem.t_dtype
    ts = torch.tensor(stage_t, dtype=problem.t_dtype, device=problem.device).reshape(n_chunks, k, len(c))
    hs_t = torch.tensor(hs + [0.0] * pad, dtype=h_dtype, device=problem.device).reshape(n_chunks, k)
    return _GridPlan(n, k, n_chunks, hs, ts.unbind(0), hs_t.unbind(0))


def can_chunk(problem, method, opts, stops, events, dense, error) -> bool:
    """Whether this solve can run as compiled chunks (see the module's docstring)."""
    return (
        error is None
        and method.explicit_tableau is not None
        and opts.execution.compile_steps > 1
        and not events
        and dense is None
        and not opts.stops.perturb
        and opts.output.interp == "linear"
        and isinstance(stops, list)
        and problem.callbacks[0] is None
        and problem.dtype not in (torch.float16, torch.bfloat16)
        and not problem.pass_perturb
    )


def integrate_chunked(
    problem,
    y0: torch.Tensor,
    times: list[float],
    stops: list[float],
    tableau: ButcherTableau,
    opts,
    backend: str,
    stats,
):
    """The fixed-grid solve in compiled chunks; ``None`` when the grid has a step the eager loop
    would skip (a step within rounding of its start), so the caller runs the loop instead."""
    t0 = times[0]
    grid = [t0] + list(stops)
    func = problem.func
    key = (
        tableau.name,
        backend,
        opts.execution.compile_steps,
        problem.is_tuple,
        tuple(tuple(s) for s in problem.shapes),
        problem.dtype,
        str(problem.device),
    )
    try:
        per_func = _CACHE.setdefault(func, {})
    except TypeError:  # not weak-referenceable: compile for this solve only
        per_func = {}
    last = per_func.get(key)  # (grid, plan) of the last solve: a training loop reuses its grid
    if last is not None and last[0] == grid:
        plan = last[1]
    else:
        plan = grid_plan(grid, tableau, opts.execution.compile_steps, problem)
        if plan is None:
            return None
        per_func[key] = (grid, plan)
    n, K, n_chunks, hs = plan.n, plan.k, plan.n_chunks, plan.hs
    grad = torch.is_grad_enabled()
    entry = per_func.get(key + (K, grad))
    if entry is None:
        raw = problem.flat_func()
        entry = per_func[key + (K, grad)] = _Compiled(
            compile_graph(_make_chunk(raw, tableau, K), backend, problem.device, grad, what=f"a chunk of {K} steps")
        )
    fn = entry.fn
    compiles_before = fn.compiles
    chunks = []
    y = y0
    for i in range(n_chunks):
        if not entry.called:
            start = time.perf_counter()
            out = fn(plan.ts[i], plan.hs_t[i], y)
            stats.compile_s = time.perf_counter() - start
            entry.called = True
        else:
            out = fn(plan.ts[i], plan.hs_t[i], y)
        chunks.append(out)
        if i + 1 < n_chunks:
            y = out[K - 1]
    stats.n_compiles += fn.compiles - compiles_before
    c = tableau.c
    stats.nfe += n_chunks * K * len(c)
    stats.n_accepted += n
    stats.last_step = hs[-1]
    stats.next_step = math.inf  # what the constant controller proposes after every step

    def state(j: int) -> torch.Tensor:  # the state at grid point j (0: y0)
        return y0 if j == 0 else chunks[(j - 1) // K][(j - 1) % K]

    ys, out_steps = grid_outputs(grid, hs, times, state)
    return LoopResult(ys, out_steps, [], False)


def output_points(grid: list[float], times: list[float]) -> list[tuple[int, float | None]]:
    """For each output time after the first, the grid point ``j >= 1`` whose step ends at or after it and where it
    lies in that step: ``None`` on the grid point itself, else ``θ`` in ``(0, 1)`` from grid point ``j - 1``."""
    t0, n = grid[0], len(grid) - 1
    direction = 1.0 if grid[-1] > t0 else -1.0
    keys = [direction * g for g in grid]
    out: list[tuple[int, float | None]] = []
    for tau in times[1:]:
        j = bisect.bisect_left(keys, direction * tau)  # grid[j-1] < tau <= grid[j]
        j = max(1, min(j, n))
        out.append((j, None if tau == grid[j] else (tau - grid[j - 1]) / (grid[j] - grid[j - 1])))
    return out


def grid_outputs(grid: list[float], hs: list[float], times: list[float], state: Callable[[int], torch.Tensor]):
    """The outputs of a fixed-grid solve from its grid states (``state(j)``, ``j = 0`` the initial state): a grid
    point's own state, or the linear interpolant of the eager path (``options["interp"] = "linear"``) between the
    two grid states around an output time. Returns ``(ys, out_steps)`` as :class:`LoopResult` holds them."""
    ys = [state(0)]
    out_steps: list[tuple[float, int]] = []
    for j, theta in output_points(grid, times):
        if theta is None:
            ys.append(state(j))
        else:
            y_a, y_b = state(j - 1), state(j)
            ys.append(torch.add(y_a, y_b - y_a, alpha=theta))
        out_steps.append((hs[j - 1], j))
    return ys, out_steps
