"""Per-sample step control: every sample of a batch on its own clock.

``solve(func, y0, t, options={"per_sample": True})`` treats the first dimension of the state (of
every tensor of a tuple state) as a batch of ``B`` independent problems. Each sample ``i`` has its
own time ``t_i``, step ``dt_i``, error ratio ``r_i``, accept/reject decision and counters, as
tensors of shape ``(B,)``: the :class:`SampleClock` of the one loop (:func:`~neuralode.solvers.loop.integrate`,
which runs the host clock the same way). What the two clocks share, one implementation each:

* the step: the Method's :class:`~neuralode.solvers.methods.stepper.Stepper`, whose Runge-Kutta stage sum
  :func:`~neuralode.solvers.methods.stepper.rk_step` takes a ``(B,)`` tensor of steps: a stage is
  ``k_j = f(t + c_j dt, y + dt ⊙ sum_l a_jl k_l)`` with ``dt`` broadcast over each sample's ``N`` elements
  (the state is carried as one ``(B, N)`` tensor);
* the error norm: sample ``i``'s ratio is the RMS over its own elements of
  ``err_i / (atol + rtol max(|y0_i|, |y1_i|))`` (for tuple states the largest RMS over the tensors),
  :mod:`~neuralode.solvers.control.norms`;
* the controller (:class:`~neuralode.solvers.control.controller.BatchStepSizeController`: the formulas of
  :mod:`~neuralode.solvers.control.controller` on ``(B,)`` tensors, its memory a ``ControllerState`` of them)
  and the initial step (:func:`~neuralode.solvers.control.controller.initial_step` with per-sample norms);
* the interpolant of a step: the Method's :class:`~neuralode.solvers.methods.interpolants.StepInterpolant`,
  evaluated at each sample's own ``θ_i = (τ_i - t_i) / dt_i`` (``at_rows``);
* the input checks (:mod:`~neuralode.solvers.options` with a batch) and the loop's errors, naming the sample.

The shared pieces compute the host clock's formulas with the per-row arithmetic grouped differently (a stage sum
``y + dt ⊙ sum_l a_jl k_l`` where the host clock folds ``a_jl dt`` into each term; the controller's powers as
``exp``/``log``), so the two clocks' step sizes first differ by an ulp. How far that carries is the method's: an
error estimate formed by cancellation turns it into a relative change of the next step of about ``eps`` times the
cancellation, and the outputs between step ends follow the step ends as closely as the interpolant's error lets
them. A batch of one takes the host clock's numbers of accepted and rejected steps and ends on its state at the
last time to rounding; its outputs between step ends are the host clock's to rounding for every method but
``dopri8_13m``, whose 8(7) estimate at ``rtol = 1e-6`` is ~5e10 times smaller than its terms (its step sizes then
differ by ~1e-7) and whose order-4 interpolant errs by ~100 ``rtol``: there they differ by ~1e-9 relative, 1e-5 of
that error, as the host clock's own outputs do when its first step changes by 1e-12.

The clock itself does the arithmetic of time vectorised: the landing rule (the host clock's 10% stretch onto
a stop), output times inside each sample's step, events per sample (:mod:`~neuralode.solvers.events.per_sample`),
the dense-output record (:mod:`~neuralode.solvers.dense`, shared with the host clock) and the counters.

``func`` is called once per stage on the whole batch with ``t`` a tensor of shape ``(B,)`` in the
state's dtype (row ``i`` of the state is at time ``t[i]``); a ``func`` that ignores ``t`` is
unaffected. Samples that have reached their last time are held fixed (their step is 0, so their
update is zero) and take no further decisions; the solve ends when all have finished. The rows
spent on finished samples are counted (:attr:`PerSampleStats.wasted_fraction`). With
``per_sample="compact"`` the unfinished samples are index-selected into a smaller batch whenever
fewer than half of the rows are active, so ``func`` must then accept any batch size and treat
rows independently (a ``func`` closing over a per-sample tensor of size ``B`` cannot; put such
constants in the state instead); so must event functions and resets.

Events (:mod:`~neuralode.solvers.events.per_sample`) fire per sample: ``Solution.events`` holds
:class:`~neuralode.solvers.events.per_sample.PerSampleEventRecord` s (with ``sample``), sorted
by sample and time; a terminal event ends its sample only, whose later outputs are NaN. The
host clock's two refusals hold per sample, with the same code (:mod:`~neuralode.solvers.loop`):
resets of one element of one event accumulating at a finite time in a sample (Zeno behaviour,
``check_accumulation`` on that sample's reset times), and a reset crossing at the same time as
another event that resets or ends, in one sample (``coincident_resets_error``); both name the sample.

Time is float64 throughout, as on the host clock.

Under ``options={"compile": ...}`` (``dopri5``, ``tsit5``, ``bosh3``) the same attempt runs compiled with the clock
on the device, ``compile_steps`` attempts per ``while_loop``
(:func:`~neuralode.solvers.fast.device_run.integrate_per_sample_on_device`): each sample's steps, counts and, to
rounding, outputs are this clock's; under autograd, with a compiled reverse run over its rounds of steps as the
backward pass (:class:`~neuralode.solvers.fast.backprop.SampleBackprop`, ``func`` a ``torch.nn.Module``). There is
no compiled per-sample step to fall back on, so a per-sample solve that run cannot take (autograd recording
through a plain function or a tensor outside the module's parameters, events, dense output, ``compact``) is
refused under ``compile``; where the run stops on an error, or ``func`` cannot be captured, this clock runs the
solve eagerly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

import torch

from . import loop
from .control.controller import BatchStepSizeController, initial_step
from .control.norms import RMSNorm, UserNorm
from .control.stepping import at_step_floor, next_step_t, output_theta, plan_step
from .counting import counted_by_solver
from .dense import PerSampleDense
from .events.core import unravel
from .fast import device_run
from .grid import TIME_EPS
from .loop import (
    check_accumulation,
    coincident_resets_error,
    non_finite,
    rejected_at_min_step,
    step_underflow,
    too_many_steps,
)
from .methods.interpolants import StepInterpolant
from .methods.stepper import StepResult
from .methods.tableau import ButcherTableau
from .options import (
    _check_state,
    _check_times,
    _check_tolerance,
    _check_tolerance_pair,
    check_tolerance_resolution,
)
from .problem import _Problem, changed_in_place, check_step_callbacks, watches_versions
from .solution import PerSampleStats, Solution, SolverStats, TensorOrTuple

if TYPE_CHECKING:  # imported where used: only solves with events need them
    from .events.per_sample import PerSampleEventRecord

COMPACT_BELOW = 0.5  # compact the batch when fewer than this fraction of its rows are active
# Outputs of a step are interpolated on a (B, m) window (m = most outputs of one sample in the
# step) while B m is at most this many times the outputs K, or the window holds at most
# DENSE_ELEMENTS numbers (then the wasted entries cost less than the gathers they replace);
# otherwise on the K gathered rows.
DENSE_WINDOW = 4
DENSE_ELEMENTS = 1 << 16


# --------------------------------------------------------------------------------------------
# Input checks and the (B, N) layout.


class _Layout:
    """A state (tensor or tuple of tensors sharing their first dimension ``B``) as ``(B, N)``."""

    def __init__(self, parts: tuple[torch.Tensor, ...], is_tuple: bool):
        self.is_tuple = is_tuple
        self.tails = [p.shape[1:] for p in parts]
        self.sizes = [math.prod(s) for s in self.tails]

    def flatten(self, parts) -> torch.Tensor:
        if not self.is_tuple:
            parts = (parts,)
        return (
            torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)
            if self.is_tuple
            else parts[0].reshape(parts[0].shape[0], -1)
        )

    def unflatten(self, y: torch.Tensor) -> TensorOrTuple:
        """``(..., B, N)`` -> the user's structure with the same leading dimensions."""
        lead = y.shape[:-1]
        pieces = torch.split(y, self.sizes, dim=-1) if self.is_tuple else (y,)
        out = tuple(p.reshape(*lead, *s) for p, s in zip(pieces, self.tails))
        return out if self.is_tuple else out[0]


def _tolerance(name: str, tol, parts: tuple[torch.Tensor, ...], layout: _Layout):
    """A tolerance as a float or a ``(B, N)`` tensor in the per-sample layout
    (:func:`~neuralode.solvers.options._check_tolerance` with ``batch``)."""
    return _check_tolerance(name, tol, parts, layout.is_tuple, batch=True)


# --------------------------------------------------------------------------------------------
# The batch function and the (B, m) window of outputs.


class BatchFunc:
    """``func`` adapted to ``(t: (B,) float64, y: (B, N)) -> (B, N)``, counting its calls and rows.

    ``rows`` maps the current (possibly compacted) batch to the original samples; while
    ``active`` (a mask over the batch) is set, a call adds 1 to ``nfe[rows[active]]`` (the loop
    clears it and counts each attempt's calls for its active samples itself).
    """

    def __init__(self, func: Callable, layout: _Layout, dtype: torch.dtype, stats: PerSampleStats):
        self.func, self.layout, self.dtype, self.stats = func, layout, dtype, stats
        # While ``active`` is set (the initial-step heuristic's calls), the sample of each row and whether it
        # is counted; the per-sample clock sets both before its first call.
        self.rows: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.active: torch.Tensor | None = None
        self.plain = not layout.is_tuple and len(layout.tails[0]) == 1 and dtype == torch.float64
        self.watch = not torch.is_inference_mode_enabled()  # in-place changes of y (problem.changed_in_place)
        self.compacted = False  # set when the loop may hand func fewer rows than the batch
        self.batch = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor, side: int = 0) -> torch.Tensor:
        """``func`` at times ``t`` (``(B,)``); ``side`` (the host clock's one-sided evaluations at jumps) is
        always 0 here: per-sample mode has no ``jump_t``."""
        stats = self.stats
        stats.calls += 1
        stats.rows_evaluated += y.shape[0]
        if self.active is not None:  # before the loop's first step: every sample is active
            stats.nfe.index_add_(0, self.rows, self.active.to(stats.nfe.dtype))
        version = y._version if self.watch else 0
        try:
            if self.plain:  # a (B, N) state of the time's dtype: no reshape, no cast (the common case)
                out = self.func(t, y)
            else:
                out = self.func(t.to(self.dtype), self.layout.unflatten(y))
        except RuntimeError as exc:
            if self.compacted and y.shape[0] != self.batch:
                raise ValueError(
                    f"func failed on a compacted batch of {y.shape[0]} of the {self.batch} samples: {exc}. "
                    "options['per_sample']='compact' drops finished samples from the batch, so func must accept any "
                    "batch size and treat rows independently; a func closing over a per-sample tensor of size "
                    f"{self.batch} cannot. Put such per-sample constants in the state (a tuple state), or use "
                    "per_sample=True."
                ) from exc
            raise
        if self.watch and y._version != version:
            raise changed_in_place("func(t, y)", None)
        if self.compacted and y.shape[0] != self.batch:
            rows = (out[0] if isinstance(out, (tuple, list)) else out).shape[:1]
            if rows != y.shape[:1]:
                raise ValueError(
                    f"func returned {tuple(rows)[0] if rows else 0} rows for a compacted batch of {y.shape[0]} of the "
                    f"{self.batch} samples. options['per_sample']='compact' drops finished samples from the batch, so "
                    "func must accept any batch size and treat rows independently; a func closing over a per-sample "
                    f"tensor of size {self.batch} cannot. Put such per-sample constants in the state (a tuple state), "
                    "or use per_sample=True."
                )
        if self.plain and out.dim() == 2:
            return out
        return self.layout.flatten(out)


_ARANGE: dict[tuple[int, torch.device], torch.Tensor] = {}


def _arange(n: int, device) -> torch.Tensor:
    key = (n, device)
    hit = _ARANGE.get(key)
    if hit is None:
        hit = _ARANGE[key] = torch.arange(n, device=device)
    return hit


def dense_outputs(interp: StepInterpolant, times, t, t1, h, y_end, i_out, n_new, m, rows):
    """The output times inside one accepted step of every sample, for an interpolant with a windowed form.

    Sample ``i`` has outputs ``i_out[i] .. i_out[i] + n_new[i] - 1`` in its step ``[t_i, t1_i]``.
    They are laid out as a ``(B, m)`` window (``m = max n_new``), so the whole batch is one
    fixed-shape pass, with no per-output index arithmetic: the step interpolant's
    :meth:`~neuralode.solvers.methods.interpolants.StepInterpolant.at_window` (for a continuous extension
    ``y0 + h sum_i b_i(θ) k_i``: the host clock's weights ``b_i(θ)`` at every window entry, then one batched
    product with each sample's stacked stages). An output that coincides with the step's end takes ``y_end``
    exactly (the scalar loop's rule). Window entries past a sample's ``n_new`` are dropped by one mask.

    Returns: output indices ``(K,)``, original samples ``(K,)``, states ``(K, N)``.
    """
    T = times.shape[1]
    ar = _arange(m, times.device)
    j = i_out[:, None] + ar  # (B, m)
    valid = ar < n_new[:, None]
    tau = times.gather(1, j.clamp(max=T - 1))
    at_end = tau == t1[:, None]
    # Rows without outputs (h = 0 for finished samples) are masked out below: their θ is unused.
    theta = output_theta(tau, t[:, None], t1[:, None], h[:, None])
    ys = interp.at_window(theta)  # (B, m, N)
    ys = torch.where(at_end[:, :, None], y_end[:, None, :], ys)
    return j[valid], rows[:, None].expand(-1, m)[valid], ys[valid]


# --------------------------------------------------------------------------------------------
# The clock.


class Quadrature(Protocol):
    """Hook for the adjoint: ``begin()`` before each attempt, ``end(accept, h, rows)`` after its
    decision. Given to :func:`integrate` it also makes every attempt evaluate its first stage
    afresh (no FSAL), so the attempt's calls of ``func`` are exactly its stages."""

    def begin(self) -> None: ...

    def end(self, accept: torch.Tensor, h: torch.Tensor, rows: torch.Tensor) -> None: ...


class LoopOut(NamedTuple):
    ys: torch.Tensor  # (T, B, N)
    next_dt: torch.Tensor  # (B,) signed
    backward: PerSampleStats | None = None  # the compiled run's backward pass's counters, where autograd records


class SampleClock:
    """A clock per sample: time, step, error ratio and verdict of every sample as ``(B,)`` tensors (float64
    times), for :func:`~neuralode.solvers.loop.integrate`.

    Every attempt steps the whole (possibly compacted) batch; finished samples take a step of 0 (their update
    is zero) and no decisions. The phases act on the accepted rows: outputs inside each sample's own step,
    events located per sample, the dense-output record, and the next state (accepted samples move, the
    others keep theirs). :meth:`keep` is therefore always ``True``. The one host synchronisation every
    attempt needs is :meth:`running` (has every sample finished?); the rest are taken only where something
    happens (a step below rounding, the step budget, an event, a non-finite ratio).
    """

    __slots__ = tuple(
        """
        B T dev fb tableau opts stats interpolant_type compact quad on_land ev records t_dtype dense_out direction
        fresh_f0 fsal finite_f0 min_step max_step max_num_steps dfactor zeros_l sign step_t_asc
        rows times ascending t t_end y f0 dt control done i_out n_acc n_rej n_calls last stats_rows next_dt
        pieces_i pieces_b pieces_y first_attempt f0_carried g0 g1 guard reset_times
        active tol_rows calls_before h dt_abs lands t_stop remaining n_steps accept rejected t1 y_end interp
        """.split()
    )  # the solve's settings; the batch's state between attempts; the attempt being made

    def __init__(
        self,
        fb: BatchFunc,
        y0: torch.Tensor,
        times: torch.Tensor,
        direction: float,
        *,
        tableau: ButcherTableau,
        opts,
        norm,
        controller: BatchStepSizeController,
        stats: PerSampleStats,
        interpolant: type[StepInterpolant],
        compact: bool = False,
        dt0: torch.Tensor | None = None,
        quad: Quadrature | None = None,
        f0: torch.Tensor | None = None,
        on_land: Callable | None = None,
        events=None,
        records: list | None = None,
        t_dtype: torch.dtype = torch.float64,
        step_t: tuple[float, ...] = (),
        dense=None,
    ):
        B, T = times.shape
        self.B, self.T = B, T
        self.dev = dev = y0.device
        self.fb, self.tableau, self.opts, self.stats, self.interpolant_type = fb, tableau, opts, stats, interpolant
        self.compact, self.quad, self.on_land = compact, quad, on_land
        self.ev, self.records, self.t_dtype, self.dense_out = events, records, t_dtype, dense
        self.direction = direction
        self.rows = rows = torch.arange(B, device=dev)  # original sample of each row of the current batch
        fb.rows, fb.active = rows, torch.ones(B, dtype=torch.bool, device=dev)
        self.times = times
        self.t = t = times[:, 0].clone()
        self.t_end = times[:, 1] if on_land is not None else times[:, -1]
        self.y = y = y0
        self.fsal = tableau.fsal
        self.fresh_f0 = quad is not None or not self.fsal
        if f0 is None and (quad is None or dt0 is None):
            f0 = fb(t, y)
        self.f0 = f0
        with torch.no_grad():
            self.finite_f0 = f0 is None or torch.isfinite(f0).all()
        if dt0 is not None:
            dt = dt0.to(torch.float64).clone()
        else:
            assert f0 is not None  # evaluated above whenever no dt0 is given
            dt = first_steps(fb, t, y, f0, direction, tableau.order, opts.first_step, norm)
        self.dt = dt
        control = opts.control  # read once: the loop's per-step tests use these numbers
        self.min_step, self.max_step = control.min_step, control.max_step
        self.max_num_steps, self.dfactor = control.max_num_steps, control.dfactor
        self.zeros_l = zeros_l = torch.zeros(B, dtype=torch.long, device=dev)
        self.control = controller.init(t)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.i_out = torch.ones(B, dtype=torch.long, device=dev)
        # Counters of the current batch, written to ``stats`` (by original sample) when the batch is
        # compacted and at the end, not on every step.
        self.n_acc, self.n_rej, self.n_calls = zeros_l.clone(), zeros_l.clone(), zeros_l.clone()
        self.last = stats.last_step[rows].clone()
        self.stats_rows = rows
        self.next_dt = dt.clone()  # by original sample
        self.pieces_i, self.pieces_b, self.pieces_y = (
            [torch.zeros(B, dtype=torch.long, device=dev)],
            [rows.clone()],
            [y0],
        )
        self.first_attempt = True
        # Whether self.f0 holds f(t, y) of every row where the method evaluates its first stage afresh (fresh_f0):
        # after an attempt whose interpolant evaluated f(t + h, y1) (move).
        self.f0_carried = False
        # Output times reached by t1: a binary search in each row, increasing once times sign.
        self.sign = sign = 1.0 if direction > 0 else -1.0
        self.ascending = (times * sign).contiguous()
        self.step_t_asc = (
            torch.tensor(sorted(s * sign for s in step_t), dtype=torch.float64, device=dev) if step_t else None
        )
        fb.active = None  # counting per call is the loop's job from here (n_calls)
        self.g0 = events.values(t, y) if events is not None else None
        self.guard = torch.zeros_like(t)  # roots within this time after t are not searched (a step that starts on one)
        # The last reset times of each (sample, event, element) that reset the state, for
        # check_accumulation (the host clock keeps them per (event, element)).
        self.reset_times: dict[tuple[int, int, int], list[float]] = {}

    def _flush(self) -> None:
        stats, rows = self.stats, self.stats_rows
        stats.n_accepted.index_add_(0, rows, self.n_acc)
        stats.n_rejected.index_add_(0, rows, self.n_rej)
        stats.nfe.index_add_(0, rows, self.n_calls)
        stats.last_step.index_copy_(0, rows, self.last)
        self.next_dt.index_copy_(0, rows, self.dt)

    def result(self) -> LoopOut:
        self._flush()
        B, T = self.B, self.T
        order = torch.cat(self.pieces_i) * B + torch.cat(self.pieces_b)
        values = torch.cat(self.pieces_y)
        if order.numel() != T * B or int(torch.bincount(order, minlength=T * B).max()) != 1:
            raise AssertionError("per-sample clock: an output time was filled twice or not at all")  # invariant
        ys = values.new_zeros(T * B, values.shape[1]).index_copy(0, order, values).reshape(T, B, -1)
        return LoopOut(ys, self.next_dt)

    def running(self) -> bool:
        # The one host synchronisation every step needs: has every sample finished?
        return not bool(self.done.all())

    def _compact(self) -> None:
        """Index-select the unfinished samples into a smaller batch (``per_sample="compact"``)."""
        self._flush()
        keep = (~self.done).nonzero().squeeze(1)
        self.rows, self.t, self.t_end, self.y, self.dt = (
            self.rows[keep],
            self.t[keep],
            self.t_end[keep],
            self.y[keep],
            self.dt[keep],
        )
        self.f0 = None if self.f0 is None else self.f0[keep]
        self.times, self.ascending = self.times[keep], self.ascending[keep]
        if self.g0 is not None:
            self.g0, self.guard = [g[keep] for g in self.g0], self.guard[keep]
        self.control, self.i_out = self.control.select(keep), self.i_out[keep]
        zeros_l = self.zeros_l
        self.n_acc, self.n_rej, self.n_calls, self.last = zeros_l[keep], zeros_l[keep], zeros_l[keep], self.last[keep]
        self.stats_rows = self.rows
        self.done = self.done[keep]

    def plan(self) -> bool:
        """Clip each sample's step to its next stop (the host clock's rule, vectorised); ``False`` where some
        stop within rounding of a sample's time was reached without a step."""
        active = ~self.done
        if self.compact and int(active.sum()) < COMPACT_BELOW * active.numel():
            self._compact()
            active = ~self.done
        self.active = active
        rows, t, T = self.rows, self.t, self.T
        self.fb.rows = rows
        self.tol_rows = rows if self.compact else None
        self.calls_before = self.stats.calls
        t_end = self.t_end
        t_stop = t_end if self.step_t_asc is None else next_step_t(self.step_t_asc, t, t_end, self.sign)
        dt_abs, remaining, lands, tiny = plan_step(self.dt, t, t_stop, self.min_step, self.max_step)
        n_steps = self.n_acc + self.n_rej
        # A step below rounding of t (dt_abs = 0 included), or the step budget spent: rare, so one
        # fused test decides whether the two are told apart.
        any_tiny = any_too_many = False
        if bool((active & (tiny | (n_steps >= self.max_num_steps))).any()):
            tiny = active & tiny
            too_many = active & (n_steps >= self.max_num_steps)
            any_tiny, any_too_many = bool(tiny.any()), bool(too_many.any())
        if any_tiny:
            arrive = tiny & lands
            if bool((tiny & ~lands).any()):
                i = int((tiny & ~lands).nonzero()[0])
                raise step_underflow(float(t[i]), float(self.direction * dt_abs[i]), int(n_steps[i]), int(rows[i]))
            # The stop is within rounding of t: arrive without a step.
            i_out, y = self.i_out, self.y
            for _ in range(T):
                m = arrive & (i_out < T)
                if not bool(m.any()):
                    break
                sel = m.nonzero().squeeze(1)
                self.pieces_i.append(i_out[sel])
                self.pieces_b.append(rows[sel])
                self.pieces_y.append(y[sel])
                i_out = i_out + m.long()
                if self.on_land is not None:
                    break  # one stop at a time
            self.t = torch.where(arrive, t_end, t)
            if self.on_land is not None:
                self.y, self.t_end = _next_stop(self.on_land, arrive, i_out, rows, y, self.times, t_end)
            self.i_out = i_out
            self.done = i_out >= T
            return False
        h = torch.where(active, dt_abs, 0.0)
        if self.direction < 0:
            h = -h
        if any_too_many:
            i = int(too_many.nonzero()[0])
            raise too_many_steps(self.max_num_steps, float(t[i]), float(h[i]), int(n_steps[i]), int(rows[i]))
        self.h, self.dt_abs, self.lands, self.t_stop, self.remaining, self.n_steps = (
            h,
            dt_abs,
            lands,
            t_stop,
            remaining,
            n_steps,
        )
        return True

    def attempt(self, take) -> tuple[torch.Tensor, StepResult]:
        if self.quad is not None:
            self.quad.begin()
        f0 = self.f0
        if self.quad is not None or (self.fresh_f0 and not self.first_attempt and not self.f0_carried):
            f0 = None  # evaluated by the step (with quad: after begin(), so the attempt's calls are its stages)
        self.first_attempt = False
        f0, step = take(0, self.t, self.y, f0, self.h, self.fb, None)
        self.f0 = f0
        return f0, step

    def refuse(self, controller, f0: torch.Tensor, shrink: float) -> None:
        raise AssertionError("per-sample steppers always complete their steps")  # invariant: explicit methods only

    def ratio(self, error, f0: torch.Tensor, step: StepResult) -> torch.Tensor:
        ratio = error.ratio(step.y_err, self.y, step.y1, step.y_err_aux, self.tol_rows)
        # Finished samples (h = 0, ratio = 0) are never resumed: what adapt remembers for them is not read.
        return torch.where(self.active, ratio, 0.0)

    def judge(self, controller, ratio: torch.Tensor, accept: torch.Tensor, control):
        """Accept only active samples; refuse a sample whose every step is non-finite down to the resolution
        of time, and a rejection where no smaller step may follow (the host clock's rules)."""
        active = self.active
        accept = accept & active
        self.accept = accept
        self.rejected = rejected = active & ~accept
        t, h, rows, n_steps, dt_abs = self.t, self.h, self.rows, self.n_steps, self.dt_abs
        # Ratios are >= 0, so their sum is finite exactly when every one is (barring an overflow
        # of the sum, which only sends the check below down its careful path).
        if not math.isfinite(float(ratio.sum())) and not bool(torch.isfinite(ratio).all()):
            if not bool(self.finite_f0):
                i = int((~torch.isfinite(ratio)).nonzero()[0])
                raise non_finite("derivative", float(t[i]), float(h[i]), int(n_steps[i]), int(rows[i]))
            stuck = rejected & ~torch.isfinite(ratio) & (dt_abs * self.dfactor <= 4 * TIME_EPS * t.abs())
            if bool(stuck.any()):
                i = int(stuck.nonzero()[0])
                raise non_finite("state", float(t[i]), float(h[i]), int(n_steps[i]), int(rows[i]))
        min_step, max_step = self.min_step, self.max_step
        if min_step > 0 and bool(
            (at_floor := rejected & at_step_floor(dt_abs, self.remaining, min_step, max_step)).any()
        ):
            i = int(at_floor.nonzero()[0])
            raise rejected_at_min_step(
                min_step, float(ratio[i]), float(t[i]), float(h[i]), int(n_steps[i]), int(rows[i]), accept_option=False
            )
        return accept, control

    def keep(self, accept, f0, step, dt_next, control) -> bool:
        return True  # every attempt moves its accepted samples (move)

    def interpolant(self, f0: torch.Tensor, step: StepResult) -> StepInterpolant:
        """The accepted steps' interpolant (the Method's, evaluated per row: ``at_rows``); its Hermite form
        takes ``f(t + h, y1)``, from FSAL where the method has it."""
        t, h = self.t, self.h
        t_h = t + h
        self.t1 = torch.where(self.lands, self.t_stop, t_h)
        self.y_end = step.y1
        f1 = step.k[-1] if self.fsal else None
        fb = self.fb
        self.interp = interp = self.interpolant_type(fb, self.tableau, t, self.y, f0, h, step, f1, t_h, 0, fb)
        return interp

    def events(self, step: StepResult, interp: StepInterpolant):
        """Each crossing sample's step cut at its first event (located on its interpolant); returns
        ``(cross, fired)`` or ``None``."""
        events = self.ev
        self.g1 = None
        if events is None:
            return None
        accept, t, h, g0 = self.accept, self.t, self.h, self.g0
        g1 = self.g1 = events.values(self.t1, step.y1)
        cross = accept & events.any_crossed(g0, g1)
        idle = accept & events.any_idle(g0, g1)  # an element without a sign at the start
        g_from, starts = g0, None
        if bool((cross | idle).any()):
            theta0 = (self.guard / h.abs().clamp(min=1e-300)).clamp(max=1.0)
            g_from, starts = events.leave_zero(g0, g1, idle, t, h, interp, theta0)
            cross = accept & events.any_crossed(g_from, g1)
        if not bool(cross.any()):
            return None
        theta_e, y_e, fired = events.locate(g_from, cross, t, h, interp, step.y1, theta0, starts)
        inside = cross & (theta_e < 1.0)
        self.t1 = torch.where(inside, t + theta_e * h, self.t1)
        self.lands = self.lands & ~inside
        self.y_end = torch.where(cross[:, None], y_e, step.y1)
        return (cross, fired)

    def outputs(self, step: StepResult, interp: StepInterpolant, cut) -> None:
        """The output times inside the accepted steps: rows ``i_out .. reached-1`` of each sample, as a
        ``(B, m)`` window (:func:`dense_outputs`) or gathered, from one interpolant pass."""
        t, t1, h, rows, i_out, times = self.t, self.t1, self.h, self.rows, self.i_out, self.times
        reached = torch.searchsorted(self.ascending, (t1 * self.sign)[:, None], right=True).squeeze(1)
        n_new = (reached - i_out).clamp_(min=0).mul_(self.accept)
        k_new = int(n_new.sum())
        if not k_new:
            return
        y_end = self.y_end
        m_new = int(n_new.max()) if interp.windowed else 0
        if m_new and (m_new * len(rows) <= DENSE_WINDOW * k_new or m_new * self.y.numel() <= DENSE_ELEMENTS):
            # Every output time of every sample inside this step as a (B, m) window per sample.
            j, b, y_out = dense_outputs(interp, times, t, t1, h, y_end, i_out, n_new, m_new, rows)
        else:
            # Every output time of every sample inside this step, from one interpolant pass.
            sel = torch.repeat_interleave(torch.arange(len(rows), device=self.dev), n_new)  # (K,)
            first = torch.cumsum(n_new, 0) - n_new
            j = torch.arange(k_new, device=self.dev) - (first - i_out)[sel]
            tau = times[sel, j]
            at_end = tau == t1[sel]
            # Only accepted samples have outputs here, and their h is nonzero.
            theta = output_theta(tau, t[sel], t1[sel], h[sel])
            if bool(at_end.all()):
                y_out = y_end[sel]
            else:
                y_out = torch.where(at_end[:, None], y_end[sel], interp.at_rows(sel, theta))
            b = rows[sel]
        self.pieces_i.append(j)
        self.pieces_b.append(b)
        self.pieces_y.append(y_out)
        self.i_out = i_out + n_new

    def dense(self, interp: StepInterpolant, cut) -> None:
        if self.dense_out is not None:
            self.dense_out.add(self.accept, self.rows, self.t, self.h, self.t1, interp)

    def move(self, f0, step: StepResult, accept: torch.Tensor, dt_next: torch.Tensor, control, cut) -> None:
        """Record and act on the events of the cut samples (:func:`_after_events`), tell the adjoint's
        hooks, then the next state: accepted samples move, the others keep theirs."""
        events, rows, h, t1, fb = self.ev, self.rows, self.h, self.t1, self.fb
        y_end, i_out = self.y_end, self.i_out
        if cut is not None:
            y_end, i_out, reset = _after_events(
                events,
                cut,
                t1,
                y_end,
                i_out,
                rows,
                self.T,
                self.stats,
                self.records,
                self.t_dtype,
                fb,
                self.pieces_i,
                self.pieces_b,
                self.pieces_y,
                h,
                self.n_steps,
            )
        if self.quad is not None:
            self.quad.end(accept, h, rows)
        if self.on_land is not None:
            y_end, self.t_end = _next_stop(
                self.on_land,
                accept & self.lands & (self.t_stop == self.t_end),
                i_out,
                rows,
                y_end,
                self.times,
                self.t_end,
            )
        acc = accept[:, None]
        self.n_acc = self.n_acc + accept
        self.n_rej = self.n_rej + self.rejected
        self.n_calls = torch.add(self.n_calls, self.active, alpha=self.stats.calls - self.calls_before)
        self.last = torch.where(accept, h, self.last)
        self.y = y = torch.where(acc, y_end, self.y)
        if not self.fresh_f0:
            self.f0 = torch.where(acc, step.k[-1], f0)
        else:
            # A method without FSAL evaluates its first stage afresh, but a rejected row keeps its f0, and where
            # the interpolant evaluated f(t + h, y1) for the outputs inside the step (or its extra stages include
            # it), that is the next step's first stage of every accepted row: the host clock's reuse. Not after an
            # event (a cut row restarts at the event) nor where an accepted row landed on a stop (its end is
            # t_stop, not t + h, and may be a jump of func).
            f1 = self.interp.f1
            self.f0_carried = (
                self.quad is None
                and cut is None
                and events is None
                and self.on_land is None
                and (f1 is not None or not bool(accept.any()))
                and not bool((accept & self.lands).any())
            )
            if self.f0_carried:
                self.f0 = f0 if f1 is None else torch.where(acc, f1, f0)
        self.t = t = torch.where(accept, t1, self.t)
        if events is not None:
            # cast: with events, events() set both for this step (g0 since the start)
            g0, g1, guard = cast("list[torch.Tensor]", self.g0), cast("list[torch.Tensor]", self.g1), self.guard
            if cut is None:
                self.g0 = [torch.where(accept[:, None], b, a) for a, b in zip(g0, g1)]
                self.guard = torch.where(accept, torch.zeros_like(guard), guard)
            else:
                # Cut samples restart at the event (after any reset): func and the event functions
                # afresh there, and the elements that fired have no sign until the next step ends.
                # The elements that fired take the sign they have a moment δ later (leaving the
                # root), and roots within δ of the restart are not searched: the host clock's rule
                # (events.core), so a bounce is not re-fired but the next one in the same step is seen.
                cross, fired = cut
                f_new = fb(t, y)
                if not self.fresh_f0:
                    assert self.f0 is not None  # carried between steps unless fresh_f0
                    self.f0 = torch.where(cross[:, None], f_new, self.f0)
                eps = torch.finfo(y.dtype).eps
                delta = 1e3 * (4 * eps * t.abs() + eps * h.abs())
                direction = self.direction
                g_new = events.values(t, y)
                g_later = events.values(t + direction * delta, y + (direction * delta).to(y.dtype)[:, None] * f_new)
                self.g0 = [
                    torch.where(cross[:, None], torch.where(fd, gl, gn), torch.where(accept[:, None], b, a))
                    for a, b, gn, gl, fd in zip(g0, g1, g_new, g_later, fired)
                ]
                self.guard = torch.where(cross, delta, torch.where(accept, torch.zeros_like(guard), guard))
                for i, k, element in reset:
                    series = self.reset_times.setdefault((int(rows[i]), k, element), [])
                    series.append(float(t[i]))
                    check_accumulation(series, float(delta[i]), k, float(h[i]), int(self.n_steps[i]) + 1, int(rows[i]))
        self.dt = torch.where(self.active, dt_next, self.dt)
        self.control = control
        self.i_out = i_out
        self.done = i_out >= self.T


def integrate(
    fb: BatchFunc,
    y0: torch.Tensor,
    times: torch.Tensor,
    direction: float,
    *,
    method,
    opts,
    norm: RMSNorm,
    stats: PerSampleStats,
    compact: bool = False,
    dt0: torch.Tensor | None = None,
    quad: Quadrature | None = None,
    f0: torch.Tensor | None = None,
    on_land: Callable | None = None,
    events=None,
    records: list | None = None,
    t_dtype: torch.dtype = torch.float64,
    step_t: tuple[float, ...] = (),
    dense=None,
) -> LoopOut:
    """Integrate every sample from ``times[:, 0]`` to ``times[:, -1]`` on its own clock: the loop
    (:func:`~neuralode.solvers.loop.integrate`) with a :class:`SampleClock`.

    Args:
        fb: the batch function (``(B,)`` times, ``(B, N)`` states).
        y0: ``(B, N)`` initial states.
        times: ``(B, T)`` float64 output times, every row strictly monotonic in ``direction``.
        method, opts: the :class:`~neuralode.solvers.methods.base.Method` (its stepper takes the steps) and
            its :class:`~neuralode.solvers.options.AdaptiveOptions`.
        norm: the per-sample error norm.
        stats: per-sample counters, updated in place.
        compact: index-select the unfinished samples into a smaller batch when fewer than
            :data:`COMPACT_BELOW` of the rows are active.
        dt0: ``(B,)`` signed first steps; by default Hairer's heuristic per sample.
        quad: the adjoint's quadrature hook (see :class:`Quadrature`).
        f0: ``f(times[:, 0], y0)`` when the caller has it (already counted), else evaluated.
        on_land: ``on_land(mask, i_next, rows, y) -> y``: when given, every output time is a stop
            that steps land on, and a sample that lands on one before its last has its state
            replaced there (the adjoint's jump ``a += ∂L/∂y(t_j)``); ``mask`` marks the rows that
            landed, ``i_next`` their next output index, ``rows`` the original samples. Needs
            ``quad`` (every attempt evaluates its first stage afresh, so no stage is stale).
        events, records, t_dtype: a :class:`~neuralode.solvers.events.per_sample.PerSampleEvents`,
            the list its :class:`PerSampleEventRecord` s are appended to, and the dtype of the
            recorded times.
        step_t: times every sample's steps land on where they lie inside its span
            (:func:`~neuralode.solvers.control.stepping.next_step_t`); landing on one is not a stop for ``on_land``.
        dense: a :class:`~neuralode.solvers.dense.PerSampleDense` keeping every
            accepted step's interpolant.

    Returns:
        The states at the output times ``(T, B, N)`` and each sample's proposed next step.
    """
    tableau = method.tableau
    controller = BatchStepSizeController(
        opts.controller, opts.safety, opts.ifactor, opts.dfactor, min(tableau.order, tableau.error_order) + 1
    )
    clock = SampleClock(
        fb,
        y0,
        times,
        direction,
        tableau=tableau,
        opts=opts,
        norm=norm,
        controller=controller,
        stats=stats,
        interpolant=method.interpolant(opts),
        compact=compact,
        dt0=dt0,
        quad=quad,
        f0=f0,
        on_land=on_land,
        events=events,
        records=records,
        t_dtype=t_dtype,
        step_t=step_t,
        dense=dense,
    )
    take = method.stepper(fb, opts=opts, config=None, error=norm, checkpoint=False)
    loop.integrate(clock, take, controller, norm)
    return clock.result()


def _after_events(
    events, cut, t1, y_end, i_out, rows, T, stats, records, t_dtype, fb, pieces_i, pieces_b, pieces_y, h, n_steps
):
    """Record each cut sample's event; end the samples whose event is terminal (their later
    output times are NaN); apply resets. Returns the states to continue from, ``i_out`` and the
    resets applied as ``(row, event, element)`` triples (for check_accumulation).
    Under autograd the event times, the states at them and the resets carry the implicit-function
    gradients (:meth:`~neuralode.solvers.events.per_sample.PerSampleEvents.attach_gradient`).

    The event acted on in a row is its first (by index) that ends the sample or resets its state,
    else its first that fired. As in the host clock, a reset crossing at the same time as another
    event that resets or ends is refused (:func:`~neuralode.solvers.loop.coincident_resets_error`):
    the sample restarts from one reset with every fired element past its root, so the other
    crossing would be lost."""
    from .events.per_sample import PerSampleEventRecord

    cross, fired = cut
    any_k = torch.stack([f.any(1) for f in fired], 1)  # (B, n_events)
    cuts = torch.tensor([e.cuts for e in events.events], device=any_k.device)
    acting = any_k & cuts
    # First event, by index, among those that reset or end; among all that fired where none does.
    first = torch.where(acting.any(1), torch.argmax(acting.long(), 1), torch.argmax(any_k.long(), 1))
    which = torch.where(cross, first, torch.full_like(i_out, -1))
    terminal = torch.tensor([e.terminal for e in events.events], device=which.device)
    clash = cross & (acting.sum(1) > 1) & ~terminal[which.clamp(min=0)]
    if bool(clash.any()):
        i = int(clash.nonzero()[0])
        k = int(which[i])
        other = int(next(j for j in range(len(events.events)) if j != k and bool(acting[i, j])))
        raise coincident_resets_error(k, other, float(t1[i]), float(h[i]), int(n_steps[i]) + 1, int(rows[i]))
    ends = cross & terminal[which.clamp(min=0)]
    grad = events.attach_gradient(fb, cross, which, fired, t1, y_end, rows)  # (δ, f at the event) or None
    t_star = t1.to(events.dtype) if grad is None else t1.to(events.dtype) + grad[0]
    # y* = y + f δ (value unchanged) is the state at the moving t*: what is recorded and reset. A
    # sample without a reset goes on from y at the fixed restart time, which needs no correction.
    y_star = y_end if grad is None else y_end + grad[1] * grad[0][:, None]
    reset = []
    for i, k in zip(cross.nonzero().squeeze(1).tolist(), which[cross].tolist()):
        element = int(torch.argmax(fired[k][i].long()))
        if events.events[k].reset is not None and not events.events[k].terminal:
            reset.append((i, k, element))
        records.append(
            PerSampleEventRecord(
                torch.tensor(float(t1[i]), dtype=t_dtype) + (0 if grad is None else grad[0][i].to(t_dtype)),
                _row(events.unflatten(y_star[i : i + 1])),
                k,
                unravel(element, events.shapes[k]),
                events.events[k].terminal,
                int(rows[i]),
            )
        )
    stats.n_events.index_add_(0, rows, cross.long())
    n_left = torch.where(ends, T - i_out, torch.zeros_like(i_out))
    k_left = int(n_left.sum())
    if k_left:
        sel = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), n_left)
        first = torch.cumsum(n_left, 0) - n_left
        pieces_i.append(i_out[sel] + torch.arange(k_left, device=rows.device) - first[sel])
        pieces_b.append(rows[sel])
        pieces_y.append(torch.full((k_left, y_end.shape[1]), float("nan"), dtype=y_end.dtype, device=y_end.device))
        i_out = torch.where(ends, torch.full_like(i_out, T), i_out)
    for k, e in enumerate(events.events):
        m = cross & (which == k) & ~ends
        if e.reset is not None and bool(m.any()):
            y_new = events.flatten(e.reset(t_star, events.unflatten(y_star)))
            if y_new.shape != y_end.shape or y_new.dtype != y_end.dtype:
                raise ValueError(
                    f"events[{k}].reset(t, y) must return the state's shapes and dtype "
                    f"(batch first in per-sample mode)."
                )
            if grad is not None:  # the restart at t* moves the later states by -f δ
                with torch.no_grad():
                    f_new = fb(t1, y_new.detach())
                y_new = y_new - f_new * grad[0][:, None]
            y_end = torch.where(m[:, None], y_new, y_end)
    return y_end, i_out, reset


def _row(y):
    """Sample ``i``'s state without its batch dimension, from a batch of one."""
    return tuple(p[0] for p in y) if isinstance(y, tuple) else y[0]


def _next_stop(on_land, landed, i_out, rows, y, times, t_end):
    """After landing: the state replaced by ``on_land`` for samples with stops left, and every
    landed sample's next stop."""
    T = times.shape[1]
    jump = landed & (i_out < T)
    if bool(jump.any()):
        y = on_land(jump, i_out, rows, y)
    t_next = times.gather(1, i_out.clamp(max=T - 1)[:, None]).squeeze(1)
    return y, torch.where(landed, t_next, t_end)


def check_options(opts) -> None:
    """What per-sample mode does not do yet, refused clearly."""
    for name, bad in (("jump_t", bool(opts.jump_t)), ("checkpoint", opts.checkpoint)):
        if bad:
            raise ValueError(f"options['{name}'] is not supported with options['per_sample'] yet; drop one of them.")


def first_steps(fb, t, y, f0, direction: float, order: int, first_step: float | None, norm) -> torch.Tensor:
    """Each sample's first step, signed, ``(B,)`` float64: ``options['first_step']``, else Hairer's heuristic per
    sample (:func:`~neuralode.solvers.control.controller.initial_step`, one evaluation of the batch)."""
    if first_step is not None:
        return torch.full((t.shape[0],), direction * first_step, dtype=torch.float64, device=t.device)
    return direction * initial_step(fb, t, y, f0, direction, order, norm.scaled)


def _compiled_run(
    fb, layout, y0, out, times, direction, method, opts, norm, stats, events
) -> tuple[LoopOut | None, torch.Tensor]:
    """``options={"compile": ...}`` with ``per_sample``: the run of steps compiled with the clock on the device
    (:func:`~neuralode.solvers.fast.device_run.integrate_per_sample_on_device`), or ``None`` where the clock must
    run the solve (an error to raise, or a ``func`` the run cannot capture); with the first steps it took.

    Raises:
        ValueError: a solve the compiled per-sample run cannot take, naming what stands in the way.
    """
    y, f0 = layout.flatten(y0), layout.flatten(out)
    reason = device_run.per_sample_refusal(fb.func, method, opts, events, y.device)
    if reason is not None:
        raise ValueError(
            "options['compile'] with options['per_sample'] compiles the whole run of steps of dopri5, tsit5 or bosh3; "
            f"not with {reason}. Drop options['compile'] for this solve."
        )
    B, t0 = times.shape[0], times[:, 0]
    # SampleClock's first steps, their evaluations counted for every sample as the clock counts them.
    fb.rows, fb.active = torch.arange(B, device=t0.device), torch.ones(B, dtype=torch.bool, device=t0.device)
    dt0 = first_steps(fb, t0, y, f0, direction, method.tableau.order, opts.first_step, norm)
    fb.active = None
    with counted_by_solver(fb.func, lambda: stats.calls):
        result = device_run.integrate_per_sample_on_device(fb, y, f0, times, direction, method, opts, norm, stats, dt0)
    return (None if result is None else LoopOut(*result)), dt0


def solve_per_sample(func, y0: TensorOrTuple, t: torch.Tensor, *, rtol, atol, method, opts, events=()) -> Solution:
    """:func:`~neuralode.solvers.api.solve` with ``options={"per_sample": True}`` (or ``"compact"``).

    Args:
        func: ``func(t, y)`` with ``t`` of shape ``(B,)`` (the state's dtype) and ``y`` like ``y0``.
        y0: ``(B, ...)`` tensor or tuple of tensors sharing the first dimension ``B``.
        t: ``(T,)`` output times shared by all samples, or ``(B, T)``, row ``i`` the times of
            sample ``i``; every row strictly monotonic, all in the same direction.

    Returns:
        A :class:`Solution` with ``ys`` of shape ``(T, B, ...)`` (``ys[j, i]`` is sample ``i`` at
        ``t[i, j]``), ``ts`` the ``t`` passed in and :class:`PerSampleStats` (``(B,)`` counters).
    """
    tableau = method.tableau
    check_options(opts)
    check_step_callbacks(func, tableau, per_sample=True)
    is_tuple = isinstance(y0, tuple)
    parts = y0 if isinstance(y0, tuple) else (y0,)
    _check_state(y0, batch=True)
    B = parts[0].shape[0]
    times, direction = _check_times(t, B)
    layout = _Layout(parts, is_tuple)
    stats = PerSampleStats.zeros(B, parts[0].device)
    if times.shape[1] == 1:
        ys = tuple(p.unsqueeze(0) for p in parts)
        return Solution(t, ys if is_tuple else ys[0], stats, tableau.name)
    # The first call, checked as the joint solve checks it (shape, dtype).
    checker = _Problem(func, parts, is_tuple, SolverStats())
    norm = RMSNorm(layout.sizes, _tolerance("rtol", rtol, parts, layout), _tolerance("atol", atol, parts, layout))
    _check_tolerance_pair(norm.rtol, norm.atol)
    check_tolerance_resolution(norm.rtol, norm.atol, parts[0].dtype)
    if opts.norm is not None:
        norm = UserNorm(layout.sizes, norm.rtol, norm.atol, opts.norm, layout.unflatten)
    probe_parts = tuple(p.clone() for p in y0) if isinstance(y0, tuple) else (y0.clone(),)
    probe = probe_parts if is_tuple else probe_parts[0]
    versions = [p._version for p in probe_parts] if watches_versions(parts[0]) else None
    out = func(times[:, 0].to(parts[0].dtype), probe)
    if versions is not None and versions != [p._version for p in probe_parts]:
        raise changed_in_place("func(t, y)", None)
    checker.check_like_state(out, "func(t, y)", what="dy/dt", finite=False)
    stats.nfe += 1
    stats.rows_evaluated, stats.calls = B, 1
    fb = BatchFunc(func, layout, parts[0].dtype, stats)
    fb.compacted, fb.batch = opts.per_sample == "compact", B
    records: list[PerSampleEventRecord] = []
    event_set = None
    if events:
        from .events.per_sample import PerSampleEvents

        event_set = PerSampleEvents(events, layout.unflatten, layout.flatten, parts[0].dtype)
    dense = None
    if opts.dense:
        dense = PerSampleDense(B, direction, layout.unflatten, times[:, 0])
    dt0 = None
    if opts.execution.compile:
        result, dt0 = _compiled_run(fb, layout, y0, out, times, direction, method, opts, norm, stats, events)
        if result is not None:
            stats.next_step = result.next_dt
            return Solution(t, layout.unflatten(result.ys), stats, tableau.name, result.backward)
        # The clock runs the solve (its own error to raise, or a func the run could not capture), eagerly: it has no
        # compiled step.
        opts = dataclasses.replace(opts, execution=dataclasses.replace(opts.execution, compile=False))
    result = integrate(
        fb,
        layout.flatten(y0),
        times,
        direction,
        method=method,
        opts=opts,
        norm=norm,
        stats=stats,
        compact=opts.per_sample == "compact",
        f0=layout.flatten(out),
        events=event_set,
        records=records,
        t_dtype=t.dtype,
        step_t=opts.step_t,
        dense=dense,
        dt0=dt0,
    )
    stats.next_step = result.next_dt
    if event_set is not None:
        stats.n_event_evals.fill_(event_set.calls)  # calls of each event function on the batch
    records.sort(key=lambda r: (r.sample, float(r.t.detach()) * direction))
    return Solution(t, layout.unflatten(result.ys), stats, tableau.name, None, tuple(records), dense)
