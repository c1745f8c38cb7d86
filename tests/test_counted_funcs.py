"""A func that counts its own calls inside the compiled runs (neuralode.solvers.counting): neuralode's ODEFunc, and
any func offering suspend_counting() and count_calls(n), runs inside the device run, the grid run (forward and
backward), the compiled adjoint's backward solves and the per-sample run without a warning, compiles once, and its
counters equal the solver's counts (and the eager solve's, with the same steps); one without the protocol keeps
falling back with its own count. The "eager" backend traces the runs with dynamo without generating code."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import neuralode
from neuralode.models.layers import ODEFunc
from neuralode.solvers.counting import counted_by_solver

F64 = torch.float64
T = torch.linspace(0.0, 1.0, 5, dtype=F64)


class Field(ODEFunc):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(2, 2, dtype=F64)

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) - 0.3 * y


def _y0(grad: bool = False) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 2, dtype=F64).requires_grad_(grad)


@pytest.fixture
def no_warnings():
    """The fallback's warning (the run could not be compiled) raised as an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"options\['compile'\]", category=RuntimeWarning)
        yield


def test_device_run_compiles_once_and_counts(no_warnings):
    f = Field()
    with torch.no_grad():
        eager = neuralode.solve(f, _y0(), T, rtol=1e-8, atol=1e-8)
        assert f.nfe_forward == eager.stats.nfe
        for first in (True, False):
            f.reset_nfe()
            sol = neuralode.solve(f, _y0(), T, rtol=1e-8, atol=1e-8, options={"compile": "eager"})
            assert sol.stats.n_compiles == (1 if first else 0)
            assert f.nfe_forward == sol.stats.nfe == eager.stats.nfe and f.nfe_backward == 0
            assert (sol.stats.n_accepted, sol.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
            torch.testing.assert_close(sol.ys, eager.ys, rtol=1e-12, atol=1e-12)


def test_grid_run_forward_and_backward_count(no_warnings):
    f = Field()
    opts = {"step_size": 0.05, "compile": "eager"}
    y0 = _y0(grad=True)
    sol = neuralode.solve(f, y0, T, method="rk4", options=opts)
    assert f.nfe_forward == sol.stats.nfe  # the grid's evaluations and the probe of func's parameters
    sol.ys.square().sum().backward()
    # The backward pass evaluates each step's stages again (adjoint_stats), through func's own forward.
    assert sol.adjoint_stats.nfe == 20 * 4
    assert f.nfe_forward == sol.stats.nfe + sol.adjoint_stats.nfe and f.nfe_backward == 0
    grads = [y0.grad.clone(), *(p.grad.clone() for p in f.parameters())]
    f.zero_grad()
    y0.grad = None
    ref = neuralode.odeint(f, y0, T, method="rk4", options={"step_size": 0.05})
    ref.square().sum().backward()
    for g, r in zip(grads, [y0.grad, *(p.grad for p in f.parameters())]):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_compiled_adjoint_counts_its_backward_solves_as_the_eager_adjoint(no_warnings):
    counts = []
    for options in (None, {"compile": "eager"}):
        f = Field()
        y0 = _y0(grad=True)
        neuralode.odeint_adjoint(f, y0, T, rtol=1e-8, atol=1e-8, options=options).square().sum().backward()
        counts.append((f.nfe_forward, f.nfe_backward))
    assert counts[0] == counts[1] and counts[0][1] > 0


def test_per_sample_run_counts_calls(no_warnings):
    f = Field()
    with torch.no_grad():
        sol = neuralode.solve(f, _y0(), T, options={"compile": "eager", "per_sample": True})
    assert f.nfe_forward == sol.stats.calls > 0


def test_compiled_step_under_autograd_counts_itself(no_warnings):
    # An adaptive solve recording autograd takes one compiled step per call, outside any suspension: the module
    # counts its own calls there.
    f = Field()
    sol = neuralode.solve(f, _y0(grad=True), T, rtol=1e-6, atol=1e-6, options={"compile": "eager"})
    assert f.nfe_forward == sol.stats.nfe


class Duck:
    """The protocol without ODEFunc: a plain callable counting its calls."""

    def __init__(self):
        self.calls, self.on = 0, True

    def __call__(self, t, y):
        if self.on:
            self.calls += 1
        return -y + torch.sin(t)

    @contextlib.contextmanager
    def suspend_counting(self):
        self.on = False
        try:
            yield
        finally:
            self.on = True

    def count_calls(self, n):
        self.calls += n


def test_any_func_with_the_protocol(no_warnings):
    f = Duck()
    with torch.no_grad():
        sol = neuralode.solve(f, _y0(), T, options={"compile": "eager"})
    assert f.calls == sol.stats.nfe and f.on


def test_counts_survive_an_error_in_the_block():
    f, n = Duck(), [0]
    with pytest.raises(RuntimeError, match="inside"):
        with counted_by_solver(f, lambda: n[0]):
            n[0] += 7
            raise RuntimeError("inside")
    assert f.calls == 7 and f.on


def test_a_self_counting_module_without_the_protocol_still_falls_back():
    class Counter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return -y

    f = Counter()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="could not compile"):
        sol = neuralode.solve(f, _y0(), T, options={"compile": "eager"})
    assert f.nfe == sol.stats.nfe
