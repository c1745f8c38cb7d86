"""torchdiffeq's fixed-grid implicit methods: order conditions, measured orders through the public API, a stiff
solve on a log grid, and the errors when Newton cannot converge."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from neuralode import SolverError, solve
from neuralode.solvers.methods.implicit_fixed import IMPLICIT_FIXED_METHODS
from tests.test_stiff import (
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
NAMES = list(IMPLICIT_FIXED_METHODS)


def test_registry_has_torchdiffeqs_names():
    assert NAMES == [
        "implicit_euler",
        "implicit_midpoint",
        "trapezoid",
        "radauIIA3",
        "radauIIA5",
        "gl4",
        "gl6",
        "sdirk2",
        "trbdf2",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_order_conditions(name):
    tab = IMPLICIT_FIXED_METHODS[name]
    for p in range(1, tab.order + 2):
        res = max(
            abs(sum(b * x for b, x in zip(tab.b, _phi_full(t, tab.A, tab.stages))) - 1.0 / _density(t))
            for t in _trees(p)
        )
        if p <= tab.order:
            assert res < 1e-12, (name, p)
        else:
            assert res > 1e-5, (name, p)  # the order is exact


@pytest.mark.parametrize("name", NAMES)
def test_measured_order_through_the_public_api(name):
    tab = IMPLICIT_FIXED_METHODS[name]
    ns = (16, 32, 64) if tab.order == 1 else (8, 16, 32)
    errors = []
    for n in ns:
        sol = solve(_rot, _exact(0.0), torch.tensor([0.0, 2.0], dtype=F64), method=name, options={"step_size": 1 / n})
        assert sol.stats.n_accepted == 2 * n and sol.stats.n_jac_evals >= 2 * n
        errors.append(float((sol.ys[-1] - _exact(2.0)).abs().max()))
    slope = float(np.polyfit(np.log([1 / n for n in ns]), np.log(errors), 1)[0])
    assert abs(slope - tab.order) < 0.25, (name, errors)


@pytest.mark.parametrize(
    "name,bound", [("implicit_euler", 0.1), ("radauIIA5", 1e-3), ("sdirk2", 0.01), ("trbdf2", 0.01)]
)
def test_stiff_robertson_on_a_log_grid(name, bound):
    """L-stable methods take steps up to h = 14 where |h J| ~ 1e5 and stay accurate to their order."""
    grid = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(-5, 2, 50, dtype=F64)])
    t = torch.tensor([0.0, 1e-2, 1.0, 100.0], dtype=F64)
    sol = solve(
        _robertson,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        t,
        method=name,
        options={"grid_constructor": lambda f, y0, tt: grid},
    )
    ref = _radau(_robertson_np, _robertson_jac_np, [1.0, 0.0, 0.0], t.tolist())
    rel = np.abs(sol.ys.numpy() - ref) / (np.abs(ref) + 1e-9)
    assert rel[-1].max() < bound, rel
    assert abs(float(sol.ys[-1].sum()) - 1.0) < 1e-10  # mass is conserved by every Runge-Kutta method


def test_batched_states_and_options():
    k = torch.tensor([[1.0], [10.0], [100.0]], dtype=F64)

    def f(t, y):  # (3, 2): three independent stiff linear systems
        return torch.cat([-k * y[:, :1], -1000.0 * (y[:, 1:] - torch.cos(t))], dim=1)

    y0 = torch.ones(3, 2, dtype=F64)
    sol = solve(f, y0, torch.tensor([0.0, 0.5], dtype=F64), method="radauIIA5", options={"step_size": 0.05})
    assert torch.allclose(sol.ys[-1][:, 0], torch.exp(-0.5 * k[:, 0]), rtol=1e-3)
    with pytest.raises(
        ValueError, match=r"Unknown option 'rtol' for method 'gl4'\. Valid options: .*jacobian, batch_dims\."
    ):
        solve(f, y0, torch.tensor([0.0, 0.5], dtype=F64), method="gl4", options={"rtol": 1})
    with pytest.raises(ValueError, match=re.escape("options['jacobian'] must be 'batched', 'dense' or a callable")):
        solve(f, y0, torch.tensor([0.0, 0.5], dtype=F64), method="gl4", options={"jacobian": "exact"})


def test_newton_that_cannot_converge_says_so():
    def broken(t, y):
        return torch.where(t > 0.2, torch.full_like(y, math.nan), -y)

    with pytest.raises(
        SolverError, match=re.escape("Newton iteration of radauIIA3 did not converge at t=0 with dt=0.5")
    ):
        solve(
            broken,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="radauIIA3",
            options={"step_size": 0.5},
        )


# ------------------------------------------------------------------------------------------------
# A func that does not depend on y, and options['perturb'].


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backwards", [False, True])
def test_func_independent_of_y_integrates_as_the_methods_quadrature(name, backwards):
    """For ``f(t, y) = g(t)`` the stage equations have the solution ``k_i = g(t + c_i h)`` whatever the
    Jacobian, and ``J = 0`` exactly: each step is the method's quadrature ``h sum_i b_i g(t + c_i h)``,
    computed here from the coefficients. With ``y0`` requiring grad the Jacobian is formed with a graph."""
    tab = IMPLICIT_FIXED_METHODS[name]
    grid = [1.0 + 0.25 * i for i in range(5)]
    if backwards:
        grid = grid[::-1]
    y0 = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)

    def g(t, y):
        return torch.exp(t) * torch.ones_like(y.detach())

    sol = solve(g, y0, torch.tensor(grid, dtype=F64), method=name, options={"step_size": 0.25})
    expected = [1.0]
    for t0, t1 in zip(grid, grid[1:]):
        h = t1 - t0
        expected.append(expected[-1] + h * sum(b * math.exp(t0 + c * h) for b, c in zip(tab.b, tab.c)))
    torch.testing.assert_close(sol.ys[:, 0].detach(), torch.tensor(expected, dtype=F64), rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
    torch.testing.assert_close(grad, torch.ones(2, dtype=F64))


@pytest.mark.parametrize(
    "func",
    [lambda t, y: -y.detach(), lambda t, y: torch.tensor(2.0, dtype=F64, requires_grad=True) * -y.detach()],
    ids=["detached", "graph-to-a-parameter-only"],
)
def test_func_that_depends_on_y_without_a_graph_is_refused(func):
    """An output with no autograd path to y that still changes with y would get J = 0, a wrong Newton matrix
    (the second: its graph reaches a parameter, not y; it was iterated with J = 0 silently)."""
    with pytest.raises(TypeError, match=re.escape("its output changes with y but has no autograd graph to y")):
        solve(
            func,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="gl4",
            options={"step_size": 0.5},
        )


class _Sides:
    """``-y`` that records the time and the ``perturb`` side of every evaluation."""

    def __init__(self):
        self.calls: list[tuple[float, object]] = []

    def __call__(self, t, y, perturb=None):
        self.calls.append((t.item(), perturb))
        return -y


def _check_sides(calls, grid):
    """No evaluation on a grid point; one next to a grid point (nudged off it) is on the side of the step it
    belongs to: just after a step's start (``NEXT``), just before its end (``PREV``) of a forward solve."""
    from neuralode import Perturb

    assert calls
    for t, side in calls:
        assert t not in grid and grid[0] < t < grid[-1], (t, side)
        g = min(grid, key=lambda p: abs(p - t))
        if abs(t - g) < 1e-12:
            assert side is (Perturb.NEXT if t > g else Perturb.PREV), (t, side)
        else:
            assert side is Perturb.NONE, (t, side)


@pytest.mark.parametrize("name", NAMES)
def test_perturb_reaches_every_evaluation_of_the_step(name):
    """With ``perturb`` the Jacobians and Newton iterations are evaluated on the step's side of the grid points,
    as the stages are (the Jacobian at a step's start took t exactly); so does the backward solve of
    odeint_adjoint (its Jacobians, and the forward's dense output it interpolates). The side moves t by one
    unit, so the gradient is the one without perturb to rounding."""
    from neuralode import odeint_adjoint

    grid = [0.0, 0.5, 1.0]
    t = torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for perturb in (True, False):
        f = _Sides()
        x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
        xs = odeint_adjoint(f, x0, t, method=name, options={"step_size": 0.5, "perturb": perturb}, adjoint_params=())
        if perturb:
            _check_sides(f.calls, grid)
        else:
            assert {0.0, 0.5} <= {c[0] for c in f.calls}
        f.calls.clear()
        xs.sum().backward()
        times = [c[0] for c in f.calls]
        if perturb:  # the backward solve's func (the adjoint dynamics) takes no perturb keyword: times only
            assert times and all(0.0 < s < 1.0 and s != 0.5 for s in times), times
        else:
            assert {1.0, 0.5} <= set(times)
        grads.append(x0.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)


def test_perturb_with_cubic_interpolation_takes_the_step_end_from_inside():
    """``interp="cubic"`` needs f(t1, y1) for the step's Hermite polynomial; with ``perturb`` it is taken just
    before t1, as every stage at the step's end (torchdiffeq 0.2.5 evaluates it at t1 exactly)."""
    f = _Sides()
    t = torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=F64)
    for method in ("gl4", "rk4"):
        f.calls.clear()
        solve(
            f,
            torch.ones(2, dtype=F64),
            t,
            method=method,
            options={"step_size": 0.5, "perturb": True, "interp": "cubic"},
        )
        _check_sides(f.calls, [0.0, 0.5, 1.0])
