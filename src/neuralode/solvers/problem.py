"""The user's right-hand side as the loop sees it: float time in, one flat tensor, counted calls.

:class:`_Problem` adapts ``func(t, y)`` once per solve: time is a Python float (float64) inside
the loop and becomes a 0-dim tensor of the state's dtype only when ``func`` is called; tuple
states are flattened into one vector, so the loop, the steppers, the interpolants and the event
handling all see a single tensor. The error norm that turns an error estimate into the
controller's error ratio is :class:`~neuralode.solvers.control.norms._ErrorNorm`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from array import array
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import torch

from .options import _check_func, _type_name, time_dtype
from .solution import BackwardRecord, SolverStats, TensorOrTuple

_ARRAY_CODES = {torch.float32: "f", torch.float64: "d"}  # array typecodes of the CPU time dtypes


class Perturb(Enum):
    """Which side of ``t`` an evaluation of ``func`` is meant for (torchdiffeq's ``Perturb``).

    With ``options={"perturb": True}``, a ``func`` that takes a ``perturb`` keyword receives one
    of these on every call: ``NEXT`` for the first stage of a step (evaluated one unit of the time
    dtype after its start), ``PREV`` for the stages at its end (one unit before), ``NONE``
    otherwise, so a right-hand side with a discontinuity at a grid point can pick its side.
    """

    NONE = 0
    PREV = 1
    NEXT = 2


_PERTURB = {0: Perturb.NONE, 1: Perturb.NEXT, -1: Perturb.PREV}

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_CALLBACK_NAMES = tuple(name + "_adjoint" for name in CALLBACK_NAMES)


def step_callbacks_called(method, per_sample: bool = False) -> tuple[tuple[str, ...], str]:
    """``(names, why)``: the step callbacks a solve with ``method`` (a
    :class:`~neuralode.solvers.methods.base.Method`) calls, and why it calls no others.

    An adaptive method calls all three; a fixed-grid method accepts every step and calls only
    ``callback_step`` (as in torchdiffeq 0.2.5); a method with its own driver (``scipy_solver``, whose
    ``solve_ivp`` takes its steps itself) and ``options['per_sample']`` call none (``method`` is not read)."""
    if per_sample:
        return (), "options['per_sample'] calls no step callbacks"
    if method.capabilities.own_driver:
        return (
            (),
            f"method {method.name!r} runs its own driver, which takes its steps itself and calls no step callbacks",
        )
    if method.capabilities.adaptive:
        return CALLBACK_NAMES, ""
    return CALLBACK_NAMES[:1], "a fixed-grid method accepts every step and calls only the callback before each step"


def adjoint_step_callbacks(func: Callable, method) -> list[tuple[str, Callable]]:
    """``(name, callback)``: ``func``'s ``_adjoint`` step callbacks that the backward solve with ``method``
    calls, under the names the backward dynamics carry them (``callback_step`` for ``callback_step_adjoint``);
    the others are left off (:func:`check_step_callbacks` warns about them at the adjoint's forward call)."""
    called, _ = step_callbacks_called(method)
    pairs = [
        (name, getattr(func, adjoint_name, None)) for name, adjoint_name in zip(CALLBACK_NAMES, ADJOINT_CALLBACK_NAMES)
    ]
    return [(name, callback) for name, callback in pairs if callback is not None and name in called]


def check_step_callbacks(
    func: Callable, method, per_sample: bool = False, adjoint: bool = False
) -> tuple[Callable | None, ...]:
    """Check the step callbacks ``func`` defines (its ``_adjoint`` ones with ``adjoint``) against the method.

    torchdiffeq 0.2.5 warns (``UserWarning``) when ``func`` defines callbacks the chosen solver never calls;
    so does this, naming them, the method and why. A callback that will be called must take
    ``(t0, y0, dt)``: one that is not callable, or whose signature cannot bind three positional arguments,
    raises a ``TypeError`` before the solve (torchdiffeq's would fail at its first call, mid-solve).

    Returns:
        The callbacks the solve calls, in the order of ``CALLBACK_NAMES`` (``None`` where there is none or the
        method never calls it), for :class:`_Problem`: the attribute look-ups are made once per solve (on an
        ``nn.Module`` a missing attribute is reported by its ``__getattr__`` raising, which is slow).

    Raises:
        TypeError: for a callback that the method calls and that cannot be called as ``(t0, y0, dt)``.
    """
    called, why = step_callbacks_called(method, per_sample)
    names = ADJOINT_CALLBACK_NAMES if adjoint else CALLBACK_NAMES
    unused = []
    found: list[Callable | None] = []
    for loop_name, name in zip(CALLBACK_NAMES, names):
        callback = getattr(func, name, None)
        found.append(callback if loop_name in called else None)
        if callback is None:
            continue
        if loop_name not in called:
            unused.append(name)
            continue
        if not callable(callback):
            raise TypeError(f"func.{name} must be callable as {name}(t0, y0, dt); got {_type_name(callback)}.")
        try:
            signature = inspect.signature(callback)
        except (TypeError, ValueError):  # no signature to read (some builtins): its call will tell
            continue
        try:
            signature.bind(None, None, None)
        except TypeError:
            raise TypeError(
                f"func.{name} must accept three positional arguments (t0, y0, dt); its signature is {signature}. "
                f"Define it as {name}(t0, y0, dt) (def {name}(self, t0, y0, dt) on a module): t0 and dt are "
                "0-dim tensors, y0 the state at the step's start."
            ) from None
    if unused:
        listed = ", ".join(f"func.{name}" for name in unused)
        who = f"adjoint_method {method.name!r} (the backward solve)" if adjoint else f"Method {method.name!r}"
        warnings.warn(
            f"{who} does not call {listed}: {why}"
            + (f" ({names[0]}). " if called else ". ")
            + ("It is" if len(unused) == 1 else "They are")
            + " ignored.",
            UserWarning,
            stacklevel=2,
        )
    return tuple(found)


def changed_in_place(name: str, t: Any) -> ValueError:
    """The error for a user function that changed its input state in place.

    The solvers hand ``func`` their own state tensors (the state at a step's start, a stage's
    input), so ``y.mul_(2)`` inside ``func`` corrupts the solution silently, even its value at
    ``t[0]`` (torchdiffeq behaves the same; scipy copies). It is detected by the tensor's version
    counter, which every in-place operation on a tensor or a view of it increments: two integer
    reads per evaluation, against a copy of the state per evaluation to protect it instead."""
    when = f" at t={float(t):.8g}" if t is not None else ""
    return ValueError(
        f"{name} changed its input y in place{when} (an in-place operation such as y.mul_(2), y += 1 or y[0] = 0); "
        f"the solver's state must not be modified. Return a new tensor instead (return y * 2, not y.mul_(2)), "
        "or modify a copy (z = y.clone())."
    )


def watches_versions(y: torch.Tensor) -> bool:
    """Whether ``y``'s version counter can be read: not for inference tensors (``torch.inference_mode``)."""
    return not (torch.is_inference_mode_enabled() or y.is_inference())


class _Problem:
    """Adapts a user ``func`` to the loop: float time in, counted evaluations, tuple flattening."""

    def __init__(
        self,
        func: Callable,
        parts: tuple[torch.Tensor, ...],
        is_tuple: bool,
        stats: SolverStats,
        callbacks: tuple[Callable | None, ...] | None = None,
    ):
        self.func = func
        self.parts = parts
        self.is_tuple = is_tuple
        self.stats = stats
        self.dtype = parts[0].dtype
        self.device = parts[0].device
        self.shapes = [tuple(p.shape) for p in parts]  # plain ints: a compiled run lifts them as such
        self.sizes = [p.numel() for p in parts]
        self.times: dict[float, torch.Tensor] = {}
        self.t_dtype = time_dtype(self.dtype)  # the dtype of the time func receives
        self.direction = 1.0  # of integration; set by the solver
        self.pass_perturb = False  # call func(t, y, perturb=Perturb...) (options['perturb'])
        self.plain = not is_tuple  # func(t, y) on the flat state as it is; set again by first_call
        # Forward-mode derivatives are carried through the solve (dual tensors or a torch.func transform):
        # the implicit methods' Jacobians then keep their tangents. Set by the solver.
        self.forward_mode = False
        # torchdiffeq's step callbacks, methods of func: (callback_step, callback_accept_step,
        # callback_reject_step), each None when func has none (given: as check_step_callbacks found them).
        self.callbacks = tuple(getattr(func, name, None) for name in CALLBACK_NAMES) if callbacks is None else callbacks
        self.watch = True  # check func's input for in-place changes (set by first_call)
        # The backward passes of the solve's own (checkpointing): set by the mode that runs one, its counters
        # returned as Solution.adjoint_stats; None for backpropagation.
        self.backward: BackwardRecord | None = None

    def cache_times(self, values: list[float]) -> None:
        """Create the time tensors of known evaluation times at once (one tensor, unbound),
        rather than one small tensor per evaluation; fixed grids know all their stage times."""
        unique = list(dict.fromkeys(values))
        self.times = dict(zip(unique, torch.tensor(unique, dtype=self.t_dtype, device=self.device).unbind()))

    def step_times(self, t: float, h: float, c: tuple[float, ...]) -> None:
        """Create the time tensors of one step's stages ``t + c_i h`` at once, for the evaluations
        the step is about to make (adaptive steps, whose times are not known in advance): one
        tensor from a packed array, unbound, instead of one ``torch.full`` per stage. The floats
        are formed as :func:`~neuralode.solvers.methods.stepper.rk_step` forms them, so every lookup hits."""
        values = [t + ci * h for ci in c]
        code = _ARRAY_CODES.get(self.t_dtype)
        if code is not None and self.device.type == "cpu":
            tensor = torch.frombuffer(array(code, values), dtype=self.t_dtype)
        else:
            tensor = torch.tensor(values, dtype=self.t_dtype, device=self.device)
        self.times = dict(zip(values, tensor.unbind()))

    def flatten(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if not self.is_tuple:
            return parts[0]
        return torch.cat([p.reshape(-1) for p in parts])

    def unflatten(self, y: torch.Tensor) -> TensorOrTuple:
        if not self.is_tuple:
            return y
        return tuple(p.view(s) for p, s in zip(torch.split(y, self.sizes), self.shapes))

    def flat_func(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``func`` on the flat state, uncounted and unchecked: what a compiled graph traces (its evaluations are
        counted by the graph's caller)."""
        func = self.func
        if not self.is_tuple:
            return func

        def raw(tt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.flatten(func(tt, self.unflatten(y)))

        return raw

    def call_back(self, callback: Callable, t: float, y: torch.Tensor, h: float) -> None:
        """A step callback as torchdiffeq calls it: ``(t0, y0, dt)`` with tensors, ``dt = |h|``."""
        callback(self.time(t), self.unflatten(y), self.time(abs(h)))

    def check_like_state(
        self, out: object, name: str, what: str = "the new state", finite: bool = True
    ) -> torch.Tensor:
        """A user function's output that must look like the state (``func``'s derivative, an
        event's reset), checked and flattened. ``name`` is the call (``"func(t, y)"``); ``what``
        names the output in the messages."""
        owner = name.removesuffix("(t, y)")
        outs = out if self.is_tuple and isinstance(out, (tuple, list)) else (out,)
        if self.is_tuple and not isinstance(out, (tuple, list)):
            raise TypeError(
                f"{owner} must return a tuple of {len(self.parts)} tensors for a tuple y0; got {_type_name(out)}."
            )
        if len(outs) != len(self.parts):
            raise ValueError(f"{owner} must return {len(self.parts)} tensors, one per tensor of y0; got {len(outs)}.")
        for i, (o, p) in enumerate(zip(outs, self.parts)):
            label = name if not self.is_tuple else f"{name}[{i}]"
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"{label} must return a torch.Tensor; got {_type_name(o)}.")
            if o.shape != p.shape:
                raise ValueError(
                    f"{label} returned shape {tuple(o.shape)} but the state has shape {tuple(p.shape)}; "
                    f"{what} must have the same shape as y."
                )
            if o.dtype != p.dtype:
                raise TypeError(
                    f"{label} returned dtype {o.dtype} but the state has dtype {p.dtype}; {what} must have the state's dtype."
                )
            if finite and not bool(torch.isfinite(o).all()):
                raise ValueError(f"{label} returned NaN or infinite values; {what} must be finite.")
        return self.flatten(outs)

    def time(self, t: float, side: int = 0) -> torch.Tensor:
        """``t`` as the 0-dim tensor ``func`` receives; ``side`` +1 / -1 moves it one unit of
        that dtype forwards / backwards in the direction of integration."""
        tt = self.times.get(t) if side == 0 else None
        if tt is None:
            tt = torch.full((), t, dtype=self.t_dtype, device=self.device)
            if side:
                tt = torch.nextafter(
                    tt, torch.full((), side * self.direction * math.inf, dtype=self.t_dtype, device=self.device)
                )
        return tt

    def __call__(self, t: float, y: torch.Tensor, side: int = 0) -> torch.Tensor:
        self.stats.nfe += 1
        tt: torch.Tensor | None  # a tensor on every path below: an unknown time is made
        if side:
            tt = self.time(t, side)
        else:
            tt = self.times.get(t)
            if tt is None:
                tt = torch.full((), t, dtype=self.t_dtype, device=self.device)
        # Every call reads y's version counter before and after (see changed_in_place).
        if self.plain:  # the common case, kept short
            if self.watch:
                version = y._version
                out = self.func(tt, y)
                if y._version != version:
                    raise changed_in_place("func(t, y)", t)
                return out
            return self.func(tt, y)
        version = y._version if self.watch else 0
        if self.pass_perturb:
            out = self.func(tt, self.unflatten(y), perturb=_PERTURB[side])
        else:
            out = self.func(tt, self.unflatten(y))
        if self.watch and y._version != version:
            raise changed_in_place("func(t, y)", t)
        if self.is_tuple:
            return torch.cat([o.reshape(-1) for o in out])
        return out

    def at_time(self, tt: torch.Tensor, y: torch.Tensor, side: int = 0) -> torch.Tensor:
        """``func`` at the time ``tt`` given as a tensor, one that may carry a graph to the caller's
        ``t`` (the evaluations that differentiate the solution with respect to its times)."""
        self.stats.nfe += 1
        if self.pass_perturb:
            out = self.func(tt, self.unflatten(y), perturb=_PERTURB[side])
        else:
            out = self.func(tt, self.unflatten(y))
        if self.is_tuple:
            return torch.cat([o.reshape(-1) for o in out])
        return out

    def first_call(self, t: float, y: torch.Tensor, side: int = 0) -> torch.Tensor:
        """The first evaluation, with the output checked against the state."""
        self.stats.nfe += 1
        self.plain = not (self.is_tuple or self.pass_perturb)
        self.watch = watches_versions(y)
        # func receives a copy at its first call: a func that changes its input in place is caught
        # here before it has changed the caller's y0 (a tuple state is a fresh flat tensor already).
        probe = y.clone() if (self.watch and not self.is_tuple) else y
        version = probe._version if self.watch else 0
        try:
            if self.pass_perturb:
                out = self.func(self.time(t, side), self.unflatten(probe), perturb=_PERTURB[side])
            else:
                out = self.func(self.time(t, side), self.unflatten(probe))
        except TypeError:
            # Inspect the signature only when the call failed: the check costs nothing otherwise.
            _check_func(self.func)
            raise
        if self.watch and probe._version != version:
            raise changed_in_place("func(t, y)", t)
        return self.check_like_state(out, "func(t, y)", what="dy/dt", finite=False)
