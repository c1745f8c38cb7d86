"""Radau IIA of orders 5, 9 and 13 (``radau5``, ``radau9``, ``radau13``): the 3-, 5- and 7-stage collocation
methods with Hairer & Wanner's adaptive machinery.

The method (Hairer & Wanner, *Solving ODEs II*, 2nd ed., IV.5 and IV.8). With the ``s`` Radau IIA nodes ``c``
(the zeros of ``d^(s-1)/dx^(s-1) [x^(s-1) (x - 1)^s]``, ``c_s = 1``; for ``s = 3``,
``((4 - sqrt 6)/10, (4 + sqrt 6)/10, 1)``) and the collocation matrix ``A`` (``a_ij = int_0^{c_i} l_j``,
``l_j`` the Lagrange polynomials on ``c``), a step of size ``h`` from ``(t0, y0)`` solves for the stage
increments ``Z_i = Y_i - y0``::

    Z = h (A (x) I) F(Z),   F(Z)_i = f(t0 + c_i h, y0 + Z_i),       y1 = y0 + Z_s   (stiffly accurate)

order ``2 s - 1`` (``B(2s - 1)``, ``C(s)``, ``D(s - 1)``), L-stable: ``radau5`` (``s = 3``, the method of
RADAU5 and of scipy's ``Radau``), ``radau9`` (``s = 5``) and ``radau13`` (``s = 7``): the three orders of
Hairer & Wanner's variable-order RADAU code, here each at fixed order. The ``s n`` nonlinear equations are solved by a simplified
Newton iteration whose matrix is decoupled by the eigenvalues of ``A^-1``: one real ``gamma`` and
``(s - 1) / 2`` complex pairs ``alpha_k +- i beta_k`` (IV.8). With ``T^-1 A^-1 T = Lambda``,
``Lambda = diag(gamma, [[alpha_k, -beta_k], [beta_k, alpha_k]] ...)`` and ``Z = (T (x) I) W``, each iteration
is::

    (gamma / h  I - J) dW_1                  = G_1 - (gamma / h) W_1                          (B, n, n) real LU
    ((alpha_k + i beta_k) / h  I - J) dW_k   = (G_2k + i G_2k+1) - ((alpha_k + i beta_k) / h) W_k   complex LU
    G = (T^-1 (x) I) F(Z),   W_k = W_2k + i W_2k+1,   dW_k = dW_2k + i dW_2k+1

so a step factors one real and ``(s - 1) / 2`` complex ``n x n`` matrices per independent system of the batch
(the state ``(*batch, *event)`` seen as ``(B, n)``, :mod:`~neuralode.solvers.methods.jacobian`) and never an ``s B n``
matrix. The nodes, ``A``, ``T`` (and with it ``gamma`` and the pairs) are computed in float64 when this module
is imported and checked (``C(s)``, ``B(2s - 1)``, ``T`` reproducing ``A^-1``).

Newton (IV.8, "Stopping criterion", and the RADAU codes' choices): at most ``newton_max_iter`` iterations
(RADAU's ``NIT = 7 + 2.5 (s - 3)`` counted from 1 to ``NIT - 1``: 6, 11 and 16 iterations). With
``||.||`` the solve's error norm (RMS of ``x / (atol + rtol |y0|)`` over the stages, the norm the step is judged
by, so each sample of a batch is judged the same way), the rate ``theta_k = ||dZ_k|| / ||dZ_{k-1}||`` (from
the third iteration the geometric mean of the last two, as RADAU5), and ``eta_k = theta_k / (1 - theta_k)``,
the iteration stops when ``eta_k ||dZ_k|| <= kappa tol`` with
``kappa tol = max(10 eps / rtol, min(0.03, rtol^((s - 1)/(s + 1))))`` (RADAU's ``FNEWT``, ``rtol^(1/2)`` for
``s = 3`` as in RADAU5 and scipy, on untransformed tolerances). On the first iteration ``eta`` is the previous
step's, ``max(eta_old, eps)^0.8``. It fails when ``theta >= 0.99`` (divergence: the step is retried with
``h / 2``) or when the predicted error after the iterations left, ``eta ||dZ|| theta^(k_max - k) / (kappa
tol)``, is ``>= 1`` (too slow: ``h`` shrinks by RADAU5's ``0.8 q^(-1 / (4 + k_max - k))``, ``q`` that
prediction). The step is then refused: it returns that reduction as ``StepResult.shrink`` (no error estimate),
within the controller's ``dfactor`` limit, and the loop rejects it and retries from the same point with ``h``
times it. A failure with a Jacobian formed at an earlier point first re-forms ``J`` at ``(t0, y0)`` and
retries the same ``h``; at the minimum step it is a :class:`SolverError`.

Starting values (IV.8): the last accepted step's collocation polynomial extrapolated to the new nodes,
``Z_i^0 = q_old(t0 + c_i h) - y0``; zero on the first step or after an event reset the state.

The stepper's state across steps is one record, :class:`RadauState`: the Jacobian and where it was formed, the
factorisations and their ``h``, Newton's rate, the accepted polynomial and whether ``J`` must be re-formed. The
loop tells the stepper after every attempt whether it accepted it (:meth:`RadauStepper.settle`); only then does
the polynomial of the step become the starting values of the next.

Jacobian reuse: ``J`` is kept from step to step while the last accepted step's Newton iteration converged in
at most two iterations or with ``theta <= 1e-3`` (RADAU5's test ``theta <= THET = 1e-3``, with scipy's
allowance for two iterations), and re-formed at ``(t0, y0)`` otherwise, and after a rejection if it was formed
elsewhere; the matrices are refactored whenever ``h`` or ``J`` changes (RADAU5 also keeps ``h`` when the
proposal is within ``[1, 1.2] h`` to save factorisations; here the loop's controller alone sets ``h``).

Error estimate (IV.8, (8.19)-(8.20)): the embedded solution ``y_hat = y0 + h (gamma_0 f(t0, y0) + sum_i
b_hat_i F_i)``, ``gamma_0 = 1 / gamma``, of order ``s``, gives ``y_hat - y1 = gamma_0 h f0 + sum_i e_i Z_i``
(``e = (b_hat - b) A^-1``), which is filtered by the real matrix, ``err = (I - h gamma_0 J)^-1 (y_hat - y1)``
(bounded as ``h J -> infinity``, where the raw difference is not). On the first step and after a rejection an
estimate ``> 1`` is recomputed once with ``f(t0, y0 + err)`` in place of ``f0`` ((8.20), one evaluation).
It is ``O(h^(s+1))``: ``error_order = s`` (the controller's exponent is ``1 / (s + 1)``).

Error of the continuous output (``options["dense_error"]``, on by default for ``radau9`` and ``radau13``).
The estimate above bounds the step end; the outputs between step ends come from the collocation polynomial,
whose error is of the same order ``h^(s+1)`` but is not filtered in the stiff components, where the embedded
difference is damped by ``(I - h gamma_0 J)^-1``. With ``radau9`` the gap is wide: its steps are chosen for an
order-9 solution, and on the stiff benchmark (``benchmarks/bench_stiff.py``) the outputs read between step ends
were 20x to over 100x less accurate than with the steps landing on the output times (Van der Pol mu = 1000 at
rtol 1e-7: 3.7x scipy Radau's error at the outputs, 0.04x with the steps landing on them; the error sat in the
stiff component). With ``dense_error`` the step is also judged by ``e_cont = y0 - p(t0)``, ``p`` the
degree-(s-1) polynomial through the ``s`` stage values (one polynomial order below the dense output, so an
``O(h^s)`` measure of how far the stage values are from a polynomial), raised to ``(s + 1) / s`` to give the
order of the embedded estimate: the step's ratio is ``max(r_emb, r_cont^((s+1)/s))``. An estimate of this
kind, raised to this power, is what Guglielmi & Hairer use in RADAR5 to control the continuous output that
delay equations read (combined there as a weighted sum). It costs no evaluation. For ``radau5`` it is off:
there the degree-2 polynomial is a poor yardstick (on the benchmark it took 1.5-4x the steps) and RADAU5's
outputs follow its steps closely enough (scipy's ``Radau`` does the same).

Step-size control: the stiff methods' default, ``"pi_gustafsson"`` (PI control capped by Gustafsson's
prediction, ``controller.py``). Measured against ``"gustafsson"`` (the predictive controller of RADAU5 and of
scipy's Radau) on the stiff benchmark problems (``benchmarks/bench_stiff.py``: Robertson to 1e5 and 1e11, Van der
Pol mu = 1000, HIRES, OREGO, POLLU at rtol 1e-4 ... 1e-8, 30 solves), relative to scipy's Radau at the same
tolerance, with ``radau5``: geometric mean error 1.25x and accepted steps 0.95x with ``"pi_gustafsson"``,
1.80x and 0.88x with ``"gustafsson"``; error and steps both no worse than Radau's on 9 of the 30 solves against
3. Being I control on the smooth stretches, ``"gustafsson"`` grows the step faster than the error allows at the
same tolerance. ``radau9`` with its defaults: error and steps both no worse than Radau's on all 30 solves
(steps 0.27-0.73x, error 0.01-0.91x Radau's); without ``dense_error`` on 25. ``radau13``: on all 30 (steps
0.09-0.61x, error at most 0.27x).

Dense output: the collocation polynomial through ``(0, y0)`` and ``(c_i, y0 + Z_i)`` (degree ``s`` in
``theta``), :func:`radau_dense`; the loop's interpolant kind ``"radau"``.

Statistics: ``n_jac_evals`` Jacobians; ``n_factorizations`` counts the real and complex factorisations of one
``h`` as one (scipy's ``nlu`` does the same for radau5); ``n_linear_solves`` one per Newton iteration (the
set) and one per error estimate; ``nfe`` ``s`` per Newton iteration, plus the extra error evaluation and the
Jacobians'.

References:
    E. Hairer, G. Wanner, "Solving Ordinary Differential Equations II: Stiff and Differential-Algebraic
    Problems", 2nd ed., Springer 1996, Sections IV.5 and IV.8 (and the RADAU5 and RADAU codes described there).
    N. Guglielmi, E. Hairer, "Implementing Radau IIA methods for stiff delay differential equations",
    Computing 67, 1-12 (2001) (RADAR5; the continuous output's error).
    K. Gustafsson, "Control-theoretic techniques for stepsize selection in implicit Runge-Kutta methods",
    ACM TOMS 20, 496-517 (1994) (the predictive controller, ``controller.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias, cast

import torch

from ..errors import SolverError
from .jacobian import ImplicitStepper, counted_flat_func
from .stepper import StepResult

__all__ = ["RadauTableau", "RADAU5", "RADAU9", "RADAU13", "RADAU_METHODS", "make_stepper", "radau_dense"]

JAC_REUSE_THETA = 1e-3  # RADAU5's THET: keep J after a step whose Newton rate was below this
_TOL = 1e-13


def _solve(M: list[list[float]], rhs: list[list[float]]) -> list[list[float]]:
    """``M^-1 rhs`` in float64 (tiny matrices; done once at import)."""
    X = torch.linalg.solve(torch.tensor(M, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return X.tolist()


def _lambda(gamma: float, pairs) -> torch.Tensor:
    """The block-diagonal ``Lambda = diag(gamma, [[alpha_k, -beta_k], [beta_k, alpha_k]] ...)``."""
    s = 1 + 2 * len(pairs)
    L = torch.zeros(s, s, dtype=torch.float64)
    L[0, 0] = gamma
    for k, (al, be) in enumerate(pairs):
        i = 1 + 2 * k
        L[i, i] = L[i + 1, i + 1] = al
        L[i, i + 1], L[i + 1, i] = -be, be
    return L


@dataclass(frozen=True)
class RadauTableau:
    """A Radau IIA collocation method and its adaptive implementation's coefficients, validated on creation.

    Attributes:
        name: the method's name.
        c: ``(s,)`` collocation nodes, ``c_s = 1`` (``s`` odd).
        a: ``s x s`` collocation matrix (``C(s)``: ``sum_j a_ij c_j^(q-1) = c_i^q / q``, ``q = 1 .. s``).
        b: ``(s,)`` weights, the last row of ``a``.
        order: order of ``y1`` (``2 s - 1``); ``error_order``: order of the embedded solution (``s``).
        gamma: the real eigenvalue of ``A^-1``; ``pairs``: its ``(s - 1) / 2`` complex pairs ``alpha_k +- i beta_k``
            (``beta_k > 0``).
        T, T_inv: ``T^-1 A^-1 T = Lambda = diag(gamma, [[alpha_k, -beta_k], [beta_k, alpha_k]] ...)``.
        e: ``(s,)`` the error weights on ``Z``: ``y_hat - y1 = h f0 / gamma + sum_i e_i Z_i``.
        dense: ``s`` rows of ``s`` coefficients: ``l_i(theta) = sum_q dense[i][q] theta^(q + 1)`` is the
            collocation polynomial's weight of ``Z_i``, ``y(t0 + theta h) = y0 + sum_i l_i(theta) Z_i``.
        newton_max_iter: the simplified Newton iteration's limit (RADAU's ``NIT - 1``, ``NIT = 7 + 2.5 (s - 3)``).
        dense_error_default: whether the error of the continuous output is controlled unless
            ``options["dense_error"]`` says otherwise.
        description: the method and its source.

    Raises:
        ValueError: when the coefficients break the collocation conditions, ``T`` does not transform ``A^-1``
            to ``Lambda``, or the error weights do not give an embedded solution of ``error_order``.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    error_order: int
    gamma: float
    pairs: tuple[tuple[float, float], ...]
    T: tuple[tuple[float, ...], ...]
    T_inv: tuple[tuple[float, ...], ...]
    e: tuple[float, ...]
    dense: tuple[tuple[float, ...], ...]
    newton_max_iter: int
    dense_error_default: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        name, s = self.name, len(self.c)
        A = [list(r) for r in self.a]
        if s % 2 != 1 or len(self.pairs) != (s - 1) // 2:
            raise ValueError(f"RadauTableau {name!r}: needs an odd number of stages and (s - 1) / 2 complex pairs")
        if len(A) != s or any(len(r) != s for r in A) or len(self.b) != s or self.c[-1] != 1.0:
            raise ValueError(f"RadauTableau {name!r}: a must be {s} x {s}, b of length {s} and c[-1] = 1")
        for i in range(s):
            for q in range(1, s + 1):
                r = sum(A[i][j] * self.c[j] ** (q - 1) for j in range(s)) - self.c[i] ** q / q
                if abs(r) > _TOL:
                    raise ValueError(f"RadauTableau {name!r}: C({s}) fails at row {i}, q = {q} (residual {r:.3g})")
        for q in range(1, self.order + 1):
            r = sum(bi * ci ** (q - 1) for bi, ci in zip(self.b, self.c)) - 1.0 / q
            if abs(r) > _TOL:
                raise ValueError(f"RadauTableau {name!r}: B({self.order}) fails at q = {q} (residual {r:.3g})")
        if tuple(self.b) != tuple(self.a[-1]):
            raise ValueError(f"RadauTableau {name!r}: b must be the last row of a (stiffly accurate)")
        if any(be <= 0.0 for _, be in self.pairs) or self.newton_max_iter < 1:
            raise ValueError(f"RadauTableau {name!r}: beta_k must be > 0 and newton_max_iter >= 1")
        Lam = _lambda(self.gamma, self.pairs)
        T, Ti = torch.tensor(self.T, dtype=torch.float64), torch.tensor(self.T_inv, dtype=torch.float64)
        Ainv = torch.linalg.inv(torch.tensor(A, dtype=torch.float64))
        if (
            float((T @ Lam @ Ti - Ainv).abs().max()) > 1e-12 * float(Ainv.abs().max())
            or float((T @ Ti - torch.eye(s, dtype=torch.float64)).abs().max()) > 1e-13
        ):
            raise ValueError(f"RadauTableau {name!r}: T Lambda T^-1 does not reproduce A^-1")
        # The embedded solution's weights: b_hat = b + e A (since h F = A^-1 Z), b_hat_0 = 1 / gamma.
        b_hat = [bi + sum(self.e[j] * A[j][i] for j in range(s)) for i, bi in enumerate(self.b)]
        for q in range(1, self.error_order + 1):
            r = (1.0 / self.gamma if q == 1 else 0.0) + sum(w * ci ** (q - 1) for w, ci in zip(b_hat, self.c)) - 1.0 / q
            if abs(r) > 1e-11:
                raise ValueError(f"RadauTableau {name!r}: the embedded solution fails order {q} (residual {r:.3g})")

    stages = property(lambda self: len(self.c))
    adaptive = property(lambda self: True)
    implicit = property(lambda self: True)
    collocation = property(lambda self: True)  # rosenbrock.make_stepper dispatches on it
    fsal = property(lambda self: False)

    @property
    def options_type(self) -> type:
        from .implicit_options import RadauOptions

        return RadauOptions


def _radau_nodes(s: int) -> tuple[float, ...]:
    """The Radau IIA nodes: the zeros of ``d^(s-1)/dx^(s-1) [x^(s-1) (x - 1)^s]`` (Hairer & Wanner II, IV.5),
    from the eigenvalues of the companion matrix polished by Newton in exact arithmetic, ``c_s = 1``."""
    from fractions import Fraction
    from math import comb

    # x^(s-1) (x - 1)^s = sum_k comb(s, k) (-1)^(s-k) x^(s-1+k); differentiate s - 1 times.
    coef = [Fraction(0)] * s  # coef[m]: coefficient of x^m of the derivative (degree s)
    coef.append(Fraction(0))
    for k in range(s + 1):
        p = s - 1 + k
        coef[p - (s - 1)] += Fraction(comb(s, k) * (-1) ** (s - k) * math.perm(p, s - 1))
    lead = coef[-1]
    mon = [float(x / lead) for x in coef]  # monic, ascending
    C = torch.zeros(s, s, dtype=torch.float64)
    C[1:, :-1] = torch.eye(s - 1, dtype=torch.float64)
    C[:, -1] = -torch.tensor(mon[:-1], dtype=torch.float64)
    roots = sorted(float(r.real) for r in torch.linalg.eigvals(C))

    out = []
    for r in roots:  # Newton in exact arithmetic from each float root: correctly rounded nodes
        x = Fraction(r)
        for _ in range(3):
            v = sum((cm * x**m for m, cm in enumerate(coef)), Fraction(0))
            d = sum((m * cm * x ** (m - 1) for m, cm in enumerate(coef) if m), Fraction(0))
            x -= v / d
        out.append(float(x))
    out[-1] = 1.0
    return tuple(out)


def _build_radau(s: int, name: str, c: tuple[float, ...] | None = None, dense_error: bool = False) -> RadauTableau:
    """Radau IIA with ``s`` stages from its nodes alone: ``A`` by ``C(s)``, ``T`` from the eigenvectors of
    ``A^-1``, the error weights from the order-``s`` conditions of the embedded solution, the dense output from
    the Lagrange basis; all in float64."""
    c = _radau_nodes(s) if c is None else c
    V = [[c[j] ** (q - 1) for j in range(s)] for q in range(1, s + 1)]  # V[q][j] = c_j^(q-1)
    # C(s): A V^T = R with R[i][q] = c_i^q / q  =>  A = R V^-T; solved as V A^T = R^T.
    R = [[c[i] ** q / q for q in range(1, s + 1)] for i in range(s)]
    At = _solve(V, [[R[i][q] for i in range(s)] for q in range(s)])
    A = [[At[j][i] for j in range(s)] for i in range(s)]
    Ainv = torch.linalg.inv(torch.tensor(A, dtype=torch.float64))
    lam, vec = torch.linalg.eig(Ainv)
    i_real = int(lam.imag.abs().argmin())
    # alpha - i beta (beta > 0): its eigenvector p + i q gives the block [[alpha, -beta], [beta, alpha]] on (p, q).
    i_cplx = sorted((i for i in range(s) if float(lam[i].imag) < 0.0), key=lambda i: float(lam[i].real))
    gamma = float(lam[i_real].real)
    pairs = tuple((float(lam[i].real), -float(lam[i].imag)) for i in i_cplx)
    cols = [(vec[:, i_real] / vec[-1, i_real]).real]  # normalised as Hairer's T (s = 3: last row (1, 1, 0))
    for i in i_cplx:
        v = vec[:, i] / vec[-1, i]
        cols += [v.real, v.imag]
    T = torch.stack(cols, dim=1)
    Ti = torch.linalg.inv(T)
    # Embedded order s with b_hat_0 = 1/gamma: sum_i b_hat_i c_i^(q-1) = 1/q - [q = 1]/gamma, q = 1 .. s.
    b_hat = _solve(V, [[1.0 / q - (1.0 / gamma if q == 1 else 0.0)] for q in range(1, s + 1)])
    b = A[-1]
    e = (torch.tensor([bh[0] - bi for bh, bi in zip(b_hat, b)], dtype=torch.float64) @ Ainv).tolist()
    # Lagrange basis with l_i(0) = 0: l_i(theta) = sum_q P[i][q] theta^(q+1), l_i(c_j) = delta_ij.
    Vq = [[c[j] ** (q + 1) for q in range(s)] for j in range(s)]  # Vq[j][q]
    P = _solve(Vq, [[1.0 if i == j else 0.0 for i in range(s)] for j in range(s)])  # P[q][i]
    dense = tuple(tuple(P[q][i] for q in range(s)) for i in range(s))
    return RadauTableau(
        name=name,
        c=tuple(c),
        a=tuple(tuple(r) for r in A),
        b=tuple(b),
        order=2 * s - 1,
        error_order=s,
        gamma=gamma,
        pairs=pairs,
        T=tuple(tuple(r) for r in T.tolist()),
        T_inv=tuple(tuple(r) for r in Ti.tolist()),
        e=tuple(e),
        dense=dense,
        newton_max_iter=6 + int(2.5 * (s - 3)),
        dense_error_default=dense_error,
        description=f"Radau IIA order {2 * s - 1} (Hairer & Wanner II, IV.8): {s}-stage L-stable collocation, "
        f"simplified Newton on the eigen-decoupled system, embedded order-{s} estimate, collocation "
        "dense output.",
    )


_S6 = math.sqrt(6.0)
RADAU5 = _build_radau(3, "radau5", ((4.0 - _S6) / 10.0, (4.0 + _S6) / 10.0, 1.0))
RADAU9 = _build_radau(5, "radau9", dense_error=True)
RADAU13 = _build_radau(7, "radau13", dense_error=True)
RADAU_METHODS: dict[str, RadauTableau] = {t.name: t for t in (RADAU5, RADAU9, RADAU13)}


def _lagrange(tab: RadauTableau, theta: float) -> list[float]:
    """``l_i(theta)`` of the collocation polynomial (module docstring)."""
    return [sum(p * theta ** (q + 1) for q, p in enumerate(row)) for row in tab.dense]


def _lin(coeffs, xs, base=None):
    """``base + sum_i coeffs_i xs_i`` over nonzero coefficients (out of place: autograd may record it)."""
    out = base
    for ci, xi in zip(coeffs, xs):
        if ci != 0.0:
            out = xi * ci if out is None else torch.add(out, xi, alpha=ci)
    return torch.zeros_like(xs[0]) if out is None else out


def radau_dense(y0: torch.Tensor, Z, tab: RadauTableau, theta: float) -> torch.Tensor:
    """``y0 + sum_i l_i(theta) Z_i``: the step's collocation polynomial (no evaluation of ``f``)."""
    return _lin(_lagrange(tab, theta), Z, y0)


def _factor(J: torch.Tensor, mus: list, h: float, t: float, stats, labels: list[str], method: str):
    """LU factors of ``(mu / h) I - J`` per block, for each ``mu`` of ``mus`` stacked along the batch (one
    factorisation call for all the complex pairs); ``SolverError`` naming ``t``, ``h`` and ``h / mu`` if one is
    singular."""
    n, B = J.shape[-1], J.shape[0]
    if isinstance(mus[0], complex):
        J = J.to(torch.complex128 if J.dtype == torch.float64 else torch.complex64)
    eye = torch.eye(n, dtype=J.dtype, device=J.device)
    W = torch.cat([eye * (mu / h) - J for mu in mus]) if len(mus) > 1 else eye * (mus[0] / h) - J
    LU, piv, info = torch.linalg.lu_factor_ex(W)
    if bool((info > 0).any()):
        idx = int((info > 0).nonzero()[0])
        k, b = divmod(idx, B)
        label, mu = labels[k], mus[k]
        raise SolverError(
            f"Singular iteration matrix ({label} / h) I - J of {method}",
            t,
            h,
            stats.n_steps,
            f"gamma h = h / {label} = {h / mu:.6g}: {label} / h is an eigenvalue of the Jacobian"
            + (f" of sample {b}" if B > 1 else "")
            + "; check options['jacobian'] (a wrong or non-finite Jacobian), or set options['max_step'] to avoid "
            "this step size.",
        )
    return LU, piv


# An attempt as RadauState keeps it until settle: (t, y, h, y1, Z, slow), y1 and Z None when Newton failed.
_Attempt: TypeAlias = tuple[float, torch.Tensor, float, torch.Tensor | None, torch.Tensor | None, bool]


@dataclass
class RadauState:
    """What a Radau IIA stepper keeps between attempts (module docstring).

    Attributes:
        J: the Jacobian ``df/dy`` of the simplified Newton iteration, ``(B, n, n)``; ``None`` before the first.
        jt, jy: the point where ``J`` was formed (``jy`` the very tensor): ``J`` is current for a step from there.
        lu: the real and the stacked complex LU factors of ``(gamma / h) I - J`` and ``(mu_k / h) I - J``.
        lu_h: the step ``lu`` was factored for; ``None`` when ``J`` has changed since.
        eta: Newton's last converged ``theta / (1 - theta)``, the first iteration's rate estimate (1 after a
            failure and before the first step).
        poly: ``(h, Z)`` of the last accepted step, whose collocation polynomial gives the starting values;
            ``None`` on a new start. Set by ``settle(True)`` only: a rejected attempt leaves it in place.
        slow: whether the next step re-forms ``J`` (the last accepted step's iteration was slow, or a new start).
        attempt: the attempt just returned, ``(t, y, h, y1, Z, slow)`` (``y1``, ``Z`` ``None`` when Newton
            failed), until ``settle`` is told the verdict.
        expect: where the next attempt continues the record: ``("retry", t, y)`` after a rejection (the loop
            retries from the same point), ``("end", y1)`` after an acceptance. An attempt from anywhere else (an
            event's reset, a stretch stepped by another stepper, a stop reached without a step after a
            rejection) is a new start: no polynomial, a fresh ``J``. ``None`` before the first attempt.
    """

    J: torch.Tensor | None = None
    jt: float | None = None
    jy: torch.Tensor | None = None
    lu: tuple | None = None
    lu_h: float | None = None
    eta: float = 1.0
    poly: tuple | None = None
    slow: bool = True
    attempt: _Attempt | None = None
    expect: tuple | None = None


class RadauStepper(ImplicitStepper):
    """The Radau IIA step for one solve (module docstring), its state in :class:`RadauState` (``state``).

    ``StepResult.k`` holds the stage increments ``(Z_1, ..., Z_s)`` that the dense output reads; a step whose
    Newton iteration fails is refused with ``StepResult.shrink``. ``checkpoint`` is not used: the kept Jacobian
    and starting values would make a recomputed step differ from the recorded one.
    """

    def __init__(self, func, tab: RadauTableau, checkpoint: bool, opts, problem, error):
        from .rosenbrock import resolve_batch_dims

        super().__init__(func, tab, checkpoint, opts, problem, error)
        self.stats = problem.stats
        self.batch_dims = resolve_batch_dims(opts, problem)
        self.jac = opts.method.jacobian if callable(opts.method.jacobian) else None
        self.min_step = getattr(opts, "min_step", 0.0)
        self.dfactor = getattr(opts, "dfactor", 0.2)
        c, s = tab.c, tab.stages
        self.mus = [complex(al, be) for al, be in tab.pairs]
        eps = torch.finfo(problem.dtype).eps if problem.dtype.is_floating_point else 2.220446049250313e-16
        self.eps = eps
        rtol = error.rtol if error is not None else 1e-6
        rtol = float(rtol.max()) if isinstance(rtol, torch.Tensor) else float(rtol)
        # kappa tol: RADAU's FNEWT, rtol^((s - 1) / (s + 1)) (RADAU5's rtol^(1/2) at s = 3), on untransformed rtol.
        self.fnewt = max(10.0 * eps / max(rtol, 1e-300), min(0.03, rtol ** ((s - 1.0) / (s + 1.0))))
        self.f_tensor = counted_flat_func(problem)
        P = len(self.mus)
        self.labels = ["(alpha + i beta)"] if P == 1 else [f"(alpha_{k} + i beta_{k})" for k in range(1, P + 1)]
        self.T_t, self.Ti_t, self.e_t = self.const(tab.T), self.const(tab.T_inv), self.const(tab.e)
        dense_error = getattr(opts, "dense_error", None)
        self.dense_error = tab.dense_error_default if dense_error is None else dense_error
        # Weights of y0 - p(t0), p the degree-(s-1) polynomial through the stage values: -sum_i L_i(0) Z_i.
        self.l0 = self.const([[-math.prod(-c[j] / (c[i] - c[j]) for j in range(s) if j != i) for i in range(s)]])
        self.p_cont = (s + 1.0) / s
        self.state = RadauState()

    def const(self, rows) -> torch.Tensor:
        return torch.tensor(rows, dtype=self.problem.dtype, device=self.problem.device)

    @staticmethod
    def mix(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``(M (x) I) X`` for stacked stages ``X`` of shape ``(s, *state)``: one matrix product."""
        return (M @ X.reshape(X.shape[0], -1)).view(M.shape[0], *X.shape[1:])

    def continuous_error(self, err: torch.Tensor, Z, y: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        """The embedded estimate, scaled so that its ratio is ``max(r_emb, r_cont^((s+1)/s))`` (module
        docstring); the norm is homogeneous, so scaling the vector scales the loop's ratio."""
        error = self.error
        e_cont = self.mix(self.l0, Z)[0]
        r_emb, r_cont = error.ratio(err, y, y1), error.ratio(e_cont, y, y1)
        r = r_cont**self.p_cont
        if not (math.isfinite(r_emb) and math.isfinite(r)) or r <= r_emb:
            return err
        return err * (r / r_emb) if r_emb > 0.0 else e_cont * (r / r_cont)

    def fresh_jacobian(self, t: float, y: torch.Tensor, f0: torch.Tensor, h: float) -> torch.Tensor:
        """Form ``J`` at ``(t, y)`` into the record and return it."""
        st = self.state
        lin = self.jacobian_at(t, y, f0, h, check_coupling=st.J is None)
        st.J, st.jy, st.jt, st.lu_h = lin.J, y, t, None
        return lin.J

    def factors(self, t: float, h: float, J: torch.Tensor):
        """The real and complex LU factors for ``J`` (the record's), factored anew when ``h`` has changed."""
        st, tab = self.state, self.tab
        if st.lu_h != h:
            st.lu = (
                _factor(J, [tab.gamma], h, t, self.stats, ["gamma"], tab.name),
                _factor(J, self.mus, h, t, self.stats, self.labels, tab.name),
            )
            st.lu_h = h
            self.stats.n_factorizations += 1
        return st.lu

    def norm_stages(self, dZ: torch.Tensor, y: torch.Tensor) -> float:
        """RMS over the stages of the scaled RMS norm of every component (not a user norm or the adjoint's
        seminorm, which may leave components out: :meth:`~neuralode.solvers.control.norms._ErrorNorm.scaled_stages`)."""
        if self.error is None:
            return float(dZ.abs().max())
        return self.error.scaled_stages(dZ, y)

    def newton(self, t: float, y: torch.Tensor, h: float, Z0: torch.Tensor, J: torch.Tensor):
        """``(Z, ok, shrink, theta, iterations)``: the stage increments stacked ``(s, *state)``, or ``ok = False``
        with the factor by which RADAU5 would shrink ``h`` (``None``: the iterates are not finite). ``J``: the
        record's Jacobian."""
        st, tab, func, mix, eps, fnewt = self.state, self.tab, self.func, self.mix, self.eps, self.fnewt
        c, s, gamma, mus, n_iter_max = tab.c, tab.stages, tab.gamma, self.mus, tab.newton_max_iter
        T_t, Ti_t, P = self.T_t, self.Ti_t, len(mus)
        (LUr, pr), (LUc, pc) = self.factors(t, h, J)
        B, n = J.shape[0], J.shape[-1]
        shape = y.shape
        mu_h = torch.tensor([mu / h for mu in mus], dtype=LUc.dtype, device=y.device).view(P, *([1] * y.dim()))
        Z = Z0
        W = mix(Ti_t, Z)
        eta = max(st.eta, eps) ** 0.8
        d_old, thq_old, theta = None, None, eta
        for k in range(1, n_iter_max + 1):
            F = torch.stack([func(t + c[i] * h, y + Z[i]) for i in range(s)])
            G = mix(Ti_t, F)
            r_real = torch.add(G[0], W[0], alpha=-gamma / h)
            dW0 = torch.linalg.lu_solve(LUr, pr, r_real.reshape(B, n, 1)).reshape(1, *shape)
            r_cplx = torch.complex(G[1::2], G[2::2]) - torch.complex(W[1::2], W[2::2]) * mu_h  # (P, *state)
            dWc = torch.linalg.lu_solve(LUc, pc, r_cplx.reshape(P * B, n, 1)).reshape(P, *shape)
            dW = torch.cat([dW0, torch.stack([dWc.real, dWc.imag], 1).reshape(2 * P, *shape)])
            self.stats.n_linear_solves += 1
            dZ = mix(T_t, dW)
            d = self.norm_stages(dZ, y)
            if not math.isfinite(d):  # non-finite stages
                return None, False, None, theta, k
            if d_old is not None:
                thq = d / d_old
                theta = thq if thq_old is None else math.sqrt(thq * thq_old)
                thq_old = thq
                if theta >= 0.99:
                    return None, False, 0.5, theta, k
                eta = theta / (1.0 - theta)
                predicted = eta * d * theta ** (n_iter_max - k) / fnewt
                if predicted >= 1.0:
                    q = max(1e-4, min(20.0, predicted))
                    return None, False, 0.8 * q ** (-1.0 / (4.0 + n_iter_max - k)), theta, k
            d_old = max(d, eps)
            W = W + dW
            Z = Z + dZ
            if eta * d <= fnewt or d == 0.0:
                st.eta = eta
                return Z, True, 1.0, theta, k
        return None, False, 0.5, theta, n_iter_max

    def starting_values(self, y: torch.Tensor, h: float) -> torch.Tensor:
        tab, s = self.tab, self.tab.stages
        poly = self.state.poly
        if poly is None:
            return torch.zeros((s, *y.shape), dtype=y.dtype, device=y.device)
        h_old, Z_old = poly
        # Z_i^0 = q_old(t0 + c_i h) - y0 = sum_j l_j(1 + c_i h / h_old) Z_old_j - Z_old_s.
        E = [_lagrange(tab, 1.0 + tab.c[i] * h / h_old) for i in range(s)]
        for row in E:
            row[-1] -= 1.0
        return self.mix(self.const(E), Z_old)

    def step(self, t: float, y: torch.Tensor, f0, h: float):
        st, tab, error, stats, func = self.state, self.tab, self.error, self.stats, self.func
        s, gamma = tab.stages, tab.gamma
        if f0 is None:
            f0 = func(t, y)
        expect = st.expect
        retry = expect is not None and expect[0] == "retry" and expect[1] == t and expect[2] is y
        if expect is not None and not retry and not (expect[0] == "end" and expect[1] is y):
            st.poly, st.slow = None, True  # a new start (event reset, new solve segment): fresh Jacobian
        st.expect = None
        J = st.J
        current = J is not None and st.jy is y and st.jt == t
        if J is None or (not current and (retry or st.slow)):
            J = self.fresh_jacobian(t, y, f0, h)
            current = True
        extra = retry or st.poly is None  # first step (of a stretch) or after a rejection: (8.20)
        Z0 = self.starting_values(y, h)
        Z, ok, shrink, theta, iters = self.newton(t, y, h, Z0, J)
        if not ok and not current:
            J = self.fresh_jacobian(t, y, f0, h)  # the kept Jacobian is stale: re-form it and retry the same h
            Z, ok, shrink, theta, iters = self.newton(t, y, h, Z0, J)
        if not ok:
            st.attempt = (t, y, h, None, None, True)
            if abs(h) <= max(self.min_step, 64 * 2.220446049250313e-16 * max(1.0, abs(t))):
                raise SolverError(
                    f"Newton iteration of {tab.name} failed to converge at the minimum step size",
                    t,
                    h,
                    stats.n_steps,
                    "func may be discontinuous or non-finite here, or options['jacobian'] wrong; loosen rtol/atol, "
                    "lower options['min_step'], or try method='rodas5p' (no iteration).",
                )
            st.eta = 1.0
            # Refused: RADAU5's reduction, within the controller's dfactor limit (its own rejections' limit);
            # non-finite iterates take that limit, as a non-finite error estimate does.
            factor = self.dfactor if shrink is None else max(self.dfactor, shrink)
            return f0, StepResult(y, None, (f0,) * s, shrink=factor)
        y1 = y + Z[-1]
        (LUr, pr), _ = self.factors(t, h, J)
        B, n = J.shape[0], J.shape[-1]
        ZE = self.mix(self.e_t.view(1, s), Z)[0]  # sum_i e_i Z_i; the estimate's right-hand side: f0 + (gamma / h) ZE
        err = torch.linalg.lu_solve(LUr, pr, torch.add(f0, ZE, alpha=gamma / h).reshape(B, n, 1)).reshape(y.shape)
        stats.n_linear_solves += 1
        if extra and error is not None and error.ratio(err, y, y1) > 1.0:
            f_err = func(t, y + err)
            err = torch.linalg.lu_solve(LUr, pr, torch.add(f_err, ZE, alpha=gamma / h).reshape(B, n, 1)).reshape(
                y.shape
            )
            stats.n_linear_solves += 1
        if self.dense_error and error is not None:
            err = self.continuous_error(err, Z, y, y1)
        slow = iters > 2 and theta > JAC_REUSE_THETA
        st.attempt = (t, y, h, y1, Z, slow)
        return f0, StepResult(y1, err, tuple(Z.unbind(0)))

    def _settle(self, accepted: bool) -> None:
        """The loop's verdict on the attempt just returned: an accepted step's polynomial becomes the next
        starting values and its iteration's speed decides whether ``J`` is kept; a rejected one changes neither
        (the retry starts from the same point with the same starting polynomial)."""
        st = self.state
        # The loop settles each attempt once, after step has recorded it: attempt is not None here.
        t, y, h, y1, Z, slow = cast(_Attempt, st.attempt)
        st.attempt = None
        if accepted and y1 is not None:
            st.poly, st.slow = (h, Z), slow
            st.expect = ("end", y1)
        else:
            st.expect = ("retry", t, y)


def make_stepper(func, tab: RadauTableau, checkpoint: bool, opts, problem, error):
    """The :class:`RadauStepper` of one solve."""
    return RadauStepper(func, tab, checkpoint, opts, problem, error)
