"""kvaerno5: the ESDIRK coefficients (Runge-Kutta order conditions), the step's local order, a stiff solve
against scipy's Radau, the chord Newton iteration's reuse of the Jacobian, and its failure at the minimum step."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from neuralode import SolverError, solve
from neuralode.solvers.methods.esdirk import ESDIRK_METHODS, ESDIRKTableau, make_stepper
from neuralode.solvers.methods.implicit_options import ImplicitOptions
from neuralode.solvers.problem import _Problem
from neuralode.solvers.solution import SolverStats
from tests.test_stiff import (
    ROB_T,
    _density,
    _exact,
    _phi_full,
    _radau,
    _robertson,
    _robertson_jac_np,
    _robertson_np,
    _rot,
    _trees,
)

F64 = torch.float64
NAMES = list(ESDIRK_METHODS)


@pytest.mark.parametrize("name", NAMES)
def test_order_conditions(name):
    tab = ESDIRK_METHODS[name]
    A, s = tab.full_a(), tab.stages
    b_hat = [bi - ei for bi, ei in zip(tab.b, tab.b_err)]
    for w, order in ((tab.b, tab.order), (b_hat, tab.error_order)):
        for p in range(1, order + 1):
            res = [sum(wi * x for wi, x in zip(w, _phi_full(t, A, s))) - 1.0 / _density(t) for t in _trees(p)]
            assert max(map(abs, res)) < 1e-10, (name, order, p)
        res = [sum(wi * x for wi, x in zip(w, _phi_full(t, A, s))) - 1.0 / _density(t) for t in _trees(order + 1)]
        assert max(map(abs, res)) > 1e-5
    assert tab.fsal


def test_tableau_is_checked_when_built():
    tab = ESDIRK_METHODS["kvaerno5"]
    fields = dict(name="bad", gamma=tab.gamma, a=tab.a, b=tab.b, b_err=tab.b_err, c=tab.c, order=5, error_order=4)
    ESDIRKTableau(**fields)
    with pytest.raises(
        ValueError, match=re.escape("ESDIRKTableau 'bad': row 1 of a plus gamma sums to 0.52, not c[1] = 0.5")
    ):
        ESDIRKTableau(**{**fields, "c": (0.0, 0.5, *tab.c[2:])})


class _Tight:
    """An error norm in which Newton iterates to rounding (absolute 1e-15)."""

    def scaled(self, x, y):
        return float(x.abs().max()) / 1e-15

    scaled_all = scaled


@pytest.mark.parametrize("name", NAMES)
def test_local_order_of_one_step(name):
    tab = ESDIRK_METHODS[name]
    hs = [0.1 * 2.0**-k for k in range(4)]
    errors = []
    for h in hs:
        y0 = _exact(0.0)
        problem = _Problem(_rot, (y0,), False, SolverStats())
        take = make_stepper(problem, tab, False, ImplicitOptions(), problem, _Tight())
        _, step = take(0.0, 0.0, y0, None, h)
        errors.append(float((step.y1 - _exact(h)).abs().max()))
    slope = float(np.polyfit(np.log(hs), np.log(errors), 1)[0])
    assert abs(slope - (tab.order + 1)) < 0.3, errors


def test_robertson_against_radau_with_few_jacobians():
    rtol, atol = 1e-6, 1e-12
    sol = solve(
        _robertson,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        torch.tensor(ROB_T, dtype=F64),
        rtol=rtol,
        atol=atol,
        method="kvaerno5",
    )
    ref = _radau(_robertson_np, _robertson_jac_np, [1.0, 0.0, 0.0], ROB_T)
    units = np.abs(sol.ys.numpy() - ref) / (atol + rtol * np.abs(ref))
    assert units.max() < 100, units.max()
    st = sol.stats
    # The chord iteration keeps J across steps while it converges: far fewer Jacobians than steps.
    assert st.n_jac_evals * 5 < st.n_accepted
    assert st.n_accepted < 300


def test_newton_failure_at_the_minimum_step():
    def broken(t, y):  # NaN from t = 0.2 on: no iteration can converge there
        return torch.where(t > 0.2, torch.full_like(y, math.nan), -y)

    with pytest.raises(
        SolverError, match=re.escape("Newton iteration failed to converge at the minimum step size at t=0")
    ):
        solve(
            broken,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="kvaerno5",
            options={"first_step": 0.5, "min_step": 0.5, "max_step": 0.5},
        )


@pytest.mark.parametrize("name", NAMES)
def test_embedded_order_of_one_step(name):
    """The error estimate ``y1 - y1_hat`` of one step shrinks like ``h^(error_order + 1)`` (the local error of
    the embedded solution), and ``y1_hat`` itself is of that local order: the estimate is neither a lower-order
    quantity (too pessimistic) nor a higher-order one (optimistic, the controller would accept too much)."""
    tab = ESDIRK_METHODS[name]
    hs = [0.1 * 2.0**-k for k in range(4)]
    est, hat = [], []
    for h in hs:
        y0 = _exact(0.0)
        problem = _Problem(_rot, (y0,), False, SolverStats())
        take = make_stepper(problem, tab, False, ImplicitOptions(), problem, _Tight())
        _, step = take(0.0, 0.0, y0, None, h)
        est.append(float(step.y_err.abs().max()))
        hat.append(float((step.y1 - step.y_err - _exact(h)).abs().max()))
    for errors in (est, hat):
        # The three smallest steps: at h = 0.1 the next term of the expansion still shows (slope 5.4).
        slope = float(np.polyfit(np.log(hs[1:]), np.log(errors[1:]), 1)[0])
        assert abs(slope - (tab.error_order + 1)) < 0.3, (slope, errors)
    # y1 is of a higher order, so the estimate tends to the embedded solution's own error as h -> 0 (the gap
    # est - hat_error is y1's error, one order higher): measured 0.48, 0.65, 0.79, 0.88 of it.
    gaps = [abs(e / a - 1.0) for e, a in zip(est, hat)]
    assert all(g1 < g0 for g0, g1 in zip(gaps, gaps[1:])) and gaps[-1] < 0.2, gaps


@pytest.mark.parametrize("rtol, bound", [(1e-5, 2.0), (1e-6, 30.0)])
def test_float32_newton_converges_at_its_rounding(rtol, bound):
    """In float32 the chord iteration's displacements stall at the rounding of Z (~1e-7 |Z|, ~0.01-0.1
    tolerance units at these rtol), where the contraction rate is ~1: counted as a divergence, every step
    failed and the step size collapsed (2000 steps without reaching t = 1e-6). A displacement within
    10 eps ||Z|| is converged: float32 takes the float64 solve's steps. Its answer is within 0.3 tolerance
    units of float64's at rtol 1e-5; at 1e-6 float32's own rounding shows (13 units, whatever the bound on
    the iteration; rodas5p, which does not iterate, 8)."""
    theta = torch.tensor([[-0.1, -2.0], [2.0, -0.1]], dtype=F64)  # a damped rotation

    def f(t, y):
        return y @ theta.to(y.dtype).T

    torch.manual_seed(0)
    y0 = torch.randn(8, 2, dtype=F64)
    t = torch.linspace(0.0, 5.0, 11, dtype=F64)
    kw = dict(rtol=rtol, atol=rtol, method="kvaerno5", options={"max_num_steps": 500})
    ref = solve(f, y0, t, **kw)
    sol = solve(f, y0.float(), t.float(), **kw)
    assert sol.stats.n_rejected == 0
    assert sol.stats.n_accepted <= ref.stats.n_accepted + 2
    units = ((sol.ys.double() - ref.ys).abs() / (rtol + rtol * ref.ys.abs())).max()
    assert units < bound
