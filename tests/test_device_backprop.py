"""Backpropagation through the device run (options={"compile": ...} on an adaptive solve while autograd records):
the run records each accepted step, and the solve is one autograd node whose backward pass is a compiled reverse
run of each step's vector-Jacobian product (neuralode.solvers.fast.backprop.AdaptiveBackprop). Its gradients must
be backpropagation's through the host clock's solve with the same steps, to rounding: through outputs
interpolated inside steps, steps holding more outputs than the run's window, a solve handed over to the host
clock, tuple states, backwards in time and float32. What it cannot take falls back to the compiled step's loop
(whose backward autograd traces) or is refused with the reason. The "eager" backend traces the runs with dynamo
without generating code ("aot_eager" adds AOT autograd's functionalisation); inductor runs in
examples/compiled_training.py and is timed in benchmarks/bench_device_run.py."""

from __future__ import annotations

import pytest
import torch

from neuralode import solve
from neuralode.models import ODEFunc

F64 = torch.float64


class Field(torch.nn.Module):
    """A small time-dependent MLP field (the stage times matter)."""

    def __init__(self, dim: int = 2, hidden: int = 16, dtype=F64):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(dim, hidden).to(dtype)
        self.b = torch.nn.Linear(hidden, dim).to(dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.5)

    def forward(self, t, y):
        return self.b(torch.tanh(self.a(y))) * (1 + 0.1 * t)


def _gradients(func, y0, t, options, method="dopri5", weights=None, **kw):
    """The solution and the gradients of a loss on every output with respect to ``y0`` and the parameters."""
    y = y0.clone().requires_grad_()
    sol = solve(func, y, t, method=method, options=options, **kw)
    w = torch.linspace(-1.0, 2.0, sol.ys.numel(), dtype=sol.ys.dtype).view_as(sol.ys) if weights is None else weights
    loss = (sol.ys * w).sum() + (sol.ys**2).sum()
    return sol, torch.autograd.grad(loss, [y, *func.parameters()])


class Pair(torch.nn.Module):
    """A tuple state of two shapes, ``(x (B, 2), v (B,))``, around a field of ``x``."""

    def __init__(self, field: torch.nn.Module):
        super().__init__()
        self.f = field
        self.w = torch.nn.Parameter(torch.tensor([0.5, -0.3], dtype=F64))

    def forward(self, t, y):
        x, v = y
        return self.f(t, x) + v[:, None] * self.w, -(x**2).sum(1) * 0.1 - v


def _pair_gradients(field, options_pair, n_out: int) -> list:
    """The gradients, in ``x0``, ``v0`` and the parameters, of a loss on a :class:`Pair` solve with each options."""
    pair = Pair(field)
    x0, v0 = torch.tensor([[1.0, -0.5], [0.2, 0.1]], dtype=F64), torch.tensor([0.5, -1.0], dtype=F64)
    t = torch.linspace(0.0, 1.5, n_out, dtype=F64)
    grads = []
    for options in options_pair:
        x, v = x0.clone().requires_grad_(), v0.clone().requires_grad_()
        xs, vs = solve(pair, (x, v), t, rtol=1e-8, atol=1e-8, options=options).ys
        loss = xs.sin().sum() + (vs * torch.arange(float(n_out), dtype=F64)[:, None]).sum()
        grads.append(torch.autograd.grad(loss, [x, v, *pair.parameters()]))
    return grads


def _close(a_list, b_list, rel):
    for a, b in zip(a_list, b_list):
        assert (a - b).abs().max() <= rel * (1 + a.abs().max()), (a - b).abs().max()


@pytest.mark.parametrize("method,backend", [("dopri5", "aot_eager"), ("tsit5", "eager"), ("bosh3", "eager")])
def test_gradients_are_backprop_through_the_host_clocks_steps(method, backend, handed):
    func = Field()
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.1]], dtype=F64)
    t = torch.tensor([0.0, 0.3, 0.35, 1.1, 2.0], dtype=F64)  # outputs inside steps, and at the end
    tols = dict(rtol=1e-8, atol=1e-8)
    eager, g_eager = _gradients(func, y0, t, {}, method, **tols)
    run, g_run = _gradients(func, y0, t, {"compile": backend, "compile_steps": 16}, method, **tols)
    assert handed and handed[-1][0] is not None  # the run finished the solve
    assert (run.stats.n_accepted, run.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    assert run.stats.nfe == eager.stats.nfe + 1  # the probe of what a gradient reaches (backprop.differentiated)
    torch.testing.assert_close(run.ys, eager.ys, rtol=1e-12, atol=1e-12)
    _close(g_eager, g_run, 1e-10)
    # The backward pass re-runs every accepted step, each stage again inside its vjp.
    n = eager.stats.n_accepted
    assert run.stats.n_recomputed_steps == n
    stages = {"dopri5": 7, "tsit5": 7, "bosh3": 4}[method]
    assert run.adjoint_stats.n_recomputed_steps == n
    assert run.adjoint_stats.nfe == n * stages
    assert run.adjoint_stats.held_bytes == n * y0.numel() * 8  # one state per accepted step


def test_many_outputs_per_step_backwards_in_time_a_tuple_state_and_float32(handed):
    # 40 outputs in a few steps: steps holding more outputs than the window (8) are taken again for the next ones.
    func = Field(dtype=torch.float32)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]])
    t = torch.linspace(1.0, -1.0, 40)
    eager, g_eager = _gradients(func, y0, t, {}, rtol=1e-5, atol=1e-6)
    run, g_run = _gradients(func, y0, t, {"compile": "eager"}, rtol=1e-5, atol=1e-6)
    assert handed[-1][0] is not None
    assert eager.stats.n_accepted < 20
    assert (run.stats.n_accepted, run.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    _close(g_eager, g_run, 1e-5)

    grads = _pair_gradients(Field(), ({}, {"compile": "eager"}), 13)  # a tuple state of two shapes
    assert handed[-1][0] is not None
    _close(grads[0], grads[1], 1e-10)


def test_a_solve_handed_to_the_host_clock_keeps_its_graph(handed):
    # Over 470 attempts the host clock's stiffness watch starts, so the run hands the solve over: the host clock
    # goes on, under autograd, from the state and derivative the run's autograd node returns.
    func = Field()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.4, 3.0], dtype=F64)
    options = {"max_step": 0.005, "compile_steps": 64}
    eager, g_eager = _gradients(func, y0, t, options, rtol=1e-8, atol=1e-8)
    run, g_run = _gradients(func, y0, t, {**options, "compile": "eager"}, rtol=1e-8, atol=1e-8)
    assert handed[-1][0] is None and handed[-1][1] is not None  # handed over
    assert eager.stats.n_accepted > 500
    assert (run.stats.n_accepted, run.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    _close(g_eager, g_run, 1e-9)


def test_gradients_in_the_times_and_in_y0_alone():
    func = Field()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    grads = []
    for options in ({}, {"compile": "eager"}):
        t = torch.tensor([0.0, 0.5, 1.5], dtype=F64, requires_grad=True)
        y = y0.clone().requires_grad_()
        ys = solve(func, y, t, rtol=1e-8, atol=1e-8, options=options).ys
        grads.append(torch.autograd.grad(ys.square().sum(), [y, t]))
    _close(grads[0], grads[1], 1e-10)

    def frozen(t, y):  # a module without parameters: the gradient reaches y0 alone
        return -y + 0.1 * t

    module = torch.nn.Module()
    module.forward = frozen
    out = []
    for options in ({}, {"compile": "eager"}):
        y = y0.clone().requires_grad_()
        ys = solve(module, y, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-8, atol=1e-8, options=options).ys
        out.append(torch.autograd.grad(ys[-1].sum(), y)[0])
    _close(out[0], out[1], 1e-10)


def test_what_the_run_cannot_differentiate_falls_back_or_is_refused(handed):
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    class Captured(torch.nn.Module):  # a tensor outside its parameters: the compiled step's loop takes the solve
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, t, y):
            return -self.w * y

    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    ys = solve(Captured(w), y0, t, rtol=1e-8, atol=1e-8, options={"compile": "eager"}).ys
    assert handed[-1] == (None, None)
    (g,) = torch.autograd.grad(ys[-1].sum(), w)
    assert abs(float(g) - float(-(y0.sum()) * torch.exp(torch.tensor(-0.7, dtype=F64)))) < 1e-7

    func = Field()
    y = y0.clone().requires_grad_()
    ys = solve(func, y, t, rtol=1e-8, atol=1e-8, options={"compile": "eager"}).ys
    assert handed[-1][0] is not None
    with pytest.raises(ValueError, match="create_graph=True is not supported through a compiled adaptive solve"):
        torch.autograd.grad(ys.sum(), y, create_graph=True)
    ys = solve(func, y, t, rtol=1e-8, atol=1e-8, options={"compile": "eager"}).ys
    with torch.no_grad():
        func.a.weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="modified in place"):
        ys.sum().backward()


class CountedField(ODEFunc):
    """A field that counts its evaluations and lets the solver count them (neuralode.solvers.counting)."""

    def __init__(self):
        super().__init__()
        self.f = Field()

    def forward(self, t, y):
        return self.f(t, y)


def test_a_counting_field_counts_what_the_solve_and_its_backward_pass_report():
    func = CountedField()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    sol = solve(func, y0, t, rtol=1e-7, atol=1e-7, options={"compile": "eager"})
    assert func.nfe_forward == sol.stats.nfe
    sol.ys.sum().backward()
    assert func.nfe_forward == sol.stats.nfe + sol.adjoint_stats.nfe
    assert y0.grad is not None and all(p.grad is not None for p in func.parameters())


# Per sample: options={"per_sample": True, "compile": ...} under autograd. The run records each round in which some
# sample's step was accepted; the backward pass pulls the cotangents back through each round, whose samples that
# did not move keep their state (y_next = where(moved, y1, y)).


class SampleField(Field):
    def forward(self, t, y):  # t: (B,)
        return self.b(torch.tanh(self.a(y))) * (1 + 0.1 * t[:, None])


@pytest.mark.parametrize("method,backend", [("dopri5", "aot_eager"), ("tsit5", "eager"), ("bosh3", "eager")])
def test_per_sample_gradients_are_backprop_through_each_samples_steps(method, backend):
    func = SampleField()
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.1], [2.0, 1.0]], dtype=F64)
    t = torch.tensor([0.0, 0.3, 0.35, 1.1, 2.0], dtype=F64)
    per_row = torch.stack([t * (1 + 0.3 * i) for i in range(4)])  # (B, T) times: each sample its own
    for times in (t, per_row, torch.linspace(0.0, 2.0, 30, dtype=F64)):  # the last: more outputs than the window
        options = {"per_sample": True}
        eager, g_eager = _gradients(func, y0, times, options, method, rtol=1e-8, atol=1e-8)
        run, g_run = _gradients(func, y0, times, {**options, "compile": backend}, method, rtol=1e-8, atol=1e-8)
        assert torch.equal(run.stats.n_accepted, eager.stats.n_accepted)
        assert torch.equal(run.stats.n_rejected, eager.stats.n_rejected)
        torch.testing.assert_close(run.ys, eager.ys, rtol=1e-12, atol=1e-12)
        _close(g_eager, g_run, 1e-10)
        # One round per accepted step of the sample with the most (they step together), each re-run in backward.
        back = run.adjoint_stats
        assert back.n_recomputed_steps == int(eager.stats.n_accepted.max())
        assert back.calls == back.n_recomputed_steps * {"dopri5": 7, "tsit5": 7, "bosh3": 4}[method]
        assert back.held_bytes == back.n_recomputed_steps * y0.numel() * 8


def test_per_sample_backprop_float32_a_tuple_state_and_what_it_refuses():
    func = SampleField(dtype=torch.float32)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.1]])
    t = torch.linspace(1.0, -1.0, 9)  # backwards in time
    options = {"per_sample": True}
    eager, g_eager = _gradients(func, y0, t, options, rtol=1e-5, atol=1e-6)
    run, g_run = _gradients(func, y0, t, {**options, "compile": "eager"}, rtol=1e-5, atol=1e-6)
    assert torch.equal(run.stats.n_accepted, eager.stats.n_accepted)
    _close(g_eager, g_run, 1e-5)

    per_sample = {"per_sample": True}
    grads = _pair_gradients(SampleField(), (per_sample, {**per_sample, "compile": "eager"}), 7)
    _close(grads[0], grads[1], 1e-10)

    # A tensor captured from outside the module's parameters: refused, naming it (no per-sample compiled step).
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)

    class Captured(torch.nn.Module):
        def forward(self, t, y):
            return -w * y

    y64 = torch.tensor([[1.0, -0.5]], dtype=F64)
    with pytest.raises(ValueError, match="reaches a tensor that is not one of them"):
        solve(Captured(), y64, torch.tensor([0.0, 1.0], dtype=F64), options={"per_sample": True, "compile": "eager"})
    ys = solve(
        func.double(),
        y64.requires_grad_(),
        torch.tensor([0.0, 1.0], dtype=F64),
        options={"per_sample": True, "compile": "eager"},
    ).ys
    with pytest.raises(ValueError, match="create_graph=True is not supported through a compiled per-sample"):
        torch.autograd.grad(ys.sum(), y64, create_graph=True)
