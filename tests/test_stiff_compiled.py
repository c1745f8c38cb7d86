"""options={"compile": ...} with rodas5p and rosenbrock23: the run of steps compiled with the clock on the device
(neuralode.solvers.fast.device_run, its Rosenbrock kernel): each attempt forms the Jacobian and df/dt by
torch.func.jacrev, factors I/(h gamma) - J with LAPACK and makes its solves, inside one compiled while_loop. It
must take the host clock's accepted and rejected steps, give its outputs to rounding, hand a singular iteration
matrix to the host clock (which raises its error), and run eagerly with one warning where it cannot take the
solve. The "eager" backend traces the run with dynamo without generating code ("aot_eager" adds AOT autograd);
inductor is timed in benchmarks/bench_stiff_compiled.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from neuralode import SolverError, solve
from neuralode.solvers.methods.rosenbrock_tableaus import ROSENBROCK_METHODS

F64 = torch.float64


def robertson(t, y):
    y1, y2, y3 = y[0], y[1], y[2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 * y2, 3e7 * y2 * y2])


def forced(t, y):  # stiff and time-dependent: df/dt enters every stage's right-hand side
    return -1000.0 * (y - torch.cos(t) * torch.tensor([1.0, 0.5, -0.2], dtype=y.dtype)) + 0.1 * y.flip(0)


@pytest.mark.parametrize(
    "method,func,y0,t,backend",
    [
        ("rodas5p", robertson, [1.0, 0.0, 0.0], [0.0, 1e-3, 0.5, 40.0, 4e3, 4e5], "aot_eager"),
        ("rodas5p", forced, [2.0, -1.0, 0.5], [0.0, 0.01, 0.3, 1.0, 2.5, 3.0], "eager"),
        ("rosenbrock23", robertson, [1.0, 0.0, 0.0], [0.0, 1e-3, 0.5, 40.0], "eager"),
    ],
)
def test_the_run_takes_the_host_clocks_steps(method, func, y0, t, backend, handed):
    y0, t = torch.tensor(y0, dtype=F64), torch.tensor(t, dtype=F64)
    kw = dict(method=method, rtol=1e-7 if method == "rodas5p" else 1e-4, atol=1e-10)
    with torch.no_grad():
        eager = solve(func, y0, t, **kw)
        run = solve(func, y0, t, **kw, options={"compile": backend, "compile_steps": 16})
    assert handed and handed[-1][0] is not None  # the run finished the solve
    e, r = eager.stats, run.stats
    assert (r.n_accepted, r.n_rejected) == (e.n_accepted, e.n_rejected) and e.n_accepted > 20
    # Each attempt forms its Jacobian from one evaluation (a retry after a rejection too, where the host clock keeps
    # its Jacobian): one evaluation and one Jacobian more per rejection; one factorisation and s solves per attempt.
    attempts = e.n_accepted + e.n_rejected
    assert r.nfe == e.nfe + e.n_rejected
    s = ROSENBROCK_METHODS[method].stages
    assert (r.n_jac_evals, r.n_factorizations, r.n_linear_solves) == (attempts, attempts, attempts * s)
    assert e.n_factorizations == attempts and e.n_linear_solves == attempts * s
    torch.testing.assert_close(run.ys, eager.ys, rtol=1e-9, atol=1e-14)


def test_a_singular_iteration_matrix_is_the_host_clocks_error(handed):
    # y' = a y with a = 1 / (h0 gamma): the first attempt's I / (h0 gamma) - J is exactly singular.
    h0, gamma = 1e-3, ROSENBROCK_METHODS["rodas5p"].gamma
    a = 1.0 / (h0 * gamma)

    def linear(t, y):
        return a * y

    raised = []
    for options in ({"first_step": h0}, {"first_step": h0, "compile": "eager"}):
        with torch.no_grad(), pytest.raises(SolverError, match="Singular iteration matrix") as info:
            solve(
                linear, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rodas5p", options=options
            )
        raised.append((str(info.value), info.value.n_steps))
    assert raised[0] == raised[1]
    assert handed[-1][0] is None and handed[-1][1] is not None  # the run handed the attempt over


def test_what_the_run_cannot_take_runs_eagerly_with_a_warning(handed):
    y0, t = torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 10.0], dtype=F64)
    kw = dict(method="rodas5p", rtol=1e-6, atol=1e-10)
    cases = [
        ("rodas5p", {"jacobian": lambda t, y: torch.zeros(3, 3, dtype=F64)}, "jacobian callable"),
        ("rodas5p", {"dense": True}, "dense output"),
    ]
    for method, extra, reason in cases:
        with torch.no_grad(), pytest.warns(RuntimeWarning, match=f"does not take this solve.*{reason}"):
            solve(robertson, y0, t, **{**kw, "method": method}, options={"compile": "eager", **extra})
    # Autograd recording: eager, gradients as without compile.
    k = torch.tensor(0.04, dtype=F64, requires_grad=True)

    def rates(t, y):
        return robertson(t, y) + (k - 0.04) * y

    grads = []
    for options in ({}, {"compile": "eager"}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ys = solve(rates, y0, t, **kw, options=options).ys
        grads.append(torch.autograd.grad(ys[-1].sum(), k)[0])
    assert torch.equal(grads[0], grads[1])
    assert not handed


def test_a_batch_of_independent_systems_takes_the_host_clocks_steps(handed):
    # Robertson with a rate per system (B = 4, batch_dims = 1, the default for a (B, n) state): per-system Jacobian
    # blocks and batched LU factorisations. Time-dependent (a forcing in t): df/dt per system by forward mode.
    rates = torch.tensor([0.04, 0.03, 0.05, 0.045], dtype=F64)

    def batched(t, y):
        y1, y2, y3 = y[:, 0], y[:, 1], y[:, 2]
        k1 = rates * (1.0 + 0.1 * torch.sin(t))
        return torch.stack([-k1 * y1 + 1e4 * y2 * y3, k1 * y1 - 1e4 * y2 * y3 - 3e7 * y2 * y2, 3e7 * y2 * y2], -1)

    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64).expand(4, 3).clone()
    t = torch.tensor([0.0, 1e-3, 0.3, 5.0, 40.0], dtype=F64)
    kw = dict(method="rodas5p", rtol=1e-7, atol=1e-11)
    with torch.no_grad():
        eager = solve(batched, y0, t, **kw)
        run = solve(batched, y0, t, **kw, options={"compile": "eager"})
    assert handed and handed[-1][0] is not None
    e, r = eager.stats, run.stats
    assert (r.n_accepted, r.n_rejected) == (e.n_accepted, e.n_rejected) and e.n_accepted > 20
    torch.testing.assert_close(run.ys, eager.ys, rtol=1e-9, atol=1e-14)

    # Systems that depend on each other: the host clock's coupling check raises its error, as without compile.
    def coupled(t, y):
        return -y + 0.1 * y.sum(0, keepdim=True)

    for options in ({}, {"compile": "eager"}):
        with torch.no_grad(), pytest.raises(ValueError, match="batch_dims"):
            solve(coupled, torch.ones(3, 2, dtype=F64), t[:2], method="rodas5p", options=options)
