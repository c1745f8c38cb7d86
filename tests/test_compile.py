"""options={"compile": ...}: the compiled step gives the eager step's solution, gradients, adjoint
and events. The "aot_eager" backend traces exactly what inductor would compile (the same graph,
forward and backward) without generating C++, so the tests stay fast; inductor itself is timed
in benchmarks/bench_compile.py."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import Event, odeint, odeint_adjoint, solve

F64 = torch.float64
BACKEND = "aot_eager"


def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 2.0 * (1 - x**2) * v - x], -1)


@pytest.mark.parametrize("method,options", [("dopri5", {}), ("tsit5", {}), ("rk4", {"step_size": 0.05})])
def test_compiled_step_matches_eager(method, options):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    eager = solve(vdp, y0, t, method=method, rtol=1e-8, atol=1e-8, options=options)
    comp = solve(vdp, y0, t, method=method, rtol=1e-8, atol=1e-8, options={**options, "compile": BACKEND})
    # The same steps; the stage sums are written as tensor products instead of torch.add(alpha=),
    # so the two differ by rounding only.
    assert (comp.stats.nfe, comp.stats.n_accepted, comp.stats.n_rejected) == (
        eager.stats.nfe, eager.stats.n_accepted, eager.stats.n_rejected)
    assert (comp.ys - eager.ys).abs().max() < 1e-10


def test_compiled_step_gradients_and_adjoint():
    w = torch.tensor(1.3, dtype=F64, requires_grad=True)

    def f(t, y):
        return -w * y + torch.sin(t)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for opts in (None, {"compile": BACKEND}):
        grads.append(torch.autograd.grad(odeint(f, y0, t, rtol=1e-9, atol=1e-9, options=opts)[-1].sum(), w)[0])
    ys = odeint_adjoint(f, y0, t, rtol=1e-9, atol=1e-9, options={"compile": BACKEND}, adjoint_params=(w,))
    grads.append(torch.autograd.grad(ys[-1].sum(), w)[0])
    assert grads[1].item() == pytest.approx(grads[0].item(), rel=1e-9)
    assert grads[2].item() == pytest.approx(grads[0].item(), rel=1e-6)


def test_compiled_step_with_events_and_compile_time_reported():
    g = 9.81

    def fall(t, y):
        return torch.stack([y[1], -g * torch.ones_like(y[1])])

    ev = Event(lambda t, y: y[0], direction=-1, terminal=False, reset=lambda t, y: torch.stack([y[0], -0.8 * y[1]]))
    sol = solve(fall, torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), events=[ev],
                rtol=1e-10, atol=1e-10, options={"compile": BACKEND})
    v1 = math.sqrt(2 * g)
    expected = [v1 / g, v1 / g * (1 + 2 * 0.8), v1 / g * (1 + 2 * 0.8 + 2 * 0.64)]
    assert [r.t.item() for r in sol.events[:3]] == pytest.approx(expected, abs=1e-10)


def test_compile_option_errors():
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match=r"options\['compile'\] must be True, False or a torch.compile backend"):
        odeint(f, y0, t, options={"compile": "fast"})
    with pytest.raises(ValueError, match="cannot be combined"):
        odeint(f, y0, t, options={"compile": True, "checkpoint": True})
    with pytest.raises(ValueError, match="a multistep or implicit method"):
        odeint(f, y0, t, method="implicit_adams", options={"compile": True})
