"""Events: sign changes of user functions of ``(t, y)``, located on the step's dense output.

An :class:`Event` watches ``g(t, y)`` (a tensor; every element is watched). After each accepted
step from ``t`` to ``t1`` the loop compares the signs of ``g`` at both ends. An element crosses
when it goes from ``g < 0`` to ``g >= 0`` (rising) or from ``g > 0`` to ``g <= 0`` (falling).

Where a step starts on a root (an element exactly zero at ``t0``, or the elements that just
fired, which sit on their root after the event and its reset), the element takes the sign it has
a moment later, ``g(t + δ, y + δ f)`` with ``δ`` a thousand times the root tolerance below, and
roots within ``δ`` of the step's start are not searched. So an event whose function is zero at
the start does not fire there, an event does not fire twice at one crossing, and a ball that
bounces and comes down again within one step (a long step over a polynomial trajectory is
exact) is still caught on the way down: treating the start as "no sign" would miss it.

Exact zeros. An element's event is the first moment in the step where it reaches zero from its
sign or passes through it: a function that is zero on a stretch of time (torchdiffeq's
``learn_physics`` example returns zeros after the last data time, to stop there) has its event
where the zeros begin, unless it changed sign earlier in the step; a zero at the step's end is the
root only when nothing comes before it. An element still zero a moment after the step's start (a
stretch of zeros) has no sign there; when it is nonzero at the step's end it takes the sign it has
where it first leaves zero (found by bisection) and only roots after that point count: the rule
at a step's start, applied where the zeros end. Comparing signs at the step's ends sees nothing of
a touch or of two crossings inside one step, nor of an element that has no sign at the step's
start and is zero again at its end (torchdiffeq and scipy's ``solve_ivp`` compare signs likewise).

Locating the root. The crossing elements ``J`` of one event define
``psi(theta) = min_{j in J} s_j g_j(t + theta h, y(theta))`` with ``s_j = sign g_j(t)``, so
``psi(0) > 0 >= psi(1)``; its first root is the first crossing of any of them (torchdiffeq's
``combine_event_functions`` takes the same minimum). ``y(theta)`` is the step's interpolant, so
locating costs no evaluation of ``func``. The root finder keeps a bracket ``[a, b]`` with
``psi(a) > 0 >= psi(b)`` and narrows it by the Illinois variant of regula falsi (Dowell & Jarratt
1971; superlinear, order about 1.44) with a bisection every fourth iteration, which bounds the
work by four times bisection's even on noisy functions. An exact zero at ``b`` does not end the
search (psi may have reached zero earlier): the next trial is just before ``b``, which settles an
isolated zero at once, and bisection finds where a stretch of zeros begins. It stops when the
bracket is as narrow as the time resolution of the state's dtype
(``4 eps max(|t|, |t1|) + eps |h|``) and returns the bracket's end *after* the crossing, so the
state handed on has already crossed. torchdiffeq instead bisects a fixed number of times to
within ``atol``.

Gradients through event times (implicit function theorem). At the root ``g_j(t*, y(t*)) = 0``,
so for any parameter ``θ`` (of ``func``, of ``g``, or ``y0``)::

    dt*/dθ = -(∂g_j/∂y · dy/dθ + ∂g_j/∂θ) / ġ,    ġ = ∂g_j/∂t + ∂g_j/∂y · f(t*, y(t*))

and the state at the event moves with it: ``dy*/dθ = dy/dθ + f dt*/dθ``. Both are built into
the autograd graph by value-preserving corrections (:func:`attach_event_gradient`), so backprop
through the solve, the adjoint, and resets downstream all see them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..options import _accepts, _describe, _type_name
from ..solution import TensorOrTuple

_MAX_ROOT_ITERS = 300


@dataclass(frozen=True)
class Event:
    """An event to watch during a solve.

    Attributes:
        fn: ``fn(t, y) -> tensor``; ``t`` is a 0-dim tensor of the state's dtype and ``y`` the
            state (a tuple for tuple states). Any element's sign change is an event.
        direction: ``+1`` only rising crossings (negative to non-negative), ``-1`` only falling
            ones, ``0`` (default) both.
        terminal: the solve ends at the event (default); otherwise the event is recorded in
            :attr:`Solution.events` and the solve goes on.
        reset: ``reset(t, y) -> y_new`` replaces the state at the event (a bounce, a dose, a
            switch); must return the state's structure, shapes and dtype. The step is cut at the
            event and the method restarts there (no stage reused from before the reset).

    Raises:
        TypeError, ValueError: for a non-callable ``fn``/``reset`` or one that cannot be called
            as ``(t, y)``, ``direction`` outside {-1, 0, 1} or a non-bool ``terminal``.
    """

    fn: Callable[[torch.Tensor, TensorOrTuple], torch.Tensor]
    direction: int = 0
    terminal: bool = True
    reset: Callable[[torch.Tensor, TensorOrTuple], TensorOrTuple] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Event fn must be callable as fn(t, y) -> tensor; got {_type_name(self.fn)}.")
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(
                f"Event direction must be -1 (falling), 0 (either) or +1 (rising); got {self.direction!r}."
            )
        if not isinstance(self.terminal, bool):
            raise TypeError(f"Event terminal must be True or False; got {self.terminal!r}.")
        if not _accepts(self.fn, 2):
            raise TypeError(
                f"Event fn must be callable as fn(t, y) -> tensor, the time first and the state second; got "
                f"{_describe(self.fn)}. Wrap a function of the state alone as lambda t, y: g(y)."
            )
        if self.reset is not None and not callable(self.reset):
            raise TypeError(
                f"Event reset must be callable as reset(t, y) -> y_new, or None; got {_type_name(self.reset)}."
            )
        if self.reset is not None and not _accepts(self.reset, 2):
            raise TypeError(
                f"Event reset must be callable as reset(t, y) -> y_new, the time first and the state second; got "
                f"{_describe(self.reset)}. Wrap a function of the state alone as lambda t, y: r(y)."
            )

    @property
    def cuts(self) -> bool:
        """Whether the step must be cut at this event (it ends the solve or changes the state)."""
        return self.terminal or self.reset is not None


def check_events(events: object, name: str = "events") -> tuple[Event, ...]:
    """``events`` as a tuple of :class:`Event`; a bare ``Event`` is accepted as a list of one."""
    if events is None:
        return ()
    if isinstance(events, Event):
        return (events,)
    if not isinstance(events, (list, tuple)):
        raise TypeError(f"{name} must be a list of neuralode.Event; got {_type_name(events)}.")
    for i, e in enumerate(events):
        if not isinstance(e, Event):
            raise TypeError(
                f"{name}[{i}] must be a neuralode.Event (e.g. Event(fn, direction=-1)); got {_type_name(e)}."
            )
    return tuple(events)


def check_event_value(i: int, g: object) -> torch.Size:
    """The shape of ``events[i].fn``'s value ``g``, checked: a real-valued, non-empty tensor (both clocks)."""
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"events[{i}].fn(t, y) must return a torch.Tensor; got {_type_name(g)}.")
    if not (g.is_floating_point() or g.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"events[{i}].fn(t, y) must return a real-valued tensor; got dtype {g.dtype}.")
    if g.numel() == 0:
        raise ValueError(f"events[{i}].fn(t, y) returned an empty tensor; it must return at least one value.")
    return g.shape


def non_finite_event(i: int, where: str) -> ValueError:
    """The error for an event function that returned NaN or infinity (a crossing of it is undefined)."""
    return ValueError(
        f"events[{i}].fn(t, y) returned a non-finite value at {where}; "
        "an event function must be finite wherever the solution goes."
    )


def crossing(direction: float, g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
    """The elements whose event function crosses from ``g0`` to ``g1`` in ``direction``: rising, from
    ``g < 0`` to ``g >= 0`` (``direction > 0``), falling, from ``g > 0`` to ``g <= 0`` (``< 0``), or either (``0``).
    Elementwise, so the same rule serves one state and a batch of samples."""
    rising = (g0 < 0) & (g1 >= 0)
    falling = (g0 > 0) & (g1 <= 0)
    return rising if direction > 0 else falling if direction < 0 else rising | falling


def leave_zero(
    g_at: Callable[[torch.Tensor], torch.Tensor],
    lo: torch.Tensor,
    g_hi: torch.Tensor,
    watch: torch.Tensor,
    tol: torch.Tensor | None = None,
    iters: int = 60,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where elements that are zero at ``θ = lo`` first leave zero, by bisection on ``[lo, 1]``: both clocks' rule.

    One element per entry: ``g_at(θ)`` gives each entry's value at its own ``θ`` (the host clock: one element of
    one event, ``(1,)``; the per-sample clock: one element column over the rows, ``(B,)``), zero at ``lo`` and
    ``g_hi`` (nonzero) at ``θ = 1``. Only the entries in ``watch`` move. The bracket keeps ``g(lo) = 0`` and
    ``g(hi) != 0``; it is halved until it is no wider than ``tol`` where ``tol`` is given (the host clock: the
    time resolution of the state's dtype, one host read a halving), else ``iters`` times (the per-sample clock:
    60 halvings, below float64's resolution of ``θ``, without reading the device). Returns ``(hi, g(hi))``: where
    each element is watched from, and the value whose sign it takes there.
    """
    hi = torch.ones_like(lo)
    g_hi = g_hi.clone()
    n = 0
    while (n < iters) if tol is None else bool((watch & (hi - lo > tol)).any()):
        move = watch if tol is None else watch & (hi - lo > tol)
        mid = torch.where(move, 0.5 * (lo + hi), hi)
        g_mid = g_at(mid)
        zero = g_mid == 0
        lo = torch.where(move & zero, mid, lo)
        hi = torch.where(move & ~zero, mid, hi)
        g_hi = torch.where(move & ~zero, g_mid, g_hi)
        n += 1
    return hi, g_hi


def event_time_shift(
    select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t: torch.Tensor,
    y: torch.Tensor,
    rate: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The implicit-function correction of located event times, both clocks (module docstring).

    ``select(t, y)`` is the fired element's event value ``g``: 0-dim on the host clock, one per row ``(B,)`` on
    the per-sample clock (row ``i`` depending on row ``i`` of ``y`` alone). ``t`` (0-dim or ``(B,)``, in the dtype
    the event function takes) and ``y`` (the state there, with the solve's graph) are where it was located;
    ``rate()`` gives ``f_e = f(t, y)`` without a graph; it is called only when ``g`` has a graph. Returns ``None``
    when it has none (nothing to differentiate), else ``(δ, ġ, f_e)``: ``ġ = ∂g/∂t + Re <∂g/∂y, f>`` per entry,
    and ``δ = -(g - stop_grad(g)) / ġ``, value 0 and the gradient ``dt*``, divided by 1 where ``ġ`` is zero or not
    finite (a tangential event, which the caller refuses where an event fired).
    """
    g = select(t, y)
    if not g.requires_grad:
        return None
    with torch.no_grad():
        f_e = rate()
    with torch.enable_grad():
        td = t.detach().requires_grad_(True)
        yd = y.detach().requires_grad_(True)
        dg_dt, dg_dy = torch.autograd.grad(select(td, yd).sum(), (td, yd), allow_unused=True)
    # d/dt g(t, y(t)) = ∂g/∂t + Re <∂g/∂y, f>: autograd's gradient with respect to a complex y is
    # the conjugate Wirtinger one, so the real part of conj(grad) * f is the derivative along f.
    if dg_dy is None:
        gdot = torch.zeros(g.shape, dtype=td.dtype, device=y.device)
    else:
        along = torch.real(dg_dy.conj() * f_e)
        gdot = along.sum() if g.dim() == 0 else along.reshape(g.shape[0], -1).sum(1)
    if dg_dt is not None:
        gdot = gdot + dg_dt.to(gdot.dtype)
    ok = torch.isfinite(gdot) & (gdot != 0)
    return -(g - g.detach()) / torch.where(ok, gdot, torch.ones_like(gdot)), gdot, f_e


class Located:
    """One located crossing within a step: where (``theta``), which event and which element."""

    __slots__ = ("theta", "index", "element", "fired")

    def __init__(self, theta: float, index: int, element: int, fired: torch.Tensor):
        self.theta = theta
        self.index = index
        self.element = element  # flat index into the event function's output
        self.fired = fired  # bool mask of the elements that crossed by theta


class EventSet:
    """The events of one solve, as the loop uses them: values, crossings and roots.

    Args:
        events: the events.
        time: ``time(t) -> 0-dim tensor`` in the dtype ``func`` receives.
        unflatten: flat state -> the user's structure.
        stats: counters (``n_event_evals``).
        eps: machine epsilon of the state's dtype (the resolution of located event times).
    """

    def __init__(self, events: Sequence[Event], time: Callable, unflatten: Callable, stats, eps: float):
        self.events = tuple(events)
        self.time = time
        self.unflatten = unflatten
        self.stats = stats
        self.eps = eps
        self.shapes: list[torch.Size | None] = [None] * len(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def value(self, i: int, t: float, y: torch.Tensor) -> torch.Tensor:
        """``fn_i(t, y)`` flattened, without a graph; checked the first time."""
        self.stats.n_event_evals += 1
        with torch.no_grad():
            g = self.events[i].fn(self.time(t), self.unflatten(y))
        if self.shapes[i] is None:
            self.shapes[i] = check_event_value(i, g)
        return g.detach().reshape(-1)  # a view made under no_grad may still require grad

    def values(self, t: float, y: torch.Tensor) -> list[torch.Tensor]:
        """Every event function at ``(t, y)``, checked finite."""
        gs = [self.value(i, t, y) for i in range(len(self.events))]
        for i, g in enumerate(gs):
            if not bool(torch.isfinite(g).all()):
                raise non_finite_event(i, f"t={t:.8g}")
        return gs

    def guard(self, t: float, h: float) -> float:
        """The time after a step start on a root within which that root is not searched again:
        a thousand times the root finder's tolerance."""
        return 1e3 * (4.0 * self.eps * abs(t) + self.eps * abs(h))

    def start(
        self,
        t: float,
        y: torch.Tensor,
        f: Callable[[], torch.Tensor],
        direction: float,
        h: float,
        gs: list[torch.Tensor] | None = None,
        fired: tuple[int, torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], float]:
        """The event values a step starting at ``(t, y)`` compares against, and its guard.

        Elements that are zero, or that just fired (``fired = (event index, mask)``), take the
        value ``g(t + δ, y + δ f)`` a moment later (see the module docstring); ``f()`` gives
        ``f(t, y)`` and is called only when such an element exists. Returns the values and
        ``δ`` (0 when no element needed it).
        """
        if gs is None:
            gs = self.values(t, y)
        on_root = []
        for i, g in enumerate(gs):
            mask = g == 0
            if fired is not None and fired[0] == i:
                mask = mask | fired[1]
            on_root.append(mask)
        if not any(bool(m.any()) for m in on_root):
            return gs, 0.0
        delta = self.guard(t, h)
        with torch.no_grad():
            y_later = torch.add(y, f(), alpha=direction * delta)
        later = self.values(t + direction * delta, y_later)
        return [torch.where(m, gl, g) for g, gl, m in zip(gs, later, on_root)], delta

    def coincident(self, index: int, g0: list[torch.Tensor], t: float, y: torch.Tensor) -> int | None:
        """Another event that cuts steps and has crossed (or reached its root) by ``(t, y)``, where
        event ``index`` fired over a step that started with the values ``g0``; ``None`` if none.

        The loop restarts from one event's reset: another event that crossed at the same time
        would then start the next step on the far side of its root and never fire."""
        for j, event in enumerate(self.events):
            if j == index or not event.cuts:
                continue
            gj = self.value(j, t, y)
            if bool(self.crossed(j, g0[j], gj).any()) or bool(((gj == 0) & (g0[j] != 0)).any()):
                return j
        return None

    def crossed(self, i: int, g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
        """Bool mask of the elements of event ``i`` that cross over a step, in its direction."""
        return crossing(self.events[i].direction, g0, g1)

    def locate(
        self,
        g0: list[torch.Tensor],
        g1: list[torch.Tensor],
        t: float,
        h: float,
        interp: Callable[[list[float]], list[torch.Tensor]],
        guard: float = 0.0,
    ) -> list[Located]:
        """Every event that crosses over the step ``[t, t + h]``, located, in time order.

        ``guard``: roots within this time of ``t`` are not searched (see :meth:`start`).
        """
        found = []
        theta0 = min(guard / abs(h), 1.0)
        for i in range(len(self.events)):
            gi, starts = self._leave_zero(i, g0[i], g1[i], t, h, interp, theta0)
            mask = self.crossed(i, gi, g1[i])
            # An event that cuts the step needs only its first root; one that is only recorded
            # gets every element's crossing in the step, earliest first.
            while bool(mask.any()):
                loc = self._root(i, mask, gi, g1[i], t, h, interp, theta0, starts)
                if loc is None:
                    break
                found.append(loc)
                if self.events[i].cuts:
                    break
                mask = mask & ~loc.fired
        found.sort(key=lambda loc: loc.theta)
        return found

    def _tol(self, t: float, h: float) -> float:
        """The root finder's tolerance in ``theta``: the time resolution of the state's dtype
        over the step ``[t, t + h]``."""
        return (4.0 * self.eps * max(abs(t), abs(t + h)) + self.eps * abs(h)) / abs(h)

    def _leave_zero(
        self, i: int, g0: torch.Tensor, g1: torch.Tensor, t: float, h: float, interp, theta0: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The signs a step starts from, for elements that have none at its start.

        An element still zero a moment after the step's start (a function that is zero on an
        interval) has no sign there; when it is nonzero at the step's end it takes the sign it
        has where it first leaves zero, found by bisection, and only roots after that point are
        its own (the rule at a step's start, applied where the zero ends). Returns ``g0`` with
        those elements replaced by their value just after leaving zero, and the ``theta`` from
        which each element is watched (``None`` when every element has its sign at the start).
        """
        idle = (g0 == 0) & (g1 != 0)
        if theta0 >= 1.0 or not bool(idle.any()):
            return g0, None
        g0 = g0.clone()
        starts = torch.zeros(g0.shape, dtype=torch.float64, device=g0.device)
        dev = g0.device  # the bracket lives beside the event values it is compared with
        tol = torch.tensor([self._tol(t, h)], dtype=torch.float64, device=dev)
        on = torch.ones(1, dtype=torch.bool, device=dev)
        for j in torch.nonzero(idle).flatten().tolist():

            def g_at(theta: torch.Tensor, j: int = j) -> torch.Tensor:
                mid = float(theta)
                with torch.no_grad():
                    return self.value(i, t + mid * h, interp([mid])[0])[j : j + 1]

            lo = torch.tensor([theta0], dtype=torch.float64, device=dev)
            hi, g_hi = leave_zero(g_at, lo, g1[j : j + 1], on, tol)
            g0[j], starts[j] = g_hi[0], hi[0]
        return g0, starts

    def _root(
        self,
        i: int,
        mask: torch.Tensor,
        g0: torch.Tensor,
        g1: torch.Tensor,
        t: float,
        h: float,
        interp,
        theta0: float,
        starts: torch.Tensor | None = None,
    ) -> Located | None:
        (idx,) = torch.nonzero(mask, as_tuple=True)
        sign = torch.sign(g0[idx])
        # An element watched from starts[j] on (see _leave_zero) takes no part in psi before it.
        later = None if starts is None else starts[idx]

        def watched(theta: float, g: torch.Tensor) -> torch.Tensor:
            return g if later is None else torch.where(later > theta, math.inf, g)

        def psi(theta: float) -> tuple[float, torch.Tensor]:
            with torch.no_grad():
                y = interp([theta])[0]
                g = watched(theta, self.value(i, t + theta * h, y)[idx] * sign)
            return float(g.min()), g

        tol = self._tol(t, h)
        gb = g1[idx] * sign
        b, fb = 1.0, float(gb.min())  # psi(1) <= 0
        if theta0 > 0.0:
            if theta0 >= 1.0:
                return None  # the whole step lies within the guard of its start
            a, ga = theta0, psi(theta0)[1]
            fa = float(ga.min())
            if fa <= 0.0:
                b, fb, gb = a, fa, ga  # crossed again at once
                a, fa = 0.0, 1.0
        else:
            a, fa = 0.0, float(watched(0.0, g0[idx] * sign).min())  # psi(0) > 0 (+inf: none watched yet)
        side = 0
        # An exact zero at b is not yet the root: psi may have reached zero earlier (a function
        # that is zero on a whole interval, or a sign change before it). The root is where psi
        # first leaves psi > 0, so the search goes on; its first trial is b - tol, which settles an
        # isolated zero (a regula falsi that lands on it, a step that ends on it) at once.
        probe = fb == 0.0
        for it in range(_MAX_ROOT_ITERS):
            if b - a <= tol or b <= theta0:
                break
            # Regula falsi needs fb < 0: with fb = 0 its point is b itself (or, rounded, next to it).
            secant = not probe and fb != 0.0 and it % 4 != 3 and fa != fb and fa != math.inf
            if probe:
                c = b - tol
            elif secant:
                c = (a * fb - b * fa) / (fb - fa)
                if not (a < c < b):
                    c, secant = 0.5 * (a + b), False
            else:
                c = 0.5 * (a + b)
            fc, gc = psi(c)
            if fc > 0:
                a, fa = c, fc
                if side == 1:
                    fb *= 0.5  # Illinois: b kept twice in a row, halve its weight
                side = 1
            else:
                b, fb, gb = c, fc, gc
                if side == -1:
                    fa *= 0.5
                side = -1
            # A zero that regula falsi lands on is probed (a linear psi is met exactly); one that
            # bisection lands on lies inside a zero interval far more often than on an isolated
            # root, and probing there would only double the work of bisecting to its start.
            probe = fc == 0.0 and secant
        fired_local = gb <= 0
        element = int(idx[int(torch.argmin(gb))])
        fired = torch.zeros_like(mask)
        fired[idx[fired_local]] = True
        return Located(b, i, element, fired)


def attach_event_gradient(
    event: Event,
    time: Callable[[float], torch.Tensor],
    unflatten: Callable,
    f: Callable[[float, torch.Tensor], torch.Tensor],
    t_e: float,
    y_e: torch.Tensor,
    element: int,
    t_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The event time as a tensor and the state at it, with the implicit-function gradients.

    Args:
        event: the event that fired.
        time: float -> 0-dim time tensor of the state's dtype.
        unflatten: flat state -> the user's structure.
        f: the right-hand side on the flat state (counts its evaluations).
        t_e: the located time.
        y_e: the flat state at ``t_e`` from the step's interpolant, part of the solve's graph.
        element: the flat index of the crossing element of ``event.fn``'s output.
        t_dtype: dtype of the returned time (the dtype of the user's output times).

    Returns:
        ``(t*, y*)``: ``t*`` has the value ``t_e`` and the gradient
        ``-(∂g/∂y · dy + ∂g/∂θ) / ġ``; ``y*`` has the value ``y_e`` and the gradient
        ``dy + f dt*``. Without a graph to attach to, plain tensors.
    """
    t_const = torch.tensor(t_e, dtype=t_dtype, device=y_e.device)
    if not torch.is_grad_enabled():
        return t_const, y_e

    def select(t_in: torch.Tensor, y_in: torch.Tensor) -> torch.Tensor:
        return event.fn(t_in, unflatten(y_in)).reshape(-1)[element]

    shift = event_time_shift(select, time(t_e), y_e, lambda: f(t_e, y_e.detach()))
    if shift is None:  # g has no graph: nothing to differentiate
        return t_const, y_e
    dt_e, gdot, f_e = shift
    gdot_v = float(gdot)
    if gdot_v == 0.0 or not math.isfinite(gdot_v):
        raise ValueError(
            f"The event at t={t_e:.8g} is tangential (d/dt g(t, y(t)) = {gdot_v!r}), so its time has no "
            "derivative; make the event function cross zero transversally, or detach what it depends on. An event "
            "function that is zero on a stretch of time is flat where the zeros begin: return a tensor without a "
            "graph there (torch.zeros_like(t)), and the event time there carries no gradient."
        )
    t_star = t_const + dt_e.to(t_dtype)
    y_star = y_e + f_e * dt_e.to(y_e.dtype)
    return t_star, y_star


def unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    """The index tuple of element ``flat`` of a tensor of ``shape`` (row-major)."""
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat //= n
    return tuple(reversed(out))


def ravel(element: tuple[int, ...], shape: torch.Size) -> int:
    """The flat (row-major) index of ``element`` in a tensor of ``shape``: :func:`unravel`'s inverse."""
    flat = 0
    for i, n in zip(element, shape):
        flat = flat * n + i
    return flat


def apply_reset(
    problem, event: Event, index: int, t_e: float, t_star: torch.Tensor, y_star: torch.Tensor, side: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The state the solve restarts from after ``event``'s reset at ``t*``, and ``f`` there.

    Returns ``(y_new, f_new)``: ``y_new = reset(t*, y*)`` checked like the state, and, when ``t*``
    carries a gradient, shifted by ``-f(t*, y_new) (t* - t*.detach())`` (value unchanged), because
    the solve restarts at a time that depends on the parameters: ``y(t)`` after the event moves by
    ``-J f dt*``, as the shift of ``y0`` gives ``d/dt0``. ``f_new = f(t_e, y_new)`` (taken just after
    ``t_e`` when ``side`` is +1) has no graph; it is the next step's first stage when nothing
    differentiates through it.
    """
    # Only an event with a reset that is not terminal is applied (the loop ends at a terminal one).
    assert event.reset is not None
    y_new = problem.check_like_state(event.reset(t_star, problem.unflatten(y_star)), f"events[{index}].reset(t, y)")
    with torch.no_grad():
        f_new = problem(t_e, y_new, side)
    if t_star.requires_grad:
        y_new = y_new - f_new * (t_star - t_star.detach()).to(y_new.dtype)
    return y_new, f_new
