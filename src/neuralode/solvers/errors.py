"""The one exception type raised when a solve fails after its inputs were accepted."""

from __future__ import annotations


class SolverError(RuntimeError):
    """A solve could not continue: step size underflow, non-finite state or derivative, or too
    many steps.

    Attributes:
        t: the time reached when the solve stopped.
        dt: the step size being attempted.
        n_steps: the number of steps attempted so far (accepted and rejected).
    """

    def __init__(self, reason: str, t: float, dt: float, n_steps: int, hint: str = ""):
        self.reason = reason
        self.t = t
        self.dt = dt
        self.n_steps = n_steps
        message = f"{reason} at t={t:.8g} with dt={dt:.3g} after {n_steps} steps."
        if hint:
            message += " " + hint
        super().__init__(message)
