"""The integration loop: ``solve`` returns a :class:`Solution`; ``odeint`` returns its tensor.

``odeint(func, y0, t, rtol=1e-7, atol=1e-9, method="dopri5", options=None)`` has torchdiffeq
0.2.5's signature and meaning, so ``from neuralode import odeint`` replaces
``from torchdiffeq import odeint``. Differences on purpose:

* unknown options, methods and malformed inputs raise ``ValueError``/``TypeError`` naming the
  argument (torchdiffeq asserts, or only warns about unknown options);
* a failing solve raises :class:`SolverError` reporting ``t``, ``dt`` and the step count;
* the adaptive loop never steps past the last output time (torchdiffeq steps past it and
  interpolates back), so ``func`` is never evaluated outside ``[t[0], t[-1]]``;
* the default step-size controller is PI rather than I (see ``controller.py``);
* ``rk4`` is the classic Runge-Kutta method; torchdiffeq's ``rk4`` is Kutta's 3/8 rule,
  available here as ``rk4_38``;
* gradients with respect to ``t`` are the exact sensitivities of the ODE solution
  (``dL/dt_i = dL/dy(t_i) . f(t_i, y(t_i))`` and, for ``t_0``, minus the total gradient with
  respect to ``y0`` projected on ``f(t_0, y0)``), not the derivative of the discrete solver's
  step-size choices.

Design: time is carried as Python floats (float64) inside the loop and only turned into a tensor
of the state's dtype when ``func`` is called; tuple states are flattened into one vector once, so
the loop, the stepper and the interpolants see a single tensor. Steps return values
(:class:`~neuralode.solvers.stepper.StepResult`); the loop owns all bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence, Union

import torch

from .controller import CONTROLLERS, StepSizeController, initial_step
from .errors import SolverError
from .interpolation import continuous_extension, hermite, linear
from .stepper import rk_step
from .tableau import ButcherTableau, get_tableau

TensorOrTuple = Union[torch.Tensor, tuple[torch.Tensor, ...]]

_EPS = 2.220446049250313e-16  # float64 machine epsilon: time is float64.


@dataclass
class SolverStats:
    """Counters of one solve.

    Attributes:
        nfe: evaluations of ``func`` (including the initial-step heuristic's one).
        n_accepted: accepted steps.
        n_rejected: rejected steps (always 0 for fixed-step methods).
        last_step: the size of the last step taken (signed; ``nan`` if no step was taken).
        next_step: the step the controller proposed after the last one (adaptive methods), a
            good ``first_step`` for a solve that continues from the end of this one.
    """

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    last_step: float = math.nan
    next_step: float = math.nan

    @property
    def n_steps(self) -> int:
        """Steps attempted: accepted plus rejected."""
        return self.n_accepted + self.n_rejected


@dataclass(frozen=True)
class Solution:
    """The result of :func:`solve`.

    Attributes:
        ts: the output times, the ``t`` passed in.
        ys: the states at ``ts``: a tensor of shape ``(len(t), *y0.shape)``, or a tuple of such
            tensors when ``y0`` is a tuple.
        stats: function evaluations and step counts.
        method: the name of the method used.
        adjoint_stats: for :func:`~neuralode.solvers.adjoint.solve_adjoint`, the counters of the
            backward (adjoint) solves, filled in when gradients are computed; ``None`` otherwise.
    """

    ts: torch.Tensor
    ys: TensorOrTuple
    stats: SolverStats
    method: str
    adjoint_stats: SolverStats | None = None


@dataclass(frozen=True)
class AdaptiveOptions:
    """Options of adaptive methods, spelled as torchdiffeq spells them.

    Attributes:
        first_step: initial step size; by default chosen by Hairer's heuristic.
        min_step: steps are never smaller; a step rejected at this size raises ``SolverError``.
        max_step: steps are never larger.
        max_num_steps: most steps (accepted and rejected) for the whole solve.
        step_t: times to step exactly onto (e.g. where the dynamics change character).
        jump_t: discontinuities of ``func`` in time: stepped onto, and ``func`` is evaluated
            afresh just after them instead of reusing the last stage (FSAL).
        norm: ``norm(scaled_error) -> scalar`` replacing the RMS norm; receives a tensor shaped
            like ``y0``, or a tuple for tuple states.
        safety, ifactor, dfactor: step-size controller parameters (see ``controller.py``).
        controller: ``"pi"`` (default) or ``"i"``.
        checkpoint: backpropagate with gradient checkpointing: keep only each step's input
            state for backward and recompute its stages then (memory ~ one state per step
            instead of every stage's activations, for about one extra forward pass).
    """

    first_step: float | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = 2**31 - 1
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    norm: Callable[[Any], Any] | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    controller: str = "pi"
    checkpoint: bool = False


@dataclass(frozen=True)
class FixedOptions:
    """Options of fixed-step methods, spelled as torchdiffeq spells them.

    Attributes:
        step_size: the step; the grid runs from ``t[0]`` in steps of ``step_size`` and its last
            step is shortened to end on ``t[-1]``.
        grid_constructor: ``grid_constructor(func, y0, t) -> grid``, a 1-D tensor of times from
            ``t[0]`` to ``t[-1]``.
        interp: how output times between grid points are filled in: ``"linear"`` (default, as in
            torchdiffeq) or ``"cubic"`` (Hermite, one more evaluation of ``func`` per step).
        checkpoint: gradient checkpointing per step, as for :class:`AdaptiveOptions`.
        Without ``step_size`` and ``grid_constructor`` the grid is ``t`` itself.
    """

    step_size: float | None = None
    grid_constructor: Callable[..., torch.Tensor] | None = None
    interp: str = "linear"
    checkpoint: bool = False


# --------------------------------------------------------------------------------------------
# Checking input at the public boundary.


def _type_name(x: Any) -> str:
    return type(x).__name__


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_state(y0: Any) -> tuple[torch.Tensor, ...]:
    """Components of ``y0`` as a tuple, each checked to be a finite floating tensor."""
    if isinstance(y0, torch.Tensor):
        parts = (y0,)
    elif isinstance(y0, tuple) and len(y0) > 0 and all(isinstance(p, torch.Tensor) for p in y0):
        parts = y0
    else:
        raise TypeError(
            f"y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got {_type_name(y0)}."
        )
    for i, p in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if not p.is_floating_point():
            raise TypeError(
                f"{name} must have a floating-point dtype (e.g. torch.float32 or torch.float64); got {p.dtype}. "
                f"Convert it with {name}.float() or {name}.double()."
            )
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"{name} contains NaN or infinite values; the initial state must be finite.")
    if len(parts) > 1:
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            if p.dtype != first.dtype or p.device != first.device:
                raise TypeError(
                    f"All tensors of a tuple y0 must share dtype and device; y0[0] is {first.dtype} on {first.device} "
                    f"but y0[{i}] is {p.dtype} on {p.device}."
                )
    return parts


def _check_times(t: Any) -> list[float]:
    """Output times as Python floats, checked to be 1-D, finite and strictly monotonic."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D floating-point torch.Tensor of output times; got {_type_name(t)}.")
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating-point dtype; got {t.dtype}. Use torch.tensor([...], dtype=torch.float64).")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times; got shape {tuple(t.shape)}.")
    times = t.detach().to("cpu", torch.float64).tolist()
    for i, ti in enumerate(times):
        if not math.isfinite(ti):
            raise ValueError(f"t must be finite; got t[{i}] = {ti}.")
    if len(times) > 1:
        increasing = times[1] > times[0]
        for i in range(1, len(times)):
            if (times[i] > times[i - 1]) != increasing or times[i] == times[i - 1]:
                raise ValueError(
                    "t must be strictly increasing or strictly decreasing; "
                    f"got t[{i - 1}] = {times[i - 1]!r} followed by t[{i}] = {times[i]!r}."
                )
    return times


def _check_tolerance(name: str, tol: Any, parts: tuple[torch.Tensor, ...], is_tuple: bool):
    """A tolerance as a float, or a flat tensor matching the flattened state."""

    def one(value: Any, part: torch.Tensor, label: str):
        if _is_number(value):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a non-negative finite number; got {value!r}.")
            return float(value)
        if isinstance(value, torch.Tensor):
            if not (bool(torch.isfinite(value).all()) and bool((value >= 0).all())):
                raise ValueError(f"{label} must be non-negative and finite; got a tensor containing {value.min().item()!r}.")
            try:
                return torch.broadcast_to(value.to(part.dtype), part.shape).to(part.device)
            except RuntimeError:
                raise ValueError(
                    f"{label} of shape {tuple(value.shape)} cannot be broadcast to the state's shape {tuple(part.shape)}."
                ) from None
        raise TypeError(f"{label} must be a float or a tensor; got {_type_name(value)}.")

    if is_tuple and isinstance(tol, (tuple, list)):
        if len(tol) != len(parts):
            raise ValueError(f"{name} given per tensor must have one entry per tensor of y0 ({len(parts)}); got {len(tol)}.")
        values = [one(v, p, f"{name}[{i}]") for i, (v, p) in enumerate(zip(tol, parts))]
    else:
        values = [one(tol, p, name) for p in parts]
    if all(isinstance(v, float) for v in values) and len(set(values)) == 1:
        return values[0]
    if not is_tuple:
        return values[0]  # already broadcast to the state's shape
    return torch.cat(
        [
            (v.reshape(-1) if isinstance(v, torch.Tensor) else torch.full((p.numel(),), v, dtype=p.dtype, device=p.device))
            for v, p in zip(values, parts)
        ]
    )


def _positive(name: str, value: Any, allow_inf: bool = False, allow_zero: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    ok = _is_number(value) and (math.isfinite(value) or (allow_inf and value == math.inf))
    ok = ok and (value > 0 or (allow_zero and value == 0))
    if not ok:
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"options['{name}'] must be a {what} finite number; got {value!r}.")
    return float(value)


def _times_option(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(-1).to("cpu", torch.float64).tolist()
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) and math.isfinite(v) for v in value):
        raise TypeError(f"options['{name}'] must be a 1-D tensor or sequence of finite times; got {value!r}.")
    return tuple(float(v) for v in value)


def _parse_options(options: Any, tableau: ButcherTableau) -> AdaptiveOptions | FixedOptions:
    kind = AdaptiveOptions if tableau.adaptive else FixedOptions
    if options is None:
        return kind()
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None; got {_type_name(options)}.")
    valid = [f.name for f in fields(kind)]
    for key in options:
        if key not in valid:
            raise ValueError(
                f"Unknown option {key!r} for method {tableau.name!r}. Valid options: {', '.join(valid)}."
            )
    o = dict(options)
    if not isinstance(o.get("checkpoint", False), bool):
        raise TypeError(f"options['checkpoint'] must be True or False; got {o['checkpoint']!r}.")
    if kind is FixedOptions:
        if o.get("step_size") is not None:
            o["step_size"] = _positive("step_size", o["step_size"])
        if o.get("grid_constructor") is not None:
            if not callable(o["grid_constructor"]):
                raise TypeError(f"options['grid_constructor'] must be callable; got {_type_name(o['grid_constructor'])}.")
            if o.get("step_size") is not None:
                raise ValueError("options 'step_size' and 'grid_constructor' are mutually exclusive; give one of them.")
        interp = o.get("interp", "linear")
        if interp not in ("linear", "cubic"):
            raise ValueError(f"options['interp'] must be 'linear' or 'cubic'; got {interp!r}.")
        return FixedOptions(**o)
    if o.get("first_step") is not None:
        o["first_step"] = _positive("first_step", o["first_step"])
    if "min_step" in o:
        o["min_step"] = _positive("min_step", o["min_step"], allow_zero=True)
    if "max_step" in o:
        o["max_step"] = _positive("max_step", o["max_step"], allow_inf=True)
    if o.get("min_step", 0.0) > o.get("max_step", math.inf):
        raise ValueError(f"options['min_step'] ({o['min_step']!r}) must not exceed options['max_step'] ({o['max_step']!r}).")
    if "max_num_steps" in o:
        m = o["max_num_steps"]
        if not (isinstance(m, int) and not isinstance(m, bool) and m > 0):
            raise ValueError(f"options['max_num_steps'] must be a positive integer; got {m!r}.")
    for name in ("step_t", "jump_t"):
        if o.get(name) is not None:
            o[name] = _times_option(name, o[name])
        else:
            o.pop(name, None)
    if o.get("norm") is not None and not callable(o["norm"]):
        raise TypeError(f"options['norm'] must be callable (tensor -> scalar); got {_type_name(o['norm'])}.")
    if "safety" in o and not (_is_number(o["safety"]) and 0 < o["safety"] <= 1):
        raise ValueError(f"options['safety'] must be in (0, 1]; got {o['safety']!r}.")
    if "ifactor" in o and not (_is_number(o["ifactor"]) and o["ifactor"] >= 1):
        raise ValueError(f"options['ifactor'] must be a number >= 1; got {o['ifactor']!r}.")
    if "dfactor" in o and not (_is_number(o["dfactor"]) and 0 < o["dfactor"] <= 1):
        raise ValueError(f"options['dfactor'] must be in (0, 1]; got {o['dfactor']!r}.")
    if o.get("controller", "pi") not in CONTROLLERS:
        raise ValueError(f"options['controller'] must be one of {', '.join(CONTROLLERS)}; got {o['controller']!r}.")
    return AdaptiveOptions(**o)


# --------------------------------------------------------------------------------------------
# The right-hand side as the loop sees it: float time, one flat tensor, evaluations counted.


class _Problem:
    """Adapts a user ``func`` to the loop: float time in, counted evaluations, tuple flattening."""

    def __init__(self, func: Callable, parts: tuple[torch.Tensor, ...], is_tuple: bool, stats: SolverStats):
        self.func = func
        self.parts = parts
        self.is_tuple = is_tuple
        self.stats = stats
        self.dtype = parts[0].dtype
        self.device = parts[0].device
        self.shapes = [p.shape for p in parts]
        self.sizes = [p.numel() for p in parts]
        self.times: dict[float, torch.Tensor] = {}

    def cache_times(self, values: list[float]) -> None:
        """Create the time tensors of known evaluation times at once (one tensor, unbound),
        rather than one small tensor per evaluation; fixed grids know all their stage times."""
        unique = list(dict.fromkeys(values))
        self.times = dict(zip(unique, torch.tensor(unique, dtype=self.dtype, device=self.device).unbind()))

    def flatten(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if not self.is_tuple:
            return parts[0]
        return torch.cat([p.reshape(-1) for p in parts])

    def unflatten(self, y: torch.Tensor) -> TensorOrTuple:
        if not self.is_tuple:
            return y
        return tuple(p.view(s) for p, s in zip(torch.split(y, self.sizes), self.shapes))

    def time(self, t: float) -> torch.Tensor:
        return torch.full((), t, dtype=self.dtype, device=self.device)

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        tt = self.times.get(t)
        if tt is None:
            tt = torch.full((), t, dtype=self.dtype, device=self.device)
        if self.is_tuple:
            return torch.cat([o.reshape(-1) for o in self.func(tt, self.unflatten(y))])
        return self.func(tt, y)

    def first_call(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """The first evaluation, with the output checked against the state."""
        self.stats.nfe += 1
        out = self.func(self.time(t), self.unflatten(y))
        outs = out if self.is_tuple and isinstance(out, (tuple, list)) else (out,)
        if self.is_tuple and not isinstance(out, (tuple, list)):
            raise TypeError(f"func must return a tuple of {len(self.parts)} tensors for a tuple y0; got {_type_name(out)}.")
        if len(outs) != len(self.parts):
            raise ValueError(f"func must return {len(self.parts)} tensors, one per tensor of y0; got {len(outs)}.")
        for i, (o, p) in enumerate(zip(outs, self.parts)):
            name = "func(t, y)" if not self.is_tuple else f"func(t, y)[{i}]"
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{name} must return a torch.Tensor; got {_type_name(o)}.")
            if o.shape != p.shape:
                raise ValueError(
                    f"{name} returned shape {tuple(o.shape)} but the state has shape {tuple(p.shape)}; "
                    "dy/dt must have the same shape as y."
                )
            if o.dtype != p.dtype:
                raise TypeError(
                    f"{name} returned dtype {o.dtype} but the state has dtype {p.dtype}; dy/dt must have the state's dtype."
                )
        return self.flatten(outs)


class _ErrorNorm:
    """``norm(err / (atol + rtol * max(|y0|, |y1|)))`` as a Python float.

    The default norm is the root mean square (RMS); for tuple states, the largest RMS over the
    tensors, so a small tensor is not drowned by a large one (torchdiffeq's choice too).
    """

    def __init__(self, problem: _Problem, rtol, atol, norm: Callable | None):
        self.problem = problem
        self.rtol = rtol
        self.atol = atol
        self.user_norm = norm
        self.inv_sqrt_n = [1.0 / math.sqrt(max(n, 1)) for n in problem.sizes]

    def norm(self, x: torch.Tensor) -> float:
        if self.user_norm is not None:
            return float(self.user_norm(self.problem.unflatten(x)))
        if not self.problem.is_tuple:
            return float(torch.linalg.vector_norm(x)) * self.inv_sqrt_n[0]
        rms = [torch.linalg.vector_norm(p) * s for p, s in zip(torch.split(x, self.problem.sizes), self.inv_sqrt_n)]
        return float(torch.stack(rms).max())

    def scaled(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return self.norm(x / (y.abs() * self.rtol + self.atol))

    def ratio(self, y_err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> float:
        with torch.no_grad():
            scale = torch.maximum(y0.abs(), y1.abs()).mul_(self.rtol).add_(self.atol)
            return self.norm(y_err / scale)


# --------------------------------------------------------------------------------------------
# The loops.


def _stepper(problem: Callable[[float, torch.Tensor], torch.Tensor], tableau: ButcherTableau, checkpoint: bool):
    """``take(t_f0, t, y, f0, h) -> (f0, StepResult)``, evaluating ``f0`` first when it is None.

    With ``checkpoint`` (and autograd recording), the evaluation of ``f0`` and the step run
    under ``torch.utils.checkpoint``: backward keeps only the step's inputs and recomputes its
    stages.
    """

    def take(t_f0: float, t: float, y: torch.Tensor, f0, h: float):
        if f0 is None:
            f0 = problem(t_f0, y)
        return f0, rk_step(problem, t, y, f0, h, tableau)

    if not (checkpoint and torch.is_grad_enabled()):
        return take
    from torch.utils.checkpoint import checkpoint as run_checkpointed

    def take_checkpointed(t_f0: float, t: float, y: torch.Tensor, f0, h: float):
        return run_checkpointed(take, t_f0, t, y, f0, h, use_reentrant=False)

    return take_checkpointed


def _integrate_fixed(problem: _Problem, y0, f0, times, grid, tableau, opts: FixedOptions, stats):
    direction = 1.0 if times[-1] > times[0] else -1.0
    n_out = len(times)
    ys = [y0]
    i_out = 1
    y = y0
    step_sizes = []
    interp = opts.interp
    take = _stepper(problem, tableau, opts.checkpoint)
    for n in range(len(grid) - 1):
        g0, g1 = grid[n], grid[n + 1]
        h = g1 - g0
        f0, step = take(g0, g0, y, f0, h)
        stats.n_accepted += 1
        f1 = step.k[-1] if tableau.fsal else None
        while i_out < n_out and (times[i_out] - g1) * direction <= 0:
            tau = times[i_out]
            if tau == g1:
                ys.append(step.y1)
            elif interp == "linear":
                ys.append(linear(y, step.y1, (tau - g0) / h))
            else:
                if f1 is None:
                    f1 = problem(g1, step.y1)
                ys.append(hermite(y, step.y1, f0, f1, h, (tau - g0) / h))
            step_sizes.append((h, n + 1))
            i_out += 1
        y, f0 = step.y1, f1
        stats.last_step = h
    return ys, step_sizes


def _integrate_adaptive(problem: _Problem, y0, f0, times, tableau, opts: AdaptiveOptions, error: _ErrorNorm, stats):
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    n_out = len(times)

    def inside(s: float) -> bool:
        return (s - t0) * direction > 0 and (t_end - s) * direction > 0

    stops = sorted({s for s in opts.step_t + opts.jump_t if inside(s)}, key=lambda s: s * direction) + [t_end]
    jumps = set(opts.jump_t)
    k = min(tableau.order, tableau.error_order) + 1
    controller = StepSizeController(opts.controller, opts.safety, opts.ifactor, opts.dfactor, k)

    if opts.first_step is not None:
        dt = direction * opts.first_step
    else:
        dt = direction * initial_step(problem, t0, y0, f0, direction, tableau.order, error.scaled)

    t, y = t0, y0
    t_f0 = t0  # time at which f0 was evaluated: just after t when t is a jump
    ys = [y0]
    i_out, i_stop = 1, 0
    prev_ratio, after_reject = 1.0, False
    take = _stepper(problem, tableau, opts.checkpoint)

    def take_before_jump(t_jump: float):
        t_in = math.nextafter(t_jump, -direction * math.inf)

        def before(s: float, x: torch.Tensor) -> torch.Tensor:
            return problem(t_in if (s - t_in) * direction > 0 else s, x)

        return _stepper(before, tableau, opts.checkpoint)

    last_ratio = 0.0
    while i_out < n_out:
        t_stop = stops[i_stop]
        dt_abs = max(min(abs(dt), opts.max_step), opts.min_step)
        remaining = abs(t_stop - t)
        # Stretch a step by up to 10% to land on a stop rather than leave a sliver of a step
        # after it (Hairer's DOPRI5 allows 1%; the safety factor 0.9 leaves room for 10%).
        lands = min(1.1 * dt_abs, opts.max_step) >= remaining
        if lands:
            dt_abs = remaining
        h = direction * dt_abs
        if dt_abs <= 4 * _EPS * abs(t) or dt_abs == 0.0:
            if lands:
                # The stop is within rounding of t: arrive without a step.
                t = t_stop
                while i_out < n_out and (times[i_out] - t) * direction <= 0:
                    ys.append(y)
                    i_out += 1
                if t_stop in jumps:
                    f0, t_f0 = None, math.nextafter(t, direction * math.inf)
                i_stop += 1
                continue
            if not math.isfinite(last_ratio):
                raise SolverError(
                    "Non-finite state or derivative", t, h, stats.n_steps,
                    "Every step tried from here produced NaN or inf; check func, or the solution blows up here.",
                )
            raise SolverError(
                "Step size underflow", t, h, stats.n_steps,
                "The problem may be stiff, or the solution may blow up (non-finite values); "
                "try a looser tolerance or check func.",
            )
        if stats.n_steps >= opts.max_num_steps:
            raise SolverError(
                f"Too many steps (max_num_steps={opts.max_num_steps})", t, h, stats.n_steps,
                "Raise options['max_num_steps'] or loosen rtol/atol.",
            )
        if lands and t_stop in jumps:
            # Stages with c_i = 1 would sit exactly on the discontinuity, where func may already
            # return its value from after the jump: evaluate them just before it instead.
            f0, step = take_before_jump(t_stop)(t_f0, t, y, f0, h)
        else:
            f0, step = take(t_f0, t, y, f0, h)
        ratio = error.ratio(step.y_err, y, step.y1)
        last_ratio = ratio
        if not math.isfinite(ratio) and not bool(torch.isfinite(f0).all()):
            raise SolverError("Non-finite derivative func(t, y)", t, h, stats.n_steps, "Check func for NaN or inf.")
        accept, dt_next = controller.propose(h, ratio, prev_ratio, after_reject)
        if not accept:
            stats.n_rejected += 1
            if opts.min_step > 0 and dt_abs <= opts.min_step and not lands:
                raise SolverError(
                    f"Step rejected at the minimum step size (min_step={opts.min_step:.3g}, error ratio {ratio:.3g})",
                    t, h, stats.n_steps, "Lower options['min_step'] or loosen rtol/atol.",
                )
            dt, after_reject = dt_next, True
            continue
        stats.n_accepted += 1
        stats.last_step = h
        t1 = t_stop if lands else t + h
        jump_here = lands and t_stop in jumps
        f1 = step.k[-1] if (tableau.fsal and not jump_here) else None
        while i_out < n_out and (times[i_out] - t1) * direction <= 0:
            tau = times[i_out]
            if tau == t1:
                ys.append(step.y1)
            elif tableau.dense is not None:
                ys.append(continuous_extension(y, step.k, h, tableau.dense, (tau - t) / h))
            else:
                if f1 is None:
                    # Hermite needs f(t1, y1); at a jump take the limit from inside the step.
                    t_f1 = math.nextafter(t1, -direction * math.inf) if jump_here else t1
                    f1 = problem(t_f1, step.y1)
                ys.append(hermite(y, step.y1, f0, f1, h, (tau - t) / h))
            i_out += 1
        if jump_here:
            f1, t_f0 = None, math.nextafter(t1, direction * math.inf)
        else:
            t_f0 = t1
        if lands:
            i_stop += 1
        t, y, f0 = t1, step.y1, f1
        prev_ratio, after_reject = ratio, False
        dt = dt_next
    stats.next_step = dt
    return ys


def _fixed_grid(opts: FixedOptions, times: list[float], func, y0, t) -> list[float]:
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    if opts.step_size is not None:
        ratio = abs(t_end - t0) / opts.step_size
        n = round(ratio)
        # A span that is a whole number of steps up to rounding gets exactly that many steps,
        # rather than one extra step of length ~1e-16.
        n = n if n >= 1 and abs(ratio - n) <= 1e-9 * max(ratio, 1.0) else math.ceil(ratio)
        return [t0 + direction * i * opts.step_size for i in range(n)] + [t_end]
    if opts.grid_constructor is not None:
        grid = opts.grid_constructor(func, y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
            raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least two times.")
        g = grid.detach().to("cpu", torch.float64).tolist()
        tol = 1e-12 * max(1.0, abs(t0), abs(t_end))
        if abs(g[0] - t0) > tol or abs(g[-1] - t_end) > tol:
            raise ValueError(
                f"options['grid_constructor'] must return a grid from t[0] = {t0!r} to t[-1] = {t_end!r}; "
                f"got one from {g[0]!r} to {g[-1]!r}."
            )
        g[0], g[-1] = t0, t_end
        if any((b - a) * direction <= 0 for a, b in zip(g, g[1:])):
            raise ValueError("options['grid_constructor'] must return a strictly monotonic grid in the direction of t.")
        return g
    return list(times)


# --------------------------------------------------------------------------------------------
# Public API.


def solve(
    func: Callable[[torch.Tensor, TensorOrTuple], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str = "dopri5",
    options: dict | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and report the solution at the times ``t``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of the state's dtype, ``y`` and the
            result have ``y0``'s shape (or are tuples like ``y0``). A ``torch.nn.Module`` works.
        y0: initial state: a floating-point tensor of any shape, or a tuple of tensors sharing
            dtype and device.
        t: 1-D floating tensor of output times, strictly increasing or strictly decreasing
            (decreasing integrates backwards). ``t[0]`` is the initial time.
        rtol, atol: relative and absolute tolerances of adaptive methods: numbers, tensors
            broadcastable to the state, or for tuple states a tuple with one entry per tensor.
        method: a name in ``neuralode.METHODS`` (default ``"dopri5"``).
        options: method options; see :class:`AdaptiveOptions` and :class:`FixedOptions`.

    Returns:
        A :class:`Solution` whose ``ys`` has shape ``(len(t), *y0.shape)`` (a tuple for tuple
        states) and whose ``stats`` count evaluations and steps.

    Raises:
        TypeError, ValueError: for malformed arguments; the message names the argument.
        SolverError: when the solve fails (step size underflow, non-finite derivative, too many
            steps), reporting ``t``, ``dt`` and the step count.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    is_tuple = isinstance(y0, tuple)
    parts = _check_state(y0)
    times = _check_times(t)
    tableau = get_tableau(method)
    rtol_v = _check_tolerance("rtol", rtol, parts, is_tuple)
    atol_v = _check_tolerance("atol", atol, parts, is_tuple)
    opts = _parse_options(options, tableau)
    stats = SolverStats()

    if len(times) == 1:
        ys = tuple(p.unsqueeze(0) for p in parts)
        return Solution(t, ys if is_tuple else ys[0], stats, tableau.name)

    problem = _Problem(func, parts, is_tuple, stats)
    needs_t_grad = t.requires_grad
    y_start = problem.flatten(parts)
    if needs_t_grad:
        # d y(t_i) / d t_0 = -J(t_i, t_0) f(t_0, y0): shifting y0 by -(t0 - t0.detach()) f0 makes
        # autograd produce exactly that through the solve, while the value of y0 is unchanged.
        with torch.no_grad():
            f_start = problem.first_call(times[0], y_start)
        y_solve = y_start - (t[0] - t[0].detach()).to(y_start.dtype) * f_start
        f0 = problem(times[0], y_solve)
    else:
        y_solve = y_start
        f0 = problem.first_call(times[0], y_start)

    if isinstance(opts, FixedOptions):
        grid = _fixed_grid(opts, times, func, y0, t)
        problem.cache_times([g0 + ci * (g1 - g0) for g0, g1 in zip(grid, grid[1:]) for ci in tableau.c])
        ys, out_steps = _integrate_fixed(problem, y_solve, f0, times, grid, tableau, opts, stats)
        stacked = torch.stack(ys)
        finite = torch.isfinite(stacked.reshape(len(times), -1)).all(dim=1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            h, n = out_steps[i - 1]
            raise SolverError(
                "Non-finite state", times[i], h, n,
                "The solution blew up or func returned NaN/inf; try a smaller step_size or check func.",
            )
    else:
        error = _ErrorNorm(problem, rtol_v, atol_v, opts.norm)
        ys = _integrate_adaptive(problem, y_solve, f0, times, tableau, opts, error, stats)
        stacked = torch.stack(ys)

    if needs_t_grad:
        # y(t_0) does not depend on t_0; d y(t_i) / d t_i = f(t_i, y(t_i)) for i >= 1.
        with torch.no_grad():
            f_out = torch.stack([problem(ti, yi) for ti, yi in zip(times[1:], ys[1:])])
        dt_out = (t[1:] - t[1:].detach()).to(stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
        stacked = torch.cat([y_start.unsqueeze(0), stacked[1:] + dt_out * f_out])

    if is_tuple:
        n = len(times)
        ys_out = tuple(c.reshape(n, *s) for c, s in zip(torch.split(stacked, problem.sizes, dim=1), problem.shapes))
    else:
        ys_out = stacked
    return Solution(t, ys_out, stats, tableau.name)


def odeint(
    func: Callable[[torch.Tensor, TensorOrTuple], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str = "dopri5",
    options: dict | None = None,
) -> TensorOrTuple:
    """Solve an ODE and return the states at the times ``t``: a drop-in for torchdiffeq's ``odeint``.

    Same arguments, errors and defaults as :func:`solve`; returns ``solve(...).ys``, a tensor of
    shape ``(len(t), *y0.shape)`` or a tuple of them. Differentiable with respect to ``y0``,
    ``t`` and any parameters ``func`` uses, by backpropagation through the solver.
    """
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options).ys
