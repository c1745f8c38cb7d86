"""ESDIRK methods (explicit first stage, singly diagonally implicit) with a simplified (chord) Newton iteration.

A stage of an ESDIRK method with diagonal ``gamma`` solves, for ``Z_i`` (the stage value) and ``k_i = f(t_i, Z_i)``::

    Z_i = y0 + h sum_{j<i} a_ij k_j + h gamma f(t0 + c_i h, Z_i)              (k_0 = f(t0, y0): explicit)
    y1  = y0 + h sum_i b_i k_i,   err = h sum_i b_err_i k_i

Every stage has the same Newton matrix ``I - h gamma J``, so one ``J`` and one LU factorisation per step size
serve all stages (Hairer & Wanner II, IV.8, the simplified Newton iteration)::

    (I / (h gamma) - J) dZ = -G(Z) / (h gamma),   G(Z) = Z - y0 - h sum_{j<i} a_ij k_j - h gamma f(t_i, Z)

iterated from the predictor ``Z = y0 + h sum_{j<i} a_ij k_j + h gamma k_{i-1}`` until the displacement,
measured in the solve's error norm (``atol + rtol |y|`` units), is small: with the contraction rate
``theta = ||dZ_m|| / ||dZ_{m-1}||``, converged when ``theta / (1 - theta) ||dZ_m|| <= 0.05`` (or
``||dZ|| <= max(5e-5, 10 eps ||Z||)``, the second bound Z's own rounding), diverging when
``theta >= 1`` or after 10 iterations. Then ``k_i = (Z_i - base) / (h gamma)`` (no extra evaluation;
for stiff problems this is more robust than ``f(Z_i)``).

The Jacobian (and its factorisation, while ``h`` is unchanged) is kept across stages and steps while the
iteration converges; when it does not, ``J`` is formed afresh at the step's start and the step retried;
if it still fails the step is refused (``StepResult.shrink``: the loop rejects it and retries with ``h`` times
the controller's ``dfactor``), and at the minimum step size the solve stops with a :class:`SolverError`.

``kvaerno5``: A. Kværnø, "Singly diagonally implicit Runge-Kutta methods with an explicit first stage",
BIT Numerical Mathematics 44, 489-502 (2004): 7 stages, order 5 with an embedded order-4 solution,
L-stable, stiffly accurate (``b`` is the last row of ``a``, so the last stage is ``(t0 + h, y1)`` and is
reused as the next step's first: FSAL). Dense output: cubic Hermite. An order-4 continuous extension over the
stages (degree 4, from the continuous order conditions with C1 ends, least norm) was measured against it: 3-10x
more accurate between step ends on a non-stiff damped rotation, but up to 14x less accurate on the stiff benchmark
problems (Robertson 0.8-3.2x, HIRES 2.4-14x), where the stages carry only the stage order 2 and Hermite
reads y0, y1, f0 and f1 alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import SolverError
from .jacobian import ImplicitStepper, counted_flat_func
from .stepper import StepResult, combine

_TOL = 1e-12
NEWTON_MAX_ITER = 10
NEWTON_KAPPA = 0.05
ROUNDING_ULPS = 10.0


@dataclass(frozen=True)
class ESDIRKTableau:
    """An ESDIRK method's coefficients, validated on creation.

    Attributes:
        name: the method's name.
        gamma: the diagonal coefficient of stages 1 .. s-1 (stage 0 is explicit).
        a: ``s`` rows; row ``i`` has ``i`` entries, the strictly lower part (the diagonal is ``gamma``).
        b: ``(s,)`` weights; ``b_err``: ``(s,)`` ``b - b_hat``.
        c: ``(s,)`` nodes, ``c_i = sum_j a_ij + gamma`` (``c_0 = 0``).
        order, error_order: orders of ``y1`` and of ``y1_hat``.
        description: the method and its source.
    """

    name: str
    gamma: float
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    error_order: int
    description: str = ""

    def __post_init__(self) -> None:
        s = len(self.c)
        name = self.name
        rows = tuple(tuple(float(x) for x in row) for row in self.a)
        object.__setattr__(self, "a", rows)
        for field in ("b", "b_err", "c"):
            values = tuple(float(x) for x in getattr(self, field))
            if len(values) != s or not all(math.isfinite(v) for v in values):
                raise ValueError(f"ESDIRKTableau {name!r}: {field} must have {s} finite entries; got {values}")
            object.__setattr__(self, field, values)
        if len(rows) != s or any(len(r) != i for i, r in enumerate(rows)):
            raise ValueError(f"ESDIRKTableau {name!r}: a must have {s} rows, row i with i entries")
        if self.c[0] != 0.0:
            raise ValueError(f"ESDIRKTableau {name!r}: the first stage is explicit, so c[0] must be 0")
        for i in range(1, s):
            if abs(sum(rows[i]) + self.gamma - self.c[i]) > _TOL:
                raise ValueError(
                    f"ESDIRKTableau {name!r}: row {i} of a plus gamma sums to "
                    f"{sum(rows[i]) + self.gamma!r}, not c[{i}] = {self.c[i]!r}"
                )
        if abs(sum(self.b) - 1.0) > _TOL or abs(sum(self.b_err)) > _TOL:
            raise ValueError(f"ESDIRKTableau {name!r}: b must sum to 1 and b_err to 0")

    stages = property(lambda self: len(self.c))
    adaptive = property(lambda self: True)
    implicit = property(lambda self: True)
    newton = property(lambda self: True)

    @property
    def fsal(self) -> bool:
        """Stiffly accurate: ``b`` is the last row (with ``gamma``), so the last stage is ``f(t0 + h, y1)``."""
        return self.c[-1] == 1.0 and self.b == (*self.a[-1], self.gamma)

    @property
    def options_type(self) -> type:
        from .implicit_options import ImplicitOptions

        return ImplicitOptions

    def full_a(self) -> list[list[float]]:
        """The ``s x s`` stage matrix with ``gamma`` on the diagonal (0 for the explicit first stage)."""
        s = self.stages
        return [
            [(self.a[i][j] if j < i else (self.gamma if (i == j and i > 0) else 0.0)) for j in range(s)]
            for i in range(s)
        ]


_G = 0.26
_A = (
    (),
    (_G,),
    (0.13, 0.84033320996790809),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
    (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
    (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676),
    (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
     0.06962479448202728),
)  # fmt: skip

KVAERNO5 = ESDIRKTableau(
    name="kvaerno5",
    gamma=_G,
    a=_A,
    b=(*_A[6], _G),
    # b_hat is the sixth stage's row (stiffly accurate embedded solution): b - b_hat.
    b_err=tuple(x - y for x, y in zip((*_A[6], _G), (*_A[5], _G, 0.0))),
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    order=5,
    error_order=4,
    description="Kvaerno 5(4) (BIT 2004): 7-stage L-stable stiffly accurate ESDIRK, FSAL, chord Newton.",
)

ESDIRK_METHODS: dict[str, ESDIRKTableau] = {KVAERNO5.name: KVAERNO5}


def _nz(coeffs: Sequence[float]):
    return tuple((j, float(x)) for j, x in enumerate(coeffs) if x != 0.0)


@dataclass
class ESDIRKState:
    """What an ESDIRK stepper keeps between attempts.

    Attributes:
        J: the Jacobian ``df/dy`` of the chord iteration, ``(B, n, n)``; ``None`` before the first step.
        t, y: the point where ``J`` was formed (``y`` the very tensor): a step from there that fails to
            converge has nothing fresher to try and is refused; one from elsewhere first re-forms ``J``.
        lu: the LU factors of ``I / (h gamma) - J`` for the step ``lu_h`` (``None``: not factored since ``J``
            changed), reused while neither ``J`` nor ``h`` changes.
        lu_h: the step size ``lu`` was factored for.
    """

    J: torch.Tensor | None = None
    t: float | None = None
    y: torch.Tensor | None = None
    lu: tuple | None = None
    lu_h: float | None = None


class ESDIRKStepper(ImplicitStepper):
    """The ESDIRK step (module docstring), with the Jacobian and its factorisation in :class:`ESDIRKState`
    (``state``). They are reused while Newton converges, whatever the loop decided about the steps that used
    them (the step's values do not depend on when they were formed beyond the iteration's tolerance), so
    ``settle`` has nothing to do. A step whose iteration fails is refused: ``StepResult.shrink`` is the
    controller's ``dfactor``, the reduction its rejections are limited to."""

    def __init__(self, func, tab: ESDIRKTableau, checkpoint: bool, opts, problem, error=None):
        from .rosenbrock import resolve_batch_dims

        super().__init__(func, tab, checkpoint, opts, problem, error)
        self.stats = problem.stats
        self.batch_dims = resolve_batch_dims(opts, problem)
        self.jac = opts.method.jacobian if callable(opts.method.jacobian) else None
        self.min_step = getattr(opts, "min_step", 0.0)
        self.dfactor = getattr(opts, "dfactor", 0.2)
        self.rows = [_nz(r) for r in tab.a]
        self.b, self.b_err = _nz(tab.b), _nz(tab.b_err)
        self.f_tensor = counted_flat_func(problem)
        self.state = ESDIRKState()

    def fresh_jacobian(self, t: float, y: torch.Tensor, f0: torch.Tensor, h: float) -> torch.Tensor:
        """Form ``J`` at ``(t, y)`` into the record and return it."""
        st = self.state
        lin = self.jacobian_at(t, y, f0, h, check_coupling=st.J is None)
        st.J, st.t, st.y, st.lu, st.lu_h = lin.J, t, y, None, None
        return lin.J

    def factors(self, t: float, h: float, J: torch.Tensor):
        """The LU factors of ``I / (h gamma) - J`` (``J`` the record's), factored anew when ``h`` has changed."""
        from .rosenbrock import factor

        st = self.state
        if st.lu_h != h:
            st.lu = factor(J, h, self.tab.gamma, t, self.stats, self.stats.n_steps)
            st.lu_h = h
        return st.lu

    def scaled(self, dz: torch.Tensor, y: torch.Tensor) -> float:
        # Every component, not the solve's norm: a seminorm would leave components unconverged (scaled_all).
        return self.error.scaled_all(dz, y) if self.error is not None else float(dz.abs().max())

    def solve_stage(
        self,
        t: float,
        ti: float,
        y0: torch.Tensor,
        base: torch.Tensor,
        guess_k: torch.Tensor,
        h: float,
        J: torch.Tensor,
    ):
        """Z with Z = base + h gamma f(ti, Z), or None when the chord iteration does not converge (``J``: the
        record's Jacobian)."""
        func, stats, scaled = self.func, self.stats, self.scaled
        LU, piv = self.factors(t, h, J)
        B, n = J.shape[0], J.shape[-1]
        hg = h * self.tab.gamma
        z = torch.add(base, guess_k, alpha=hg)
        # No iteration resolves Z below its own rounding: a displacement within a few ulps of Z (in the
        # same norm, ~ROUNDING_ULPS eps / rtol; Hairer & Wanner's lower bound 10 eps / rtol on RADAU5's
        # Newton tolerance) is converged. Without it a float32 solve at rtol ~1e-5 never converges (the
        # displacements stall at rounding, theta ~ 1) and the step size collapses.
        done = max(1e-3 * NEWTON_KAPPA, ROUNDING_ULPS * torch.finfo(z.dtype).eps * scaled(z, y0))
        prev = None
        for _ in range(NEWTON_MAX_ITER):
            g = z - base - hg * func(ti, z)
            dz = -torch.linalg.lu_solve(LU, piv, (g / hg).reshape(B, n, 1)).reshape(z.shape)
            stats.n_linear_solves += 1
            z = z + dz
            d = scaled(dz, y0)
            if not math.isfinite(d):
                return None
            if d <= done:
                return z
            if prev is not None:
                theta = d / prev
                if theta >= 1.0:
                    return None
                if theta / (1.0 - theta) * d <= NEWTON_KAPPA:
                    return z
            prev = d
        return None

    def attempt(self, t: float, y: torch.Tensor, f0: torch.Tensor, h: float, J: torch.Tensor):
        tab, rows = self.tab, self.rows
        k = [f0]
        hg = h * tab.gamma
        for i in range(1, tab.stages):
            base = combine(y, h, rows[i], k)
            z = self.solve_stage(t, t + tab.c[i] * h, y, base, k[-1], h, J)
            if z is None:
                return None
            k.append((z - base) / hg)
        y1 = z if tab.fsal else combine(y, h, self.b, k)
        (j0, e0), *rest = self.b_err
        y_err = k[j0] * (h * e0)
        for j, e in rest:
            y_err = torch.add(y_err, k[j], alpha=h * e)
        return StepResult(y1, y_err, tuple(k))

    def step(self, t: float, y: torch.Tensor, f0, h: float):
        if f0 is None:
            f0 = self.func(t, y)
        st = self.state
        J = st.J
        if J is None:
            J = self.fresh_jacobian(t, y, f0, h)
        step = self.attempt(t, y, f0, h, J)
        if step is None and not (st.y is y and st.t == t):
            J = self.fresh_jacobian(t, y, f0, h)  # the kept Jacobian is stale: refresh it and retry
            step = self.attempt(t, y, f0, h, J)
        if step is not None:
            return f0, step
        if abs(h) <= max(self.min_step, 64 * 2.220446049250313e-16 * max(1.0, abs(t))):
            raise SolverError(
                "Newton iteration failed to converge at the minimum step size",
                t,
                h,
                self.stats.n_steps,
                "func may be discontinuous or non-finite here, or options['jacobian'] wrong; loosen rtol/atol, "
                "lower options['min_step'], or try method='rodas5p' (no iteration).",
            )
        return f0, StepResult(y, None, (f0,) * self.tab.stages, shrink=self.dfactor)


def make_stepper(func, tab: ESDIRKTableau, checkpoint: bool, opts, problem, error):
    """The :class:`ESDIRKStepper` of one solve."""
    return ESDIRKStepper(func, tab, checkpoint, opts, problem, error)
