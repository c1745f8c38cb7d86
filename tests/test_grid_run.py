"""options={"compile": ...} on a fixed grid: the grid's steps as one compiled ``while_loop``
(neuralode.solvers.fast.grid_run). It must give the eager grid's states and outputs to rounding and its counts
(one evaluation more: each step evaluates its own first stage), return to Python only when its buffer is full or
after CALL_STEPS steps, recompile once for a grid of another length, leave a sliver step to the loop and what it
cannot capture to the chunks (with one warning); and under autograd give backpropagation's gradients through a
compiled reverse run, leaving to the chunks a gradient that reaches a tensor that is not a parameter of func. The
"eager" backend traces the run with dynamo without generating code, "aot_eager" adds AOT autograd's
functionalisation; inductor itself is timed in benchmarks/bench_device_run.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from neuralode import Event, solve
from neuralode.solvers.fast import backprop, grid_run

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
    """The ``(i0, i1, base)`` of every compiled call of the grid run's forward pass."""
    out = []
    real = grid_run.call

    def spy(entry, args, stats, instead):
        if "backward" not in instead:
            out.append(tuple(int(a) for a in args[4:]))
        return real(entry, args, stats, instead)

    monkeypatch.setattr(grid_run, "call", spy)
    return out


def _pair(y0, t, options, method="rk4", backend="eager", func=forced):
    with torch.no_grad():
        eager = solve(func, y0, t, method=method, options=options)
        run = solve(func, y0, t, method=method, options={**options, "compile": backend})
    return eager, run


def _same(eager, run, tol, n_steps):
    assert run.stats.nfe == eager.stats.nfe + 1  # each step evaluates its own first stage: f(t0, y0) once more
    assert run.stats.n_accepted == eager.stats.n_accepted
    assert run.stats.last_step == eager.stats.last_step and run.stats.next_step == eager.stats.next_step
    for a, b in zip(
        run.ys if isinstance(run.ys, tuple) else [run.ys], eager.ys if isinstance(eager.ys, tuple) else [eager.ys]
    ):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a - b).abs().max() <= tol
    assert n_steps == eager.stats.n_accepted


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


def test_a_func_the_run_cannot_capture_warns_once_and_runs_in_chunks(monkeypatch, calls):
    # The commonest Neural-ODE func, a module counting its calls: the while_loop cannot hold the side effect, the
    # chunks can (the counter becomes a graph input), so they take the solve, and the count stays right.
    chunked = []
    real = grid_run.integrate_chunked
    monkeypatch.setattr(grid_run, "integrate_chunked", lambda *a, **k: chunked.append(1) or real(*a, **k))
    func = Counting()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.45, 1.0], dtype=F64)
    with torch.no_grad():
        eager = solve(func, y0, t, method="rk4", options={"step_size": 0.1})
        func.nfe = 0
        with pytest.warns(RuntimeWarning, match="run of steps as one graph.*compiled chunks"):
            run = solve(func, y0, t, method="rk4", options={"step_size": 0.1, "compile": "eager"})
        assert func.nfe == run.stats.nfe and run.stats.n_accepted == 10
        assert (run.ys - eager.ys).abs().max() < 1e-14
        func.nfe = 0
        again = solve(func, y0, t, method="rk4", options={"step_size": 0.1, "compile": "eager"})  # no warning
    assert chunked == [1, 1] and len(calls) == 1  # the run was tried once, then left to the chunks
    assert func.nfe == again.stats.nfe and torch.equal(again.ys, run.ys)


def test_under_autograd_the_chunks_take_what_the_run_cannot_capture():
    # The counting module again, with a parameter requiring grad: the chunks take the solve under the caller's
    # autograd mode, so the gradient reaches the parameter (and the count stays right).
    class CountingLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2, dtype=F64)
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return torch.tanh(self.lin(y))

    func = CountingLinear()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.45, 1.0], dtype=F64)
    grads = []
    for options in ({"step_size": 0.1}, {"step_size": 0.1, "compile": "eager"}):
        func.nfe = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the run's fallback, tested above
            sol = solve(func, y0, t, method="rk4", options=options)
        assert sol.ys.requires_grad and func.nfe == sol.stats.nfe
        grads.append(torch.autograd.grad(sol.ys.pow(2).sum(), tuple(func.parameters())))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-13


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a = torch.nn.Linear(2, 6, dtype=F64)
        self.b = torch.nn.Linear(6, 2, dtype=F64)
        self.frozen = torch.nn.Linear(2, 2, dtype=F64).requires_grad_(False)

    def forward(self, t, y):
        return self.b(torch.tanh(self.a(y) * torch.cos(t))) + 0.1 * self.frozen(y)


def _gradients(func, y0, t, options, loss=lambda ys: (ys[1:] ** 2).sum(), **kw):
    y0 = tuple(p.clone().requires_grad_() for p in y0) if isinstance(y0, tuple) else y0.clone().requires_grad_()
    sol = solve(func, y0, t, method="rk4", options=options, **kw)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    inputs = (*(y0 if isinstance(y0, tuple) else (y0,)), *(p for p in func.parameters() if p.requires_grad))
    return torch.autograd.grad(sum(loss(y) for y in ys), inputs), sol


def test_backpropagation_through_the_run_gives_the_eager_gradients(monkeypatch, calls):
    # Autograd records: the run keeps every grid state, and the backward pass is a compiled reverse run of
    # torch.func.vjp of each step. The gradients of y0 and the trainable parameters (not the frozen ones) equal
    # backpropagation through the eager grid; outputs between grid points included.
    chunked = []
    real = grid_run.integrate_chunked
    monkeypatch.setattr(grid_run, "integrate_chunked", lambda *a, **k: chunked.append(1) or real(*a, **k))
    func = Net()
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    t = torch.tensor([0.0, 0.25, 0.5, 0.73, 1.0], dtype=F64)
    eager, _ = _gradients(func, y0, t, {"step_size": 0.1})
    for backend in ("eager", "aot_eager"):
        run, sol = _gradients(func, y0, t, {"step_size": 0.1, "compile": backend})
        assert not chunked and sol.stats.n_accepted == sol.stats.n_recomputed_steps == 10
        # The backward pass, counted apart: every step re-run (its 4 stages inside its vjp), its graph compiled.
        back = sol.adjoint_stats
        assert (back.nfe, back.n_recomputed_steps, back.n_compiles) == (40, 10, 1)
        assert back.held_bytes == 10 * y0.numel() * 8  # the grid states kept: one per step
        for a, b in zip(eager, run):
            assert (a - b).abs().max() <= 1e-12 * (1 + a.abs().max())

    # A tuple state, backwards in time.
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, t, y):
            out = self.net(t, torch.cat(y, -1))
            return out[..., :1], out[..., 1:]

    # Every parameter frozen: the gradient of y0 alone, through the same reverse run.
    frozen = Net().requires_grad_(False)
    eager, _ = _gradients(frozen, y0, t, {"step_size": 0.1})
    run, _ = _gradients(frozen, y0, t, {"step_size": 0.1, "compile": "eager"})
    assert not chunked and len(run) == 1 and (eager[0] - run[0]).abs().max() <= 1e-12 * (1 + eager[0].abs().max())

    pair = Pair()
    y0t = (torch.tensor([[0.4], [1.0]], dtype=F64), torch.tensor([[-0.2], [0.6]], dtype=F64))
    tb = torch.tensor([1.0, 0.6, 0.0], dtype=F64)
    eager, _ = _gradients(pair, y0t, tb, {"step_size": 0.2})
    run, _ = _gradients(pair, y0t, tb, {"step_size": 0.2, "compile": "eager"})
    assert not chunked
    for a, b in zip(eager, run):
        assert (a - b).abs().max() <= 1e-12 * (1 + a.abs().max())


def test_a_gradient_the_run_cannot_take_goes_to_the_chunks(monkeypatch):
    chunked = []
    real = grid_run.integrate_chunked
    monkeypatch.setattr(grid_run, "integrate_chunked", lambda *a, **k: chunked.append(1) or real(*a, **k))
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)

    class Scaled(torch.nn.Module):  # a tensor requiring grad that is not a parameter of the module
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, t, y):
            return w * self.net(t, y)

    func = Scaled()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys_e = solve(func, y0, t, method="rk4", options={"step_size": 0.1}).ys
    ys_r = solve(func, y0, t, method="rk4", options={"step_size": 0.1, "compile": "eager"}).ys
    assert chunked == [1]
    (ge,), (gr,) = torch.autograd.grad(ys_e.sum(), w), torch.autograd.grad(ys_r.sum(), w)
    assert (ge - gr).abs() < 1e-12


def test_the_backward_run_falls_back_to_eager_and_refuses_create_graph(monkeypatch):
    func = Net()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    eager, _ = _gradients(func, y0, t, {"step_size": 0.1})
    real = backprop.call

    def refuse_backward(entry, args, stats, instead):  # the backward graph cannot be compiled
        return None if "backward" in instead else real(entry, args, stats, instead)

    monkeypatch.setattr(backprop, "call", refuse_backward)
    run, _ = _gradients(func, y0, t, {"step_size": 0.1, "compile": "eager"})
    for a, b in zip(eager, run):
        assert (a - b).abs().max() <= 1e-12 * (1 + a.abs().max())
    y0g = y0.clone().requires_grad_()
    ys = solve(func, y0g, t, method="rk4", options={"step_size": 0.1, "compile": "eager"}).ys
    with pytest.raises(ValueError, match="create_graph=True is not supported through a compiled fixed-grid solve"):
        torch.autograd.grad(ys.sum(), y0g, create_graph=True)
    # A parameter changed in place before the backward pass: refused, as autograd refuses a saved tensor changed.
    ys = solve(func, y0g, t, method="rk4", options={"step_size": 0.1, "compile": "eager"}).ys
    with torch.no_grad():
        func.a.weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="modified in place"):
        ys.sum().backward()
