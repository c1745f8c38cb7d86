"""Host time shared by the host clock and the fast paths: its resolution and the grid without an end.

Time is a Python float (float64) in every driver that keeps one clock for the batch
(:mod:`~neuralode.solvers.loop`, :mod:`~neuralode.solvers.fast`). A step shorter than a few units of
float64 rounding of its start time, ``|h| <= 4 * TIME_EPS * |t|``, is no step: ``t + h`` would round
back to ``t`` or to a neighbour of it. The loop arrives at such a stop without a step; the fast
paths stop there and leave the rest to the loop, so all of them draw the line in the same place.
"""

from __future__ import annotations

TIME_EPS = 2.220446049250313e-16  # float64 machine epsilon: host time is float64.


class InfiniteGrid:
    """Grid points ``t0 + direction (i + 1) h`` for ``i = 0, 1, ...``: the stops of a fixed-step
    solve that runs until an event (``odeint(..., event_fn=...)``), which has no last time."""

    def __init__(self, t0: float, direction: float, h: float):
        self.t0, self.direction, self.h = t0, direction, h

    def __getitem__(self, i: int) -> float:
        return self.t0 + self.direction * (i + 1) * self.h
