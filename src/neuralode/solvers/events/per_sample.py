"""Events per sample: each sample's sign changes located on its own step, at its own time.

In per-sample mode an :class:`~neuralode.solvers.events.core.Event`'s ``fn(t, y)`` is called on the
whole batch (``t`` of shape ``(B,)``, ``y`` like the state) and returns a tensor whose first
dimension is the batch: ``g[i]`` is sample ``i``'s event function (any trailing shape; every
element is watched). An element of sample ``i`` crosses over an accepted step when it goes from
``g < 0`` to ``g >= 0`` (rising) or from ``g > 0`` to ``g <= 0`` (falling), as in the host clock.
An element that is zero at a step's start (a sample that starts on a root, or a function that is
zero on a stretch of time) has no sign there: when it is nonzero at the step's end it takes the
sign it has where it first leaves zero (bisection on the interpolant, vectorised over the batch)
and only crossings after that point count, the host clock's rule (:mod:`~neuralode.solvers.events.core`).

Locating. For the samples with a crossing, ``θ_i`` in ``(0, 1]`` is found by bisection on the
step's interpolant, vectorised over the batch: ``c_i(θ)`` = "some watched element of sample ``i``
has crossed between the step's start and ``θ``"; the bracket ``[lo_i, hi_i]`` with ``c_i(hi_i)``
true is halved 60 times (below float64's resolution of ``θ``), each halving one call of the
event functions and one interpolant pass over the batch, no evaluation of ``func``. The step of
each such sample is cut at ``hi_i`` (the state handed on has crossed); every event cuts (a
record-only event costs its sample one more step but is never missed inside a step).

Then, per sample: the event acted on is the first (by index) that fired and resets or ends,
else the first that fired; it is recorded (:class:`PerSampleEventRecord`, with ``sample``); a reset
that fires together with another event that resets or ends is refused, as are resets accumulating
at a finite time (the host clock's rules, :mod:`~neuralode.solvers.loop`); a
terminal event ends that sample only (its later output times are NaN); a reset replaces its
state; leaving the root does not fire again: as in the host clock, they take the sign ``g`` has a moment ``δ`` later and
roots within ``δ`` of the restart are not searched.

Gradients through event times (implicit function theorem, per sample). Sample ``i``'s event
time ``t*_i`` solves ``g_i(t*_i, y_i(t*_i)) = 0`` for the element of ``g_i`` that fired, and ``g_i``
depends on row ``i`` of the state only, so the theorem holds row by row::

    dt*_i = -(∂g_i/∂y_i · dy_i + ∂g_i/∂θ dθ) / ġ_i,     ġ_i = ∂g_i/∂t + ∂g_i/∂y_i · f_i(t*_i, y_i)

with everything evaluated at sample ``i``'s own event. One call of the event function on the
batch, with the located times and states, gives every row's ``g_i`` with its graph; one
backward pass of ``Σ_i g_i`` gives every row's ``∂g_i/∂t`` and ``∂g_i/∂y_i`` (rows do not mix).
As in the host clock (:func:`~neuralode.solvers.events.core.attach_event_gradient`) the gradients
enter by value-preserving corrections: ``t*_i = t_i + δ_i`` and ``y*_i = y_i + f_i δ_i`` with
``δ_i = -(g_i - stop_grad(g_i)) / ġ_i`` (value 0), and a reset's output is shifted by
``-f_i(t*_i, y_new,i) δ_i``, since the sample restarts at a time that depends on the parameters.
So backprop through a per-sample solve differentiates event times, the states at events and
everything after them. This needs, as every per-sample event function, that row ``i`` of ``g``
depends on row ``i`` of the state alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solution import EventRecord
from .core import Event, check_event_value, crossing, event_time_shift, leave_zero, non_finite_event

BISECTIONS = 60


@dataclass(frozen=True)
class PerSampleEventRecord(EventRecord):
    """An :class:`EventRecord` of a per-sample solve: ``t`` and ``y`` are sample ``sample``'s
    (``y`` without the batch dimension), ``element`` indexes ``fn``'s output after the batch one."""

    sample: int = -1


class PerSampleEvents:
    """The events of a per-sample solve on the ``(B, N)`` layout."""

    def __init__(self, events: tuple[Event, ...], unflatten, flatten, dtype):
        self.events, self.unflatten, self.flatten, self.dtype = events, unflatten, flatten, dtype
        self.shapes: list[torch.Size] | None = None
        self.calls = 0  # evaluations of the event functions (each on the whole batch)

    def values(self, t: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Each event's ``(B, E_k)`` values at ``(t (B,), y (B, N))``."""
        out = []
        self.calls += 1
        tt = t.to(self.dtype)
        shapes = []
        for k, e in enumerate(self.events):
            with torch.no_grad():
                g = e.fn(tt, self.unflatten(y))
            check_event_value(k, g)
            if g.dim() == 0 or g.shape[0] != y.shape[0]:
                raise ValueError(
                    f"events[{k}].fn(t, y) must return a tensor whose first dimension is the batch ({y.shape[0]}) "
                    f"with options['per_sample']; got shape {tuple(g.shape)}."
                )
            shapes.append(g.shape[1:])  # the shape of one sample's values (element indices unravel into it)
            g = g.detach().reshape(g.shape[0], -1).double()
            finite = torch.isfinite(g).all(1)
            if not bool(finite.all()):
                i = int((~finite).nonzero()[0, 0])
                raise non_finite_event(k, f"t={float(t[i]):.8g} in sample {i}")
            out.append(g)
        if self.shapes is None:
            self.shapes = shapes
        return out

    def crossed(
        self,
        g0: list[torch.Tensor],
        g1: list[torch.Tensor],
        theta: torch.Tensor | None = None,
        starts: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Per event, the ``(B, E_k)`` elements crossing in the event's direction; with ``starts``
        (see :meth:`leave_zero`) only those watched by ``theta (B,)``."""
        out = []
        for e, a, b in zip(self.events, g0, g1):
            out.append(crossing(e.direction, a, b))
        if starts is None:
            return out
        assert theta is not None  # the callers pass starts with the theta that watches them
        watch = theta[:, None]
        return [c & (starts[k] <= watch) for k, c in enumerate(out)]

    def any_crossed(self, g0, g1, theta=None, starts=None) -> torch.Tensor:
        return torch.stack([c.any(1) for c in self.crossed(g0, g1, theta, starts)]).any(0)

    def any_idle(self, g0: list[torch.Tensor], g1: list[torch.Tensor]) -> torch.Tensor:
        """``(B,)``: rows with an element zero at the step's start (no sign) and nonzero at its end."""
        return torch.stack([((a == 0) & (b != 0)).any(1) for a, b in zip(g0, g1)]).any(0)

    def leave_zero(self, g0, g1, idle: torch.Tensor, t: torch.Tensor, h: torch.Tensor, interp, theta0: torch.Tensor):
        """The signs a step starts from, for elements that have none at its start: ``(g0, starts)``.

        An element of a row in ``idle`` that is zero at the step's start and nonzero at its end
        takes the sign it has where it first leaves zero (bisection from ``theta0`` on the
        interpolant, vectorised over the rows, one element column at a time) and is watched from
        there (``starts[k] (B, E_k)``, 0 for the others): the host clock's rule
        (:mod:`~neuralode.solvers.events.core`). Both lists are returned unchanged (``starts`` None)
        when no row is ``idle``."""
        if not bool(idle.any()):
            return g0, None
        rows = torch.arange(len(t), device=t.device)
        g_out, starts = [], []
        for k, (a, b) in enumerate(zip(g0, g1)):
            a, start = a.clone(), torch.zeros_like(a)
            columns = ((a == 0) & (b != 0) & idle[:, None]).any(0).nonzero().flatten().tolist()
            for e in columns:
                m = idle & (a[:, e] == 0) & (b[:, e] != 0)

                def g_at(mid: torch.Tensor, k: int = k, e: int = e) -> torch.Tensor:
                    return self.values(t + mid * h, interp.at_rows(rows, mid))[k][:, e]

                hi, g_hi = leave_zero(g_at, theta0.clone(), b[:, e], m, iters=BISECTIONS)
                a[:, e] = torch.where(m, g_hi, a[:, e])
                start[:, e] = torch.where(m, hi, start[:, e])
            g_out.append(a)
            starts.append(start)
        return g_out, starts

    def locate(
        self,
        g0,
        mask: torch.Tensor,
        t: torch.Tensor,
        h: torch.Tensor,
        interp,
        y1: torch.Tensor,
        theta0: torch.Tensor,
        starts: list[torch.Tensor] | None = None,
    ):
        """Bisection for the samples in ``mask``: ``(θ (B,), y at θ (B, N), fired per event)``.

        The search starts at ``theta0 (B,)`` (roots closer to the step's start are not searched);
        ``θ`` is 1 outside ``mask``; ``fired[k]`` marks the elements of event ``k`` that have
        crossed by ``θ`` (those with ``starts``, from :meth:`leave_zero`, once watched)."""
        rows = torch.arange(len(t), device=t.device)
        lo = theta0.clone()
        hi = torch.ones_like(t)
        for _ in range(BISECTIONS):
            mid = torch.where(mask, 0.5 * (lo + hi), hi)
            y_mid = interp.at_rows(rows, mid)
            c = self.any_crossed(g0, self.values(t + mid * h, y_mid), mid, starts)
            hi = torch.where(mask & c, mid, hi)
            lo = torch.where(mask & ~c, mid, lo)
        y_hi = torch.where((hi == 1.0)[:, None], y1, interp.at_rows(rows, hi))
        fired = self.crossed(g0, self.values(t + hi * h, y_hi), hi, starts)
        return hi, y_hi, fired

    def attach_gradient(
        self,
        fb,
        cross: torch.Tensor,
        which: torch.Tensor,
        fired: list[torch.Tensor],
        t_e: torch.Tensor,
        y_e: torch.Tensor,
        rows: torch.Tensor,
    ):
        """The implicit-function gradients of the event times of the rows in ``cross``.

        Args:
            fb: the batch function (``(B,)`` float64 times, ``(B, N)`` states).
            cross: ``(B,)`` rows whose step was cut at an event.
            which: ``(B,)`` index of the event that fired in each such row.
            fired: per event, the ``(B, E_k)`` elements that crossed; the first one of event
                ``which[i]`` is row ``i``'s root.
            t_e: ``(B,)`` float64 located times; ``y_e``: ``(B, N)`` states there, with their graph.
            rows: the original sample of each row (for error messages).

        Returns:
            ``None`` when nothing to differentiate (no graph, or ``g`` depends on nothing that
            requires grad); else ``(δ, f_e)``: ``δ (B,)`` in the state's dtype, value 0 and the
            gradient ``dt*_i`` on the rows in ``cross`` (0 elsewhere), and ``f_e = f(t_e, y_e)``
            without a graph.

        Raises:
            ValueError: an event of some sample is tangential (``ġ_i = 0``): its time has no
                derivative.
        """
        if not torch.is_grad_enabled():
            return None

        def selected(t_in, y_in):
            """Each row's fired element of its event, ``(B,)`` (0 on rows without an event)."""
            out = torch.zeros(len(t_e), dtype=y_in.dtype, device=y_in.device)
            for k, e in enumerate(self.events):
                m = cross & (which == k)
                if not bool(m.any()):
                    continue
                g = e.fn(t_in, self.unflatten(y_in)).reshape(len(t_e), -1)
                element = torch.argmax(fired[k].long(), 1)
                out = torch.where(m, g.gather(1, element[:, None]).squeeze(1).to(out.dtype), out)
            return out

        shift = event_time_shift(selected, t_e.to(self.dtype), y_e, lambda: fb(t_e, y_e.detach()))
        if shift is None:
            return None
        delta, gdot, f_e = shift
        bad = cross & ~(torch.isfinite(gdot) & (gdot != 0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"The event of sample {int(rows[i])} at t={float(t_e[i]):.8g} is tangential (d/dt g(t, y(t)) = "
                f"{float(gdot[i])!r}), so its time has no derivative; make the event function cross zero "
                "transversally, or detach what it depends on (an event function that is zero on a stretch of time "
                "is flat where the zeros begin)."
            )
        return torch.where(cross, delta, torch.zeros_like(delta)), f_e
