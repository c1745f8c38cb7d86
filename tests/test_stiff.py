"""The stiff methods: Rosenbrock coefficient sets (order conditions), their steps (measured local orders), solves
against scipy's Radau on stiff problems, per-sample batched Jacobians, and the bad-input errors.

Every method-level test is parametrised over ``IMPLICIT_METHODS``, so registering a method tests it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from neuralode import SolverError, get_tableau, solve
from neuralode.solvers.methods.jacobian import autograd_linearisation, batched_vjp
from neuralode.solvers.methods.registry import IMPLICIT_METHODS
from neuralode.solvers.methods.rosenbrock import factor, rosenbrock_dense, rosenbrock_step
from neuralode.solvers.methods.rosenbrock_tableaus import ROSENBROCK_METHODS, RosenbrockTableau
from neuralode.solvers.solution import SolverStats
from tests.problems import robertson as _robertson
from tests.problems import robertson_jac_np as _robertson_jac_np
from tests.problems import robertson_np as _robertson_np
from tests.problems import stiff_vdp as _vdp
from tests.rounding import assert_equal_to_rounding

F64 = torch.float64
ROSENBROCK = list(ROSENBROCK_METHODS)


# ---------------------------------------------------------------------------------------------------------------
# Order conditions (Hairer & Wanner II, IV.7, Table 7.1 and Theorem 7.?): for a rooted tree t, with
# beta = alpha + Gamma (gamma on the diagonal), sum_j b_j Phi_j(t) = 1 / density(t), where Phi of a leaf is 1,
# a vertex with exactly one child contributes sum_k beta_jk Phi_k(child) (the Jacobian terms) and a vertex with
# several children the product over them of sum_k alpha_jk Phi_k(child).


def _trees(order: int) -> list[tuple]:
    """All rooted trees with ``order`` vertices, each a sorted tuple of its children."""
    if order == 1:
        return [()]
    out = set()

    def forests(rem: int, largest):
        if rem == 0:
            yield ()
            return
        for k in range(rem, 0, -1):
            for t in _trees(k):
                key = (k, t)
                if largest is not None and key > largest:
                    continue
                for rest in forests(rem - k, key):
                    yield (t, *rest)

    for children in forests(order - 1, None):
        out.add(tuple(sorted(children)))
    return sorted(out)


def _size(t) -> int:
    return 1 + sum(_size(c) for c in t)


def _density(t) -> int:
    return _size(t) * math.prod(_density(c) for c in t)


def _phi_full(t, A, s):
    """Butcher's elementary weights of tree ``t`` for an implicit method: every edge uses the full
    stage matrix ``A`` (ESDIRK and the fixed-grid implicit methods)."""
    out = [1.0] * s
    for child in t:
        v = _phi_full(child, A, s)
        out = [out[j] * sum(A[j][k] * v[k] for k in range(s)) for j in range(s)]
    return out


def _phi(t, alpha, beta, s):
    if not t:
        return [1.0] * s
    if len(t) == 1:
        v = _phi(t[0], alpha, beta, s)
        return [sum(beta[j][k] * v[k] for k in range(s)) for j in range(s)]
    out = [1.0] * s
    for child in t:
        v = _phi(child, alpha, beta, s)
        out = [out[j] * sum(alpha[j][k] * v[k] for k in range(s)) for j in range(s)]
    return out


def _residuals(tab: RosenbrockTableau, order: int, embedded: bool) -> list[float]:
    alpha, Gamma, b, b_hat = tab.standard()
    s = tab.stages
    beta = [[alpha[i][j] + Gamma[i][j] for j in range(s)] for i in range(s)]
    w = b_hat if embedded else b
    return [sum(wi * x for wi, x in zip(w, _phi(t, alpha, beta, s))) - 1.0 / _density(t) for t in _trees(order)]


def test_tree_count():
    assert [len(_trees(p)) for p in range(1, 7)] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("name", ROSENBROCK)
def test_order_conditions(name):
    tab = ROSENBROCK_METHODS[name]
    for embedded, order in ((False, tab.order), (True, tab.error_order)):
        for p in range(1, order + 1):
            assert max(abs(r) for r in _residuals(tab, p, embedded)) < 1e-12, (name, embedded, p)
        # The claimed order is exact: some condition of the next order fails.
        assert max(abs(r) for r in _residuals(tab, order + 1, embedded)) > 1e-4, (name, embedded, order + 1)


def test_rodas5p_is_stiffly_accurate_and_rosenbrock23_fsal():
    rodas = ROSENBROCK_METHODS["rodas5p"]
    alpha, Gamma, b, _ = rodas.standard()
    # Stiffly accurate: b is the last row of beta = alpha + Gamma, so y1 is the last stage's solution and
    # the stability function vanishes at infinity.
    assert max(abs(b[j] - (alpha[-1][j] + Gamma[-1][j])) for j in range(rodas.stages)) < 1e-12
    assert not rodas.fsal and ROSENBROCK_METHODS["rosenbrock23"].fsal


def _stability(tab: RosenbrockTableau, z: complex) -> complex:
    """R(z) for y' = lambda y, z = h lambda: (I - z beta)^-1 1 solved with the classical coefficients."""
    alpha, Gamma, b, _ = tab.standard()
    s = tab.stages
    k: list[complex] = []
    for i in range(s):
        rhs = 1 + z * sum(alpha[i][j] * k[j] for j in range(i)) + z * sum(Gamma[i][j] * k[j] for j in range(i))
        k.append(rhs / (1 - z * tab.gamma))
    return 1 + z * sum(bi * ki for bi, ki in zip(b, k))


@pytest.mark.parametrize("name", ROSENBROCK)
def test_l_stable(name):
    tab = ROSENBROCK_METHODS[name]
    assert abs(_stability(tab, -1e8)) < 1e-6
    for z in (-0.5, -5.0, -50.0, complex(-1.0, 30.0), complex(0.0, 3.0), complex(-1e-3, 100.0)):
        assert abs(_stability(tab, z)) <= 1.0 + 1e-12, (name, z)


def test_tableau_is_checked_when_built():
    good = ROSENBROCK_METHODS["rosenbrock23"]
    fields = dict(
        name="bad",
        gamma=good.gamma,
        a=good.a,
        C=good.C,
        c=good.c,
        d=good.d,
        m=good.m,
        m_err=good.m_err,
        order=2,
        error_order=3,
    )
    RosenbrockTableau(**fields)
    with pytest.raises(ValueError, match=re.escape("RosenbrockTableau 'bad': c[1] = 0.6 is not the row sum")):
        RosenbrockTableau(**{**fields, "c": (0.0, 0.6, 1.0)})
    with pytest.raises(ValueError, match=re.escape("RosenbrockTableau 'bad': d[2] = 0.0 is not the row sum")):
        RosenbrockTableau(**{**fields, "d": (good.d[0], 0.0, 0.0)})
    with pytest.raises(ValueError, match=re.escape("the weights b = m Gamma must sum to 1")):
        RosenbrockTableau(**{**fields, "m": (good.m[0] * 1.01, *good.m[1:])})
    with pytest.raises(ValueError, match=re.escape("a[2] must have 2 entries (strictly lower triangular); got 1")):
        RosenbrockTableau(**{**fields, "a": ((), (1.0,), (1.0,))})
    with pytest.raises(ValueError, match="gamma must be a positive finite number"):
        RosenbrockTableau(**{**fields, "gamma": -1.0})


# ---------------------------------------------------------------------------------------------------------------
# Local orders of one step, measured on a non-autonomous problem with a closed form (so the f_t term counts):
# a rotation at the speed 1 + t, y = (cos(t + t^2/2), sin(t + t^2/2)). (A problem whose leading error term
# happens to be small, as Rodas5P's is on y' = -2 t y^2, shows its order only below h ~ 1e-2, where rounding
# already blurs it.)


def _rot(t, y):
    return torch.stack([-(1.0 + t) * y[1], (1.0 + t) * y[0]])


def _exact(t: float) -> torch.Tensor:
    phase = t + t * t / 2
    return torch.tensor([math.cos(phase), math.sin(phase)], dtype=F64)


def _one_step(tab, h, t0=0.0):
    y0 = _exact(t0)
    stats = SolverStats()

    def func(t, y):
        return _rot(torch.tensor(t, dtype=F64), y)

    lin = autograd_linearisation(_rot, torch.tensor(t0, dtype=F64), y0, 0, check_coupling=False, create_graph=False)
    assert lin.f_t is not None
    lu = factor(lin.J, h, tab.gamma, t0, stats, 0)
    step = rosenbrock_step(func, t0, y0, func(t0, y0), h, tab, lin, lu, stats)
    return y0, step


def _slope(errors: list[float], hs: list[float]) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


@pytest.mark.parametrize("shape, t0", [((3, 2), 0.75), ((2,), 0.75), ((2, 2, 2), 0.25)])
@pytest.mark.parametrize("name", ROSENBROCK)
def test_step_without_autograd_equals_the_recorded_step(name, shape, t0):
    # The stepper used without autograd (stages in rows of one scratch tensor, sums as matrix-vector products)
    # against the out-of-place one that autograd uses: the same y1, error estimate and stages (dense output,
    # FSAL), on a batch of systems, on a vector state (whose rows are used without views), and on systems of
    # two event dimensions with an autonomous func (no f_t term) and an f0 whose layout admits no view.
    tab = ROSENBROCK_METHODS[name]
    y0 = torch.rand(*shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    h = 0.1
    lin = autograd_linearisation(
        _nonautonomous,
        torch.tensor(t0, dtype=F64),
        y0,
        min(len(shape) - 1, 1),
        check_coupling=len(shape) > 1,
        create_graph=False,
    )
    assert (lin.f_t is None) == (t0 <= 0.5)
    lu = factor(lin.J, h, tab.gamma, t0, SolverStats(), 0)

    def func(t, y):
        return _nonautonomous(torch.tensor(t, dtype=F64), y)

    f0 = func(t0, y0)
    if len(shape) == 3:
        f0 = f0.transpose(1, 2).contiguous().transpose(1, 2)  # the same values, strides (4, 1, 2)
        assert not f0.is_contiguous()
    with torch.no_grad():
        lean = rosenbrock_step(func, t0, y0, f0, h, tab, lin, lu, SolverStats())
    with torch.enable_grad():
        ref = rosenbrock_step(func, t0, y0, f0, h, tab, lin, lu, SolverStats())
    torch.testing.assert_close(lean.y1, ref.y1, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(lean.y_err, ref.y_err, rtol=1e-12, atol=1e-15)
    assert len(lean.k) == len(ref.k)
    for a, b in zip(lean.k, ref.k):
        assert a.shape == b.shape == y0.shape
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert lean.y1.shape == lean.y_err.shape == y0.shape
    assert not torch.equal(f0, torch.zeros_like(f0)) and torch.equal(f0, func(t0, y0))  # f0 left untouched


class _CountCalls(torch.overrides.TorchFunctionMode):
    """Counts the torch functions and methods called (attribute reads such as ``.shape`` left out)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") != "__get__":
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ROSENBROCK)
def test_step_without_autograd_costs_few_operations_per_stage(name):
    # On tiny systems each torch call costs microseconds, as much as the arithmetic: a step without autograd
    # takes two addmv and one lu_solve per stage besides func, and a few operations per step (U and the scratch
    # rows with their views, y1 and the error estimate), on a vector state with a time-dependent func (the f_t
    # terms). Before the products were written into rows: 62 calls for rodas5p, 27 for rosenbrock23.
    tab = ROSENBROCK_METHODS[name]
    y0 = torch.rand(2, dtype=F64, generator=torch.Generator().manual_seed(2))
    t0, h = 0.75, 0.1
    lin = autograd_linearisation(
        _nonautonomous, torch.tensor(t0, dtype=F64), y0, 0, check_coupling=False, create_graph=False
    )
    assert lin.f_t is not None
    lu = factor(lin.J, h, tab.gamma, t0, SolverStats(), 0)
    times = {t0 + c * h: torch.tensor(t0 + c * h, dtype=F64) for c in tab.c}
    f0 = _nonautonomous(times[t0], y0)
    evaluations = []

    def func(t, y):
        evaluations.append(t)
        return _nonautonomous(times[t], y)

    with torch.no_grad():  # once before counting: the method's coefficient tensors are made on first use
        rosenbrock_step(func, t0, y0, f0, h, tab, lin, lu, SolverStats())
    per_eval = _CountCalls()
    with torch.no_grad(), per_eval:
        func(t0 + h, y0)
    evaluations.clear()
    counter = _CountCalls()
    with torch.no_grad(), counter:
        rosenbrock_step(func, t0, y0, f0, h, tab, lin, lu, SolverStats())
    assert len(evaluations) == tab.stages - 1
    own = counter.calls - per_eval.calls * len(evaluations)
    f_t_terms = sum(d != 0.0 for d in tab.d)
    assert own <= 3 * tab.stages + f_t_terms + 8, (own, tab.stages)


@pytest.mark.parametrize("name", ROSENBROCK)
def test_local_orders_of_step_estimate_and_dense_output(name):
    tab = ROSENBROCK_METHODS[name]
    t0, theta = 0.0, 0.4
    hs = [0.1 * 2.0**-k for k in range(4)]
    e_step, e_est, e_dense = [], [], []
    for h in hs:
        y0, step = _one_step(tab, h, t0)
        e_step.append(float((step.y1 - _exact(t0 + h)).abs().max()))
        e_est.append(float(step.y_err.abs().max()))
        y_th = rosenbrock_dense(y0, step.y1, step.k, tab, theta)
        e_dense.append(float((y_th - _exact(t0 + theta * h)).abs().max()))
    assert abs(_slope(e_step, hs) - (tab.order + 1)) < 0.35, e_step
    assert abs(_slope(e_est, hs) - (min(tab.order, tab.error_order) + 1)) < 0.35, e_est
    assert abs(_slope(e_dense, hs) - (tab.dense_order + 1)) < 0.4, e_dense


@pytest.mark.parametrize("name", ROSENBROCK)
def test_global_order_through_the_public_api(name):
    """Fixed steps through solve (first_step = max_step, tolerances so loose that every step is accepted)."""
    tab = ROSENBROCK_METHODS[name]
    errors, hs = [], []
    for n in (8, 16, 32):
        h = 1.0 / n
        sol = solve(
            _rot,
            _exact(0.0),
            torch.tensor([0.0, 2.0], dtype=F64),
            method=name,
            rtol=1e3,
            atol=1e3,
            options={"first_step": h, "max_step": h},
        )
        assert sol.stats.n_accepted == 2 * n and sol.stats.n_rejected == 0
        errors.append(float((sol.ys[-1] - _exact(2.0)).abs().max()))
        hs.append(h)
    assert abs(_slope(errors, hs) - tab.order) < 0.3, errors


# ---------------------------------------------------------------------------------------------------------------
# Stiff problems against scipy's Radau at tight tolerance.


ROB_T = [0.0, 1e-4, 1e-2, 1.0, 1e2, 1e4, 4e5]


def _radau(func, jac, y0, times, rtol=1e-12, atol=1e-16):
    return solve_ivp(func, (times[0], times[-1]), y0, method="Radau", t_eval=times, rtol=rtol, atol=atol, jac=jac).y.T


@pytest.fixture(scope="module")
def robertson_reference():
    return _radau(_robertson_np, _robertson_jac_np, [1.0, 0.0, 0.0], ROB_T)


@pytest.mark.parametrize("name,rtol,bound", [("rodas5p", 1e-8, 30.0), ("rosenbrock23", 1e-5, 300.0)])
def test_robertson_against_radau(name, rtol, bound, robertson_reference):
    atol = rtol * 1e-6
    sol = solve(
        _robertson,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        torch.tensor(ROB_T, dtype=F64),
        rtol=rtol,
        atol=atol,
        method=name,
    )
    ys = sol.ys.numpy()
    # The global error in units of the tolerance, atol + rtol |y| (a local tolerance accumulates over the
    # ~100 steps, and rosenbrock23 propagates its order-2 solution: hence the bounds).
    units = np.abs(ys - robertson_reference) / (atol + rtol * np.abs(robertson_reference))
    assert units.max() < bound, units.max()
    # Mass is conserved by the exact flow and (linear invariant) by every Runge-Kutta-type method.
    assert np.abs(ys.sum(axis=1) - 1.0).max() < 1e-12
    st = sol.stats
    assert st.n_factorizations == st.n_steps and st.n_jac_evals == st.n_accepted
    assert st.n_linear_solves == st.n_steps * get_tableau(name).stages
    # An explicit method would need ~1e5 steps (stability bound |h J| < 3.3 with |J| ~ 1e4 beyond t = 1).
    assert st.n_accepted < 1000


def test_jacobian_is_reused_after_rejections():
    sol = solve(
        _robertson,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        torch.tensor([0.0, 1e3], dtype=F64),
        rtol=1e-6,
        atol=1e-12,
        method="rodas5p",
        options={"first_step": 10.0},
    )
    st = sol.stats
    assert st.n_rejected > 0
    assert st.n_jac_evals == st.n_accepted  # one per starting point, not per attempt
    assert st.n_factorizations == st.n_steps
    # nfe: the first f0, then 7 stages per attempt, 1 evaluation per Jacobian, and f0 at the start of every
    # step after the first (Rodas5P is not FSAL); no initial-step probe, since first_step is given.
    assert st.nfe == 1 + 7 * st.n_steps + st.n_jac_evals + (st.n_accepted - 1)
    # Without autograd the evaluation that forms each Jacobian is also the step's f0: the same values,
    # one evaluation fewer per Jacobian after the first.
    with torch.no_grad():
        lean = solve(
            _robertson,
            torch.tensor([1.0, 0.0, 0.0], dtype=F64),
            torch.tensor([0.0, 1e3], dtype=F64),
            rtol=1e-6,
            atol=1e-12,
            method="rodas5p",
            options={"first_step": 10.0},
        )
    # The stepper without autograd sums earlier stages with one matrix-vector product (addmv) where the one
    # under autograd chains scaled additions: the same equations in another order of summation, so equal up
    # to rounding, and how the last bits fall depends on the CPU's BLAS kernel (bit-equal on an Intel Xeon,
    # 2.6e-15 = 12 ulps apart on an AMD EPYC). 64 ulps of max|y| (1.4e-14) bounds that with a margin; a
    # wrong coefficient or a missed stage would be off by many orders more (the local error is ~1e-6).
    assert_equal_to_rounding(lean.ys, sol.ys, ulps=64)
    assert (lean.stats.n_steps, lean.stats.n_jac_evals) == (st.n_steps, st.n_jac_evals)
    assert (lean.stats.n_accepted, lean.stats.n_rejected) == (st.n_accepted, st.n_rejected)
    assert (lean.stats.n_factorizations, lean.stats.n_linear_solves) == (st.n_factorizations, st.n_linear_solves)
    assert lean.stats.nfe == 1 + 7 * st.n_steps + st.n_jac_evals


def _nonautonomous(t, y):  # (B, 2) or (2,): J = [[-2, t], [y1, y0 - 3]], df/dt = [y1, 2 t] (t > 0.5 only)
    y0, y1 = y[..., 0], y[..., 1]
    if float(t) <= 0.5:  # t enters only after t = 0.5: no time dependence before
        return torch.stack([-2.0 * y0, y0 * y1 - 3.0 * y1], dim=-1)
    return torch.stack([-2.0 * y0 + t * y1, y0 * y1 - 3.0 * y1 + t**2], dim=-1)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("hint", [None, False, True])
@pytest.mark.parametrize("create_graph", [False, True])
def test_autograd_linearisation_time_derivative_every_path(B, hint, create_graph):
    # df/dt from the reverse pass (B = 1, or a batch hinted autonomous), from forward mode (batch, no hint
    # or hinted time-dependent), and the fallback when a batch hinted autonomous turns out to depend on t:
    # all agree with the closed form, and J too.
    g = torch.Generator().manual_seed(B)
    y = torch.rand((B, 2) if B > 1 else (2,), dtype=F64, generator=g)
    for t in (0.25, 2.0):
        lin = autograd_linearisation(
            _nonautonomous,
            torch.tensor(t, dtype=F64),
            y,
            1 if B > 1 else 0,
            check_coupling=True,
            create_graph=create_graph,
            time_dependent=hint,
        )
        yb = y.reshape(B, 2)
        late = 1.0 if t > 0.5 else 0.0
        J = torch.stack(
            [
                torch.stack([torch.full((B,), -2.0, dtype=F64), torch.full((B,), late * t, dtype=F64)], -1),
                torch.stack([yb[:, 1], yb[:, 0] - 3.0], -1),
            ],
            -2,
        )
        torch.testing.assert_close(lin.J, J, rtol=0, atol=1e-15)
        if late:
            f_t = torch.stack([yb[:, 1], torch.full((B,), 2.0 * t, dtype=F64)], -1).reshape(y.shape)
            torch.testing.assert_close(lin.f_t, f_t, rtol=0, atol=1e-15)
        else:
            assert lin.f_t is None
        if not create_graph:
            assert torch.equal(lin.f, _nonautonomous(torch.tensor(t, dtype=F64), y))


@pytest.mark.parametrize("create_graph", [False, True])
def test_batched_vjp_is_autograd_grad_without_its_wrapper(create_graph, monkeypatch):
    # The lean batched backward gives the bits of torch.autograd.grad(..., is_grads_batched=True), with an input
    # the output does not reach (None) and with a graph kept; a solve without autograd forms every Jacobian
    # through it and never calls torch.autograd.grad; under a __torch_function__ mode the public call is used.
    g = torch.Generator().manual_seed(0)
    w = torch.rand(3, 3, dtype=F64, generator=g, requires_grad=True)
    y = torch.rand(4, 3, dtype=F64, generator=g, requires_grad=True)
    unused = torch.rand(2, dtype=F64, requires_grad=True)
    f = torch.tanh(y @ w) * y
    cot = torch.rand(5, 4, 3, dtype=F64, generator=g)
    ref = torch.autograd.grad(
        f, (y, w, unused), cot, is_grads_batched=True, retain_graph=True, create_graph=create_graph, allow_unused=True
    )
    got = batched_vjp(f, (y, w, unused), cot, retain_graph=True, create_graph=create_graph)
    assert got[2] is None and ref[2] is None
    for a, b in zip(got[:2], ref[:2]):
        assert a.shape == b.shape and torch.equal(a, b) and a.requires_grad == b.requires_grad == create_graph

    class Passthrough(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        moded = batched_vjp(f, (y, w, unused), cot, retain_graph=True, create_graph=create_graph)
    assert torch.equal(moded[0], ref[0]) and torch.equal(moded[1], ref[1])

    calls = []
    public = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or public(*a, **k))
    with torch.no_grad():
        sol = solve(
            _robertson,
            torch.tensor([1.0, 0.0, 0.0], dtype=F64),
            torch.tensor([0.0, 1e3], dtype=F64),
            rtol=1e-6,
            atol=1e-12,
            method="rodas5p",
        )
    assert sol.stats.n_jac_evals > 10 and not calls


class _Names(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("B", [1, 3])
def test_jacobian_and_iteration_matrix_reuse_their_constant_tensors(B):
    # The identity and the cotangents are made once per shape, dtype and device, not on every step: a second
    # Jacobian and factorisation create neither (no eye, no cat), and give the same values as the first.
    y = torch.rand((B, 2) if B > 1 else (2,), dtype=F64, generator=torch.Generator().manual_seed(3))
    tt = torch.tensor(2.0, dtype=F64)
    with torch.no_grad():
        first = autograd_linearisation(
            _nonautonomous, tt, y, 1 if B > 1 else 0, check_coupling=True, create_graph=False
        )
        lu_first = factor(first.J, 0.1, 0.25, 2.0, SolverStats(), 0)
        seen = _Names()
        with seen:
            again = autograd_linearisation(
                _nonautonomous, tt, y, 1 if B > 1 else 0, check_coupling=True, create_graph=False
            )
            lu_again = factor(again.J, 0.1, 0.25, 2.0, SolverStats(), 0)
    assert "eye" not in seen.names and "cat" not in seen.names and "zeros" not in seen.names, seen.names
    assert torch.equal(first.J, again.J) and torch.equal(lu_first[0], lu_again[0])
    W = torch.eye(2, dtype=F64) / (0.1 * 0.25) - first.J
    torch.testing.assert_close(
        torch.linalg.lu_solve(*lu_again, W), torch.eye(2, dtype=F64).expand(B, 2, 2), rtol=0, atol=1e-13
    )


def test_constants_made_under_inference_mode_are_not_kept():
    # An inference tensor cannot be saved for backward: cotangents first made under torch.inference_mode must
    # not be the ones a later differentiable Jacobian (create_graph) uses. A shape no other test uses.
    from neuralode.solvers.methods import jacobian

    def f(t, y):
        return torch.stack([-1e3 * y[0] * y[1], -(y[1] ** 2) + t, y[2] * y[0]])

    with torch.inference_mode():
        jacobian._cotangents(3, 1, False, torch.Size([3]), torch.float64, torch.device("cpu"))
    y = torch.tensor([1.0, 0.5, 2.0], dtype=F64, requires_grad=True)
    lin = autograd_linearisation(f, torch.tensor(0.3, dtype=F64), y, 0, check_coupling=False, create_graph=True)
    (g,) = torch.autograd.grad(lin.J.sum(), y)  # d/dy of the sum of J's entries
    torch.testing.assert_close(g, torch.tensor([-1e3 + 1.0, -1e3 - 2.0, 1.0], dtype=F64), rtol=0, atol=1e-12)


def test_van_der_pol_mu_1000_against_radau():
    f, f_np, jac_np = _vdp(1000.0)
    times = [0.0, 100.0, 500.0, 1000.0, 1500.0, 2000.0]
    ref = _radau(f_np, jac_np, [2.0, 0.0], times, rtol=1e-11, atol=1e-11)
    sol = solve(
        f, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor(times, dtype=F64), rtol=1e-7, atol=1e-7, method="rodas5p"
    )
    # y0 is O(1); y1 is O(1e-3) on the slow branches: compare each against its own scale.
    err = np.abs(sol.ys.numpy() - ref) / np.array([1.0, 1e-3])
    assert err.max() < 1e-4, err.max()
    assert sol.stats.n_accepted < 2000


def test_dense_output_matches_radau_between_steps(robertson_reference):
    times = np.geomspace(1e-5, 1e2, 40)
    ref = _radau(_robertson_np, _robertson_jac_np, [1.0, 0.0, 0.0], [0.0, *times])
    t = torch.tensor([0.0, *times], dtype=F64)
    sol = solve(_robertson, torch.tensor([1.0, 0.0, 0.0], dtype=F64), t, rtol=1e-7, atol=1e-13, method="rodas5p")
    coarse = solve(
        _robertson, torch.tensor([1.0, 0.0, 0.0], dtype=F64), t[[0, -1]], rtol=1e-7, atol=1e-13, method="rodas5p"
    )
    assert sol.stats.n_accepted == coarse.stats.n_accepted  # output times do not shorten steps
    units = np.abs(sol.ys.numpy() - ref) / (1e-13 + 1e-7 * np.abs(ref))  # in units of the tolerance
    assert units.max() < 10.0, units.max()


# ---------------------------------------------------------------------------------------------------------------
# Batches: per-sample Jacobian blocks.


def _rates(B: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scale = torch.exp(torch.empty(B, 3, dtype=F64).uniform_(-0.5, 0.5, generator=g))
    return torch.tensor([0.04, 3e7, 1e4], dtype=F64) * scale  # (B, 3)


def _batched_robertson(k):
    def f(t, y):  # y: (B, 3)
        return _robertson(t, y, (k[:, 0], k[:, 1], k[:, 2]))

    return f


def test_batch_of_independent_systems_equals_one_by_one():
    B = 4
    k = _rates(B)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64).repeat(B, 1)
    t = torch.tensor([0.0, 1e-3, 1.0, 1e2], dtype=F64)
    sol = solve(_batched_robertson(k), y0, t, rtol=1e-7, atol=1e-13, method="rodas5p")
    assert sol.ys.shape == (4, B, 3)
    for b in range(B):
        kb = tuple(float(x) for x in k[b])
        ref = _radau(
            lambda tt, y: _robertson_np(tt, y, kb),
            lambda tt, y: _robertson_jac_np(tt, y, kb),
            [1.0, 0.0, 0.0],
            t.tolist(),
            rtol=1e-10,
            atol=1e-15,
        )
        rel = np.abs(sol.ys[:, b].numpy() - ref) / (np.abs(ref) + 1e-12)
        assert rel.max() < 2e-5, (b, rel.max())
    # The batched Jacobian is one evaluation of func per Jacobian, however many samples.
    assert sol.stats.nfe < 12 * sol.stats.n_steps


def test_batched_dense_and_callable_jacobians_agree():
    B = 3
    k = _rates(B)
    f = _batched_robertson(k)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64).repeat(B, 1)
    t = torch.tensor([0.0, 1.0, 1e2], dtype=F64)

    def jac(tt, y):  # (B, 3, 3)
        k1, k2, k3 = k[:, 0], k[:, 1], k[:, 2]
        y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
        z = torch.zeros_like(y1)
        return torch.stack(
            [
                torch.stack([-k1, k3 * y3, k3 * y2], -1),
                torch.stack([k1, -k3 * y3 - 2 * k2 * y2, -k3 * y2], -1),
                torch.stack([z, 2 * k2 * y2, z], -1),
            ],
            dim=1,
        )

    runs = {
        "batched": solve(f, y0, t, rtol=1e-6, atol=1e-12, method="rodas5p"),
        "dense": solve(f, y0, t, rtol=1e-6, atol=1e-12, method="rodas5p", options={"jacobian": "dense"}),
        "callable": solve(f, y0, t, rtol=1e-6, atol=1e-12, method="rodas5p", options={"jacobian": jac}),
    }
    base = runs["batched"]
    for name, sol in runs.items():
        assert torch.allclose(sol.ys, base.ys, rtol=1e-9, atol=1e-15), name
        assert sol.stats.n_accepted == base.stats.n_accepted, name
    # With a callable, the one evaluation per Jacobian is the probe for df/dt (here: none, func ignores t).
    assert runs["callable"].stats.nfe == base.stats.nfe
    assert runs["callable"].stats.n_jac_evals == base.stats.n_jac_evals


def test_coupled_rows_are_detected():
    A = torch.tensor([[-2.0, 1.0], [1.0, -2.0]], dtype=F64)

    def coupled(t, y):  # (2, 2): the rows interact through A
        return A @ y

    y0 = torch.ones(2, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "but func couples them (sample 0's derivative depends on other samples). Pass options={'jacobian': 'dense'}"
        ),
    ):
        solve(coupled, y0, t, method="rodas5p")
    sol = solve(coupled, y0, t, method="rodas5p", options={"jacobian": "dense"})
    exact = torch.matrix_exp(A) @ y0
    assert torch.allclose(sol.ys[-1], exact, rtol=1e-6, atol=1e-9)


def test_tuple_state():
    def f(t, s):
        x, v = s
        return v, -1e3 * v - x

    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    sol = solve(f, y0, torch.tensor([0.0, 10.0], dtype=F64), rtol=1e-8, atol=1e-10, method="rodas5p")
    lam = (-1e3 + math.sqrt(1e6 - 4)) / 2  # the slow eigenvalue
    lam2 = (-1e3 - math.sqrt(1e6 - 4)) / 2
    c1 = -lam2 / (lam - lam2)
    x_exact = c1 * math.exp(10 * lam) + (1 - c1) * math.exp(10 * lam2)
    assert abs(float(sol.ys[0][-1]) - x_exact) < 1e-8 * abs(x_exact) * 10


# ---------------------------------------------------------------------------------------------------------------
# Bad input.


def test_bad_options_and_inputs():
    y0 = torch.ones(4, 3, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def f(t, y):
        return -y

    with pytest.raises(
        ValueError,
        match=re.escape("options['jacobian'] must be 'batched', 'dense' or a callable jac(t, y); got 'sparse'."),
    ):
        solve(f, y0, t, method="rodas5p", options={"jacobian": "sparse"})
    with pytest.raises(
        ValueError, match=re.escape("options['batch_dims'] must be a non-negative integer or None; got -1.")
    ):
        solve(f, y0, t, method="rodas5p", options={"batch_dims": -1})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "options['batch_dims']=3 exceeds the 2 dimension(s) of the state of shape (4, 3); use at most 2"
        ),
    ):
        solve(f, y0, t, method="rodas5p", options={"batch_dims": 3})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "options['jacobian']='dense' treats the whole state as one system, "
            "so options['batch_dims'] must be 0 or left out; got 1."
        ),
    ):
        solve(f, y0, t, method="rodas5p", options={"jacobian": "dense", "batch_dims": 1})
    with pytest.raises(
        ValueError, match=r"Unknown option 'foo' for method 'rodas5p'\. Valid options: .*jacobian, batch_dims\."
    ):
        solve(f, y0, t, method="rodas5p", options={"foo": 1})
    with pytest.raises(
        ValueError,
        match=re.escape(
            "options['jacobian'] callable returned shape (12, 12); for a state "
            "of shape (4, 3) with batch_dims=1 it must return (4, 3, 3)"
        ),
    ):
        solve(f, y0, t, method="rodas5p", options={"jacobian": lambda t, y: -torch.eye(12, dtype=F64)})
    with pytest.raises(ValueError) as info:
        solve(f, y0, t, method="radau")
    for name in IMPLICIT_METHODS:
        assert name in str(info.value)

    def opaque(t, y):  # not differentiable by autograd
        return torch.from_numpy(-y.detach().numpy().copy())

    with pytest.raises(TypeError, match=re.escape("func(t, y) is not differentiable by autograd with respect to y")):
        solve(opaque, y0, t, method="rodas5p")
    # ... as is one whose graph reaches a parameter but not y (it was iterated with J = 0).
    w = torch.tensor(1.0, dtype=F64, requires_grad=True)
    with pytest.raises(TypeError, match=re.escape("its output changes with y but has no autograd graph to y")):
        solve(lambda t, y: w * opaque(t, y), y0, t, method="rodas5p")
    # ... and works with an analytic Jacobian (f_t by a forward difference: one more evaluation per Jacobian).
    sol = solve(
        opaque, y0, t, method="rodas5p", options={"jacobian": lambda t, y: -torch.eye(3, dtype=F64).expand(4, 3, 3)}
    )
    assert torch.allclose(sol.ys[-1], y0 * math.exp(-1.0), rtol=1e-6)


@pytest.mark.parametrize("B, create_graph", [(1, False), (1, True), (4, False), (4, True)])
def test_jacobian_of_a_func_of_t_alone_is_zero(B, create_graph):
    """f(t, y) = g(t) has no autograd path to y (no graph at all without create_graph's recording): J = 0,
    and df/dt = g'(t) still comes out (the same backward for one system, forward mode for a batch)."""
    y = torch.ones(B, 3, dtype=F64, requires_grad=create_graph)
    tt = torch.tensor(0.7, dtype=F64)

    def g(t, z):
        return torch.exp(t) * torch.ones_like(z.detach())

    lin = autograd_linearisation(g, tt, y, 1, check_coupling=True, create_graph=create_graph)
    assert lin.J.shape == (B, 3, 3) and not bool(lin.J.any())
    torch.testing.assert_close(lin.f_t, torch.full((B, 3), math.exp(0.7), dtype=F64))


@pytest.mark.parametrize("method", list(IMPLICIT_METHODS)[:6])
def test_adaptive_stiff_methods_solve_a_func_of_t_alone(method):
    """Every adaptive stiff method on y' = exp(t), whose Jacobian is zero (it was refused as not differentiable)."""
    y0 = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([1.0, 2.0], dtype=F64)
    ys = solve(lambda t, y: torch.exp(t) * torch.ones_like(y.detach()), y0, t, rtol=1e-8, atol=1e-10, method=method).ys
    torch.testing.assert_close(ys[-1].detach(), y0.detach() + math.e**2 - math.e, rtol=1e-6, atol=0)


@pytest.mark.parametrize("interpolate", [True, False])
def test_stiff_adjoint_of_a_func_of_t_alone(interpolate):
    """The backward dynamics of y' = w exp(t) do not depend on the adjoint state (J = 0), with and without a
    parameter whose graph they carry: dL/dy0 = 1 and dL/dw = e^2 - e per component (a guard: the backward
    Jacobian's time derivative gave these a graph before J = 0 was accepted)."""
    from neuralode import odeint_adjoint

    w = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    for params in ((), (w,)):
        ys = odeint_adjoint(
            lambda t, y: w * torch.exp(t) * torch.ones_like(y.detach()),
            y0,
            torch.tensor([1.0, 2.0], dtype=F64),
            rtol=1e-9,
            atol=1e-10,
            method="rodas5p",
            adjoint_params=params,
            adjoint_options={"interpolate": interpolate, "norm": "full"},  # the quadrature of dL/dw steers the steps
        )
        grads = torch.autograd.grad(ys[-1].sum(), (y0, *params))
        torch.testing.assert_close(grads[0], torch.ones(2, dtype=F64))
        if params:
            torch.testing.assert_close(grads[1], torch.tensor(2 * (math.e**2 - math.e), dtype=F64), rtol=1e-6, atol=0)


def test_singular_iteration_matrix_reports_t_dt_and_gamma_h():
    tab = get_tableau("rodas5p")
    h = 0.5
    lam = 1.0 / (tab.gamma * h)  # J = lam I makes I/(gamma h) - J exactly zero

    def f(t, y):
        return lam * y

    with pytest.raises(SolverError) as info:
        solve(
            f,
            torch.ones(3, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="rodas5p",
            options={"first_step": h},
        )
    message = str(info.value)
    assert message.startswith("Singular iteration matrix I/(gamma h) - J at t=0 with dt=0.5 after 0 steps.")
    assert f"gamma h = {tab.gamma * h:.6g}" in message
