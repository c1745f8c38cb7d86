"""torchdiffeq's fixed-grid implicit methods: order conditions, measured orders through the public API, a stiff
solve on a log grid, and the errors when Newton cannot converge."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from neuralode import SolverError, solve
from neuralode.solvers.implicit_fixed import IMPLICIT_FIXED_METHODS
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
