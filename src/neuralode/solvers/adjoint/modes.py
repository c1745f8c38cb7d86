"""Gradient modes by name: ``solve(..., adjoint=...)``, ``odeint(..., adjoint=...)`` and the choice
``adjoint="auto"`` makes.

One keyword names how a solve is differentiated, as diffrax's ``diffeqsolve(..., adjoint=...)`` does; each name
is a call neuralode had already, run with its defaults:

==================  ====================================================================================
``"backprop"``      backpropagation through the solver (the default; torchdiffeq's ``odeint``)
``"checkpoint"``    ``options={"checkpoint": True}``: each step's input kept, its stages recomputed
``"checkpoints"``   ``options={"checkpoints": "auto"}``: recursive checkpointing, ``2 + ⌈log₂ n⌉`` states
``"backsolve"``     ``solve_adjoint(...)`` re-solving ``y`` backwards (``adjoint_options={"interpolate": False}``)
``"interpolating"`` ``solve_adjoint(...)`` reading ``y`` from the forward interpolants (``{"interpolate": True}``)
``"gauss"``         ``solve_adjoint(...)`` with ``adjoint_options={"quadrature": True}`` (the Gauss adjoint)
``"auto"``          one of the six, chosen before the solve by :func:`choose_adjoint`
==================  ====================================================================================

The adjoints' backward solves take the forward method, tolerances and options (``solve_adjoint``'s defaults);
:func:`~neuralode.solvers.adjoint.backsolve.solve_adjoint` sets them apart.

**The rule of** ``"auto"`` (:func:`choose_adjoint`). From the problem's size, before the solve: ``b``, the
bytes one evaluation of ``func`` saves for backward (measured once per ``func``, state layout and device, by
``torch.autograd.graph.saved_tensors_hooks`` around one evaluation at ``(t[0], y0)``; the parameters and buffers
of a module are left out: every evaluation shares them); ``n``, the expected accepted steps, and ``e``, the
evaluations per step (a fixed-grid explicit Runge-Kutta method: the grid's steps and the tableau's stages;
otherwise the counts of the previous ``"auto"`` solve of the same ``func``, method, state layout, span and
tolerances, or on the first one a probe: the same solve without autograd, one forward solve's time, once;
``b`` and the counts are kept per ``func`` object, so a ``lambda`` made anew at each call is measured and probed
at each call); ``m`` and ``P``, the elements of the state and of the parameters that require grad; ``S`` the state's bytes;
``T`` the output times; and the budget ``B``. Backpropagation holds ``n e b`` (plus an ``m × m`` Jacobian per
step for an implicit method). Then, in order:

1. ``"backprop"`` when ``n e b <= B``: it is the fastest mode (the adjoints and checkpointing took 1.7 to 2.9
   times its time on the rk4 MLPs of ``docs/how-to/choose-gradient-mode.md``).
2. ``func`` not a ``torch.nn.Module``: ``"checkpoint"`` (the adjoints and ``"checkpoints"`` differentiate
   ``func.parameters()``, and a plain function's closed-over tensors would get no gradient).
3. An implicit method (a stiff problem; the backsolve adjoint is unstable there), without events,
   ``per_sample`` or a complex state: ``"gauss"`` when ``P >= 10 m`` (its backward Jacobian is ``m × m``
   against the interpolating adjoint's ``(m + P) × (m + P)``: 2.6 times faster at ``P = 576``, ``m = 4``; a tie
   at ``P = m = 3``), else ``"interpolating"``. With events or ``per_sample``: ``"checkpoint"``.
4. An explicit Runge-Kutta method without events, ``per_sample``, ``compile`` or ``dense``: ``"checkpoints"``
   when its ``2 K S + e b`` fits (``K = 2 + ⌈log₂ n⌉`` checkpoints of a state and a derivative, and one
   step's graph while it is differentiated): backprop's own gradient.
5. Otherwise ``"backsolve"``: memory independent of the steps (``T S`` for the outputs, one evaluation's graph
   and the backward stages), the continuous gradient to the tolerance. When not even that fits, it is still the
   smallest, and the reason says so.

Under ``torch.no_grad()`` nothing is differentiated: ``"auto"`` solves as ``"backprop"`` would (no graph is
recorded), without measuring or probing.

The estimates, in bytes, with ``s = ⌈e⌉`` stages, ``w`` bytes per element and ``D = n (s + 1) S`` the forward
interpolants (each step's stages and ends):

* ``"backprop"``: ``n e b`` (``+ n m² w`` for an implicit method);
* ``"checkpoint"``: ``n S + e b`` (each step's input state; one step's graph while it is recomputed);
* ``"checkpoints"``: ``2 K S + e b``;
* ``"backsolve"``: ``T S + b + (s + 2)(2 S + P w)`` (the outputs; one evaluation's graph during a vector-Jacobian
  product; the backward stages of ``(y, a, gθ)``);
* ``"interpolating"``: ``D + T S + b + (s + 2)(S + P w)`` (``+ (m + P)² w``, its Jacobian, for an implicit method);
* ``"gauss"``: ``D + T S + b + (s + 2) S + P w`` (``+ m² w`` for an implicit method).

The choice is returned as an :class:`~neuralode.solvers.solution.AdjointChoice` (mode, reason, the estimates)
and kept in ``Solution.adjoint_choice``. The estimates count what autograd keeps, not the allocator's
overhead or the working memory of the forward pass; a budget below the free memory leaves room for both.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
import weakref
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch

from ..api import DEFAULT_METHOD, GRADIENT_MODES, Func, odeint, options_dict, solve
from ..events.core import Event, check_events
from ..methods.base import Method
from ..methods.registry import resolve
from ..options import (
    FixedOptions,
    Options,
    _check_state,
    _check_times,
    _fixed_grid,
    _parse_options,
    _type_name,
    suggest,
    time_dtype,
)
from ..solution import AdjointChoice, Solution, TensorOrTuple
from .backsolve import _solve_adjoint, odeint_adjoint, solve_adjoint
from .recursive import auto_budget

__all__ = ["GAUSS_RATIO", "MEMORY_FRACTION", "MODES", "choose_adjoint", "default_memory_budget", "eval_bytes"]

# Every value adjoint= takes, and those that handle torchdiffeq's event mode (odeint(..., event_fn=...)).
MODES = ("backprop", "checkpoint", "checkpoints", "backsolve", "interpolating", "gauss", "auto")
EVENT_MODES = ("backprop", "checkpoint", "backsolve")
ADJOINTS = ("backsolve", "interpolating", "gauss")
# The default memory_budget: this fraction of the free memory of the state's device. Half leaves the rest to
# the forward pass's working memory, the allocator and whatever else the program holds.
MEMORY_FRACTION = 0.5
# "auto" takes the Gauss adjoint over the interpolating one for an implicit method when P >= GAUSS_RATIO * m
# (measured: 2.6x faster at P = 144 m, a tie at P = m; the gap grows with P / m).
GAUSS_RATIO = 10
# Free memory assumed where neither /proc/meminfo nor sysconf tells it (a CPU state on an unusual platform).
FALLBACK_FREE_BYTES = 4 << 30

# Bytes one evaluation saves for backward, per func: (state shapes, dtype, device) -> bytes.
_EVAL_BYTES: weakref.WeakKeyDictionary[Any, dict[tuple, int]] = weakref.WeakKeyDictionary()
# The steps of the last "auto" solve, per func: (method, layout, span, tolerances) -> (accepted steps, nfe).
_STEPS: weakref.WeakKeyDictionary[Any, dict[tuple, tuple[int, int]]] = weakref.WeakKeyDictionary()


def check_mode(adjoint: Any, allowed: Sequence[str] = MODES, where: str = "") -> str:
    """``adjoint`` checked against ``allowed``: a ``TypeError`` for a non-string, a ``ValueError`` listing the
    modes for an unknown name."""
    if not isinstance(adjoint, str):
        raise TypeError(f"adjoint must be one of {', '.join(map(repr, allowed))}{where}; got {_type_name(adjoint)}.")
    if adjoint not in allowed:
        hint = ""
        if adjoint in MODES:
            hint = f" {adjoint!r} does not handle this event mode; use solve(..., events=[Event(...)]) for it."
        else:
            hint = suggest(adjoint, allowed)
        raise ValueError(f"adjoint must be one of {', '.join(map(repr, allowed))}{where}; got {adjoint!r}.{hint}")
    return adjoint


def check_budget(memory_budget: Any) -> int | None:
    """``memory_budget``: ``None`` (the default budget) or a finite number of bytes ``>= 1``, as an int."""
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real):
        raise TypeError(
            f"memory_budget must be a number of bytes >= 1 (e.g. 2 * 2**30 for 2 GiB) or None (half the free "
            f"memory of the state's device); got {_type_name(memory_budget)}."
        )
    if not math.isfinite(memory_budget) or memory_budget < 1:
        raise ValueError(
            f"memory_budget must be a finite number of bytes >= 1 (e.g. 2 * 2**30 for 2 GiB) or None (half the "
            f"free memory of the state's device); got {memory_budget!r}."
        )
    return int(float(memory_budget))


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on CUDA; on the CPU (and other devices) the
    ``MemAvailable`` line of ``/proc/meminfo`` (Linux), else ``sysconf``'s available pages."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return FALLBACK_FREE_BYTES


def default_memory_budget(device: torch.device) -> int:
    """``adjoint="auto"``'s budget when none is given: ``MEMORY_FRACTION`` (half) of ``device``'s free memory."""
    return max(1, int(MEMORY_FRACTION * free_memory(device)))


def _nbytes(parts: Sequence[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in parts)


def eval_bytes(func: Func, y0: TensorOrTuple, t0: float | torch.Tensor = 0.0) -> int:
    """Bytes one evaluation ``func(t0, y0)`` saves for backward, measured once per ``func``, state layout and device.

    ``t0``: a time, or the ``(B,)`` times a per-sample solve passes ``func``.

    ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd saves during the evaluation (``y0``
    taking the place of a stage's state, as a fresh tensor that requires grad); a storage saved several times
    counts once, and the parameters and buffers of a ``torch.nn.Module`` not at all (every evaluation shares
    them; a plain function's closed-over weights count once). ``func`` is evaluated once (a counter in it counts one
    evaluation more).
    """
    return _eval_bytes(func, y0, _check_state(y0), t0)


def _eval_bytes(func: Func, y0: TensorOrTuple, parts: tuple[torch.Tensor, ...], t0: float | torch.Tensor) -> int:
    """:func:`eval_bytes` with the state's ``parts`` checked already."""
    key = (tuple(tuple(p.shape) for p in parts), parts[0].dtype, str(parts[0].device))
    try:
        cache = _EVAL_BYTES.setdefault(func, {})
    except TypeError:  # not weakly referable: measured each time
        cache = {}
    if key in cache:
        return cache[key]
    shared = set()
    if isinstance(func, torch.nn.Module):
        shared = {x.untyped_storage().data_ptr() for x in itertools.chain(func.parameters(), func.buffers())}
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        size = x.numel() * x.element_size()
        try:
            ptr = x.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # a tensor without a storage of its own (a wrapper subclass)
            ptr = id(x)
        if ptr not in shared:
            saved[ptr] = max(saved.get(ptr, 0), size)
        return x

    leaves = tuple(p.detach().requires_grad_(p.is_floating_point() or p.is_complex()) for p in parts)
    y = leaves if isinstance(y0, tuple) else leaves[0]
    tt = torch.as_tensor(t0).detach().to(dtype=time_dtype(parts[0].dtype), device=parts[0].device)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        func(tt, y)
    cache[key] = sum(saved.values())
    return cache[key]


def _tolerance_key(tol: Any) -> Any:
    return float(tol) if isinstance(tol, numbers.Real) else type(tol).__name__


def _steps_key(method: Method, parts: Sequence[torch.Tensor], t: torch.Tensor, rtol: Any, atol: Any) -> tuple:
    span = (float(t.reshape(-1)[0]), float(t.reshape(-1)[-1])) if t.dim() == 1 else tuple(t.shape)
    layout = (tuple(tuple(p.shape) for p in parts), parts[0].dtype, str(parts[0].device))
    return (method.name, layout, span, len(t.reshape(-1)), _tolerance_key(rtol), _tolerance_key(atol))


def _counts(sol: Solution) -> tuple[int, int]:
    """(accepted steps, evaluations) of a forward solve; the largest sample's of a per-sample one."""
    n, nfe = sol.stats.n_accepted, sol.stats.nfe
    return int(n.max()) if isinstance(n, torch.Tensor) else n, int(nfe.max()) if isinstance(nfe, torch.Tensor) else nfe


def _remember(func: Any, key: tuple, sol: Solution) -> None:
    try:
        _STEPS.setdefault(func, {})[key] = _counts(sol)
    except TypeError:  # not weakly referable: nothing remembered
        pass


def expected_steps(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Any,
    atol: Any,
    method: Method,
    options: dict | None,
    events: tuple[Event, ...],
    parts: tuple[torch.Tensor, ...],
) -> tuple[int, float, str]:
    """``(n, e, source)``: the expected accepted steps, evaluations per step, and where they come from
    (``"grid"``, ``"previous solve"`` or ``"probe"``; the module docstring says when each is used). ``parts``: the
    state's tensors, checked."""
    per_sample = isinstance(options, dict) and options.get("per_sample", False) is not False
    tableau = method.explicit_tableau
    if not method.capabilities.adaptive and tableau is not None and not per_sample:
        times = _check_times(t)
        fixed = _parse_options(options, method)
        assert isinstance(fixed, FixedOptions)  # the options type of every fixed-step method derives from it
        grid = _fixed_grid(fixed, times, func, y0, t)
        return len(grid) - 1, float(len(tableau.c)), "grid"
    key = _steps_key(method, parts, t, rtol, atol)
    try:
        known = _STEPS.get(func, {}).get(key)
    except TypeError:
        known = None
    source = "previous solve"
    if known is None:
        with torch.no_grad():
            sol = solve(func, y0, t.detach(), rtol=rtol, atol=atol, method=method.name, options=options, events=events)
        known = _counts(sol)
        _remember(func, key, sol)
        source = "probe"
    n, nfe = known
    return n, nfe / max(n, 1), source


def _fmt(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def choose_adjoint(
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | tuple = 1e-7,
    atol: float | torch.Tensor | tuple = 1e-9,
    method: str | None = DEFAULT_METHOD,
    options: dict | Options | None = None,
    events: Sequence[Event] | Event | None = None,
    memory_budget: float | None = None,
) -> AdjointChoice:
    """The gradient mode ``solve(func, y0, t, ..., adjoint="auto")`` runs, and why (the rule in the module docstring).

    Args:
        func, y0, t, rtol, atol, method, options, events: as for :func:`~neuralode.solvers.api.solve`.
        memory_budget: bytes the backward pass may hold (a number >= 1); default :data:`MEMORY_FRACTION` (half)
            of the free memory of ``y0``'s device (``torch.cuda.mem_get_info`` on CUDA, ``/proc/meminfo`` on the CPU).

    Returns:
        An :class:`~neuralode.solvers.solution.AdjointChoice`: ``mode``, ``reason``, ``estimated_bytes`` of each
        mode compared, and the figures behind them (``steps``, ``eval_bytes``, ``params``, ``state``).

    Cost: one evaluation of ``func`` the first time for a ``func`` and state layout; for an adaptive or implicit
    method, one solve without autograd the first time for a ``func``, method, layout, span and tolerances
    (later ones read the counts of the last ``"auto"`` solve).
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    budget = check_budget(memory_budget)
    parts = _check_state(y0)
    m_method = resolve(method)
    options = options_dict(options, m_method)
    event_list = check_events(events)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a tensor of output times; got {_type_name(t)}.")
    if budget is None:
        budget = default_memory_budget(parts[0].device)
    per_sample = isinstance(options, dict) and options.get("per_sample", False) is not False
    module = isinstance(func, torch.nn.Module)
    m = sum(p.numel() for p in parts)
    P = 0
    if module:
        P = sum(
            p.numel() for p in {id(p): p for p in cast(torch.nn.Module, func).parameters() if p.requires_grad}.values()
        )
    S = _nbytes(parts)
    w = parts[0].element_size()
    T = t.shape[-1]
    b = _eval_bytes(func, y0, parts, t[:, 0] if per_sample and t.dim() == 2 else float(t.reshape(-1)[0]))
    n, e, source = expected_steps(
        func, y0, t, rtol=rtol, atol=atol, method=m_method, options=options, events=event_list, parts=parts
    )
    implicit = m_method.capabilities.implicit
    stages = math.ceil(e)
    dense = n * (stages + 1) * S
    est = {
        "backprop": int(n * e * b + (n * m * m * w if implicit else 0)),
        "checkpoint": int(n * S + e * b),
        "checkpoints": int(2 * auto_budget(max(n, 1)) * S + e * b),
        "backsolve": int(T * S + b + (stages + 2) * (2 * S + P * w)),
        "interpolating": int(dense + T * S + b + (stages + 2) * (S + P * w) + ((m + P) ** 2 * w if implicit else 0)),
        "gauss": int(dense + T * S + b + (stages + 2) * S + P * w + (m * m * w if implicit else 0)),
    }
    figures = f"{n} steps ({source}) × {e:.3g} evaluations × {_fmt(b)} saved each"

    def pick(mode: str, reason: str) -> AdjointChoice:
        return AdjointChoice(mode, reason, est, budget, (n, source), b, P, m)

    if est["backprop"] <= budget:
        return pick(
            "backprop",
            f"backprop holds {_fmt(est['backprop'])} ({figures}), within the budget of "
            f"{_fmt(budget)}; it is the fastest mode.",
        )
    over = f"backprop would hold {_fmt(est['backprop'])} ({figures}), over the budget of {_fmt(budget)}"
    complex_state = any(p.is_complex() for p in parts)
    if not module:
        return pick(
            "checkpoint",
            f"{over}; func is not a torch.nn.Module, so the adjoints and 'checkpoints' (which "
            f"differentiate func.parameters()) do not apply: per-step checkpointing holds {_fmt(est['checkpoint'])}.",
        )
    if implicit:
        if event_list or per_sample or complex_state:
            why = "events" if event_list else "per_sample" if per_sample else "a complex state"
            return pick(
                "checkpoint",
                f"{over}; an implicit method with {why}: the interpolating adjoints refuse it "
                "and the backsolve adjoint is unstable on stiff problems, so per-step checkpointing "
                f"({_fmt(est['checkpoint'])}).",
            )
        if P >= GAUSS_RATIO * m:
            return pick(
                "gauss",
                f"{over}; an implicit method with P = {P} >= {GAUSS_RATIO} m = {GAUSS_RATIO * m}: the "
                f"Gauss adjoint's backward Jacobian is m × m, not (m + P) × (m + P) "
                f"({_fmt(est['gauss'])}).",
            )
        return pick(
            "interpolating",
            f"{over}; an implicit method with P = {P} < {GAUSS_RATIO} m = {GAUSS_RATIO * m}: the "
            f"interpolating adjoint ({_fmt(est['interpolating'])}).",
        )
    recursive_ok = (
        m_method.explicit_tableau is not None
        and not event_list
        and not per_sample
        and not (options or {}).get("compile")
        and not (options or {}).get("dense")
    )
    if recursive_ok and est["checkpoints"] <= budget:
        return pick(
            "checkpoints",
            f"{over}; recursive checkpointing holds {_fmt(est['checkpoints'])} "
            f"({auto_budget(max(n, 1))} checkpoints) and gives backprop's gradient.",
        )
    tail = "" if est["backsolve"] <= budget else "; it exceeds the budget too, but no mode holds less"
    return pick("backsolve", f"{over}; the backsolve adjoint holds {_fmt(est['backsolve'])} whatever the steps{tail}.")


def _refuse_mode_options(mode: str, options: dict | None) -> None:
    """``options['checkpoint']``/``['checkpoints']`` choose a gradient mode too: refused beside ``adjoint=``."""
    for key, off in (("checkpoint", False), ("checkpoints", None)):
        if isinstance(options, dict) and options.get(key, off) not in (off, None):
            raise ValueError(
                f"options[{key!r}] and adjoint={mode!r} both choose how the solve is differentiated; give one "
                "(adjoint='checkpoint' is options={'checkpoint': True}, adjoint='checkpoints' is "
                "options={'checkpoints': 'auto'})."
            )


def _require_module(func: Any, mode: str) -> None:
    if not isinstance(func, torch.nn.Module):
        raise ValueError(
            f"adjoint={mode!r} differentiates func.parameters(), so func must be a torch.nn.Module; got "
            f"{_type_name(func)}. For a plain function call solve_adjoint(..., adjoint_params=(...)), or use "
            "adjoint='backprop' or 'checkpoint'."
        )


def _with(options: dict | None, key: str, value: Any) -> dict:
    return {**(options or {}), key: value}


def _run_mode(
    mode: str, func: Func, y0: TensorOrTuple, t: torch.Tensor, *, rtol, atol, method, options: dict | None, events
) -> Solution:
    """The solve differentiated by ``mode`` (a name, not ``"auto"``)."""
    kw: dict[str, Any] = dict(rtol=rtol, atol=atol, method=method, events=events)
    if mode == "backprop":
        return solve(func, y0, t, options=options, **kw)
    if mode == "checkpoint":
        return solve(func, y0, t, options=_with(options, "checkpoint", True), **kw)
    if mode == "checkpoints":
        return solve(func, y0, t, options=_with(options, "checkpoints", "auto"), **kw)
    _require_module(func, mode)
    if mode != "backsolve" and check_events(events):
        raise ValueError(
            f"adjoint={mode!r} reads y(t) from the forward interpolants, which jump at events; use "
            "adjoint='backsolve' (or 'backprop', 'checkpoint') with events."
        )
    if isinstance(options, dict) and options.get("per_sample", False) is not False:
        if mode == "backsolve":  # the per-sample adjoint re-solves y backwards: a backsolve adjoint
            return solve_adjoint(func, y0, t, options=options, **kw)
        raise ValueError(
            f"adjoint={mode!r} does not support options['per_sample'] (the per-sample adjoint re-solves y "
            "backwards); use adjoint='backsolve' or 'backprop'."
        )
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    _check_state(y0)
    return _solve_adjoint(
        func,
        y0,
        t,
        _check_times(t),
        adjoint_rtol=None,
        adjoint_atol=None,
        adjoint_method=None,
        adjoint_options=None,
        adjoint_params=None,
        options=options,
        mode=cast(Literal["backsolve", "interpolating", "gauss"], mode),
        rtol=rtol,
        atol=atol,
        method=method,
        events=check_events(events),
    )


def solve_with_mode(
    adjoint: Any,
    memory_budget: Any,
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol,
    atol,
    method,
    options,
    events,
) -> Solution:
    """``solve(..., adjoint=adjoint, memory_budget=memory_budget)`` for every call but the default one."""
    mode = check_mode(adjoint)
    budget = check_budget(memory_budget)
    if mode == "backprop":
        return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, events=events)
    options = options_dict(options, method)
    _refuse_mode_options(mode, options)
    if mode == "auto" and not torch.is_grad_enabled():
        # Nothing is recorded, so nothing is differentiated: no measurement, no probe.
        choice = AdjointChoice("backprop", "autograd is not recording (torch.no_grad()): no gradient to take.")
    elif mode == "auto":
        choice = choose_adjoint(
            func, y0, t, rtol=rtol, atol=atol, method=method, options=options, events=events, memory_budget=budget
        )
    else:
        choice = AdjointChoice(mode, f"adjoint={mode!r} was asked for.")
    sol = _run_mode(choice.mode, func, y0, t, rtol=rtol, atol=atol, method=method, options=options, events=events)
    if mode == "auto" and choice.steps is not None and choice.steps[1] != "grid":
        parts = y0 if isinstance(y0, tuple) else (y0,)  # checked by the solve
        _remember(func, _steps_key(resolve(method), parts, t, rtol, atol), sol)
    return dataclasses.replace(sol, adjoint_choice=choice)


def odeint_event_with_mode(
    adjoint: Any,
    memory_budget: Any,
    func: Func,
    y0: TensorOrTuple,
    t: torch.Tensor,
    event_fn,
    *,
    rtol,
    atol,
    method,
    options,
):
    """``odeint(..., event_fn=event_fn, adjoint=adjoint)``: torchdiffeq's event mode, by backpropagation, per-step
    checkpointing or the backsolve adjoint (that of ``odeint_adjoint(..., event_fn=...)``)."""
    mode = check_mode(adjoint, EVENT_MODES, " with event_fn")
    check_budget(memory_budget)
    options = options_dict(options, method)
    kw: dict[str, Any] = dict(rtol=rtol, atol=atol, method=method, event_fn=event_fn)
    if mode == "backprop":
        return odeint(func, y0, t, options=options, **kw)
    _refuse_mode_options(mode, options)
    if mode == "checkpoint":
        return odeint(func, y0, t, options=_with(options, "checkpoint", True), **kw)
    _require_module(func, mode)
    return odeint_adjoint(func, y0, t, options=options, **kw)


GRADIENT_MODES.solve = solve_with_mode
GRADIENT_MODES.odeint_event = odeint_event_with_mode
