"""The lean fixed-grid stretch (``solvers/fast/fixed_grid.py``) against the general loop.

A fixed-grid solve with nothing to watch between steps is integrated by
:func:`neuralode.solvers.fast.fixed_grid.run`; the same solve with a (no-op) torchdiffeq step callback
goes through the general loop of ``loop.py``. The two take the same arithmetic in the same order,
so states, gradients and counters must agree bit for bit, on every fixed method and every way of
placing output times.
"""

from __future__ import annotations

import pytest
import torch

from neuralode import get_tableau, odeint, solve
from neuralode.solvers import fast
from neuralode.solvers.fast import fixed_grid
from neuralode.solvers.methods import compiled as compiled_step
from neuralode.solvers.methods.explicit import RKStepper
from neuralode.solvers.methods.tableau import EXPLICIT_METHODS

FIXED = [m for m in EXPLICIT_METHODS if not get_tableau(m).adaptive]


class Field(torch.nn.Module):
    """A small nonlinear, time-dependent field: ``dy/dt = tanh(W y) + cos(t) b``."""

    def __init__(self, n: int, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.nn.Parameter(torch.randn(n, n, generator=g, dtype=dtype) / n**0.5)
        self.b = torch.nn.Parameter(torch.randn(n, generator=g, dtype=dtype))

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T) + torch.cos(t) * self.b


class WithCallback(torch.nn.Module):
    """The same field with a no-op ``callback_step``: its solves take the general loop."""

    def __init__(self, inner: Field):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, t, y):
        return self.inner(t, y)

    def callback_step(self, t0, y0, dt):
        self.calls += 1


def both(method, t, options, dtype=torch.float64, grad=False):
    """The solve by the lean stretch and by the general loop; without autograd recording unless
    ``grad`` (the two record differently: in-place accumulation, or a chain of additions)."""
    func = Field(3, dtype)
    y0 = torch.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3)
    general_func = WithCallback(func)
    with torch.set_grad_enabled(grad):
        lean = solve(func, y0, t.to(dtype), method=method, options=options)
        general = solve(general_func, y0, t.to(dtype), method=method, options=options)
    assert general_func.calls == general.stats.n_accepted > 0
    return lean, general


def assert_same(lean, general):
    assert torch.equal(lean.ys, general.ys)
    assert lean.stats.nfe == general.stats.nfe
    assert lean.stats.n_accepted == general.stats.n_accepted
    assert lean.stats.last_step == general.stats.last_step


GRIDS = {
    "t is the grid": (torch.linspace(0.0, 1.0, 9), None),
    "step_size, outputs inside steps": (torch.tensor([0.0, 0.13, 0.5, 0.51, 0.52, 1.0]), {"step_size": 0.1}),
    "step_size, cubic": (torch.tensor([0.0, 0.13, 0.5, 0.51, 0.52, 1.0]), {"step_size": 0.1, "interp": "cubic"}),
    "backwards, step_size": (torch.tensor([1.0, 0.77, 0.3, -0.5]), {"step_size": 0.07}),
    "grid_constructor": (
        torch.tensor([0.0, 0.2, 0.9]),
        {"grid_constructor": lambda f, y0, t: torch.tensor([0.0, 0.05, 0.2, 0.31, 0.6, 0.9])},
    ),
}


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("grid", list(GRIDS))
def test_lean_stretch_equals_the_general_loop(method, grid):
    t, options = GRIDS[grid]
    assert_same(*both(method, t, options))


@pytest.mark.parametrize("method", ["heun3", "rk4_38"])
def test_lean_stretch_equals_the_general_loop_while_recording(method):
    t, options = GRIDS["step_size, outputs inside steps"]
    lean, general = both(method, t, options, grad=True)
    assert lean.ys.requires_grad
    assert_same(lean, general)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lean_stretch_equals_the_general_loop_in_both_dtypes(dtype):
    lean, general = both("rk4_38", torch.tensor([0.0, 0.3, 1.0]), {"step_size": 0.01}, dtype)
    assert lean.ys.dtype == dtype
    assert_same(lean, general)


@pytest.mark.parametrize("method", ["rk4", "midpoint"])
def test_lean_stretch_backpropagates_as_the_general_loop(method):
    func = Field(3, torch.float64)
    y0 = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3).requires_grad_()
    t = torch.tensor([0.0, 0.25, 0.6], dtype=torch.float64)
    grads = []
    for f in (func, WithCallback(func)):
        ys = odeint(f, y0, t, method=method, options={"step_size": 0.05})
        grads.append(torch.autograd.grad((ys**2).sum(), [y0, func.w, func.b]))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_a_sliver_step_hands_over_to_the_general_loop(monkeypatch):
    """Two grid points within rounding of each other: the general loop's rule (arrive without a
    step) applies, so the stretch stops there and the loop finishes the solve."""
    t1 = 0.5
    grid = torch.tensor([0.0, 0.25, t1, t1 + 2.2e-16 * 0.5 * 4, 0.75, 1.0], dtype=torch.float64)
    assert grid[3] > grid[2]
    opts = {"grid_constructor": lambda f, y0, t: grid}
    stopped = []
    real = fixed_grid.run

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        stopped.append(out[3])  # the grid index where the stretch stopped
        return out

    monkeypatch.setattr(fixed_grid, "run", spy)
    lean, general = both("rk4", torch.tensor([0.0, 0.6, 1.0]), opts)
    assert stopped == [2]
    assert_same(lean, general)
    assert lean.stats.n_accepted == 4  # the sliver is not a step


def test_the_stretch_runs_only_when_nothing_is_watched(monkeypatch):
    runs = []
    real = fixed_grid.run

    def spy(*args, **kwargs):
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fixed_grid, "run", spy)
    func = Field(3, torch.float64)
    y0 = torch.ones(3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    solve(func, y0, t, method="rk4")
    assert len(runs) == 1
    solve(WithCallback(func), y0, t, method="rk4")  # a step callback
    solve(lambda t, y: (func(t, y[0]), -y[1]), (y0, y0), t, method="rk4")  # a tuple state
    solve(func, y0, t, method="rk4", options={"dense": True})
    solve(func, y0, t, method="rk4", options={"perturb": True})
    solve(func, y0, t, method="dopri5")  # adaptive
    assert len(runs) == 1


def test_a_blow_up_is_reported_as_by_the_general_loop():
    """The non-finite check after the solve names the output time, step size and step count
    that the stretch recorded for each output."""
    from neuralode import SolverError

    class Blow(torch.nn.Module):
        def forward(self, t, y):
            return y * y

    messages = []
    for f in (Blow(), WithCallback(Blow())):
        with pytest.raises(SolverError) as info:
            odeint(
                f,
                torch.ones(2, dtype=torch.float64),
                torch.linspace(0.0, 3.0, 7, dtype=torch.float64),
                method="euler",
                options={"step_size": 0.1},
            )
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "Non-finite state" in messages[0]


def test_finite_check_by_one_sum_falls_back_when_the_sum_overflows():
    """``all_finite`` (the check of ``y0`` and of fixed-grid solutions) proves finiteness by one
    sum; a sum that overflows on finite values must not make it reject them."""
    from neuralode.solvers.options import all_finite

    big = torch.full((4,), 6e4, dtype=torch.float16)  # finite; the float16 sum overflows to inf
    assert not torch.isfinite(big.sum())
    assert all_finite(big)
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([1.0, -float("inf")], dtype=torch.float64))
    assert not all_finite(torch.tensor([1.0 + 0j, complex(0, float("inf"))]))
    assert all_finite(torch.ones(3, requires_grad=True))
    ys = odeint(lambda t, y: -y, big, torch.tensor([0.0, 0.1]), method="euler", options={"step_size": 0.05})
    assert torch.isfinite(ys).all()


def spy_on_choose(monkeypatch) -> list[str]:
    """The paths ``fast.choose`` names for the api, in order."""
    chosen = []
    real = fast.choose

    def spy(*args):
        chosen.append(real(*args))
        return chosen[-1]

    monkeypatch.setattr(fast, "choose", spy)
    return chosen


def eager_for_compiled(monkeypatch) -> list[int]:
    """Replace the compiled step by the loop's eager one (no ``torch.compile`` in these tests: what is
    tested is which driver steps with it); returns the list that counts the builds."""
    built = []

    def build(problem, tableau, backend, stats):
        built.append(1)
        return RKStepper(problem, tableau)

    monkeypatch.setattr(compiled_step, "compiled_stepper", build)
    return built


def test_the_api_runs_the_path_that_fast_choose_names(monkeypatch):
    chosen = spy_on_choose(monkeypatch)
    built = eager_for_compiled(monkeypatch)
    func = Field(3, torch.float64)
    y0 = torch.ones(3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    lean = solve(func, y0, t, method="rk4")
    assert solve(WithCallback(func), y0, t, method="rk4").stats.nfe == lean.stats.nfe
    solve(func, y0, t, method="dopri5")
    compiled = solve(func, y0, t, method="rk4", options={"compile": "eager", "compile_steps": 1})
    assert chosen == [fast.FIXED_GRID, fast.LOOP, fast.LOOP, fast.COMPILED]
    assert len(built) == 1 and torch.equal(compiled.ys, lean.ys)


def test_a_sliver_step_under_compile_leaves_the_solve_to_the_loop_with_compiled_steps(monkeypatch):
    """The compiled grid run and the compiled chunks (a plain function under autograd) refuse a grid with a step
    within rounding of its start: the loop takes the whole solve, stepping with the method's compiled step."""
    chosen = spy_on_choose(monkeypatch)
    built = eager_for_compiled(monkeypatch)
    t1 = 0.5
    grid = torch.tensor([0.0, 0.25, t1, t1 + 2.2e-16 * 0.5 * 4, 0.75, 1.0], dtype=torch.float64)
    opts = {"grid_constructor": lambda f, y0, t: grid}
    func = Field(3, torch.float64)
    y0 = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3)
    t = torch.tensor([0.0, 0.6, 1.0], dtype=torch.float64)
    with torch.no_grad():
        eager = solve(func, y0, t, method="rk4", options=opts)
        compiled = solve(func, y0, t, method="rk4", options={**opts, "compile": "eager", "compile_steps": 4})
    # (A plain function: under autograd the grid run takes modules, the chunks plain functions.)
    recorded = solve(
        lambda t, y: func(t, y), y0, t, method="rk4", options={**opts, "compile": "eager", "compile_steps": 4}
    )
    assert chosen == [fast.FIXED_GRID, fast.GRID_RUN, fast.CHUNKS]
    assert len(built) == 2  # each handed the solve to the loop with the compiled step
    for sol in (compiled, recorded):
        assert sol.stats.n_accepted == eager.stats.n_accepted == 4  # the sliver is not a step
        assert sol.stats.nfe == eager.stats.nfe
        assert torch.equal(sol.ys.detach(), eager.ys)
