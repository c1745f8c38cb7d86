"""options={"compile": ...} on a fixed grid without autograd: the grid's steps as one compiled ``while_loop``
(neuralode.solvers.fast.grid_run). It must give the eager grid's states and outputs to rounding and its counts
(one evaluation more: each step evaluates its own first stage), return to Python only when its buffer is full or
after CALL_STEPS steps, recompile once for a grid of another length, leave autograd to the chunks and a sliver step
to the loop, and fall back with one warning where it cannot capture ``func``. The "eager" backend traces the run
with dynamo without generating code, "aot_eager" adds AOT autograd's functionalisation; inductor itself is timed
in benchmarks/bench_device_run.py."""

from __future__ import annotations

import pytest
import torch

from neuralode import Event, solve
from neuralode.solvers.fast import grid_run

F64 = torch.float64


def forced(t, y):
    return -1.3 * y + torch.sin(3.0 * t) * y.flip(-1)


@pytest.fixture
def taken(monkeypatch):
    """What each call of the grid run returned: a ``LoopResult`` for a solve it finished, ``None`` where the loop
    took the solve."""
    out = []
    real = grid_run.integrate_grid
    monkeypatch.setattr(grid_run, "integrate_grid", lambda *a, **k: out.append(real(*a, **k)) or out[-1])
    return out


@pytest.fixture
def calls(monkeypatch):
    """The ``(i0, i1, base)`` of every compiled call the grid run makes."""
    out = []
    real = grid_run._call

    def spy(entry, args, *rest):
        out.append(tuple(int(a) for a in args[4:]))
        return real(entry, args, *rest)

    monkeypatch.setattr(grid_run, "_call", spy)
    return out


def _pair(y0, t, options, method="rk4", backend="eager", func=forced):
    with torch.no_grad():
        eager = solve(func, y0, t, method=method, options=options)
        run = solve(func, y0, t, method=method, options={**options, "compile": backend})
    return eager, run


def _same(eager, run, tol, n_new):
    assert run.stats.nfe == eager.stats.nfe + 1  # each step evaluates its own first stage: f(t0, y0) once more
    assert run.stats.n_accepted == eager.stats.n_accepted
    assert run.stats.last_step == eager.stats.last_step and run.stats.next_step == eager.stats.next_step
    for a, b in zip(
        run.ys if isinstance(run.ys, tuple) else [run.ys], eager.ys if isinstance(eager.ys, tuple) else [eager.ys]
    ):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a - b).abs().max() <= tol
    assert n_new == eager.stats.n_accepted


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-13), (torch.float32, 2e-6)])
def test_the_run_gives_the_eager_grids_states_and_outputs(backend, dtype, tol, taken):
    # 10 steps of rk4; output times on grid points (0.5, 1) and between them (0.25, 0.73).
    y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=dtype)
    t = torch.tensor([0.0, 0.25, 0.5, 0.73, 1.0], dtype=dtype)
    eager, run = _pair(y0, t, {"step_size": 0.1}, backend=backend)
    assert len(taken) == 1 and taken[0] is not None
    _same(eager, run, tol, 10)
    assert run.ys[0].equal(y0)
    assert run.stats.n_compiles >= 1 and run.stats.compile_s > 0


def test_backwards_in_time_a_tuple_state_and_midpoint(taken):
    # Backwards, on the output times' own grid (midpoint), with a state of three dimensions.
    y0 = torch.randn(2, 3, 2, dtype=F64)
    eager, run = _pair(y0, torch.linspace(1.0, -1.0, 9, dtype=F64), {}, method="midpoint")
    _same(eager, run, 1e-14, 8)

    def coupled(t, y):
        x, v = y
        return v[:, 0], -(x * (1 + 0.1 * t))[:, None]

    y0t = (torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([[0.0], [1.0]], dtype=F64))
    eager, run = _pair(y0t, torch.tensor([0.0, 0.3, 1.0], dtype=F64), {"step_size": 0.1}, func=coupled)
    _same(eager, run, 1e-14, 10)
    assert len(taken) == 2 and all(r is not None for r in taken)


def test_a_call_returns_when_its_buffer_is_full_or_after_call_steps(monkeypatch, calls):
    # The buffer holds as many states as fit in ROW_BYTES, from 1 to 32.
    assert [grid_run.buffer_rows(b) for b in (16, 4096, 32 * 1024, 10**9)] == [32, 16, 2, 1]
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    # One state per buffer: a call ends on each grid state an output needs (0.2, 0.4, ..., 1.0 and, for 0.45,
    # the states at 0.4 and 0.5).
    monkeypatch.setattr(grid_run, "ROW_BYTES", 1)
    t = torch.tensor([0.0, 0.2, 0.4, 0.45, 0.6, 0.8, 1.0], dtype=F64)
    eager, run = _pair(y0, t, {"step_size": 0.1})
    assert calls == [(0, 2, 0), (2, 4, 1), (4, 5, 2), (5, 6, 3), (6, 8, 4), (8, 10, 5)]
    _same(eager, run, 1e-14, 10)
    # Buffers of two states, and at most 3 steps a call.
    calls.clear()
    monkeypatch.setattr(grid_run, "ROW_BYTES", 2 * 16)
    monkeypatch.setattr(grid_run, "CALL_STEPS", 3)
    eager, run = _pair(y0, t, {"step_size": 0.1})
    assert calls == [(0, 3, 0), (3, 5, 1), (5, 8, 3), (8, 10, 5)]
    _same(eager, run, 1e-14, 10)


def test_a_grid_of_another_length_recompiles_once_then_none():
    lin = torch.nn.Linear(2, 2, dtype=F64)

    def func(t, y):  # a func of its own: the graphs are cached per func
        return lin(y)

    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    compiles = []
    for n in (10, 10, 20, 30, 40):
        eager, run = _pair(y0, t, {"step_size": 1.0 / n}, func=func)
        compiles.append(run.stats.n_compiles)
        _same(eager, run, 1e-13, n)
    # The first grid compiles the run; the same grid again nothing; the second length once more (dynamo makes the
    # grid's length dynamic then); later lengths nothing.
    assert compiles[0] >= 1 and compiles[1] == 0 and compiles[2] <= 1 and compiles[3:] == [0, 0]


def test_which_fixed_grid_solves_take_the_run(taken):
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.45, 1.0], dtype=F64)
    base = {"step_size": 0.1, "compile": "eager"}
    # Autograd recording: the chunks (whose backward is right; while_loop's is not in this torch).
    w = torch.tensor(1.3, dtype=F64, requires_grad=True)
    ys = solve(lambda t, y: -w * y, y0, t, method="rk4", options=base).ys
    assert ys.requires_grad and not taken
    with torch.no_grad():
        # One step per call asked for; cubic interpolation, events and dense output need the loop.
        for kw in (
            {"options": {**base, "compile_steps": 1}},
            {"options": {**base, "interp": "cubic"}},
            {"options": base, "events": [Event(lambda t, y: y[..., 0] - 0.5)]},
            {"options": {**base, "dense": True}},
        ):
            solve(forced, y0, t, method="rk4", **kw)
        assert not taken
        # A grid step within rounding of its start: the loop arrives there without a step, so it takes the solve.
        sliver = {"grid_constructor": lambda f, y0, t: torch.tensor([0.0, 0.5, 0.5 + 1e-16, 1.0], dtype=F64)}
        eager = solve(forced, y0, t, method="rk4", options=sliver)
        run = solve(forced, y0, t, method="rk4", options={**sliver, "compile": "eager"})
        assert taken == [None] and run.stats.n_accepted == eager.stats.n_accepted
        assert (run.ys - eager.ys).abs().max() < 1e-14


class Counting(torch.nn.Module):
    """A func that counts its calls (``self.nfe += 1``): a side effect ``while_loop`` cannot capture."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return forced(t, y)


def test_a_func_the_run_cannot_capture_warns_once_and_compiles_steps(taken):
    func = Counting()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.45, 1.0], dtype=F64)
    with torch.no_grad():
        eager = solve(func, y0, t, method="rk4", options={"step_size": 0.1})
        func.nfe = 0
        with pytest.warns(RuntimeWarning, match="run of steps as one graph.*one step at a time"):
            run = solve(func, y0, t, method="rk4", options={"step_size": 0.1, "compile": "eager"})
        assert func.nfe == run.stats.nfe == eager.stats.nfe and run.stats.n_accepted == 10
        assert (run.ys - eager.ys).abs().max() < 1e-14
        func.nfe = 0
        again = solve(func, y0, t, method="rk4", options={"step_size": 0.1, "compile": "eager"})  # no warning
    assert taken == [None, None] and func.nfe == again.stats.nfe and torch.equal(again.ys, run.ys)
