"""Events per sample: each sample's sign changes located on its own step, at its own time.

In per-sample mode an :class:`~neuralode.solvers.events.Event`'s ``fn(t, y)`` is called on the
whole batch (``t`` of shape ``(B,)``, ``y`` like the state) and returns a tensor whose first
dimension is the batch: ``g[i]`` is sample ``i``'s event function (any trailing shape; every
element is watched). An element of sample ``i`` crosses over an accepted step when it goes from
``g < 0`` to ``g >= 0`` (rising) or from ``g > 0`` to ``g <= 0`` (falling), as in the joint loop.

Locating. For the samples with a crossing, ``θ_i`` in ``(0, 1]`` is found by bisection on the
step's interpolant, vectorised over the batch: ``c_i(θ)`` = "some watched element of sample ``i``
has crossed between the step's start and ``θ``"; the bracket ``[lo_i, hi_i]`` with ``c_i(hi_i)``
true is halved 60 times (below float64's resolution of ``θ``), each halving one call of the
event functions and one interpolant pass over the batch, no evaluation of ``func``. The step of
each such sample is cut at ``hi_i`` (the state handed on has crossed); every event cuts (a
record-only event costs its sample one more step but is never missed inside a step).

Then, per sample: the event is recorded (:class:`PerSampleEventRecord`, with ``sample``); a
terminal event ends that sample only (its later output times are NaN); a reset replaces its
state; leaving the root does not fire again: as in the joint loop, they take the sign ``g`` has a moment ``δ`` later and
roots within ``δ`` of the restart are not searched. Not in this mode (yet): gradients through event times (the recorded times
are constants; states carry their gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .events import Event
from .options import _type_name
from .solution import EventRecord

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
            if not isinstance(g, torch.Tensor):
                raise TypeError(f"events[{k}].fn(t, y) must return a torch.Tensor; got {_type_name(g)}.")
            if g.dim() == 0 or g.shape[0] != y.shape[0]:
                raise ValueError(
                    f"events[{k}].fn(t, y) must return a tensor whose first dimension is the batch ({y.shape[0]}) "
                    f"with options['per_sample']; got shape {tuple(g.shape)}."
                )
            shapes.append(g.shape[1:])
            out.append(g.reshape(g.shape[0], -1).double())
        if self.shapes is None:
            self.shapes = shapes
        return out

    def crossed(self, g0: list[torch.Tensor], g1: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per event, the ``(B, E_k)`` elements crossing in the event's direction."""
        out = []
        for e, a, b in zip(self.events, g0, g1):
            rising, falling = (a < 0) & (b >= 0), (a > 0) & (b <= 0)
            out.append(rising if e.direction > 0 else falling if e.direction < 0 else rising | falling)
        return out

    def any_crossed(self, g0, g1) -> torch.Tensor:
        return torch.stack([c.any(1) for c in self.crossed(g0, g1)]).any(0)

    def locate(self, g0, mask: torch.Tensor, t: torch.Tensor, h: torch.Tensor, interp, y1: torch.Tensor,
               theta0: torch.Tensor):
        """Bisection for the samples in ``mask``: ``(θ (B,), y at θ (B, N), fired per event)``.

        The search starts at ``theta0 (B,)`` (roots closer to the step's start are not searched);
        ``θ`` is 1 outside ``mask``; ``fired[k]`` marks the elements of event ``k`` that have
        crossed by ``θ``."""
        rows = torch.arange(len(t), device=t.device)
        lo = theta0.clone()
        hi = torch.ones_like(t)
        for _ in range(BISECTIONS):
            mid = torch.where(mask, 0.5 * (lo + hi), hi)
            y_mid = interp(rows, mid)
            c = self.any_crossed(g0, self.values(t + mid * h, y_mid))
            hi = torch.where(mask & c, mid, hi)
            lo = torch.where(mask & ~c, mid, lo)
        y_hi = torch.where((hi == 1.0)[:, None], y1, interp(rows, hi))
        fired = self.crossed(g0, self.values(t + hi * h, y_hi))
        return hi, y_hi, fired
