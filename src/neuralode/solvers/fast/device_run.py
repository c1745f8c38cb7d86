"""Adaptive solves under ``options={"compile": ...}``: the whole run of steps as one compiled graph, its clock on
the device.

The host clock keeps time in Python floats and reads every step's error ratio back to decide; under
``compile`` its step is one compiled graph per attempt (:func:`~neuralode.solvers.methods.compiled.compiled_stepper`),
so a solve still returns to Python, synchronises and pays the graph's call overhead once per attempt. Here the
*clock* is on the device as well: time, step size, the controller's memory, the output index and the counters
are tensors of one element, every decision a ``torch.where``, and ``compile_steps`` attempts run inside one
``torch._higher_order_ops.while_loop`` compiled with ``torch.compile(fullgraph=True)``: a solve of ``n`` attempts
returns to neuralode's Python ``ceil(n / compile_steps)`` times, which reads two numbers (is the solve over, how
many outputs came). Inside the graph, inductor's ``while_loop`` in torch 2.13 still tests its condition in the
generated Python wrapper after every iteration (``while should_loop:``): free on the CPU, where the run is used,
but a host synchronisation per attempt on a GPU, which is one reason the run is not taken there yet.

What an attempt does, in the host clock's order (:class:`~neuralode.solvers.loop.HostClock`), on tensors:

* plan: the step is clipped to ``[min_step, max_step]`` and, where ``1.1 |h|`` reaches the next stop (a ``step_t``
  time, then the last output time), stretched or shrunk to land on it; a stop within rounding of ``t`` is arrived
  at without a step (the rules of :mod:`~neuralode.solvers.control.stepping`, which both clocks use);
* attempt: the method's stages (:func:`~neuralode.solvers.methods.compiled.rk_stages`, the compiled step's own
  code) with the stage times formed in float64 as the host clock forms them;
* judge: the RMS error ratio of :class:`~neuralode.solvers.control.norms._ErrorNorm` (or the user's
  ``options['norm']``, called in the graph) and the controller's formulas
  of :class:`~neuralode.solvers.control.controller.BatchStepSizeController` on 0-dim tensors (the per-sample
  clock's arithmetic, equal to the host clock's to rounding);
* outputs: the output times inside an accepted step are filled from the method's interpolant (its continuous
  extension, or the cubic Hermite polynomial with the last stage as ``f(t1, y1)``), at most ``M`` (:func:`window`)
  per attempt, by one ``(M, s) @ (s, N)`` product written into the call's output buffer of ``R + M`` rows
  (:func:`buffer_rows`; a call returns when ``R`` are filled). A step holding more than ``M`` output times is
  taken again from the same state with the same step (the same numbers) for the next ``M``, its stages evaluated
  anew (counted in ``stats.nfe``).

The method's part of an attempt is a kernel: :class:`_RKKernel` (the explicit methods' stages, error estimate and
interpolant) or :class:`_RosenbrockKernel` (``rodas5p``, ``rosenbrock23``: the Jacobian and ``df/dt`` by
``torch.func.jacrev`` from one evaluation, ``I / (h gamma) - J`` factored by LAPACK, its ``s`` solves and its own
dense output; a singular matrix hands the attempt to the host clock, which raises). The host clock keeps a
Rosenbrock Jacobian for the retry after a rejection; the run forms it again, so its ``nfe`` and ``n_jac_evals``
count one more per rejection.

It takes the solves whose steps need no decision the loop makes on the host (:func:`applies`): a Rosenbrock method
without autograd (:func:`rosenbrock_refusal`; a batch of independent systems with per-system Jacobian blocks, the host
clock's first Jacobian formed before the run to check their independence), or an explicit
first-same-as-last method whose outputs come from its continuous extension or a cubic Hermite polynomial
(``dopri5``, ``tsit5``, ``bosh3``), autograd off or ``func`` a ``torch.nn.Module`` (below), not in forward mode, a
plain float32 or float64 state (a tensor or a tuple) on the CPU (no GPU has run it yet: on another device the
compiled step serves), ``compile_steps > 1``, no ``jump_t``, events, dense output, step callbacks or ``perturb``,
and finite stops. Where the host clock would decide something the run does not (a
non-finite step, an underflowing one, the step budget, a non-finite derivative, a rejection at ``min_step``
that the host clock refuses or, with ``at_min_step="accept"``, accepts with its warning; from the attempt at which
the host clock starts watching for stiffness), the run stops before that attempt and hands the solve over
(:class:`~neuralode.solvers.solution.Handover`, with its step and the controller's memory): the host clock
takes that attempt, raising its own error or watching from there. A ``func`` that ``torch.compile`` cannot
capture inside a ``while_loop`` (a side effect such as a call counter, ``.item()``) makes the solve warn once and
run in the loop with one compiled step per call, for this func and these settings from then on; a ``func`` that
counts its calls and lets the solver count them (:mod:`neuralode.solvers.counting`, as
:class:`neuralode.models.ODEFunc` does) runs in the run, its counting suspended by the api around the solve.

Autograd. In torch 2.13 ``while_loop`` under ``torch.compile`` records a backward that differentiates the last
iteration alone (five iterations of ``y = w y`` from ``y = 2``, ``w = 0.5``: ``dy/dw`` came out 0.125 where it is
0.625), so the run itself records no graph. Where autograd records a gradient through the solve, the run also
records each accepted step (its start time, size and state, ``_Settings.record`` of them per call, a call
returning when they are filled) and each output's step and ``theta``, and the solve becomes one autograd node
(:class:`~neuralode.solvers.fast.backprop.AdaptiveBackprop`) whose backward pass is a compiled reverse run over
the accepted steps: backpropagation through the host clock's solve with the same steps, whose step sizes are
constants as the host clock's Python floats are. That needs ``func`` to be a ``torch.nn.Module`` whose
parameters are all a gradient reaches (:func:`~neuralode.solvers.fast.backprop.differentiated`, one evaluation,
counted in ``stats.nfe``); otherwise the compiled step's loop takes the solve and autograd traces it. Where the
run hands the solve to the host clock, the node's outputs include the state and derivative it hands over, so the
host clock's steps after it record their graph from there. Nor do inductor's on-disk caches take a graph with a
``while_loop`` in this torch (AOT autograd's cache: "Unsupported call_function target while_loop"), so a new process
compiles the run again (``benchmarks/results/device_run.md`` times both).

The outputs equal the host clock's to rounding (inductor fuses and reorders the arithmetic), with the same
accepted and rejected steps wherever no error ratio falls within rounding of the acceptance threshold.

Per sample (:func:`integrate_per_sample_on_device`, ``options={"per_sample": True, "compile": ...}``) the same
run keeps each sample's clock: the per-sample clock's attempt
(:class:`~neuralode.solvers.per_sample.SampleClock`) on ``(B,)`` tensors, each sample's next ``M`` output times
(its own, for ``(B, T)`` times) filled from its own step, a round in which some sample arrives at its last time
without a step taken by no sample (the clock's rule). It stops on the errors the per-sample clock raises, which
then solves again from the start and raises them; :func:`per_sample_refusal` names what it does not take. Under
autograd it records each round in which some sample's step was accepted (each sample's start, step and state, and
whether it moved: a step taken again for more outputs does not), and the backward pass pulls the cotangents back
through each round as the eager per-sample clock's graph does (``y_next = where(moved, y1, y)``, the whole batch
evaluated in every round; :class:`~neuralode.solvers.fast.backprop.SampleBackprop`), its counters in
``Solution.adjoint_stats`` (a :class:`~neuralode.solvers.solution.PerSampleStats`). A gradient that reaches a tensor
outside ``func``'s parameters is refused: there is no compiled per-sample step to fall back on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..control.controller import BatchStepSizeController, ControllerState
from ..control.norms import RMSNorm, UserNorm, inverse_sqrt_sizes
from ..control.stepping import at_step_floor, next_step_t, output_theta, plan_step
from ..control.stiffness import MIN_STEPS_FOR_ERROR, STIFF_STEPS, StiffnessDetector
from ..grid import TIME_EPS
from ..methods.compiled import rk_stages, weighted
from ..methods.interpolants import ContinuousExtension, Hermite
from ..methods.interpolation import _hermite_weights, _horner
from ..methods.jacobian import batch_shape
from ..methods.rosenbrock_tableaus import RosenbrockTableau
from ..methods.stepper import _plan
from ..methods.tableau import ButcherTableau
from ..solution import BackwardRecord, Handover, LoopResult
from .backprop import (
    ADAPTIVE,
    PER_SAMPLE,
    AdaptiveBackprop,
    SampleBackprop,
    differentiated,
    hold,
    make_back,
    module_field,
    problem_field,
    reached_parameters,
)
from .graphs import call, dynamo_settings, graph
from .grid_run import buffer_rows as grid_buffer_rows

# The run's status codes (one int64 0-dim tensor): running, or why it handed the solve to the host clock: a
# non-finite step, an underflowing one, the step budget, a non-finite derivative, the stiffness watch's start, a
# step rejected where no smaller one may follow (min_step), a singular iteration matrix (a Rosenbrock attempt).
RUNNING, BAD_STEP, UNDERFLOW, BUDGET, NON_FINITE, WATCH, AT_FLOOR, SINGULAR = 0, 1, 2, 3, 4, 5, 6, 7


def window(n_out: int) -> int:
    """``M``, the output times one attempt fills at most: every one of a short output grid, else 8 (a step holding
    more is taken again for the next 8). Each attempt forms ``M`` outputs whether or not they fall in its step."""
    return max(1, min(n_out - 1, 8))


def buffer_rows(n_out: int, m: int) -> int:
    """``R``, the output rows one compiled call fills at most (then it returns them to the host): the loop carries
    its output buffer from attempt to attempt, copying it each time, so it holds 32 rows, not every output time."""
    return max(m, min(n_out, 32))


def takes_method(method, opts) -> bool:
    """Whether the run's attempt is the method's: an adaptive explicit first-same-as-last method with one error
    estimate, whose outputs come from its continuous extension or a cubic Hermite polynomial (dopri5, tsit5,
    bosh3)."""
    tableau = method.explicit_tableau
    return (
        method.capabilities.adaptive
        and tableau is not None
        and tableau.fsal
        and method.interpolant(opts) in (ContinuousExtension, Hermite)
        and tableau.b_err is not None
        and tableau.b_err_aux is None
        and tableau.c_extra is None
    )


def rosenbrock_refusal(problem, method, opts) -> str | None:
    """Why the run cannot take a Rosenbrock method's solve under ``compile`` (``None``: it can, for what
    :func:`applies` checks besides): it compiles the Rosenbrock methods with their own dense output (``rodas5p``,
    ``rosenbrock23``), their Jacobian by autograd, without autograd recording."""
    from ..methods.interpolants import RosenbrockInterpolant

    tab = method.tableau
    if not tab.dense or method.interpolant(opts) is not RosenbrockInterpolant:
        return f"method={method.name!r} (the run compiles rodas5p and rosenbrock23)"
    if torch.is_grad_enabled():
        return "autograd recording (the run is compiled for solves under torch.no_grad())"
    if callable(opts.method.jacobian):
        return "a jacobian callable (options['jacobian'])"
    if problem.device.type != "cpu":
        return f"a state on {problem.device} (the run has been checked on the CPU only so far)"
    return None


def applies(problem, method, opts, stops, events, dense, error, f0: torch.Tensor | None) -> bool:
    """Whether the device run takes this solve (see the module docstring): under autograd only for a
    ``torch.nn.Module`` ``func`` (:func:`integrate_on_device` then checks what a gradient reaches)."""
    rosenbrock = isinstance(method.tableau, RosenbrockTableau)
    return (
        (takes_method(method, opts) if not rosenbrock else rosenbrock_refusal(problem, method, opts) is None)
        and error is not None
        and opts.compile_steps > 1
        and (not torch.is_grad_enabled() or isinstance(problem.func, torch.nn.Module))
        and not problem.forward_mode
        and f0 is not None
        and problem.dtype in (torch.float32, torch.float64)
        and problem.device.type == "cpu"
        and not events
        and dense is None
        and isinstance(stops, list)
        and all(math.isfinite(s) for s in stops)
        and not opts.stops.perturb
        and not opts.stops.jump_t
        and all(cb is None for cb in problem.callbacks)
        and not problem.pass_perturb
    )


class _Settings(NamedTuple):
    """What a run's graph is built for (its cache key, with the func): constants of its arithmetic."""

    tableau_name: str
    backend: str
    shapes: tuple
    is_tuple: bool
    dtype: torch.dtype
    device: str
    n_out: int
    m: int
    rows: int
    k_steps: int
    direction: float
    controller: tuple
    max_step: float
    max_num_steps: int
    watch_from: int
    min_step: float
    n_stops: int = 1
    step_t: tuple[float, ...] = ()  # per sample: direction * step_t, ascending (control.stepping.next_step_t)
    norm: object = None  # options['norm'] (the graph calls it), or None for the RMS norm
    record: int = 0  # under autograd: the accepted steps one call records (device_backprop), else 0
    stiff: tuple = ()  # a Rosenbrock run's (batch_dims, whether func depends on t where batch_dims > 0)


def _constants(tableau: ButcherTableau, sizes: list[int], s: _Settings):
    """What the per-sample run reads of the method and the solve (the joint run's :class:`_RKKernel` reads the same
    of the method): the stage plan, the stage times ``c``, the interpolant's
    polynomial (the continuous extension's ``P``, ``n_dense`` rows; none for the cubic Hermite polynomial through
    ``(y0, f0)`` and ``(y1, f1)``, ``f1`` the step's last stage), the RMS factors and the controller."""
    dense = tableau.dense
    n_dense = 0 if dense is None else len(dense)
    P = [] if dense is None else [tuple(float(x) for x in row) for row in dense]
    return _plan(tableau), tableau.c, n_dense, P, inverse_sqrt_sizes(sizes), BatchStepSizeController(*s.controller)


class _RKKernel:
    """An explicit first-same-as-last Runge-Kutta method's attempt and interpolant for the joint run (the compiled
    step's own arithmetic, :func:`~neuralode.solvers.methods.compiled.rk_stages`)."""

    def __init__(self, raw: Callable, tableau: ButcherTableau, t_dtype: torch.dtype, device: torch.device):
        self.raw, self.plan, self.c, self.t_dtype = raw, _plan(tableau), tableau.c, t_dtype
        dense = tableau.dense
        self.n_dense = 0 if dense is None else len(dense)
        # Inputs of the loop's body must not alias one another (while_loop's rule): copies, not views.
        self.columns = tuple(
            torch.tensor(col, dtype=torch.float64, device=device) for col in zip(*(dense or ()))
        )  # (s,) each

    def attempt(self, t, y, f0, hh):
        """``(y1, y_err, f(t1, y1), the stages, None)``: no iteration matrix to be singular."""
        c, t_dtype = self.c, self.t_dtype
        y1, k = rk_stages(self.raw, self.plan, y, f0, hh, lambda i: (t + c[i] * hh).to(t_dtype))
        return y1, weighted(self.plan.b_err, k, hh.to(y.dtype)), k[-1], k, None

    def interpolate(self, theta, y, y1, f0, k, hh):
        """The outputs at ``theta`` (``(M,)``) in the step: ``(M, N)``, the continuous extension's
        ``y + h sum_i b_i(theta) k_i``, or the cubic Hermite polynomial's (interpolation.hermite_many's weights)."""
        flat = y.reshape(1, -1)
        if self.n_dense:
            W = _horner(self.columns, theta[:, None]).to(y.dtype)  # (M, s): b_i(theta) of each output time
            stages = torch.stack(k[: self.n_dense]).reshape(self.n_dense, -1)
            return flat + (W @ stages) * hh.to(y.dtype)
        W = torch.stack(_hermite_weights(theta, hh), 1).to(y.dtype)  # (M, 3)
        return flat + W @ torch.stack([y1 - y, f0, k[-1]]).reshape(3, -1)


class _RosenbrockKernel:
    """A Rosenbrock method's attempt and dense output for the joint run: the equations of
    :func:`~neuralode.solvers.methods.rosenbrock.rosenbrock_step`, the state seen as ``B`` independent systems of
    ``n`` unknowns (``batch_dims``; ``B = 1`` for 0). Each attempt forms ``J = df/dy`` at ``(t, y)`` from one
    evaluation, which also gives ``f(t, y)``, the first stage: for one system ``torch.func.jacrev``, which gives
    ``df/dt`` too; for ``B`` systems the ``(B, n, n)`` blocks, row ``j`` of every block from one vector-Jacobian
    product with ``e_j`` in each system, and ``df/dt`` per system by forward mode where ``func`` depends on ``t``
    (``time_dependent``). It factors ``I / (h gamma) - J`` with LAPACK (``lu_factor_ex``, batched; a zero pivot makes
    the run hand the attempt to the host clock, which raises its error) and makes its ``s`` solves with
    ``lu_solve``. The host clock keeps ``J`` for the retry after a rejection; here a retry forms it again, the same
    values (the statistics count what the run does)."""

    def __init__(
        self, raw: Callable, tab, t_dtype: torch.dtype, device: torch.device, batch_dims: int, time_dependent: bool
    ):
        self.raw, self.tab, self.t_dtype = raw, tab, t_dtype
        self.batch_dims, self.time_dependent = batch_dims, time_dependent

        def nz(row):
            return tuple((j, float(x)) for j, x in enumerate(row) if x != 0.0)

        self.a, self.C = tuple(nz(r) for r in tab.a), tuple(nz(r) for r in tab.C)
        self.m, self.m_err = nz(tab.m), nz(tab.m_err)
        # rosenbrock_dense's theta^r coefficients of each u_i, by Horner's rule from the highest power
        self.dense_rows = tuple(
            torch.tensor(row, dtype=torch.float64, device=device) for row in tab.dense
        )  # (s,) per r

    def attempt(self, t, y, f0, hh):
        tab, dtype = self.tab, y.dtype
        shape, N = y.shape, y.numel()
        tt = t.to(self.t_dtype)

        def f_both(t_, y_):
            out = self.raw(t_, y_).reshape(-1)
            return out, out

        if self.batch_dims == 0:  # one system: J (1, N, N) and df/dt from one reverse pass
            (J_t, J_y), f = torch.func.jacrev(f_both, argnums=(0, 1), has_aux=True)(tt, y)
            B, n = 1, N
            J, f_t = J_y.reshape(1, N, N), J_t.reshape(N).to(dtype)
        else:  # independent systems: row j of every block from one vector-Jacobian product with e_j in each system
            B, n = batch_shape(shape, self.batch_dims)
            f, pull = torch.func.vjp(lambda y_: self.raw(tt, y_).reshape(B, n), y)
            basis = torch.eye(n, dtype=dtype, device=y.device)[:, None, :].expand(n, B, n)
            J = torch.vmap(pull)(basis)[0].reshape(n, B, n).transpose(0, 1)  # (B, n, n): J[b, j] = df_bj / dy_b
            f = f.reshape(N)
            # df/dt per system by forward mode (one evaluation more), where func depends on t
            f_t = (
                torch.func.jvp(lambda t_: self.raw(t_, y), (tt,), (torch.ones_like(tt),))[1].reshape(N).to(dtype)
                if self.time_dependent
                else None  # the stages add no h d_i f_t term, as on the host clock
            )
        h = hh.to(dtype)
        W = torch.eye(n, dtype=dtype, device=y.device) * (1.0 / (hh * tab.gamma)).to(dtype) - J
        LU, pivots, info = torch.linalg.lu_factor_ex(W)
        y0 = y.reshape(N)
        u: list[torch.Tensor] = []
        y1 = f_last = y0
        for i in range(tab.stages):
            if i == 0:
                fi = f
            else:
                yi = y0
                for j, a in self.a[i]:
                    yi = yi + u[j] * a
                fi = self.raw((t + tab.c[i] * hh).to(self.t_dtype), yi.view(shape)).reshape(N)
                if tab.fsal and i == tab.stages - 1:  # rosenbrock23: y1 is the last stage's state, f there its f
                    y1, f_last = yi, fi
            rhs = fi
            if self.C[i]:
                (j0, c0), *rest = self.C[i]
                acc = u[j0] * c0
                for j, cj in rest:
                    acc = acc + u[j] * cj
                rhs = rhs + acc * (1.0 / h)
            if f_t is not None and tab.d[i] != 0.0:
                rhs = rhs + f_t * (h * tab.d[i])
            u.append(torch.linalg.lu_solve(LU, pivots, rhs.view(B, n, 1)).reshape(N))
        if not tab.fsal:
            for j, mj in self.m:
                y1 = y1 + u[j] * mj
        (j0, e0), *rest = self.m_err
        y_err = u[j0] * e0
        for j, e in rest:
            y_err = y_err + u[j] * e
        f_next = f_last.view(shape) if tab.fsal else f0  # carried, and handed over (first-same-as-last only)
        return y1.view(shape), y_err.view(shape), f_next, torch.stack(u), (info != 0).any()

    def interpolate(self, theta, y, y1, f0, U, hh):
        """rosenbrock_dense at each ``theta``: ``y + theta (y1 - y) + theta (1 - theta) sum_i (sum_r dense[r][i]
        theta^r) u_i``."""
        th = theta[:, None]
        poly = 0.0
        for row in reversed(self.dense_rows):
            poly = poly * th + row
        W = (th * (1.0 - th) * poly).to(y.dtype)  # (M, s)
        flat, d = y.reshape(1, -1), (y1 - y).reshape(1, -1)
        return flat + theta[:, None].to(y.dtype) * d + W @ U


def _make_run(
    raw: Callable,
    tableau: ButcherTableau,
    sizes: list[int],
    s: _Settings,
    t_dtype: torch.dtype,
    unflatten: Callable,
):
    """The run: ``run(carry, times, stops, rtol, atol, i_start) -> carry`` taking up to ``s.k_steps`` attempts, its
    outputs written from row 0 of the carried buffer for output ``i_start`` on. A user's ``options['norm']``
    (``s.norm``) is called in the graph on the scaled error in the state's structure (``unflatten``), as the host
    clock calls it; it must give one number."""
    inv_sqrt_n = inverse_sqrt_sizes(sizes)
    controller = BatchStepSizeController(*s.controller)
    direction, M, T, R = s.direction, s.m, s.n_out, s.rows
    max_step, max_num_steps, watch_from, min_step = s.max_step, s.max_num_steps, s.watch_from, s.min_step
    n_stops = s.n_stops
    S = s.record
    if isinstance(tableau, ButcherTableau):

        def make_kernel(device):
            return _RKKernel(raw, tableau, t_dtype, device)

        n_new = tableau.stages - 1
    else:

        def make_kernel(device):
            return _RosenbrockKernel(raw, tableau, t_dtype, device, *s.stiff)

        n_new = tableau.stages  # its s - 1 stages, and the evaluation its Jacobian is formed from

    def norm(x: torch.Tensor) -> torch.Tensor:
        if s.norm is not None:
            value = s.norm(unflatten(x))  # type: ignore[operator]
            if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_complex():
                # Known when the graph is traced: the run is not compiled, and the host clock raises its error.
                raise TypeError("options['norm'] must return one real number")
            return value.reshape(()).double()
        if len(sizes) == 1:
            return torch.linalg.vector_norm(x).double() * inv_sqrt_n[0]
        parts = torch.split(x, sizes)
        return torch.stack([torch.linalg.vector_norm(p) * f for p, f in zip(parts, inv_sqrt_n)]).max().double()

    def make_body(
        times: torch.Tensor,
        stops: torch.Tensor,
        rtol: torch.Tensor,
        atol: torch.Tensor,
        i_start: torch.Tensor,
        k_start: torch.Tensor | None,
    ):
        """The loop's condition and body; ``stops``: the times steps land on (``step_t``, then the last time);
        ``i_start``: the output index at the call's start, the output buffer's first row; ``k_start``: the
        accepted steps at the call's start, where it records them (``s.record``)."""

        def cond(n, t, h, y, f0, prev_ratio, after_reject, prev_dt, i_out, n_acc, n_rej, n_att, status, *rest):
            go = (n < s.k_steps) & (status == RUNNING) & (i_out < T) & (i_out - i_start < R)
            return go & (n_acc - k_start < S) if S else go

        kernel = make_kernel(times.device)

        def body(
            n,
            t,
            h,
            y,
            f0,
            prev_ratio,
            after_reject,
            prev_dt,
            i_out,
            n_acc,
            n_rej,
            n_att,
            status,
            last_h,
            ys,
            hs,
            ns,
            i_stop,
            *record,
        ):
            # The float carries are (1,) tensors: dynamo would make 0-dim float inputs of the loop symbolic floats,
            # and restart its analysis to specialise them (a few seconds of every first call).
            t, h, prev_ratio, prev_dt, last_h = t[0], h[0], prev_ratio[0], prev_dt[0], last_h[0]
            # Plan (the clocks' rule, control.stepping): clip to [min_step, max_step], land on the next stop within a
            # 10% stretch.
            t_stop = stops[i_stop.clamp(max=n_stops - 1).view(1)][0]
            dt_abs, remaining, lands, tiny = plan_step(h, t, t_stop, min_step, max_step)
            hh = direction * dt_abs
            arrive = tiny & lands
            fail = torch.where(
                ~torch.isfinite(h),
                BAD_STEP,
                torch.where(
                    tiny & ~lands,
                    UNDERFLOW,
                    torch.where(
                        n_acc + n_rej >= max_num_steps, BUDGET, torch.where(n_acc + n_rej >= watch_from, WATCH, RUNNING)
                    ),
                ),
            )
            # Attempt: the stages, with their times formed in float64 as the host clock forms them.
            y1, y_err, f_next, stages, singular = kernel.attempt(t, y, f0, hh)
            scale = torch.maximum(y.abs() * rtol + atol, y1.abs() * rtol + atol)
            ratio = norm(y_err / scale)
            fail = torch.where((fail == RUNNING) & ~torch.isfinite(ratio) & ~torch.isfinite(f0).all(), NON_FINITE, fail)
            accept, h_next, (pr_n, ar_n, pd_n) = controller.adapt(
                ControllerState(prev_ratio, after_reject, prev_dt), hh, ratio
            )
            if min_step > 0:  # a rejection no smaller step may follow: the host clock raises, or accepts it
                floor = ~arrive & ~accept & at_step_floor(dt_abs, remaining, min_step, max_step)
                fail = torch.where((fail == RUNNING) & floor, AT_FLOOR, fail)
            if singular is not None:  # I / (h gamma) - J singular: the host clock raises its error for this attempt
                fail = torch.where((fail == RUNNING) & ~arrive & singular, SINGULAR, fail)
            ok = fail == RUNNING
            stepped = ok & ~arrive  # an attempt made (its evaluations count)
            accept = stepped & accept
            # Outputs in the accepted step (or at the stop arrived at): the next M output times at most.
            t1 = torch.where(lands, t_stop, t + hh)
            idx = i_out + torch.arange(M, device=times.device)
            tau = times[idx]
            inside = (tau - t1) * direction <= 0
            theta = output_theta(tau, t, t1, torch.where(hh == 0, 1.0, hh))
            flat = y.reshape(1, -1)
            inner = kernel.interpolate(theta, y, y1, f0, stages, hh)
            vals = torch.where(arrive, flat, inner).view(M, *y.shape)
            fill = inside & (accept | (ok & arrive))
            more = fill[M - 1] & ((times[(i_out + M).view(1)][0] - t1) * direction <= 0)  # > M outputs: this step again
            mask = fill.view(M, *([1] * y.dim()))
            rows = idx - i_start
            ys = ys.index_put((rows,), torch.where(mask, vals, ys[rows]))
            moved = (accept | (ok & arrive)) & ~more
            n_acc_new = n_acc + (accept & ~more).long()
            hs = hs.index_put((idx,), torch.where(fill, hh, hs[idx]))
            ns = ns.index_put((idx,), torch.where(fill, n_acc_new, ns[idx]))
            i_out = i_out + fill.long().sum()
            if S:  # under autograd: the step taken (its start, size and state), and each output's step and theta
                record = _record(record, accept & ~more, n_acc - k_start, t, hh, y, idx, fill, n_acc, arrive, theta)
            # The next state: moved to the step's end; a rejected attempt retries with the controller's step;
            # a step with more outputs keeps everything but the output index.
            t = torch.where(moved, t1, t)
            y = torch.where(moved & ~arrive, y1, y)
            f0 = torch.where(moved & ~arrive, f_next, f0)
            decided = stepped & ~more
            h = torch.where(decided, h_next, torch.where(more, hh, h))
            prev_ratio = torch.where(decided, pr_n, prev_ratio)
            after_reject = torch.where(decided, ar_n, after_reject)
            prev_dt = torch.where(decided, pd_n, prev_dt)
            last_h = torch.where(accept & ~more, hh, last_h)
            n_rej = n_rej + (stepped & ~accept).long()
            i_stop = i_stop + (moved & lands).long()
            return (
                n + 1,
                t.reshape(1),
                h.reshape(1),
                y,
                f0,
                prev_ratio.reshape(1),
                after_reject,
                prev_dt.reshape(1),
                i_out,
                n_acc_new,
                n_rej,
                n_att + stepped.long(),
                fail,
                last_h.reshape(1),
                ys,
                hs,
                ns,
                i_stop,
                *record,
            )

        return cond, body

    def run(
        carry: tuple,
        times: torch.Tensor,
        stops: torch.Tensor,
        rtol: torch.Tensor,
        atol: torch.Tensor,
        i_start: torch.Tensor,
        k_start: torch.Tensor | None = None,
    ) -> tuple:
        from torch._higher_order_ops import while_loop

        cond, body = make_body(times, stops, rtol, atol, i_start, k_start)
        return tuple(while_loop(cond, body, carry))

    return run, n_new


def _stiff_settings(problem, y0: torch.Tensor, t0: float, opts) -> tuple[int, bool]:
    """A Rosenbrock run's ``(batch_dims, time_dependent)``. For independent systems (``batch_dims > 0``) the host
    clock's first Jacobian is formed here, as the eager solve forms it (one evaluation, counted): it checks that the
    systems do not depend on each other (raising its error where they do) and shows whether ``func`` depends on
    ``t``, for which the run then adds a forward-mode pass per Jacobian."""
    from ..methods.jacobian import autograd_linearisation, counted_flat_func
    from ..methods.rosenbrock import resolve_batch_dims

    batch_dims = resolve_batch_dims(opts, problem)
    if batch_dims == 0:
        return 0, True
    tt = torch.tensor(t0, dtype=problem.t_dtype, device=problem.device)
    f_tensor = counted_flat_func(problem)
    lin = autograd_linearisation(f_tensor, tt, y0, batch_dims, check_coupling=True, create_graph=False)
    problem.stats.n_jac_evals += 1
    return batch_dims, lin.f_t is not None


def _dense_copy(x: torch.Tensor) -> torch.Tensor:
    """A copy with contiguous strides. The loop's carried tensors must keep their strides from one iteration to the
    next (``while_loop`` compares them), and the body makes contiguous ones; ``clone`` would keep a view's strides,
    even along dimensions of size 1 (the first column of a ``(1, T)`` tensor has stride ``T``)."""
    return x.clone(memory_format=torch.contiguous_format)


def _record(record: tuple, taken, row, t, hh, y, idx, fill, n_acc, arrive, theta) -> tuple:
    """One attempt's record for backpropagation (``_Settings.record``): where the step is ``taken``, its start
    time and size (``(S + 1, 2)`` float64) and start state (``(S + 1, N)``) into row ``row`` of the call's buffers
    (the scratch row ``S`` otherwise); for the outputs it fills (``idx``, ``fill``), the state their step starts
    from (``n_acc``, the accepted steps before it) and their ``theta`` in it (0 for a stop arrived at without a
    step: the output is that state)."""
    th_buf, y_buf, ks, thetas = record
    S = y_buf.shape[0] - 1
    slot = torch.where(taken, row, S).view(1)
    th_buf = th_buf.index_copy(0, slot, torch.stack([t, hh]).view(1, 2))
    y_buf = y_buf.index_copy(0, slot, y.unsqueeze(0))
    ks = ks.index_put((idx,), torch.where(fill, n_acc, ks[idx]))
    thetas = thetas.index_put((idx,), torch.where(fill, torch.where(arrive, 0.0, theta), thetas[idx]))
    return th_buf, y_buf, ks, thetas


def _record_round(rec: tuple, taken, k_start, t, hh, y, moved, batch, idx, fill, arrive, theta) -> tuple:
    """One round's record for backpropagation per sample (``_Settings.record``), where some sample's step was
    ``taken`` (accepted): each sample's start time and step (``(S + 1, 2, B)`` float64), state (``(S + 1, B, N)``) and
    whether it moved (a step taken again for more outputs did not) into row ``n_rec - k_start`` of the call's
    buffers (the scratch row ``S`` otherwise); for the outputs filled (``(B, M)`` ``idx``, ``fill``), the round
    whose step they lie in (``n_rec``; for a sample arriving at its last time, its state then) and their ``theta``
    (0 arriving: the output is that state; 1 at the step's end: ``y1``)."""
    n_rec, th_buf, y_buf, mv_buf, ks, thetas = rec
    S = y_buf.shape[0] - 1
    slot = torch.where(taken, n_rec - k_start, S).view(1)
    th_buf = th_buf.index_copy(0, slot, torch.stack([t, hh]).unsqueeze(0))
    y_buf = y_buf.index_copy(0, slot, y.unsqueeze(0))
    mv_buf = mv_buf.index_copy(0, slot, moved.unsqueeze(0))
    ks = ks.index_put((batch, idx), torch.where(fill, n_rec, ks[batch, idx]))
    thetas = thetas.index_put(
        (batch, idx), torch.where(fill, torch.where(arrive[:, None], 0.0, theta), thetas[batch, idx])
    )
    return n_rec + taken.long(), th_buf, y_buf, mv_buf, ks, thetas


def integrate_on_device(
    problem, y0, f0, times, stops, method, opts, stats, dt0: float, error
) -> tuple[LoopResult | None, Handover | None]:
    """Run the solve on the device clock (:func:`applies` said it may). Returns ``(result, None)`` for a finished
    solve; ``(None, handover)`` where the run stopped on what the host clock decides (an error, the stiffness
    watch): the host clock goes on from there; ``(None, None)`` where the loop takes the whole solve (the run
    could not be compiled)."""
    backend = "inductor" if opts.execution.compile is True else opts.execution.compile
    tableau = method.explicit_tableau or method.tableau  # a ButcherTableau, or rodas5p's RosenbrockTableau
    rosenbrock = isinstance(tableau, RosenbrockTableau)
    names: tuple[str, ...] = ()
    params: tuple = ()
    if torch.is_grad_enabled():
        diff = differentiated(problem, y0, times[0], stats)
        if diff is None:  # a gradient reaches a tensor that is not a parameter of func: the compiled step's loop
            return None, None
        names, params = diff
    # Backpropagation through the run: it records each accepted step (S per call), AdaptiveBackprop differentiates.
    S = grid_buffer_rows(y0.numel() * y0.element_size()) if params or y0.requires_grad else 0
    ctl = opts.control
    k = min(method.order, method.error_order) + 1
    direction = 1.0 if times[-1] > times[0] else -1.0
    T = len(times)
    M = window(T)
    R = buffer_rows(T, M)
    settings = _Settings(
        tableau.name,
        backend,
        tuple(tuple(sh) for sh in problem.shapes),
        problem.is_tuple,
        problem.dtype,
        str(problem.device),
        T,
        M,
        R,
        opts.compile_steps,
        direction,
        (ctl.controller, ctl.safety, ctl.ifactor, ctl.dfactor, k),
        float(opts.max_step),
        int(opts.max_num_steps),
        # The host clock watches for stiffness from this many attempts on (HostClock.watch_from): the run hands
        # the solve over there.
        MIN_STEPS_FOR_ERROR - 2 * STIFF_STEPS if StiffnessDetector.for_solve(method, opts) is not None else 2**62,
        float(opts.min_step),
        len(stops),
        norm=opts.control.norm,
        record=S,
        stiff=_stiff_settings(problem, y0, times[0], opts) if rosenbrock else (),
    )
    func = problem.func

    def make():
        return _make_run(
            problem.flat_func(), tableau, list(problem.sizes), settings, problem.t_dtype, problem.unflatten
        )

    entry = graph(func, settings, backend, problem.device, make)
    if entry["failed"] is not None:
        return None, None

    dev, dt = problem.device, problem.dtype
    f64 = dict(dtype=torch.float64, device=dev)
    pad = torch.full((M,), direction * math.inf, **f64)
    times_t = torch.cat([torch.tensor(times, **f64), pad])
    stops_t = torch.tensor(stops, **f64)
    rtol = error._as_operand(error.rtol, y0.new_empty(()))
    atol = error._as_operand(error.atol, y0.new_empty(()))

    def zero() -> torch.Tensor:  # a counter of its own: the loop's carried tensors must not alias
        return torch.zeros((), dtype=torch.long, device=dev)

    def buffer() -> torch.Tensor:  # the outputs of one call: R rows, and M more for the last step's window
        return torch.zeros((R + M, *y0.shape), dtype=dt, device=dev)

    carry: tuple[torch.Tensor, ...] = (
        zero(),
        torch.tensor([times[0]], **f64),
        torch.tensor([dt0], **f64),
        _dense_copy(y0.detach()),
        _dense_copy(f0.detach()),
        torch.ones(1, **f64),
        torch.zeros((), dtype=torch.bool, device=dev),
        torch.full((1,), math.nan, **f64),
        torch.ones((), dtype=torch.long, device=dev),
        zero(),
        zero(),
        zero(),
        zero(),
        torch.full((1,), math.nan, **f64),
        buffer(),
        torch.zeros((T + M,), **f64),
        torch.zeros((T + M,), dtype=torch.long, device=dev),
        zero(),
    )

    def steps() -> tuple:  # one call's record of its accepted steps: (t, h) and the state, S rows and a scratch row
        return torch.zeros((S + 1, 2), **f64), torch.zeros((S + 1, *y0.shape), dtype=dt, device=dev)

    if S:  # and each output's step and theta, over the whole solve
        carry += (*steps(), torch.zeros((T + M,), dtype=torch.long, device=dev), torch.zeros((T + M,), **f64))
    status, i_out, k_start = RUNNING, 1, 0
    ys_out = [y0]
    taken: list[tuple[torch.Tensor, torch.Tensor]] = []
    instead = (
        "the solve runs eagerly instead"  # there is no compiled Rosenbrock step
        if rosenbrock
        else "the solve compiles one step at a time instead (as options['compile_steps']=1 asks)"
    )
    with dynamo_settings(), torch.no_grad():  # the configuration set once for the solve's calls
        while True:
            i_start = torch.tensor(i_out, dtype=torch.long, device=dev)
            args: tuple = (carry, times_t, stops_t, rtol, atol, i_start)
            if S:
                args += (torch.tensor(k_start, dtype=torch.long, device=dev),)
            out = call(entry, args, stats, instead)
            if out is None:
                return None, None
            status, i_reached = int(out[12]), int(out[8])
            ys_out.extend(out[14][: i_reached - i_out].unbind(0))
            i_out = i_reached
            carry = (zero(), *out[1:14], buffer(), *out[15:18])
            if S:
                k_reached = int(out[9])
                taken.append((out[18][: k_reached - k_start], out[19][: k_reached - k_start]))
                k_start = k_reached
                carry += (*steps(), *out[20:22])
            if status != RUNNING or i_out >= T:
                break
    n_acc, n_rej, n_att = int(out[9]), int(out[10]), int(out[11])
    stats.n_accepted += n_acc
    stats.n_rejected += n_rej
    stats.nfe += n_att * entry["n_new"]
    if rosenbrock:  # each attempt forms its Jacobian, factors its iteration matrix, and solves once per stage
        stats.n_jac_evals += n_att
        stats.n_factorizations += n_att
        stats.n_linear_solves += n_att * tableau.stages
    if n_acc:
        stats.last_step = float(out[13])
    hs, ns = out[15][1:i_out].tolist(), out[16][1:i_out].tolist()
    y_last, f_last = out[3], out[4]
    if S:
        problem.backward = BackwardRecord()
        ys_out, y_last, f_last = _recorded(
            problem, tableau, y0, f0, ys_out, y_last, f_last, taken, out, i_out, names, params, backend, settings
        )
        stats.n_recomputed_steps += n_acc
    if status == RUNNING:
        stats.next_step = float(out[2])
        return LoopResult(ys_out, list(zip(hs, ns)), [], False), None
    # The host clock goes on from here: it raises its own error for the attempt the run stopped at, or watches
    # for stiffness from here on.
    control = ControllerState(float(out[5]), bool(out[6]), float(out[7]))
    i_stop = int(out[17])
    # (rodas5p's carried derivative is not f(t, y): its attempts evaluate their own; the host clock does.)
    f_handed = None if rosenbrock and not tableau.fsal else f_last
    return None, Handover(
        float(out[1]), y_last, f_handed, i_stop, i_out, ys_out, list(zip(hs, ns)), float(out[2]), control
    )


def _recorded(problem, tableau, y0, f0, ys_out, y_last, f_last, taken, out, i_out, names, params, backend, settings):
    """The run's outputs, and the state and derivative it ended on, as outputs of one autograd node
    (:class:`.backprop.AdaptiveBackprop`) whose backward pass is the compiled reverse run over the accepted steps."""
    th = torch.cat([x for x, _ in taken])
    n = th.shape[0]
    c = torch.tensor(tableau.c, dtype=torch.float64, device=y0.device)
    hs = th[:, 1]

    def backward_run():
        return make_back(problem_field(problem, names), tableau, ADAPTIVE)

    job = {
        "func": problem.func,
        "n": n,
        "ys": torch.cat([y for _, y in taken]),
        # The stage times as the run formed them: t + c_i h in float64, then the time's dtype.
        "steps": ((th[:, :1] + c * hs[:, None]).to(problem.t_dtype), hs),
        "ks": out[20][1:i_out].clone()[None],
        "thetas": out[21][1:i_out].clone()[None],
        "dense": _dense_rows(tableau),
        "stages": tableau.stages,
        "params": params,
        "versions": [p._version for p in params],
        "stats": problem.backward.stats,
        "make_back": backward_run,
        "entry": graph(
            problem.func,
            ("adaptive back", settings, names),
            backend,
            problem.device,
            lambda: (backward_run(), 0),
            tune=False,
        ),
        "outputs": torch.stack(ys_out[1:]) if len(ys_out) > 1 else y0.new_empty((0, *y0.shape)),
        "y_last": y_last.clone() if n == 0 else y_last,
        "f_last": f_last.clone() if n == 0 else f_last,
    }
    hold(problem.backward, job["ys"])
    outputs, y_last, f_last = AdaptiveBackprop.apply(job, y0, f0, *params)
    return [y0, *outputs.unbind(0)], y_last, f_last


# --------------------------------------------------------------------------------------------
# The per-sample clock on the device.


def per_sample_refusal(func, method, opts, events, device: torch.device) -> str | None:
    """Why the per-sample device run cannot take a ``per_sample`` solve under ``compile`` (there is no per-sample
    compiled step to fall back on, so the api refuses the solve with this reason), or ``None``."""
    if torch.is_grad_enabled() and not isinstance(func, torch.nn.Module):
        return (
            "autograd recording through a func that is not a torch.nn.Module (the compiled run's backward pass "
            "differentiates a module's parameters by name; run the solve under torch.no_grad() for inference)"
        )
    if torch._C._functorch.maybe_current_level() is not None or torch.autograd.forward_ad._current_level >= 0:
        return "forward-mode derivatives (the compiled run would drop their tangents)"
    if device.type != "cpu":
        return f"a state on {device} (the run has been checked on the CPU only so far)"
    if not takes_method(method, opts):
        return f"method={method.name!r} (dopri5, tsit5 and bosh3 are compiled per sample)"
    for what, present in (
        ("events", bool(events)),
        ("options['dense']", opts.output.dense),
        ("options['per_sample']='compact'", opts.per_sample == "compact"),
        ("options['compile_steps']=1 (per sample, the whole run is compiled or nothing)", opts.compile_steps == 1),
    ):
        if present:
            return what
    return None


def _make_sample_run(
    raw: Callable,
    tableau: ButcherTableau,
    sizes: list[int],
    s: _Settings,
    t_dtype: torch.dtype,
    unflatten: Callable,
):
    """The per-sample run: ``run(carry, times, rtol, atol, i_start, finite_f0[, k_start]) -> carry``, the per-sample
    clock's attempt (:class:`~neuralode.solvers.per_sample.SampleClock`) on ``(B,)`` tensors, up to ``s.k_steps``
    times; with ``s.record``, each round in which some sample's step was accepted is recorded (:func:`_record_round`)
    and a call returns when ``s.record`` rounds are, ``k_start`` the rounds recorded before it."""
    plan, c, n_dense, P, _, controller = _constants(tableau, sizes, s)
    S = s.record
    direction, M, T, R = s.direction, s.m, s.n_out, s.rows
    max_step, max_num_steps, dfactor, min_step = s.max_step, s.max_num_steps, s.controller[3], s.min_step

    # The per-sample clock's norm of each row, (B, N) -> (B,) float64: the RMS, or the user's (UserNorm, which
    # checks the (B,) shape of its value while the graph is traced).
    row_norm = (
        RMSNorm(sizes, None, None).norm if s.norm is None else UserNorm(sizes, None, None, s.norm, unflatten).norm
    )

    def make_body(times, rtol, atol, i_start, finite_f0, k_start):
        t_end = times[:, T - 1].clone()
        step_t_asc = torch.tensor(s.step_t, dtype=torch.float64, device=times.device) if s.step_t else None
        columns = tuple(torch.tensor(col, dtype=torch.float64, device=times.device) for col in zip(*P))
        B = times.shape[0]
        window = torch.arange(M, device=times.device)
        batch = torch.arange(B, device=times.device)[:, None].expand(B, M)

        def cond(n, t, h, y, f0, prev_ratio, after_reject, prev_dt, i_out, n_acc, n_rej, n_att, status, last, ys, *rec):
            go = (n < s.k_steps) & (status == RUNNING) & (i_out < T).any() & (i_out - i_start < R).all()
            return go & (rec[0] - k_start < S) if S else go

        def body(n, t, h, y, f0, prev_ratio, after_reject, prev_dt, i_out, n_acc, n_rej, n_att, status, last, ys, *rec):
            # Plan (SampleClock.plan): each sample's step clipped, stretched to land on its last time.
            active = i_out < T
            # The next stop: the first step_t inside the sample's span, else its last time (a step_t within
            # rounding after t counts as passed, so a sample arrives without a step only at its last time).
            t_stop = t_end if step_t_asc is None else next_step_t(step_t_asc, t, t_end, direction)
            dt_abs, remaining, lands, tiny = plan_step(h, t, t_stop, min_step, max_step)
            arrive = active & tiny & lands
            fail = torch.where((active & ((tiny & ~lands) | (n_acc + n_rej >= max_num_steps))).any(), BUDGET, RUNNING)
            arriving = arrive.any()  # a round where samples arrive without a step: no sample steps (as the clock)
            hh = torch.where(active, dt_abs, 0.0) * direction
            # Attempt.
            col = hh[:, None]
            y1, k = rk_stages(raw, plan, y, f0, col, lambda i: (t + c[i] * hh).to(t_dtype))
            y_err = weighted(plan.b_err, k, col.to(y.dtype))
            ratio = row_norm(y_err / (torch.maximum(y.abs(), y1.abs()) * rtol + atol))
            ratio = torch.where(active, ratio, 0.0)
            bad = ~torch.isfinite(ratio)
            stuck = active & bad & (dt_abs * dfactor <= 4 * TIME_EPS * t.abs())
            fail = torch.where((fail == RUNNING) & ((bad.any() & ~finite_f0) | stuck.any()), NON_FINITE, fail)
            accept, h_next, (pr_n, ar_n, pd_n) = controller.adapt(
                ControllerState(prev_ratio, after_reject, prev_dt), hh, ratio
            )
            if min_step > 0:  # a rejection no smaller step may follow: the per-sample clock raises its error
                floor = active & ~accept & at_step_floor(dt_abs, remaining, min_step, max_step)
                fail = torch.where((fail == RUNNING) & ~arriving & floor.any(), AT_FLOOR, fail)
            ok = fail == RUNNING
            stepping = ok & ~arriving
            accept = accept & active & stepping
            rejected = active & ~accept & stepping
            # Outputs: each sample's next M output times inside its accepted step (or up to its last time, for
            # a sample arriving at it).
            t1 = torch.where(lands, t_stop, t + hh)
            idx = i_out[:, None] + window  # (B, M)
            tau = times.gather(1, idx)
            at_end = tau == t1[:, None]
            theta = output_theta(tau, t[:, None], t1[:, None], torch.where(hh == 0, 1.0, hh)[:, None])
            if n_dense:
                W = _horner(columns, theta[..., None]).to(y.dtype)  # (B, M, s)
                inner = y[:, None, :] + torch.bmm(W, torch.stack(k[:n_dense], 1)) * hh.to(y.dtype)[:, None, None]
            else:
                h01, h10, h11 = (w.to(y.dtype)[..., None] for w in _hermite_weights(theta, hh[:, None]))
                inner = y[:, None, :] + h01 * (y1 - y)[:, None, :] + h10 * f0[:, None, :] + h11 * k[-1][:, None, :]
            inner = torch.where(at_end[..., None], y1[:, None, :], inner)
            vals = torch.where(arrive[:, None, None], y[:, None, :], inner)
            reach = torch.where(arrive, t_end, t1)
            fill = ((tau - reach[:, None]) * direction <= 0) & torch.where(arriving, arrive, accept)[:, None] & ok
            beyond = times.gather(1, (i_out + M).clamp(max=T + M - 1)[:, None])[:, 0]
            more = fill[:, M - 1] & ((beyond - reach) * direction <= 0)  # > M outputs: again, from the same state
            rows = idx - i_start[:, None]
            ys = ys.index_put((batch, rows), torch.where(fill[..., None], vals, ys[batch, rows]))
            moved = accept & ~more
            if S:  # under autograd: the round (each sample's start, step, state, and whether it moved), the outputs
                rec = _record_round(rec, accept.any(), k_start, t, hh, y, moved, batch, idx, fill, arrive, theta)
            i_out = i_out + fill.long().sum(1)
            t = torch.where(moved, t1, torch.where(arrive & ok, t_end, t))
            y = torch.where(moved[:, None], y1, y)
            f0 = torch.where(moved[:, None], k[-1], f0)
            decided = stepping & active & ~more
            h = torch.where(decided, h_next, h)
            # The controller's memory moves on for every sample in a round of steps (the clock's rule; a finished
            # sample's is not read again), except where the step is taken again for more outputs.
            remember = stepping & ~more
            prev_ratio = torch.where(remember, pr_n, prev_ratio)
            after_reject = torch.where(remember, ar_n, after_reject)
            prev_dt = torch.where(remember, pd_n, prev_dt)
            last = torch.where(moved, hh, last)
            return (
                n + 1,
                t,
                h,
                y,
                f0,
                prev_ratio,
                after_reject,
                prev_dt,
                i_out,
                n_acc + moved.long(),
                n_rej + (rejected & ~more).long(),
                n_att + (stepping & active).long(),
                fail,
                last,
                ys,
                *rec,
            )

        return cond, body

    def run(carry, times, rtol, atol, i_start, finite_f0, k_start=None) -> tuple:
        from torch._higher_order_ops import while_loop

        cond, body = make_body(times, rtol, atol, i_start, finite_f0, k_start)
        return tuple(while_loop(cond, body, carry))

    return run, tableau.stages - 1


def integrate_per_sample_on_device(fb, y0, f0, times, direction, method, opts, norm, stats, dt0):
    """A ``per_sample`` solve on the device (:func:`per_sample_refusal` said it may): ``(ys (T, B, N), next_dt (B,),
    backward)`` as :func:`~neuralode.solvers.per_sample.integrate` returns them (``backward``: the backward pass's
    counters where autograd records through the run, else ``None``), or ``None`` where the run stopped on what the
    per-sample clock raises an error for, or could not be compiled (the caller then runs the clock).

    Raises:
        ValueError: autograd records a gradient that reaches a tensor other than ``func``'s parameters, which the
            run's backward pass cannot name (there is no compiled per-sample step to fall back on).
    """
    backend = "inductor" if opts.execution.compile is True else opts.execution.compile
    tableau = method.explicit_tableau
    ctl = opts.control
    k = min(method.order, method.error_order) + 1
    B, T = times.shape
    func, layout, t_dtype = fb.func, fb.layout, fb.dtype

    def raw(tt, y):
        return layout.flatten(func(tt.to(t_dtype), layout.unflatten(y)))

    names: tuple[str, ...] = ()
    params: tuple = ()
    if torch.is_grad_enabled():
        diff = reached_parameters(func, lambda: raw(times[:, 0], y0.detach()), y0.requires_grad)
        stats.nfe += 1
        stats.calls += 1
        stats.rows_evaluated += B
        if diff is None:
            raise ValueError(
                "options['compile'] with options['per_sample'] under autograd differentiates the compiled run through "
                "func's parameters, but a gradient through func reaches a tensor that is not one of them (a tensor "
                "captured from outside). Make it a parameter or buffer of the module, or drop options['compile'] "
                "for this solve."
            )
        names, params = diff
    # Backpropagation through the run: it records each round of steps (S per call), SampleBackprop differentiates.
    S = grid_buffer_rows(y0.numel() * y0.element_size()) if params or y0.requires_grad else 0
    M = window(T)
    R = buffer_rows(T, M)
    settings = _Settings(
        tableau.name + "/per_sample",
        backend,
        (tuple(y0.shape),),
        False,
        y0.dtype,
        str(y0.device),
        T,
        M,
        R,
        opts.compile_steps,
        direction,
        (ctl.controller, ctl.safety, ctl.ifactor, ctl.dfactor, k),
        float(opts.max_step),
        int(opts.max_num_steps),
        0,
        float(opts.min_step),
        step_t=tuple(sorted(x * direction for x in opts.stops.step_t)),
        norm=opts.control.norm,
        record=S,
    )

    def make():
        return _make_sample_run(raw, tableau, list(norm.sizes), settings, y0.dtype, layout.unflatten)

    entry = graph(func, (settings, tuple(norm.sizes)), backend, y0.device, make)
    if entry["failed"] is not None:
        return None
    dev, dt = y0.device, y0.dtype
    f64 = dict(dtype=torch.float64, device=dev)
    pad = torch.full((B, M), direction * math.inf, **f64)
    times_t = torch.cat([times.to(**f64), pad], 1)
    rtol = norm.rtol if isinstance(norm.rtol, torch.Tensor) else torch.tensor(norm.rtol, dtype=dt, device=dev)
    atol = norm.atol if isinstance(norm.atol, torch.Tensor) else torch.tensor(norm.atol, dtype=dt, device=dev)
    finite_f0 = torch.isfinite(f0).all()
    zeros = lambda: torch.zeros(B, dtype=torch.long, device=dev)  # noqa: E731  (separate, unaliased counters)

    def buffer() -> torch.Tensor:
        return torch.zeros((B, R + M, y0.shape[1]), dtype=dt, device=dev)

    carry: tuple[torch.Tensor, ...] = (
        torch.zeros((), dtype=torch.long, device=dev),
        _dense_copy(times[:, 0].to(**f64)),
        _dense_copy(dt0.detach().to(**f64)),
        _dense_copy(y0.detach()),
        _dense_copy(f0.detach()),
        torch.ones(B, **f64),
        torch.zeros(B, dtype=torch.bool, device=dev),
        torch.full((B,), math.nan, **f64),
        torch.ones(B, dtype=torch.long, device=dev),
        zeros(),
        zeros(),
        zeros(),
        torch.zeros((), dtype=torch.long, device=dev),
        stats.last_step.to(**f64).clone(),
        buffer(),
    )

    def rounds() -> tuple:  # one call's record of its rounds: (t, h), the state and who moved, S rows and a scratch row
        return (
            torch.zeros((S + 1, 2, B), **f64),
            torch.zeros((S + 1, *y0.shape), dtype=dt, device=dev),
            torch.zeros((S + 1, B), dtype=torch.bool, device=dev),
        )

    if S:  # and each output's round and theta, over the whole solve
        ks0, th0 = torch.zeros((B, T + M), dtype=torch.long, device=dev), torch.zeros((B, T + M), **f64)
        carry += (torch.zeros((), dtype=torch.long, device=dev), *rounds(), ks0, th0)
    k_start = 0
    taken: list[tuple[torch.Tensor, ...]] = []
    # Every row of a call's buffer is written to where it would go (sample b's row r to output i_out[b] + r):
    # rows past what the call reached land on outputs a later call writes again, or past the last (dropped).
    ys = torch.zeros((T + R + M, B, y0.shape[1]), dtype=dt, device=dev)
    ys[0] = y0.detach()
    i_out = torch.ones(B, dtype=torch.long, device=dev)
    r = torch.arange(R + M, device=dev)[None, :]
    b_idx = torch.arange(B, device=dev)[:, None].expand(B, R + M)
    while True:
        args: tuple = (carry, times_t, rtol, atol, i_out.clone(), finite_f0)
        if S:
            args += (torch.tensor(k_start, dtype=torch.long, device=dev),)
        with dynamo_settings(), torch.no_grad():
            out = call(entry, args, stats, "the solve runs eagerly instead")
        if out is None:
            return None
        if int(out[12]) != RUNNING:
            return None  # the per-sample clock runs the solve and raises its own error
        # This call's outputs: sample b's rows i_out[b] .. out[8][b] - 1 are rows 0.. of its buffer.
        ys.index_put_((i_out[:, None] + r, b_idx), out[14])
        i_out = out[8]
        carry = (torch.zeros((), dtype=torch.long, device=dev), *out[1:14], buffer())
        if S:
            k_reached = int(out[15])
            taken.append(tuple(x[: k_reached - k_start] for x in out[16:19]))
            k_start = k_reached
            carry += (out[15], *rounds(), out[19], out[20])
        if bool((i_out >= T).all()):
            break
    stats.n_accepted += out[9]
    stats.n_rejected += out[10]
    stats.nfe += out[11] * entry["n_new"]
    calls = int(out[11].max()) * entry["n_new"]  # calls of func on the batch: the most attempts of a sample
    stats.calls += calls
    stats.rows_evaluated += calls * B
    stats.last_step.copy_(out[13])
    if not S:
        return ys[:T], out[2].clone(), None
    backward = type(stats).zeros(B, dev)  # Solution.adjoint_stats: the backward pass's counters
    job = {
        "func": func,
        "ys": torch.cat([x[1] for x in taken]),
        "steps": _round_steps(taken, tableau, t_dtype),
        "ks": out[19][:, 1:T].clone(),
        "thetas": out[20][:, 1:T].clone(),
        "dense": _dense_rows(tableau),
        "stages": tableau.stages,
        "params": params,
        "versions": [p._version for p in params],
        "stats": backward,
        "outputs": ys[1:T].clone(),
    }
    field = module_field(func, names, layout.flatten, layout.unflatten, t_dtype)
    job["make_back"] = lambda: make_back(field, tableau, PER_SAMPLE)
    key = ("per-sample back", settings, tuple(norm.sizes), names)
    job["entry"] = graph(func, key, backend, dev, lambda: (job["make_back"](), 0), tune=False)
    hold(BackwardRecord(backward), job["ys"])
    outputs = SampleBackprop.apply(job, y0, *params)
    return torch.cat([y0[None], outputs]), out[2].clone(), backward


def _round_steps(taken: list[tuple[torch.Tensor, ...]], tableau: ButcherTableau, t_dtype: torch.dtype) -> tuple:
    """The recorded rounds' ``(ts, hs, moved)`` for the reverse run: each sample's stage times ``t + c_i h`` formed
    in float64 and cast to the time's dtype, as the run formed them (``(n, s, B)``), its steps (``(n, B)`` float64)
    and who moved (``(n, B)``)."""
    th = torch.cat([x[0] for x in taken])  # (n, 2, B)
    c = torch.tensor(tableau.c, dtype=torch.float64, device=th.device)
    ts = (th[:, :1, :] + c[None, :, None] * th[:, 1:2, :]).to(t_dtype)
    return ts, th[:, 1], torch.cat([x[2] for x in taken])


def _dense_rows(tableau: ButcherTableau) -> tuple | None:
    """The continuous extension's polynomial as floats (``None``: the cubic Hermite polynomial)."""
    return None if tableau.dense is None else tuple(tuple(float(x) for x in row) for row in tableau.dense)
