"""Options and input checks at the public boundary of the solvers.

Everything a user passes to :func:`~neuralode.solvers.api.solve` is checked here, once, before
the loop starts: the state, the output times, tolerances and the method's options. Errors are
``TypeError``/``ValueError`` naming the argument, the value received and how to fix it.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from .control.controller import CONTROLLERS
from .methods.adams import MAX_ITERS as ADAMS_MAX_ITERS
from .methods.adams import MAX_ORDER as ADAMS_MAX_ORDER
from .methods.adams import MIN_ORDER as ADAMS_MIN_ORDER

# What a step that fails the error test at min_step does (AdaptiveOptions.at_min_step).
AT_MIN_STEP = ("error", "accept")
BACKENDS = ("inductor", "aot_eager", "eager")  # torch.compile backends options["compile"] may name


@dataclass(frozen=True)
class AdaptiveOptions:
    """Options of adaptive methods, spelled as torchdiffeq spells them.

    Attributes:
        first_step: initial step size; by default chosen by Hairer's heuristic.
        min_step: steps are never smaller (a step landing on an output time or ``step_t`` may
            be). What happens to a step that fails the error test and cannot be made smaller is
            ``at_min_step``'s choice.
        max_step: steps are never larger.
        max_num_steps: most steps (accepted and rejected) for the whole solve.
        step_t: times to step exactly onto (e.g. where the dynamics change character).
        jump_t: discontinuities of ``func`` in time: stepped onto, and ``func`` is evaluated
            afresh just after them instead of reusing the last stage (FSAL).
        norm: ``norm(scaled_error) -> scalar`` replacing the RMS norm; receives a tensor shaped
            like ``y0``, or a tuple for tuple states.
        safety, ifactor, dfactor: step-size controller parameters (see ``controller.py``).
        controller: ``"pi"`` (default of the explicit methods), ``"i"``, ``"gustafsson"``
            (Gustafsson's predictive control as in RADAU5) or ``"pi_gustafsson"`` (PI with the
            predictive cap; the default of the stiff methods, see ``ImplicitOptions``); the
            formulas are in ``controller.py``.
        checkpoint: backpropagate with gradient checkpointing: keep only each step's input
            state for backward and recompute its stages then (memory ~ one state per step
            instead of every stage's activations, for about one extra forward pass).
        checkpoints: ``K`` (an int >= 2): backpropagate storing at most ``K`` states, whatever the
            number of steps, and recompute the rest in the backward pass (Griewank and Walther's
            revolve; the name is diffrax's ``RecursiveCheckpointAdjoint(checkpoints=K)``). Gradients are
            those of backpropagation through the same solve, to rounding. Explicit Runge-Kutta methods
            only, ``func`` a ``torch.nn.Module``; not with ``checkpoint``, ``compile``, ``per_sample``,
            ``dense``, events or forward-mode derivatives (see
            :mod:`neuralode.solvers.adjoint.recursive`).
        dense: keep every accepted step's interpolant, so that :meth:`Solution.evaluate` gives
            the solution at any time of the solved span afterwards (memory ~ the stages of
            every step).
        perturb: call ``func(t, y, perturb=neuralode.Perturb...)`` when ``func`` takes a
            ``perturb`` keyword (torchdiffeq's option; at ``jump_t`` the stages are evaluated
            on the side they belong to, with or without it).
        compile: ``True`` (or a ``torch.compile`` backend name: ``"inductor"``, the default
            when ``True``, ``"aot_eager"``, ``"eager"``) runs each Runge-Kutta step, stages and
            error estimate, as one ``torch.compile(fullgraph=True)`` graph (see
            :mod:`neuralode.solvers.methods.compiled` for when that pays).
        dtype: the dtype time is carried in, as torchdiffeq's option (``torch.float32`` for
            devices without float64, such as Apple's MPS). neuralode carries time as Python
            floats on the host, so no float64 tensor reaches the device either way; this option
            is checked and accepted for compatibility.
        stiffness: ``"error"`` (default): methods with two stages at ``c = 1`` (dopri5, tsit5,
            dopri8) watch for stiffness at no cost in evaluations and raise ``SolverError`` naming
            the stiff methods when the step is held at the stability limit (Hairer's test, see
            ``stiffness.py``) and the solve has taken 500 steps; ``"off"``: run on regardless.
        per_sample: ``True``: the first dimension of the state is a batch of independent
            samples, each with its own time, step size and error control; ``t`` may be
            ``(B, T)`` and ``func`` receives ``t`` of shape ``(B,)`` (see
            :mod:`neuralode.solvers.per_sample`). ``"compact"``: the same, and finished samples
            are dropped from the batch passed to ``func`` when fewer than half are active
            (``func`` must then accept any batch size). ``False`` (default): one clock.
        at_min_step: what a step that fails the error test at ``min_step`` does. ``"error"``
            (default): the solve stops with ``SolverError`` (t, dt, the error ratio), since no
            smaller step is allowed that could meet ``rtol``/``atol``. ``"accept"``: the step is
            accepted whatever its error, as torchdiffeq 0.2.5 always does with ``min_step``, and
            the solve warns (``RuntimeWarning``, once per solve) that its result is outside the
            tolerances there. Implicit methods whose Newton iteration fails at ``min_step`` still
            raise: an unconverged stage is not a solution of any step. Not available with
            ``per_sample``.
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
    checkpoints: int | None = None
    dense: bool = False
    perturb: bool = False
    dtype: torch.dtype | None = None
    compile: bool | str = False
    stiffness: str = "error"
    per_sample: bool | str = False
    at_min_step: str = "error"


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
        checkpoints: at most ``K`` stored states in backpropagation, as for :class:`AdaptiveOptions`.
        dense: keep every step's interpolant for :meth:`Solution.evaluate`, as for
            :class:`AdaptiveOptions`.
        perturb: as torchdiffeq's option: every step evaluates its first stage one unit of the
            time dtype after its start and its stages at the end one unit before it, so a
            ``func`` with a discontinuity at a grid point sees each side from its own step; a
            ``func`` taking a ``perturb`` keyword is told which (``neuralode.Perturb``). The
            implicit methods' Jacobians and Newton iterations, and ``interp="cubic"``'s
            ``f(t1, y1)``, are evaluated on the step's side too.
        compile: the step under ``torch.compile``, as for :class:`AdaptiveOptions`; on a fixed
            grid ``compile_steps`` steps are compiled as one graph (see
            :mod:`neuralode.solvers.fast.compiled_chunks`).
        compile_steps: with ``compile``, at most how many consecutive grid steps one compiled
            call takes (default 32; ``1``: one step per call). The chunk size is chosen to keep
            ``ceil(n / compile_steps)`` calls for ``n`` steps and pad the last chunk least. Solves with events, step callbacks,
            ``perturb``, ``dense`` or ``interp="cubic"`` take one compiled step per call.
        max_num_steps: most steps of the solve (default 1,000,000). A grid is counted before it is
            built and a longer one refused with its count (a grid is a list of its times: 10^9 steps
            would be 32 GB); an event search on a grid (no last time) stops after this many steps.

    Without ``step_size`` and ``grid_constructor`` the grid is ``t`` itself.
    """

    step_size: float | None = None
    grid_constructor: Callable[..., torch.Tensor] | None = None
    interp: str = "linear"
    checkpoint: bool = False
    checkpoints: int | None = None
    dense: bool = False
    perturb: bool = False
    compile: bool | str = False
    compile_steps: int = 32
    max_num_steps: int = 10**6


@dataclass(frozen=True)
class AdamsOptions(FixedOptions):
    """Options of the Adams methods: those of fixed-step methods, plus torchdiffeq's

    Attributes:
        max_order: the history holds at most ``max_order - 1`` derivatives, so Adams–Bashforth
            reaches order ``max_order - 1`` (default 12, the most torchdiffeq allows).
        max_iters: corrector iterations per step of ``implicit_adams`` (default 4).
    """

    max_order: int = ADAMS_MAX_ORDER
    max_iters: int = ADAMS_MAX_ITERS


# --------------------------------------------------------------------------------------------
# Checking input at the public boundary.


_HALF = (torch.float16, torch.bfloat16)


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the time tensor ``func`` receives for a state of ``dtype``: the state's own
    real dtype (as torchdiffeq), so that ``t * y`` stays in the state's dtype."""
    return {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}.get(
        dtype, dtype
    )


def error_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype error estimates and tolerances are computed in for a state of ``dtype``.

    float16 and bfloat16 states are integrated in their own dtype, but their error ratio is
    formed in float32: in float16, ``atol + rtol |y|`` underflows to 0 for the default
    ``atol = 1e-9`` (the ratio becomes inf/NaN and the step size NaN), and bfloat16's 8 bits of
    mantissa would turn the scaled error into noise, which then drives the step size. Complex
    states use their real dtype: errors are measured on magnitudes.
    """
    if dtype in _HALF:
        return torch.float32
    return time_dtype(dtype)


def check_half_tolerance(rtol: Any, dtype: torch.dtype) -> None:
    """A half-precision state cannot be solved to a relative accuracy finer than its dtype
    resolves: refuse such an ``rtol`` and say which one works."""
    if dtype not in _HALF:
        return
    loosest = 4.0 * torch.finfo(dtype).eps
    smallest = float(rtol.min()) if isinstance(rtol, torch.Tensor) else float(rtol)
    if smallest < loosest:
        raise ValueError(
            f"rtol={smallest:g} is finer than a {dtype} state can resolve (its machine epsilon is "
            f"{torch.finfo(dtype).eps:g}); use rtol >= {loosest:.3g} for {dtype}, or solve in float32."
        )


# A tolerance this many times below the machine epsilon of the state's dtype, in rtol and in atol
# alike, is refused: each step's rounding error (about eps |y|) then exceeds the error it is asked
# to keep, the controller shrinks the step without end, and the solve ends after thousands of steps
# in a misleading stiffness or step-count error (measured on dy/dt = -y, float32: rtol = atol =
# eps/100 takes 19 steps, eps/1e5 3,528, eps/1e6 over 20,000; float64 the same pattern).
RESOLUTION_FACTOR = 100.0


def check_tolerance_resolution(rtol: Any, atol: Any, dtype: torch.dtype) -> None:
    """Refuse tolerances finer than a state of ``dtype`` can resolve, naming the finest that works.

    Half-precision states: ``rtol`` below ``4 eps`` (their 11 or 8 bits leave no room below that).
    Other floating states: ``rtol`` and ``atol`` both below ``eps / 100``; ``atol`` is compared on the
    scale of 1, and a larger ``atol`` keeps the solve resolvable wherever ``|y|`` is below
    ``atol / rtol``. float32's default ``rtol = 1e-7`` lies below its epsilon (1.2e-7) and is kept,
    as torchdiffeq keeps it.
    """
    if dtype in _HALF:
        check_half_tolerance(rtol, dtype)
        return
    real = time_dtype(dtype)
    if not real.is_floating_point:
        return
    eps = torch.finfo(real).eps
    finest = eps / RESOLUTION_FACTOR

    def smallest(v: Any) -> float:
        return float(v.min()) if isinstance(v, torch.Tensor) else float(v)

    r, a = smallest(rtol), smallest(atol)
    if r < finest and a < finest:
        raise ValueError(
            f"rtol={r:g} and atol={a:g} are finer than a {dtype} state can resolve (its machine epsilon is {eps:.3g}): "
            f"every step's rounding error would exceed the tolerance and the step size would collapse. Use "
            f"rtol >= {finest:.3g} (or atol >= {finest:.3g}) for {dtype}"
            + (", or solve in float64." if real != torch.float64 else ".")
        )


def check_method_dtype(method: Any, dtype: torch.dtype) -> None:
    """Refuse a float16 or bfloat16 state for a method without ``capabilities.half``, naming the fix: the
    implicit methods solve linear systems, which torch does not do in half precision (its LU factorisation
    has no half kernels)."""
    if dtype in _HALF and not method.capabilities.half:
        raise TypeError(
            f"method={method.name!r} solves linear systems (LU factorisation), which torch does not provide for "
            f"{dtype} states; solve in float32 (y0.float()) or use an explicit method (e.g. 'dopri5')."
        )


def suggest(name: str, valid: Any) -> str:
    """`` Did you mean 'x'?`` for the closest valid name (case-insensitive), or an empty string."""
    import difflib

    valid = list(valid)
    lowered = {v.lower(): v for v in valid}
    if isinstance(name, str) and name.lower() in lowered:
        return f" Did you mean {lowered[name.lower()]!r}?"
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean {lowered[close[0]]!r}?" if close else ""


def _type_name(x: Any) -> str:
    return type(x).__name__


def _accepts(fn: Callable, n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments (True when it cannot be told)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def _accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``name`` (or ``**kwargs``)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind != p.VAR_POSITIONAL or p.kind == p.VAR_KEYWORD for p in params)


def _check_func(func: Any) -> None:
    """``func`` must be callable as ``func(t, y)``."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    if not _accepts(func, 2):
        raise TypeError(
            f"func must be callable as func(t, y) with the time first and the state second; got {_describe(func)}. "
            "Wrap a function of the state alone as lambda t, y: f(y)."
        )


def _check_tolerance_pair(rtol: Any, atol: Any) -> None:
    """Refuse tolerances that bound no error: rtol = atol = 0 (for some element) makes the
    error scale zero wherever the solution is zero, and the step size collapses."""

    if not isinstance(rtol, torch.Tensor) and not isinstance(atol, torch.Tensor):
        both, any_both = None, rtol == 0 and atol == 0
    else:

        def zero(v):
            return (v == 0) if isinstance(v, torch.Tensor) else torch.tensor(v == 0)

        both = zero(rtol) & zero(atol)
        any_both = bool(both.any())
    if any_both:
        raise ValueError(
            "rtol and atol are both 0"
            + ("" if both is None or both.dim() == 0 else " for some elements of the state")
            + ", so no error can be bounded where the solution is 0 and the step size would collapse; "
            "give a positive atol (e.g. atol=1e-9) or rtol."
        )


def _describe(fn: Callable) -> str:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        return f"{getattr(target, '__qualname__', _type_name(fn))}{inspect.signature(target)}"
    except (TypeError, ValueError):
        return _type_name(fn)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of ``x`` is finite, by one reduction in the common case.

    A sum of finite numbers is finite unless it overflows, and a NaN or an infinity in ``x`` makes
    the sum NaN or infinite, so a finite sum proves every element finite; only a non-finite sum
    (a NaN or inf in ``x``, or an overflow) takes the elementwise test. ``torch.isfinite(x).all()``
    alone is several elementwise operations and a boolean reduction, a few times the price of one
    sum on the states the solvers see (it runs on every solve's ``y0`` and every fixed-grid
    solution). One host synchronisation either way.
    """
    if x.requires_grad:
        x = x.detach()
    if not x.is_complex():
        if math.isfinite(float(x.sum())):
            return True
    return bool(torch.isfinite(x).all())


def _check_state(y0: Any, batch: bool = False) -> tuple[torch.Tensor, ...]:
    """Components of ``y0`` as a tuple, each checked to be a finite floating tensor.

    With ``batch`` (``options["per_sample"]``) every component must also have a first (batch)
    dimension, the same non-zero size ``B`` in all of them.
    """
    if isinstance(y0, torch.Tensor):
        parts = (y0,)
    elif isinstance(y0, tuple) and len(y0) > 0 and all(isinstance(p, torch.Tensor) for p in y0):
        parts = y0
    elif isinstance(y0, tuple) and any(isinstance(p, (tuple, list)) for p in y0):
        i = next(i for i, p in enumerate(y0) if isinstance(p, (tuple, list)))
        raise TypeError(
            f"y0 must be a tensor or a flat tuple of tensors; y0[{i}] is a nested {_type_name(y0[i])}. "
            "Flatten the state (e.g. y0 = (a, b, c) instead of (a, (b, c))) and have func return the same flat tuple."
        )
    else:
        raise TypeError(f"y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got {_type_name(y0)}.")
    for i, p in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(
                f"{name} must have a floating-point or complex dtype (e.g. torch.float32 or torch.float64); got {p.dtype}. "
                f"Convert it with {name}.float() or {name}.double()."
            )
        if p.device.type == "meta":
            raise ValueError(
                f"{name} is on the meta device, which holds no values; give the initial state as a real tensor "
                f"(e.g. {name}.to_empty(device='cpu') filled with values, or a tensor on the CPU or a GPU)."
            )
        if not all_finite(p):
            raise ValueError(f"{name} contains NaN or infinite values; the initial state must be finite.")
    if len(parts) > 1:
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            if p.dtype != first.dtype or p.device != first.device:
                raise TypeError(
                    f"All tensors of a tuple y0 must share dtype and device; y0[0] is {first.dtype} on {first.device} "
                    f"but y0[{i}] is {p.dtype} on {p.device}."
                )
    if batch:
        _check_batch_dim(parts, not isinstance(y0, torch.Tensor))
    return parts


def _check_batch_dim(parts: tuple[torch.Tensor, ...], is_tuple: bool) -> None:
    """Every tensor of a per-sample state has a first (batch) dimension of one non-zero size ``B``."""
    for i, p in enumerate(parts):
        name = f"y0[{i}]" if is_tuple else "y0"
        if p.dim() == 0:
            raise ValueError(
                f"options['per_sample'] needs a batch dimension: {name} must have at least one dimension "
                "(the first is the batch); got a 0-dim tensor. Use y0.reshape(1) for a single sample, or "
                "drop per_sample."
            )
    sizes = [p.shape[0] for p in parts]
    if len(set(sizes)) != 1:
        raise ValueError(
            "options['per_sample']: every tensor of a tuple y0 must share its first (batch) dimension; "
            f"got first dimensions {sizes}."
        )
    if sizes[0] == 0:
        raise ValueError("options['per_sample']: y0 has an empty batch (first dimension 0).")


def _check_times(t: Any, batch: int | None = None):
    """Output times as Python floats, checked to be 1-D, finite and strictly monotonic.

    With ``batch = B`` (``options["per_sample"]``) ``t`` may also be ``(B, T)``, row ``i`` the times of
    sample ``i``; every row strictly monotonic and all in one direction. Returns then the times as a
    float64 ``(B, T)`` tensor on ``t``'s device and the direction (+1.0 or -1.0).
    """
    shapes = "1-D" if batch is None else "(T,) or (B, T)"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a {shapes} floating-point torch.Tensor of output times; got {_type_name(t)}.")
    if not t.is_floating_point():
        raise TypeError(
            f"t must have a floating-point dtype; got {t.dtype}. Use torch.tensor([...], dtype=torch.float64)."
        )
    if t.device.type == "meta":
        raise ValueError(
            "t is on the meta device, which holds no values; give the output times as a real tensor "
            "(e.g. torch.linspace(0, 1, 10), on the CPU or the state's device)."
        )
    if batch is not None:
        return _check_batch_times(t, batch)
    if t.dim() == 2:
        raise ValueError(
            f"t must be a non-empty 1-D tensor of output times; got shape {tuple(t.shape)}. For times per sample "
            "(row i the times of sample i, a batch in y0's first dimension) pass options={'per_sample': True}."
        )
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


def _check_batch_times(t: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """:func:`_check_times` for ``options["per_sample"]``: the same rules, tested on the whole ``(B, T)``
    tensor at once (a row's index is named where ``t`` is ``(B, T)``)."""
    if t.requires_grad:
        raise ValueError(
            "options['per_sample'] does not differentiate with respect to the output times t; pass t.detach() "
            "(gradients with respect to y0 and func's parameters are unaffected)."
        )
    if t.dim() not in (1, 2) or t.numel() == 0 or t.shape[-1] == 0:
        raise ValueError(
            f"t must be a non-empty tensor of shape (T,) or (B, T) with options['per_sample']; got shape {tuple(t.shape)}."
        )
    if t.dim() == 2 and t.shape[0] != batch:
        raise ValueError(
            f"t of shape {tuple(t.shape)} gives times for {t.shape[0]} samples but y0 has a batch of {batch}; "
            f"t must be (T,) (shared) or ({batch}, T)."
        )
    times = t.detach().to(torch.float64).reshape(-1, t.shape[-1])

    def where(b: int, j: int) -> str:
        return f"t[{b}, {j}]" if t.dim() == 2 else f"t[{j}]"

    if not bool(torch.isfinite(times).all()):
        b, j = (~torch.isfinite(times)).nonzero()[0].tolist()
        raise ValueError(f"t must be finite; got {where(b, j)} = {times[b, j].item()}.")
    direction = 1.0
    if times.shape[1] > 1:
        d = times[:, 1:] - times[:, :-1]
        sign = torch.sign(d[:, :1])
        if bool((sign == 0).any()) or not bool((sign == sign[0]).all()):
            rows = torch.sign(d[:, 0]).tolist()
            raise ValueError(
                "With options['per_sample'] every row of t must run in the same direction (all increasing or "
                f"all decreasing); got directions {rows[:8]}{' ...' if len(rows) > 8 else ''} (+1 increasing, "
                "-1 decreasing, 0 repeated time). Solve forward and backward samples separately."
            )
        bad = (d * sign) <= 0
        if bool(bad.any()):
            b, j = bad.nonzero()[0].tolist()
            raise ValueError(
                "Every row of t must be strictly increasing or strictly decreasing; got "
                f"{where(b, j)} = {times[b, j].item()!r} followed by {where(b, j + 1)} = {times[b, j + 1].item()!r}."
            )
        direction = float(sign[0, 0])
    return times.expand(batch, -1).to(t.device), direction


def _check_tolerance(name: str, tol: Any, parts: tuple[torch.Tensor, ...], is_tuple: bool, batch: bool = False):
    """A tolerance as a float, or a flat tensor matching the flattened state.

    With ``batch`` (``options["per_sample"]``, the state's first dimension the batch ``B``) the tensor
    is ``(B, N)``: each component's tolerance flattened per sample and the components side by side,
    the per-sample clock's layout of the state.
    """

    def one(value: Any, part: torch.Tensor, label: str):
        if _is_number(value):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a non-negative finite number; got {value!r}.")
            return float(value)
        if isinstance(value, torch.Tensor):
            if not (bool(torch.isfinite(value).all()) and bool((value >= 0).all())):
                raise ValueError(
                    f"{label} must be non-negative and finite; got a tensor containing {value.min().item()!r}."
                )
            try:
                return torch.broadcast_to(value.to(error_dtype(part.dtype)), part.shape).to(part.device)
            except RuntimeError:
                raise ValueError(
                    f"{label} of shape {tuple(value.shape)} cannot be broadcast to the state's shape {tuple(part.shape)}."
                ) from None
        raise TypeError(f"{label} must be a float or a tensor; got {_type_name(value)}.")

    if is_tuple and isinstance(tol, (tuple, list)):
        if len(tol) != len(parts):
            raise ValueError(
                f"{name} given per tensor must have one entry per tensor of y0 ({len(parts)}); got {len(tol)}."
            )
        values = [one(v, p, f"{name}[{i}]") for i, (v, p) in enumerate(zip(tol, parts))]
    else:
        values = [one(tol, p, name) for p in parts]
    if all(isinstance(v, float) for v in values) and len(set(values)) == 1:
        return values[0]
    if not is_tuple and not batch:
        return values[0]  # already broadcast to the state's shape
    lead = (parts[0].shape[0], -1) if batch else (-1,)
    return torch.cat(
        [
            (
                v.reshape(lead)
                if isinstance(v, torch.Tensor)
                else torch.full(p.shape, v, dtype=error_dtype(p.dtype), device=p.device).reshape(lead)
            )
            for v, p in zip(values, parts)
        ],
        dim=-1,
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


def _parse_options(options: Any, method: Any) -> AdaptiveOptions | FixedOptions:
    """``options`` (a dict or ``None``) checked and parsed into ``method.options_type``, the record of the
    :class:`~neuralode.solvers.methods.base.Method` ``method``: :class:`AdaptiveOptions` or :class:`FixedOptions`
    for the explicit Runge-Kutta methods, :class:`AdamsOptions`, the implicit methods' types (which add the
    Jacobian's options). An option the method's capabilities exclude (``compile``, ``per_sample``) is refused
    naming it. A method with its own driver parses its own options."""
    if method.capabilities.own_driver:
        return method.parse_options(options)
    kind = method.options_type
    if options is None:
        return kind()
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None; got {_type_name(options)}.")
    valid = [f.name for f in fields(kind)]
    for key in options:
        if key not in valid:
            if key == "per_sample" and issubclass(kind, FixedOptions):
                raise ValueError(
                    f"options['per_sample'] works with the explicit adaptive methods (dopri5, tsit5, dopri8, bosh3, ...); "
                    f"{method.name!r} is a fixed-step method. Pick an adaptive method, or solve with one clock "
                    "(drop per_sample)."
                )
            if key == "step_size" and not issubclass(kind, FixedOptions):
                hint = (
                    " step_size fixes the step of fixed-step methods: pick one (e.g. method='rk4'), or give "
                    "first_step, the first step an adaptive method tries."
                )
            else:
                hint = suggest(key, valid)
            raise ValueError(
                f"Unknown option {key!r} for method {method.name!r}.{hint} Valid options: {', '.join(valid)}."
            )
    o = dict(options)
    for flag in ("checkpoint", "dense", "perturb"):
        if not isinstance(o.get(flag, False), bool):
            raise TypeError(f"options['{flag}'] must be True or False; got {o[flag]!r}.")
    if o.get("checkpoints") is not None:
        _check_checkpoints(o, method)
    if "compile" in o:
        comp = o["compile"]
        if not (isinstance(comp, bool) or comp in BACKENDS):
            raise ValueError(
                f"options['compile'] must be True, False or a torch.compile backend ({', '.join(BACKENDS)}); got {comp!r}."
            )
        if comp and not method.capabilities.compile:
            raise ValueError(
                f"options['compile'] compiles explicit Runge-Kutta steps; {method.name!r} is not one "
                "(a multistep or implicit method)."
            )
        if comp and o.get("checkpoint"):
            raise ValueError("options['compile'] and options['checkpoint'] cannot be combined; choose one.")
    if "max_num_steps" in o:
        m = o["max_num_steps"]
        if not (isinstance(m, int) and not isinstance(m, bool) and m > 0):
            raise ValueError(f"options['max_num_steps'] must be a positive integer; got {m!r}.")
    if issubclass(kind, FixedOptions):
        if "compile_steps" in o:
            m = o["compile_steps"]
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                raise ValueError(
                    f"options['compile_steps'] must be a positive integer (steps per compiled call); got {m!r}."
                )
        if o.get("step_size") is not None:
            o["step_size"] = _positive("step_size", o["step_size"])
        if o.get("grid_constructor") is not None:
            if not callable(o["grid_constructor"]):
                raise TypeError(
                    f"options['grid_constructor'] must be callable; got {_type_name(o['grid_constructor'])}."
                )
            if o.get("step_size") is not None:
                raise ValueError("options 'step_size' and 'grid_constructor' are mutually exclusive; give one of them.")
        interp = o.get("interp", "linear")
        if interp not in ("linear", "cubic"):
            raise ValueError(f"options['interp'] must be 'linear' or 'cubic'; got {interp!r}.")
        if kind is AdamsOptions:
            m = o.get("max_order", ADAMS_MAX_ORDER)
            if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= ADAMS_MAX_ORDER:
                raise ValueError(f"options['max_order'] must be an integer from 1 to {ADAMS_MAX_ORDER}; got {m!r}.")
            if m < ADAMS_MIN_ORDER:
                warnings.warn(
                    f"options['max_order'] = {m} is below {ADAMS_MIN_ORDER}, so {method.name} reduces to rk4_38 "
                    "(torchdiffeq's rk4), as in torchdiffeq.",
                    UserWarning,
                    stacklevel=4,
                )
            it = o.get("max_iters", ADAMS_MAX_ITERS)
            if isinstance(it, bool) or not isinstance(it, int) or it < 1:
                raise ValueError(f"options['max_iters'] must be a positive integer; got {it!r}.")
        return kind(**o)
    if o.get("first_step") is not None:
        o["first_step"] = _positive("first_step", o["first_step"])
    if "min_step" in o:
        o["min_step"] = _positive("min_step", o["min_step"], allow_zero=True)
    if "max_step" in o:
        o["max_step"] = _positive("max_step", o["max_step"], allow_inf=True)
    if o.get("at_min_step", "error") not in AT_MIN_STEP:
        raise ValueError(
            f"options['at_min_step'] must be 'error' (stop with SolverError when a step fails at min_step) or "
            f"'accept' (accept it whatever its error, as torchdiffeq does); got {o['at_min_step']!r}."
        )
    if o.get("min_step", 0.0) > o.get("max_step", math.inf):
        raise ValueError(
            f"options['min_step'] ({o['min_step']!r}) must not exceed options['max_step'] ({o['max_step']!r})."
        )
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
    if o.get("dtype") is not None and not (isinstance(o["dtype"], torch.dtype) and o["dtype"].is_floating_point):
        raise TypeError(f"options['dtype'] must be a floating torch.dtype such as torch.float32; got {o['dtype']!r}.")
    if o.get("stiffness", "error") not in ("error", "off"):
        raise ValueError(f"options['stiffness'] must be 'error' or 'off'; got {o['stiffness']!r}.")
    if not (isinstance(o.get("per_sample", False), bool) or o.get("per_sample") == "compact"):
        raise ValueError(f"options['per_sample'] must be False, True or 'compact'; got {o['per_sample']!r}.")
    if o.get("per_sample", False) is not False:
        if not method.capabilities.per_sample:
            raise ValueError(
                f"options['per_sample'] works with the explicit adaptive methods (dopri5, tsit5, dopri8, bosh3, ...); "
                f"{method.name!r} is not one. Solve with one clock, or pick an explicit method."
            )
        if o.get("compile", False):
            raise ValueError("options['per_sample'] and options['compile'] cannot be combined yet; choose one.")
        if o.get("at_min_step", "error") == "accept":
            raise ValueError(
                "options['at_min_step']='accept' is not available with options['per_sample']; lower min_step or "
                "loosen rtol/atol, or solve with one clock."
            )
    if o.get("controller", "pi") not in CONTROLLERS:
        raise ValueError(f"options['controller'] must be one of {', '.join(CONTROLLERS)}; got {o['controller']!r}.")
    return kind(**o)


def _check_checkpoints(o: dict, method: Any) -> None:
    """``options['checkpoints']``: an int >= 2, with an explicit Runge-Kutta method and none of the options
    it does not combine with (events and forward mode are refused where the solve starts)."""
    k = o["checkpoints"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(
            f"options['checkpoints'] must be an integer >= 2 (the most states stored for backpropagation); got {k!r}."
        )
    if method.explicit_tableau is None:
        raise ValueError(
            f"options['checkpoints'] works with the explicit Runge-Kutta methods (dopri5, tsit5, rk4, ...); "
            f"{method.name!r} is not one. Use options={{'checkpoint': True}} or odeint_adjoint with it."
        )
    for other in ("checkpoint", "compile", "per_sample", "dense"):
        if o.get(other):
            raise ValueError(
                f"options['checkpoints'] and options['{other}'] cannot be combined; choose one "
                "(options['checkpoints'] supports neither compile, per_sample nor dense, and replaces checkpoint)."
            )


def _fixed_grid(opts: FixedOptions, times: list[float], func, y0, t) -> list[float]:
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    if opts.step_size is not None:
        ratio = abs(t_end - t0) / opts.step_size
        n = round(ratio)
        # A span that is a whole number of steps up to rounding gets exactly that many steps,
        # rather than one extra step of length ~1e-16.
        n = n if n >= 1 and abs(ratio - n) <= 1e-9 * max(ratio, 1.0) else math.ceil(ratio)
        # Counted before it is built: a list of 10^9 times is 32 GB of Python floats.
        if n > opts.max_num_steps:
            raise ValueError(
                f"options['step_size']={opts.step_size!r} over the span {t0!r} to {t_end!r} makes a grid of {n} steps, "
                f"more than options['max_num_steps']={opts.max_num_steps}; use a larger step_size, a shorter span, an "
                "adaptive method (e.g. 'dopri5'), or raise options['max_num_steps'] if that many steps are meant."
            )
        return [t0 + direction * i * opts.step_size for i in range(n)] + [t_end]
    if opts.grid_constructor is not None:
        if not _accepts(opts.grid_constructor, 3):
            raise TypeError(
                "options['grid_constructor'] must be callable as grid_constructor(func, y0, t) -> grid "
                f"(three arguments, as in torchdiffeq); got {_describe(opts.grid_constructor)}."
            )
        grid = opts.grid_constructor(func, y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
            raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least two times.")
        if grid.numel() - 1 > opts.max_num_steps:
            raise ValueError(
                f"options['grid_constructor'] returned a grid of {grid.numel() - 1} steps, more than "
                f"options['max_num_steps']={opts.max_num_steps}; return a coarser grid or raise options['max_num_steps']."
            )
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
