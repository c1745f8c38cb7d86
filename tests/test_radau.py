"""radau5 (and, where the behaviour is shared, radau9 and radau13): the Radau IIA coefficients and their eigen-transformation, the measured order, stiff solves against
scipy's Radau at the same tolerance (error and accepted steps), batches, dense output, gradients and bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from neuralode import SolverError, odeint, odeint_adjoint, solve
from neuralode.solvers.methods.radau import RADAU5, RadauTableau, radau_dense
from neuralode.solvers.methods.registry import IMPLICIT_METHODS, METHODS
from neuralode.solvers.methods.stiff import Radau
from tests.problems import robertson, robertson_jac_np, robertson_np, stiff_vdp

F64 = torch.float64
RADAU_NAMES = [name for name, m in METHODS.items() if isinstance(m, Radau)]  # every Radau IIA method registered
S6 = math.sqrt(6.0)


# --------------------------------------------------------------------------------------------------------------
# Coefficients


def test_collocation_conditions_and_closed_forms():
    tab = RADAU5
    assert IMPLICIT_METHODS["radau5"] is tab
    c, A, b = tab.c, tab.a, tab.b
    # B(5): the quadrature is exact for polynomials of degree 4; C(3): each stage for degree 2.
    for q in range(1, 6):
        assert abs(sum(bi * ci ** (q - 1) for bi, ci in zip(b, c)) - 1.0 / q) < 1e-15
    assert abs(sum(bi * ci**5 for bi, ci in zip(b, c)) - 1.0 / 6.0) > 1e-4  # not B(6): order exactly 5
    for i in range(3):
        for q in range(1, 4):
            assert abs(sum(A[i][j] * c[j] ** (q - 1) for j in range(3)) - c[i] ** q / q) < 1e-15
    # Hairer & Wanner II, Table IV.5.6.
    closed = [
        [(88 - 7 * S6) / 360, (296 - 169 * S6) / 1800, (-2 + 3 * S6) / 225],
        [(296 + 169 * S6) / 1800, (88 + 7 * S6) / 360, (-2 - 3 * S6) / 225],
        [(16 - S6) / 36, (16 + S6) / 36, 1 / 9],
    ]
    assert np.abs(np.array(A) - np.array(closed)).max() < 1e-15
    assert b == A[2] and c[2] == 1.0


def test_eigen_transformation_reproduces_a_inverse():
    tab = RADAU5
    A = torch.tensor(tab.a, dtype=F64)
    T, Ti = torch.tensor(tab.T, dtype=F64), torch.tensor(tab.T_inv, dtype=F64)
    ((alpha, beta),) = tab.pairs
    Lam = torch.tensor([[tab.gamma, 0, 0], [0, alpha, -beta], [0, beta, alpha]], dtype=F64)
    Ainv = torch.linalg.inv(A)
    assert float((T @ Lam @ Ti - Ainv).abs().max()) < 1e-14 * float(Ainv.abs().max())
    assert float((T @ Ti - torch.eye(3, dtype=F64)).abs().max()) < 1e-14
    # The eigenvalues in closed form (Hairer & Wanner II, IV.8, (8.13)): gamma = 1 / gamma_0 is the real root
    # of the characteristic polynomial of A^-1, lambda^3 - 9 lambda^2 + 36 lambda - 60.
    for lam in (complex(tab.gamma), complex(alpha, beta)):
        assert abs(lam**3 - 9 * lam**2 + 36 * lam - 60) < 1e-12
    assert beta > 0 and abs(tab.gamma - 3.637834252744496) < 1e-13


def test_error_weights_are_hairers():
    # (8.19)-(8.20): y_hat - y1 = gamma_0 h f0 + sum e_i Z_i with gamma e = (-(13 + 7 sqrt6), -13 + 7 sqrt6, -1) / 3.
    scaled = [x * RADAU5.gamma for x in RADAU5.e]
    expected = [-(13 + 7 * S6) / 3, (-13 + 7 * S6) / 3, -1.0 / 3.0]
    assert max(abs(a - b) for a, b in zip(scaled, expected)) < 1e-13


def test_dense_polynomial_interpolates_the_stages():
    y0 = torch.tensor([1.0, -2.0], dtype=F64)
    Z = (torch.tensor([0.1, 0.2], dtype=F64), torch.tensor([0.3, -0.1], dtype=F64), torch.tensor([0.5, 0.7], dtype=F64))
    assert torch.equal(radau_dense(y0, Z, RADAU5, 0.0), y0)
    for ci, zi in zip(RADAU5.c, Z):
        assert torch.allclose(radau_dense(y0, Z, RADAU5, ci), y0 + zi, atol=1e-15)


def test_tableau_is_checked_when_built():
    fields = {
        f: getattr(RADAU5, f)
        for f in (
            "name",
            "c",
            "a",
            "b",
            "order",
            "error_order",
            "gamma",
            "pairs",
            "T",
            "T_inv",
            "e",
            "dense",
            "newton_max_iter",
        )
    }
    RadauTableau(**fields)
    bad_a = (RADAU5.a[0], (RADAU5.a[1][0] + 1e-6, *RADAU5.a[1][1:]), RADAU5.a[2])
    with pytest.raises(ValueError, match=re.escape("RadauTableau 'radau5': C(3) fails at row 1")):
        RadauTableau(**{**fields, "a": bad_a})
    with pytest.raises(ValueError, match="does not reproduce A"):
        RadauTableau(**{**fields, "pairs": ((RADAU5.pairs[0][0], RADAU5.pairs[0][1] * 1.001),)})
    with pytest.raises(ValueError, match="embedded solution fails order 1"):
        RadauTableau(**{**fields, "e": (RADAU5.e[0] * 1.01, *RADAU5.e[1:])})


# --------------------------------------------------------------------------------------------------------------
# Order


def _rot(t, y):  # y' = (1 + t/2) [[0, 1], [-1, 0]] y: y = R(t + t^2/4) y0 (non-autonomous, smooth)
    return torch.stack([y[..., 1], -y[..., 0]], dim=-1) * (1.0 + 0.5 * t)


def _rot_exact(t: float) -> torch.Tensor:
    th = t + t * t / 4
    return torch.tensor([math.cos(th), -math.sin(th)], dtype=F64)


class _Tight:
    """An error norm in which Newton iterates to rounding: absolute 1e-13, with the ``rtol`` that sets RADAU5's
    Newton tolerance."""

    rtol = 1e-10

    def scaled(self, x, y):
        return float(x.abs().max()) / 1e-13

    scaled_all = scaled

    def scaled_stages(self, X, y):
        return float(X.abs().max()) / 1e-13

    def ratio(self, err, y0, y1, aux=None):
        return float(err.abs().max()) / 1e-13


def _one_step(h: float):
    from neuralode.solvers.methods.implicit_options import ImplicitOptions
    from neuralode.solvers.methods.radau import make_stepper
    from neuralode.solvers.problem import _Problem
    from neuralode.solvers.solution import SolverStats

    y0 = _rot_exact(0.0)
    problem = _Problem(_rot, (y0,), False, SolverStats())
    take = make_stepper(problem, RADAU5, False, ImplicitOptions(), problem, _Tight())
    return take(0.0, 0.0, y0, None, h)[1]


def test_local_orders_of_the_step_and_of_its_error_estimate():
    """One step from the exact solution: ``y1`` has local error ``O(h^6)`` (order 5), the error estimate is
    ``O(h^4)`` (the embedded order 3: the controller's exponent 1/4), and the collocation polynomial is
    ``O(h^4)`` inside the step (stage order 3)."""
    hs = [0.1 * 2.0**-k for k in range(4)]
    local, est, mid = [], [], []
    for h in hs:
        step = _one_step(h)
        assert bool(torch.isfinite(step.y_err).all()) and step.y_err.abs().max() < 1.0  # Newton converged
        local.append(float((step.y1 - _rot_exact(h)).abs().max()))
        est.append(float(step.y_err.abs().max()))
        mid.append(float((radau_dense(_rot_exact(0.0), step.k, RADAU5, 0.5) - _rot_exact(h / 2)).abs().max()))
    for errors, order in ((local, 6), (est, 4), (mid, 4)):
        slope = float(np.polyfit(np.log(hs), np.log(errors), 1)[0])
        assert abs(slope - order) < 0.3, (order, errors, slope)


# --------------------------------------------------------------------------------------------------------------
# Stiff problems against scipy's Radau at the same tolerance

ROB_T = np.concatenate([[0.0], np.geomspace(1e-4, 1e5, 10)])


def _scipy(f_np, jac_np, y0, times, rtol, atol):
    r = solve_ivp(f_np, (times[0], times[-1]), y0, method="Radau", rtol=rtol, atol=atol, jac=jac_np, dense_output=True)
    return r.sol(times).T, len(r.t) - 1


@pytest.fixture(scope="module")
def robertson_reference():
    return _scipy(robertson_np, robertson_jac_np, [1.0, 0.0, 0.0], ROB_T, 1e-13, 1e-19)[0]


def _err(ys, ref, scale):
    return float(np.max(np.abs(ys - ref) / (np.abs(ref) + scale)))


# Bounds on (error, accepted steps) relative to scipy's Radau at the same rtol. Measured: radau5 at rtol 1e-5
# 0.7x scipy's error in 0.98x its steps, at 1e-8 0.97x in 0.93x; radau9 at 1e-5 0.11x in 0.50x, at 1e-8 0.011x
# in 0.30x; radau13 at 1e-5 0.012x in 0.34x, at 1e-8 0.0045x in 0.13x.
_ROBERTSON_BOUNDS = {"radau5": (1.5, 1.05), "radau9": (0.5, 0.6), "radau13": (0.5, 0.5)}


@pytest.mark.parametrize("method", RADAU_NAMES)
@pytest.mark.parametrize("rtol", [1e-5, 1e-8])
def test_robertson_error_and_steps_against_scipy_radau(method, rtol, robertson_reference):
    scale = 1e-6
    sol = solve(
        robertson,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        torch.tensor(ROB_T, dtype=F64),
        rtol=rtol,
        atol=rtol * scale,
        method=method,
    )
    ys_sp, steps_sp = _scipy(robertson_np, robertson_jac_np, [1.0, 0.0, 0.0], ROB_T, rtol, rtol * scale)
    err, err_sp = _err(sol.ys.numpy(), robertson_reference, scale), _err(ys_sp, robertson_reference, scale)
    st = sol.stats
    e_bound, s_bound = _ROBERTSON_BOUNDS[method]
    assert err <= e_bound * err_sp and st.n_accepted <= s_bound * steps_sp, (err, err_sp, st.n_accepted, steps_sp)
    assert np.abs(sol.ys.numpy().sum(axis=1) - 1.0).max() < 1e-12  # mass: a linear invariant
    # One real-and-complex factorisation pair per step size tried at most, and Jacobians kept across steps.
    assert st.n_factorizations <= st.n_steps + st.n_jac_evals and st.n_jac_evals < st.n_accepted


def test_van_der_pol_mu_1000_against_scipy_radau():
    """Through the first relaxation jump (near t = 807), where the step size falls by orders of magnitude."""
    f, f_np, jac_np = stiff_vdp(1000.0)
    times = np.linspace(0.0, 1000.0, 5)
    ref = _scipy(f_np, jac_np, [2.0, 0.0], times, 1e-10, 1e-13)[0]
    rtol, scale = 1e-5, 1e-3
    sol = solve(
        f,
        torch.tensor([2.0, 0.0], dtype=F64),
        torch.tensor(times, dtype=F64),
        rtol=rtol,
        atol=rtol * scale,
        method="radau5",
    )
    ys_sp, steps_sp = _scipy(f_np, jac_np, [2.0, 0.0], times, rtol, rtol * scale)
    err, err_sp = _err(sol.ys.numpy(), ref, scale), _err(ys_sp, ref, scale)
    # Measured: error 5.7e-6 against scipy's 5.3e-6, 253 accepted steps against 270.
    assert err <= 1.5 * err_sp and sol.stats.n_accepted <= steps_sp, (err, err_sp, sol.stats.n_accepted, steps_sp)


# --------------------------------------------------------------------------------------------------------------
# Batches, dense output, float32


def _rates(B: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.tensor([0.04, 3e7, 1e4], dtype=F64) * torch.exp(
        torch.empty(B, 3, dtype=F64).uniform_(-0.5, 0.5, generator=g)
    )


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_batch_of_different_rates_equals_each_system_alone(method):
    B = 4
    k = _rates(B)

    def f(t, y):  # (B, 3): row b has its own rates; batch_dims = 1 (the default) makes the rows independent
        return robertson(t, y, (k[:, 0], k[:, 1], k[:, 2]))

    t = torch.tensor([0.0, 1e-3, 1.0, 1e2], dtype=F64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64).repeat(B, 1)
    sol = solve(f, y0, t, rtol=1e-7, atol=1e-13, method=method)
    assert sol.ys.shape == (4, B, 3)
    for b in range(B):
        kb = tuple(float(x) for x in k[b])
        alone = solve(lambda tt, y: robertson(tt, y, kb), y0[b], t, rtol=1e-7, atol=1e-13, method=method)
        rel = (sol.ys[:, b] - alone.ys).abs() / (alone.ys.abs() + 1e-10)
        assert float(rel.max()) < 1e-5, (b, float(rel.max()))
    # The batch's Jacobian is one autograd evaluation: nfe stays that of one system, not B of them.
    assert sol.stats.nfe < 5 * IMPLICIT_METHODS[method].stages * sol.stats.n_steps


def test_dense_output_between_steps(robertson_reference):
    """Outputs between step ends come from the collocation polynomial (stage order 3, so less accurate than the
    step ends, as scipy's Radau's dense output); ``dense=True`` keeps the same polynomials."""
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    t = torch.tensor(ROB_T, dtype=F64)
    rtol, scale = 1e-7, 1e-6
    between = solve(robertson, y0, t, rtol=rtol, atol=rtol * scale, method="radau5")
    landing = solve(
        robertson,
        y0,
        t,
        rtol=rtol,
        atol=rtol * scale,
        method="radau5",
        options={"step_t": [float(x) for x in ROB_T[1:-1]]},
    )
    ys_sp, _ = _scipy(robertson_np, robertson_jac_np, [1.0, 0.0, 0.0], ROB_T, rtol, rtol * scale)
    e_between = _err(between.ys.numpy(), robertson_reference, scale)
    e_landing = _err(landing.ys.numpy(), robertson_reference, scale)
    e_scipy = _err(ys_sp, robertson_reference, scale)  # scipy's dense output is the same kind of polynomial
    # Measured: 2.4e-8 between, 1.5e-9 landing, 1.2e-8 scipy (dense output).
    assert e_landing < e_between < 4.0 * e_scipy, (e_between, e_landing, e_scipy)
    dense = solve(robertson, y0, t[[0, -1]], rtol=rtol, atol=rtol * scale, method="radau5", options={"dense": True})
    assert dense.stats.n_accepted == between.stats.n_accepted
    assert torch.allclose(dense.evaluate(t[1:-1]), between.ys[1:-1], rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_dense_jacobian_and_tuple_state_agree_with_the_batched_solve(method):
    def f(t, y):  # (3, 2): three independent stiff-and-slow pairs
        return torch.stack([-100.0 * (y[:, 0] - torch.cos(t)), -y[:, 1] * y[:, 0]], dim=-1)

    y0 = torch.tensor([[1.0, 1.0], [0.5, 2.0], [0.0, -1.0]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    kw = dict(rtol=1e-8, atol=1e-10, method=method)
    batched = solve(f, y0, t, **kw)
    dense = solve(f, y0, t, options={"jacobian": "dense"}, **kw)
    tup = solve(lambda tt, y: tuple(f(tt, torch.stack(y, dim=-1)).unbind(-1)), tuple(y0.unbind(-1)), t, **kw)
    ref = solve_ivp(
        lambda tt, y: f(torch.tensor(tt, dtype=F64), torch.from_numpy(y).view(3, 2)).reshape(-1).numpy(),
        (0.0, 2.0),
        y0.reshape(-1).numpy(),
        method="Radau",
        t_eval=t.numpy(),
        rtol=1e-10,
        atol=1e-12,
    ).y.T
    for ys in (batched.ys, dense.ys, torch.stack(tup.ys, dim=-1)):
        assert np.abs(ys.reshape(3, -1).numpy() - ref).max() < 1e-7
    assert batched.stats.n_accepted == dense.stats.n_accepted


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_float32_state(method):
    f, _, _ = stiff_vdp(10.0)
    y0 = torch.tensor([2.0, 0.0])
    t = torch.tensor([0.0, 5.0, 10.0])
    sol32 = solve(f, y0, t, rtol=1e-4, atol=1e-6, method=method)
    sol64 = solve(f, y0.double(), t.double(), rtol=1e-9, atol=1e-12, method=method)
    assert sol32.ys.dtype == torch.float32
    assert float((sol32.ys.double() - sol64.ys).abs().max()) < 1e-2


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_event_located_on_the_collocation_polynomial(method):
    from neuralode import Event

    # y' = -50 (y - cos t): stiff relaxation onto cos t; the event y = 0 falls near pi/2 (first crossing).
    def f(t, y):
        return -50.0 * (y - torch.cos(t))

    y0 = torch.tensor([1.0], dtype=F64)
    ev = Event(lambda t, y: y[0], terminal=True)
    sol = solve(f, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-9, atol=1e-12, method=method, events=[ev])
    ref = solve_ivp(
        lambda t, y: -50.0 * (y - math.cos(t)),
        (0, 3),
        [1.0],
        method="Radau",
        rtol=1e-12,
        atol=1e-14,
        events=lambda t, y: y[0],
    )
    assert abs(float(sol.events[0].t) - ref.t_events[0][0]) < 1e-7


# --------------------------------------------------------------------------------------------------------------
# Gradients


class _Robertson(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.log_k = torch.nn.Parameter(torch.log(torch.tensor([0.04, 3e7, 1e4], dtype=F64)))

    def forward(self, t, y):
        return robertson(t, y, tuple(torch.exp(self.log_k)))


_GT = torch.tensor([0.0, 1e-3, 0.1, 1.0], dtype=F64)
_W = torch.tensor([1.0, 1e4, 1.0], dtype=F64)


def _loss(model, solver=odeint, rtol=1e-9, method="radau5", **kw):
    ys = solver(model, torch.tensor([1.0, 0.0, 0.0], dtype=F64), _GT, rtol=rtol, atol=rtol * 1e-6, method=method, **kw)
    return (ys[1:] * _W).sum()


@pytest.fixture(scope="module")
def finite_differences():
    model = _Robertson()
    base = model.log_k.detach().clone()
    out = []
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=F64)
            e[i] = 1e-5
            model.log_k.copy_(base + e)
            up = _loss(model)
            model.log_k.copy_(base - e)
            out.append(float((up - _loss(model)) / 2e-5))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_backprop_through_radau_matches_finite_differences(method, finite_differences):
    model = _Robertson()
    _loss(model, method=method).backward()
    fd = finite_differences
    rel = ((model.log_k.grad - fd).abs() / fd.abs()).max()
    assert rel < 1e-5, (model.log_k.grad, fd)
    assert fd.abs().min() > 1e-2


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_adjoint_with_radau_backward_solve(method, finite_differences):
    model = _Robertson()
    # The backward solve is itself stiff (the method on the adjoint, y(t) from the forward collocation
    # polynomials); rtol 1e-7 for both solves keeps the test short, against differences of rtol-1e-9 solves.
    _loss(model, odeint_adjoint, rtol=1e-7, method=method, adjoint_method=method).backward()
    fd = finite_differences
    rel = ((model.log_k.grad - fd).abs() / fd.abs()).max()
    assert rel < 1e-4, (model.log_k.grad, fd)


# --------------------------------------------------------------------------------------------------------------
# Bad input


def test_callable_jacobian_of_the_wrong_shape():
    with pytest.raises(ValueError, match=re.escape("options['jacobian'] callable returned shape (2, 2)")):
        solve(
            robertson,
            torch.tensor([1.0, 0.0, 0.0], dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="radau5",
            options={"jacobian": lambda t, y: torch.eye(2, dtype=F64)},
        )


def test_callable_jacobian_gives_the_same_solution():
    def jac(t, y):
        return torch.tensor(robertson_jac_np(float(t), y.tolist()), dtype=F64)

    y0, t = torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 1e3], dtype=F64)
    auto = solve(robertson, y0, t, rtol=1e-8, atol=1e-14, method="radau5")
    analytic = solve(robertson, y0, t, rtol=1e-8, atol=1e-14, method="radau5", options={"jacobian": jac})
    assert torch.allclose(auto.ys, analytic.ys, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_singular_iteration_matrix_reports_t_dt_and_gamma_h(method):
    h, gamma = 0.5, IMPLICIT_METHODS[method].gamma
    lam = gamma / h  # J = lam I makes (gamma / h) I - J exactly zero

    with pytest.raises(SolverError) as info:
        solve(
            lambda t, y: lam * y,
            torch.ones(3, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method=method,
            options={"first_step": h},
        )
    message = str(info.value)
    assert message.startswith(
        f"Singular iteration matrix (gamma / h) I - J of {method} at t=0 with dt=0.5 after 0 steps."
    )
    assert f"gamma h = h / gamma = {h / gamma:.6g}" in message


def test_slow_newton_rejects_with_radau5s_step_reduction():
    """A step far too long for the simplified Newton iteration (J from y0 on a strongly nonlinear decay) fails
    as "too slow" after two iterations, with the prediction above RADAU5's cap of 20: the step is refused with
    ``shrink`` RADAU5's ``0.8 * 20^(-1/8)`` (no error estimate, not the controller's ``dfactor``), the loop
    rejects it and retries from the same point at that fraction of the step, and the solve proceeds from
    smaller steps."""
    from neuralode.solvers.control.norms import _ErrorNorm
    from neuralode.solvers.methods.implicit_options import ImplicitOptions
    from neuralode.solvers.methods.radau import make_stepper
    from neuralode.solvers.problem import _Problem
    from neuralode.solvers.solution import SolverStats

    def f(t, y):
        return -(y**3) * torch.exp(y)

    y0, h = torch.tensor([1.0, 2.0], dtype=F64), 10.0
    problem = _Problem(f, (y0,), False, SolverStats())
    error = _ErrorNorm(problem, 1e-6, 1e-9, None)
    _, step = make_stepper(problem, RADAU5, False, ImplicitOptions(), problem, error)(0, 0.0, y0, None, h)
    assert step.y1 is y0 and step.y_err is None and problem.stats.n_linear_solves == 2  # two iterations, no estimate
    assert step.shrink == 0.8 * 20.0 ** (-1.0 / 8.0)

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tried, self.rejected = [], []

        def forward(self, t, y):
            return f(t, y)

        def callback_step(self, t, y, dt):
            self.tried.append((float(t), float(dt)))

        def callback_reject_step(self, t, y, dt):
            self.rejected.append((float(t), float(dt)))

    rec = Recorder()
    sol = solve(
        rec, y0, torch.tensor([0.0, 10.0], dtype=F64), rtol=1e-6, atol=1e-9, method="radau5", options={"first_step": h}
    )
    ref = solve_ivp(lambda t, y: -(y**3) * np.exp(y), (0, 10), [1.0, 2.0], method="Radau", rtol=1e-12, atol=1e-14).y[
        :, -1
    ]
    assert np.abs(sol.ys[-1].numpy() - ref).max() < 1e-6
    # The first attempt is refused and retried from t = 0 at 0.8 * 20^(-1/8) of it, exactly.
    assert rec.rejected[0] == (0.0, h) and rec.tried[1] == (0.0, h * step.shrink)
    assert sol.stats.n_rejected == len(rec.rejected) >= 1
    assert sol.stats.n_accepted + sol.stats.n_rejected == len(rec.tried)


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_non_finite_func_stops_where_it_turns_non_finite(method):
    def f(t, y):  # NaN once y falls below 0.5 (at t = ln 2)
        return torch.where(y < 0.5, torch.full_like(y, math.nan), -y)

    with pytest.raises(SolverError, match=method + r" failed to converge at the minimum step size at t=0\.6931"):
        solve(f, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method=method)


@pytest.mark.parametrize("method", RADAU_NAMES)
def test_newton_failure_at_the_minimum_step(method):
    # func jumps by 1e6 at y = 0.5: no step size makes the simplified Newton iteration settle across it.
    def f(t, y):
        return torch.where(y < 0.5, torch.ones_like(y), -1e6 * (1 + t) * torch.ones_like(y))

    with pytest.raises(SolverError, match=f"Newton iteration of {method} failed to converge at the minimum step size"):
        solve(
            f,
            torch.zeros(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method=method,
            rtol=1e-8,
            atol=1e-10,
            options={"min_step": 1e-3},
        )
