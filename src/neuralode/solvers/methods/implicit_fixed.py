"""torchdiffeq's fixed-grid implicit methods, solved by Newton's method with the true Jacobian.

An implicit Runge-Kutta method with ``s`` stages (full stage matrix ``A``) takes a step of size ``h`` by solving
for the stage derivatives ``K = (k_1 .. k_s)``::

    k_i = f(t0 + c_i h, y0 + h sum_j a_ij k_j),      y1 = y0 + h sum_i b_i k_i

All stages are solved together by a simplified Newton iteration with the Jacobian ``J = df/dy(t0, y0)`` formed
at the start of every step (by autograd, per sample for a batch; see :mod:`~neuralode.solvers.methods.jacobian`)::

    (I_{sn} - h A (x) J) dK = -(K - F(K)),   per sample: one (s n) x (s n) matrix, factored once per step

from the predictor ``k_i = f(t0, y0)``, until ``|h dK| <= tol (1 + |y0|)`` (``tol = eps^(3/4)`` of the dtype:
1.8e-12 in float64; or ``sqrt(eps)`` once the iteration stalls at rounding) or 20 iterations; if that fails,
full Newton (``J`` at every stage value, refreshed every iteration) carries on from there. torchdiffeq (0.2.5) iterates Broyden's method from the identity on
one dense Jacobian approximation of the whole batch; with the true Jacobian the iteration converges in a few
steps on stiff problems, where an identity start needs many. A fixed step cannot be rejected, so an iteration
that diverges or does not converge stops the solve with a :class:`SolverError` that says to take smaller
steps.

Methods (coefficients: Hairer & Wanner, *Solving ODEs II*, IV.5 (Radau IIA, Gauss), IV.6 (SDIRK); TR-BDF2:
Bank et al. 1985 / Hosea & Shampine 1996, in its ESDIRK form):

========================  ======  =====================================================================
name                      order   method
========================  ======  =====================================================================
``implicit_euler``        1       backward Euler (Radau IIA, 1 stage)
``implicit_midpoint``     2       Gauss-Legendre, 1 stage
``trapezoid``             2       the trapezoidal rule (Lobatto IIIA, 2 stages, explicit first stage)
``radauIIA3``             3       Radau IIA, 2 stages
``radauIIA5``             5       Radau IIA, 3 stages
``gl4``                   4       Gauss-Legendre, 2 stages
``gl6``                   6       Gauss-Legendre, 3 stages
``sdirk2``                2       Alexander's L-stable SDIRK, gamma = 1 - sqrt(2)/2
``trbdf2``                2       TR-BDF2, gamma = 2 - sqrt(2)
========================  ======  =====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import SolverError
from ..options import FixedOptions
from .implicit_options import ImplicitSettings
from .jacobian import ImplicitStepper, autograd_linearisation, checked_jacobian

NEWTON_MAX_ITER = 20


@dataclass(frozen=True)
class ImplicitFixedOptions(FixedOptions):
    """Parsed options of the fixed-step implicit methods: :class:`FixedOptions` with
    :class:`~neuralode.solvers.methods.implicit_options.ImplicitSettings` (``jacobian``, ``batch_dims``), as
    for the adaptive implicit methods."""

    method: ImplicitSettings = field(default_factory=ImplicitSettings)

    KEYS = FixedOptions.KEYS + ("jacobian", "batch_dims")


@dataclass(frozen=True)
class ImplicitRK:
    """A fully implicit Runge-Kutta method: ``c`` (s,), ``A`` (s x s, full), ``b`` (s,), validated on creation."""

    name: str
    c: tuple[float, ...]
    A: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    description: str = ""
    adaptive: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        A = tuple(tuple(float(x) for x in row) for row in self.A)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "c", tuple(float(x) for x in self.c))
        object.__setattr__(self, "b", tuple(float(x) for x in self.b))
        if len(A) != s or any(len(r) != s for r in A) or len(self.b) != s:
            raise ValueError(f"ImplicitRK {self.name!r}: A must be {s} x {s} and b must have {s} entries")
        for i, row in enumerate(A):
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(
                    f"ImplicitRK {self.name!r}: row {i} of A sums to {sum(row)!r}, not c[{i}] = {self.c[i]!r}"
                )
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"ImplicitRK {self.name!r}: b must sum to 1; got {sum(self.b)!r}")

    stages = property(lambda self: len(self.c))
    implicit = property(lambda self: True)
    fixed_newton = property(lambda self: True)
    fsal = property(lambda self: False)

    @property
    def options_type(self) -> type:
        return ImplicitFixedOptions


_S3, _S6, _S15 = math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0)
_SD = 1.0 - math.sqrt(2.0) / 2.0  # sdirk2's gamma
_TG = 2.0 - math.sqrt(2.0)  # TR-BDF2's gamma: the trapezoidal stage ends at gamma h
_TW = math.sqrt(2.0) / 4.0

_METHODS = (
    ImplicitRK("implicit_euler", (1.0,), ((1.0,),), (1.0,), 1, "backward Euler"),
    ImplicitRK("implicit_midpoint", (0.5,), ((0.5,),), (1.0,), 2, "Gauss-Legendre, 1 stage"),
    ImplicitRK("trapezoid", (0.0, 1.0), ((0.0, 0.0), (0.5, 0.5)), (0.5, 0.5), 2, "trapezoidal rule"),
    ImplicitRK(
        "radauIIA3", (1.0 / 3.0, 1.0), ((5.0 / 12.0, -1.0 / 12.0), (0.75, 0.25)), (0.75, 0.25), 3, "Radau IIA, 2 stages"
    ),
    ImplicitRK(
        "radauIIA5",
        ((4.0 - _S6) / 10.0, (4.0 + _S6) / 10.0, 1.0),
        (
            ((88.0 - 7.0 * _S6) / 360.0, (296.0 - 169.0 * _S6) / 1800.0, (-2.0 + 3.0 * _S6) / 225.0),
            ((296.0 + 169.0 * _S6) / 1800.0, (88.0 + 7.0 * _S6) / 360.0, (-2.0 - 3.0 * _S6) / 225.0),
            ((16.0 - _S6) / 36.0, (16.0 + _S6) / 36.0, 1.0 / 9.0),
        ),
        ((16.0 - _S6) / 36.0, (16.0 + _S6) / 36.0, 1.0 / 9.0),
        5,
        "Radau IIA, 3 stages",
    ),
    ImplicitRK(
        "gl4",
        (0.5 - _S3 / 6.0, 0.5 + _S3 / 6.0),
        ((0.25, 0.25 - _S3 / 6.0), (0.25 + _S3 / 6.0, 0.25)),
        (0.5, 0.5),
        4,
        "Gauss-Legendre, 2 stages",
    ),
    ImplicitRK(
        "gl6",
        (0.5 - _S15 / 10.0, 0.5, 0.5 + _S15 / 10.0),
        (
            (5.0 / 36.0, 2.0 / 9.0 - _S15 / 15.0, 5.0 / 36.0 - _S15 / 30.0),
            (5.0 / 36.0 + _S15 / 24.0, 2.0 / 9.0, 5.0 / 36.0 - _S15 / 24.0),
            (5.0 / 36.0 + _S15 / 30.0, 2.0 / 9.0 + _S15 / 15.0, 5.0 / 36.0),
        ),
        (5.0 / 18.0, 4.0 / 9.0, 5.0 / 18.0),
        6,
        "Gauss-Legendre, 3 stages",
    ),
    ImplicitRK("sdirk2", (_SD, 1.0), ((_SD, 0.0), (1.0 - _SD, _SD)), (1.0 - _SD, _SD), 2, "Alexander's SDIRK2"),
    ImplicitRK(
        "trbdf2",
        (0.0, _TG, 1.0),
        ((0.0, 0.0, 0.0), (_TG / 2.0, _TG / 2.0, 0.0), (_TW, _TW, _TG / 2.0)),
        (_TW, _TW, _TG / 2.0),
        2,
        "TR-BDF2",
    ),
)
IMPLICIT_FIXED_METHODS: dict[str, ImplicitRK] = {m.name: m for m in _METHODS}


@dataclass
class ImplicitFixedState:
    """What a fixed-grid implicit stepper keeps between steps.

    Attributes:
        coupling_checked: whether the first autograd Jacobian of the solve checked that the samples of the
            batch are independent (made once per solve). Nothing else outlives a step: every step forms its
            Jacobians at its own start and stages, so the loop's verdicts (a fixed grid accepts every step)
            change nothing.
    """

    coupling_checked: bool = False


class ImplicitFixedStepper(ImplicitStepper):
    """The fixed-step implicit Runge-Kutta step of one solve (module docstring), its state in
    :class:`ImplicitFixedState` (``state``).

    ``func(s, z)`` is the loop's stage function: ``problem`` itself, or with ``options['perturb']`` its
    variant that evaluates the stages at the step's end just before it (``func.where(s)`` tells where).
    Every evaluation of ``f`` in the step (the stages of every Newton iteration and the Jacobians) is made at
    the time and on the side that the stage function uses, and at the step's start on the side ``f0`` comes
    from (just after ``t`` with ``perturb``), so a ``func`` with a discontinuity on a grid point sees the
    inside of the step throughout it, as with the explicit methods.
    """

    def __init__(self, func, tab: ImplicitRK, checkpoint: bool, opts, problem, error=None):
        super().__init__(func, tab, checkpoint, opts, problem, error)
        self.state = ImplicitFixedState()
        self.step = _step_function(func, tab, opts, problem, self.state)


def make_stepper(func, tab: ImplicitRK, checkpoint: bool, opts, problem, error=None):
    """The :class:`ImplicitFixedStepper` of one solve."""
    return ImplicitFixedStepper(func, tab, checkpoint, opts, problem, error)


def _step_function(func, tab: ImplicitRK, opts, problem, state: ImplicitFixedState):
    """``step(t, y, f0, h) -> (f0, StepResult)`` for :class:`ImplicitFixedStepper`, with the solve's constants
    bound once."""
    from .rosenbrock import resolve_batch_dims
    from .stepper import StepResult

    stats = problem.stats
    batch_dims = resolve_batch_dims(opts, problem)
    jac = opts.method.jacobian if callable(opts.method.jacobian) else None
    user_shape = tuple(problem.shapes[0]) if not problem.is_tuple else (sum(problem.sizes),)
    s = tab.stages
    # The side of the step's start that f0 is taken from: with options['perturb'] the loop evaluates it just
    # after t (loop.integrate), so the evaluations at c = 0 here do the same.
    start_side = 1 if getattr(opts, "perturb", False) else 0
    where = getattr(func, "where", None)  # (time, side) of the stage function's evaluation at a time

    def sided(t: float, c: float, h: float) -> tuple[float, int]:
        """``(time, side)`` of the step's evaluations at ``t + c h``."""
        if c == 0.0:
            return t, start_side
        return (t + c * h, 0) if where is None else where(t + c * h)

    def at(t: float, c: float, h: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """``z -> f(t + c h, z)`` as the step evaluates it."""
        ts, side = sided(t, c, h)
        return lambda z: problem(ts, z, side)

    def jacobian(t: float, c: float, y: torch.Tensor, f: torch.Tensor, h: float) -> torch.Tensor:
        """``J = df/dy`` at ``(t + c h, y)`` (the time on the side the step evaluates it); ``f = f(t + c h, y)``."""
        stats.n_jac_evals += 1
        ts, side = sided(t, c, h)
        if jac is not None:
            return checked_jacobian(jac, problem.time(ts, side), y, batch_dims, problem.unflatten, user_shape)
        create_graph = torch.is_grad_enabled() and (y.requires_grad or f.requires_grad)
        # Only J is needed, not df/dt: the linearisation gets the evaluation with its time fixed (it ignores
        # its time argument; time_dependent=False: no forward-mode pass for df/dt).
        J = autograd_linearisation(
            lambda _tt, z: problem(ts, z, side),
            problem.time(ts, side),
            y,
            batch_dims,
            check_coupling=not state.coupling_checked,
            create_graph=create_graph,
            time_dependent=False,
            forward=problem.forward_mode,
        ).J
        state.coupling_checked = True
        return J

    def stages(t: float, y: torch.Tensor, f0: torch.Tensor, h: float, K):
        Z = [
            y + h * sum(tab.A[i][j] * K[j] for j in range(s) if tab.A[i][j] != 0.0) if any(tab.A[i]) else y
            for i in range(s)
        ]
        F = [f0 if not any(tab.A[i]) else at(t, tab.c[i], h)(Z[i]) for i in range(s)]
        return Z, F

    def factor(Js: torch.Tensor, h: float, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """LU of I - h [a_ij J_j] per sample; ``Js`` is (B, s, n, n), one Jacobian per stage."""
        B, n = Js.shape[0], Js.shape[-1]
        A = torch.tensor(tab.A, dtype=Js.dtype, device=Js.device)  # (s, s)
        M = torch.eye(s * n, dtype=Js.dtype, device=Js.device) - h * torch.einsum("ij,bjkl->bikjl", A, Js).reshape(
            B, s * n, s * n
        )  # (B, s n, s n), stage-major
        LU, piv, info = torch.linalg.lu_factor_ex(M)
        stats.n_factorizations += 1
        if bool((info > 0).any()):
            raise SolverError(
                f"Singular Newton matrix I - h A (x) J of {tab.name}",
                t,
                h,
                stats.n_steps,
                "Lower options['step_size'], or check options['jacobian'].",
            )
        return LU, piv

    def take(t: float, y: torch.Tensor, f0, h: float):
        if f0 is None:
            f0 = at(t, 0.0, h)(y)
        J0 = jacobian(t, 0.0, y, f0, h)
        B, n = J0.shape[0], J0.shape[-1]
        tol = torch.finfo(y.dtype).eps ** 0.75
        scale = 1.0 + float(y.detach().abs().max())
        # First the simplified iteration (J at the step's start for every stage: one factorisation); if it
        # does not converge, full Newton from where it stopped, with J at every stage value, refreshed on every
        # iteration (the step is fixed, so it cannot be retried smaller).
        K = [f0] * s
        LU = factor(J0.unsqueeze(1).expand(B, s, n, n), h, t)  # the simplified iteration's (J0 at every stage)
        for full in (False, True):
            if full:
                del LU  # freed before full Newton forms its own on every iteration
            prev = None
            for m in range(NEWTON_MAX_ITER):
                Z, F = stages(t, y, f0, h, K)
                if full:
                    Js = torch.stack(
                        [J0 if not any(tab.A[i]) else jacobian(t, tab.c[i], Z[i], F[i], h) for i in range(s)],
                        dim=1,
                    )
                    LU = factor(Js, h, t)
                G = torch.stack([K[i] - F[i] for i in range(s)])  # (s, *shape)
                rhs = G.reshape(s, B, n).permute(1, 0, 2).reshape(B, s * n, 1)
                dK = -torch.linalg.lu_solve(*LU, rhs).reshape(B, s, n).permute(1, 0, 2).reshape(s, *y.shape)
                stats.n_linear_solves += 1
                K = [K[i] + dK[i] for i in range(s)]
                d = abs(h) * float(dK.detach().abs().max())
                if not math.isfinite(d):
                    K = [f0] * s
                    break
                stalled = prev is not None and d >= 0.9 * prev
                # Converged; or stalled at the rounding level of an ill-conditioned Newton matrix
                # (within sqrt(eps) of the state's scale), which no further iteration improves.
                if d <= tol * scale or (stalled and d <= torch.finfo(y.dtype).eps ** 0.5 * scale):
                    y1 = y + h * sum(tab.b[i] * K[i] for i in range(s))
                    return f0, StepResult(y1, None, tuple(K))
                if stalled and m >= 3:
                    break
                prev = d
        raise SolverError(
            f"Newton iteration of {tab.name} did not converge",
            t,
            h,
            stats.n_steps,
            "A fixed step cannot be retried smaller: lower options['step_size'] (or use an adaptive stiff method, "
            "method='rodas5p'), or check func for non-finite values.",
        )

    return take
