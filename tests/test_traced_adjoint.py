"""odeint_adjoint under options={"compile": ...}: the backward solve compiled too, its dynamics written with
torch.func.vjp (neuralode.solvers.adjoint.traced), so that the device run takes each interval's backward solve. The
gradients must be the eager adjoint's (the same backward steps; float64 to 1e-10), for tensor and tuple states and
a subset of the parameters; the eager dynamics must stay where they are needed (a plain function, a tensor that is
not a parameter, create_graph, adjoint_options given). The "eager" backend traces with dynamo without generating
code; inductor's speed is in benchmarks/results/device_run.md."""

from __future__ import annotations

import pytest
import torch

from neuralode import odeint_adjoint, solve_adjoint
from neuralode.solvers.adjoint import traced
from neuralode.solvers.fast import device_run

F64 = torch.float64


class Field(torch.nn.Module):
    def __init__(self, dim=2, hidden=8, unused=False):
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Linear(dim, hidden, dtype=F64)
        self.b = torch.nn.Linear(hidden, dim, dtype=F64)
        self.register_buffer("scale", torch.tensor(0.7, dtype=F64))
        self.unused = torch.nn.Parameter(torch.ones(3, dtype=F64)) if unused else None

    def forward(self, t, y):
        return self.scale * self.b(torch.tanh(self.a(y))) * torch.cos(t)


@pytest.fixture
def runs(monkeypatch):
    """The solves the joint device run finished (a ``LoopResult`` each) or did not take (``None``)."""
    out = []
    real = device_run.integrate_on_device

    def spy(*a, **k):
        result = real(*a, **k)
        out.append(result[0])
        return result

    monkeypatch.setattr(device_run, "integrate_on_device", spy)
    return out


def _grads(func, y0, t, options, params=None, **kw):
    y0 = tuple(p.clone().requires_grad_() for p in y0) if isinstance(y0, tuple) else y0.clone().requires_grad_()
    params = tuple(func.parameters()) if params is None else params
    sol = solve_adjoint(func, y0, t, rtol=1e-8, atol=1e-8, options=options, adjoint_params=params, **kw)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    loss = sum((y[1:] ** 2).sum() for y in ys)
    grads = torch.autograd.grad(loss, (*(y0 if isinstance(y0, tuple) else (y0,)), *params), allow_unused=True)
    return grads, sol.adjoint_stats


def _same(eager, run):
    (ge, se), (gr, sr) = eager, run
    assert (sr.n_accepted, sr.n_rejected, sr.nfe) == (se.n_accepted, se.n_rejected, se.nfe)
    for a, b in zip(ge, gr):
        if a is None:
            assert b is None
        else:
            assert (a - b).abs().max() <= 1e-10 * (1 + a.abs().max())


def test_the_compiled_backward_gives_the_eager_adjoints_gradients(runs):
    func = Field(unused=True)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    eager = _grads(func, y0, t, {})
    assert not runs
    run = _grads(func, y0, t, {"compile": "eager"})
    # The forward solve and each of the four intervals' backward solves took the device run.
    assert len(runs) == 5 and all(r is not None for r in runs)
    _same(eager, run)
    i = 1 + [p is func.unused for p in func.parameters()].index(True)
    assert run[0][i] is not None and run[0][i].abs().max() == 0  # an unused parameter: zero, as eager gives


def test_a_tuple_state_and_a_subset_of_the_parameters(runs):
    func = Field(dim=3)

    def split(t, y):
        out = func(t, torch.cat([y[0], y[1]], -1))
        return out[..., :1], out[..., 1:]

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = func

        def forward(self, t, y):
            return split(t, y)

    module = Split()
    y0 = (torch.tensor([[0.5], [-1.0]], dtype=F64), torch.tensor([[0.1, 0.2], [0.3, -0.4]], dtype=F64))
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)
    params = (func.b.weight, func.a.bias)  # a subset: the others get no gradient
    eager = _grads(module, y0, t, {}, params=params)
    run = _grads(module, y0, t, {"compile": "eager"}, params=params)
    assert len(runs) == 3 and all(r is not None for r in runs)
    _same(eager, run)


def test_the_eager_dynamics_stay_where_the_traced_cannot_serve(runs):
    func = Field()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    w = torch.tensor(0.3, dtype=F64, requires_grad=True)
    # A tensor differentiated that is not a parameter of func: no name to pass it by.
    assert traced.traced_dynamics(func, (*func.parameters(), w), None) is None
    assert traced.traced_dynamics(lambda t, y: -y, (), None) is None

    def scaled(t, y):
        return w * func(t, y)

    eager = _grads(scaled, y0, t, {}, params=(w, *func.parameters()))
    run = _grads(scaled, y0, t, {"compile": "eager"}, params=(w, *func.parameters()))
    assert len(runs) == 1  # the forward solve alone: the backward solves kept the eager dynamics
    _same(eager, run)
    # adjoint_options given say what the backward solve is: here without compile.
    runs.clear()
    y0g = y0.clone().requires_grad_()
    ys = odeint_adjoint(func, y0g, t, options={"compile": "eager"}, adjoint_options={"max_step": 10.0})
    ys.sum().backward()
    assert len(runs) == 1
    # A recorded backward pass (create_graph, for second derivatives) differentiates the eager dynamics.
    runs.clear()
    y0g = y0.clone().requires_grad_()
    ys = odeint_adjoint(func, y0g, t, options={"compile": "eager"})
    (g,) = torch.autograd.grad(ys[-1].sum(), y0g, create_graph=True)
    assert len(runs) == 1 and g.requires_grad


def test_one_callable_per_module_so_later_backward_passes_compile_nothing():
    func = Field()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    first = _grads(func, y0, t, {"compile": "eager"})
    second = _grads(func, y0, t, {"compile": "eager"})
    # The backward dynamics are one callable per module, parameters' names and state layout, and the device run's
    # graphs are cached per callable: compiled in the first backward pass, reused by the second.
    assert first[1].n_compiles >= 1 and second[1].n_compiles == 0
    _same(first, second)
