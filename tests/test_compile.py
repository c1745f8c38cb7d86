"""options={"compile": ...}: the compiled step gives the eager step's solution, gradients, adjoint
and events. The "aot_eager" backend traces exactly what inductor would compile (the same graph,
forward and backward) without generating C++, so the tests stay fast; inductor itself is timed
in benchmarks/bench_compile.py."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import Event, odeint, odeint_adjoint, solve
from neuralode.solvers.fast.compiled_chunks import chunk_size
from neuralode.solvers.methods.compiled import CPU_INDUCTOR_OPTIONS, inductor_options

F64 = torch.float64
BACKEND = "aot_eager"


def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 2.0 * (1 - x**2) * v - x], -1)


# A sample of the methods declaring ``compile``: the compiled step is the one explicit Runge-Kutta step of the
# method's tableau for all of them; two adaptive pairs and a fixed grid stand for the rest, as tracing costs 1-3 s
# a method.
@pytest.mark.parametrize(
    "method,options", [("dopri5", {}), ("tsit5", {}), ("rk4", {"step_size": 0.05, "compile_steps": 1})]
)
def test_compiled_step_matches_eager(method, options):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    eager = solve(vdp, y0, t, method=method, rtol=1e-8, atol=1e-8, options=options)
    comp = solve(vdp, y0, t, method=method, rtol=1e-8, atol=1e-8, options={**options, "compile": BACKEND})
    # The same steps; the stage sums are written as tensor products instead of torch.add(alpha=),
    # so the two differ by rounding only.
    assert (comp.stats.nfe, comp.stats.n_accepted, comp.stats.n_rejected) == (
        eager.stats.nfe,
        eager.stats.n_accepted,
        eager.stats.n_rejected,
    )
    assert (comp.ys - eager.ys).abs().max() < 1e-10


def _host_syncs(fn):
    """``fn()`` and the number of tensor-to-Python conversions it made (each one a host
    synchronisation on an accelerator)."""
    names = ("__float__", "__bool__", "__int__", "__index__", "item", "tolist")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    count = [0]

    def counting(name):
        def method(self, *args, **kwargs):
            count[0] += 1
            return saved[name](self, *args, **kwargs)

        return method

    for name in names:
        setattr(torch.Tensor, name, counting(name))
    try:
        out = fn()
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
    return out, count[0]


def test_compiled_adaptive_step_syncs_once_per_attempt():
    # The stages, their combination and the error estimate are one graph; what reaches Python
    # per step attempt is the error norm alone. Two tolerances: the extra attempts of the tighter
    # solve cost exactly one conversion each (the setup's conversions are the same for both).
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    runs = []
    for tol in (1e-5, 1e-8):
        solve(vdp, y0, t, rtol=tol, atol=tol, options={"compile": BACKEND})  # compiled before counting
        sol, syncs = _host_syncs(lambda: solve(vdp, y0, t, rtol=tol, atol=tol, options={"compile": BACKEND}))
        runs.append((sol.stats.n_accepted + sol.stats.n_rejected, syncs))
    (a0, s0), (a1, s1) = runs
    assert a1 > a0 + 10
    assert s1 - s0 == a1 - a0


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
    sol = solve(
        fall,
        torch.tensor([1.0, 0.0], dtype=F64),
        torch.tensor([0.0, 2.0], dtype=F64),
        events=[ev],
        rtol=1e-10,
        atol=1e-10,
        options={"compile": BACKEND},
    )
    v1 = math.sqrt(2 * g)
    expected = [v1 / g, v1 / g * (1 + 2 * 0.8), v1 / g * (1 + 2 * 0.8 + 2 * 0.64)]
    assert [r.t.item() for r in sol.events[:3]] == pytest.approx(expected, abs=1e-10)


def test_inductor_options_scoped_to_cpu_inductor_without_autograd():
    cpu = torch.device("cpu")
    opts = inductor_options("inductor", cpu, False)
    assert opts == {"options": CPU_INDUCTOR_OPTIONS} and opts["options"] is not CPU_INDUCTOR_OPTIONS
    for args in (("inductor", cpu, True), ("aot_eager", cpu, False), ("inductor", torch.device("cuda"), False)):
        assert inductor_options(*args) == {}


def test_compile_option_errors():
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match=r"options\['compile'\] must be True, False or a torch.compile backend"):
        odeint(f, y0, t, options={"compile": "fast"})
    with pytest.raises(ValueError, match="cannot be combined"):
        odeint(f, y0, t, options={"compile": True, "checkpoint": True})
    with pytest.raises(ValueError, match="a multistep or implicit method"):
        odeint(f, y0, t, method="implicit_adams", options={"compile": True})


# --------------------------------------------------------------------------------------------
# Fixed grids: options["compile_steps"] steps per compiled call (compiled_chunks.py).


def forced(t, y):
    return -1.3 * y + torch.sin(3.0 * t) * y.flip(-1)


def _fixed_pair(method, y0, t, options, k):
    eager = solve(forced, y0, t, method=method, options=options)
    comp = solve(forced, y0, t, method=method, options={**options, "compile": "eager", "compile_steps": k})
    return eager, comp


def test_chunk_size_keeps_the_calls_and_pads_least():
    assert [chunk_size(200, k) for k in (16, 32, 50, 64, 100, 200, 500)] == [16, 29, 50, 50, 100, 200, 200]
    for n in range(1, 130):
        for k_max in range(1, 40):
            k = chunk_size(n, k_max)
            calls = -(-n // k)
            assert 1 <= k <= k_max and calls == -(-n // k_max)  # as many calls as chunks of k_max
            assert calls * k - n < calls  # fewer padded steps than calls
            divisors = [d for d in range(-(-n // calls), k_max + 1) if n % d == 0]
            assert (n % k == 0) == bool(divisors) and (not divisors or k == max(divisors))


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("k,size", [(3, 3), (4, 4), (6, 5), (10, 10)])
def test_chunked_fixed_grid_matches_eager(dtype, tol, k, size):
    # 10 steps of rk4: K = 3 and 4 leave a padded last chunk (3 chunks of 4: 2 zero steps),
    # K = 6 takes 2 chunks of 5 (no padding), K = 10 is one chunk. The output times include
    # grid points (0.5, 1) and times between them (0.25, 0.73).
    y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=dtype)
    t = torch.tensor([0.0, 0.25, 0.5, 0.73, 1.0], dtype=dtype)
    eager, comp = _fixed_pair("rk4", y0, t, {"step_size": 0.1}, k)
    n_chunks = -(-10 // size)
    # The chunked path ran: every step evaluates its own first stage inside the graph, padded
    # steps included (eager reuses the input check's evaluation for the first step).
    assert comp.stats.nfe == 1 + 4 * size * n_chunks
    assert eager.stats.nfe == 40
    assert comp.stats.n_accepted == eager.stats.n_accepted == 10
    assert comp.ys.dtype == dtype
    assert (comp.ys - eager.ys).abs().max() < tol
    assert comp.ys[0].equal(y0)


def test_chunked_backwards_in_time_and_output_grid():
    # Integrating backwards, on a grid given by the output times themselves (midpoint), with
    # a state of three dimensions.
    y0 = torch.randn(2, 3, 2, dtype=F64)
    t = torch.linspace(1.0, -1.0, 9, dtype=F64)
    eager, comp = _fixed_pair("midpoint", y0, t, {}, 3)
    assert comp.stats.nfe == 1 + 2 * 3 * 3
    assert (comp.ys - eager.ys).abs().max() < 1e-14


def test_chunked_gradient_equals_eager():
    w = torch.tensor([1.3, -0.4], dtype=F64, requires_grad=True)

    def f(t, y):
        return -w * y + torch.sin(t) * y.flip(-1)

    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.35, 1.0], dtype=F64)
    grads = []
    for opts in ({"step_size": 0.1}, {"step_size": 0.1, "compile": BACKEND, "compile_steps": 4}):
        ys = odeint(f, y0, t, method="midpoint", options=opts)
        grads.append(torch.autograd.grad((ys[1:] ** 2).sum(), (w, y0)))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-13


def test_chunked_falls_back_to_compiled_steps():
    # Events (and cubic interpolation) need the loop between steps: one compiled step per call,
    # the eager path's evaluations exactly.
    ev = Event(lambda t, y: y[0] - 0.5, terminal=False)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for kw in ({"events": [ev]}, {}):
        opts = {"step_size": 0.1, **({} if kw else {"interp": "cubic"})}
        t_out = t if kw else torch.tensor([0.0, 0.45, 1.0], dtype=F64)
        eager = solve(forced, y0, t_out, method="rk4", options=opts, **kw)
        comp = solve(forced, y0, t_out, method="rk4", options={**opts, "compile": "eager", "compile_steps": 4}, **kw)
        assert comp.stats.nfe == eager.stats.nfe
        assert (comp.ys - eager.ys).abs().max() < 1e-13
        if kw:
            assert len(comp.events) == len(eager.events) == 1
            assert comp.events[0].t.item() == pytest.approx(eager.events[0].t.item(), abs=1e-12)


def test_compile_steps_option_errors():
    f, y0, t = (lambda t, y: -y), torch.ones(2), torch.tensor([0.0, 1.0])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=r"options\['compile_steps'\] must be a positive integer"):
            odeint(f, y0, t, method="rk4", options={"step_size": 0.1, "compile": True, "compile_steps": bad})
    # Adaptive methods take it too (attempts per compiled run, see test_device_run.py), with the same check.
    with pytest.raises(ValueError, match=r"options\['compile_steps'\] must be a positive integer"):
        odeint(f, y0, t, options={"compile": True, "compile_steps": 0})


def test_chunked_tuple_state():
    def f(t, y):
        x, v = y
        return v[:, 0], -(x * (1 + 0.1 * t))[:, None]

    y0 = (torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([[0.0], [1.0]], dtype=F64))
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    eager = solve(f, y0, t, method="rk4", options={"step_size": 0.1})
    comp = solve(f, y0, t, method="rk4", options={"step_size": 0.1, "compile": "eager", "compile_steps": 4})
    assert comp.stats.nfe == 1 + 4 * 4 * 3
    for a, b in zip(comp.ys, eager.ys):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-14


def test_chunked_many_graphs_in_one_process():
    # More distinct chunks (here ten values of K) than torch.compile's recompile limit for one
    # code object: each chunk has its own, so none fails under fullgraph=True.
    y0 = torch.tensor([1.0, -1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    eager = solve(forced, y0, t, method="euler", options={"step_size": 0.1})
    for k in range(2, 12):
        comp = solve(forced, y0, t, method="euler", options={"step_size": 0.1, "compile": "eager", "compile_steps": k})
        assert (comp.ys - eager.ys).abs().max() < 1e-14


class CountingField(torch.nn.Module):
    """The commonest Neural-ODE func of all: a module that counts its calls (``self.nfe += 1``)."""

    def __init__(self, item: bool = False):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=F64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.5, -1.2], [0.8, 0.3]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.2]))
        self.nfe = 0
        self.item = item

    def forward(self, t, y):
        self.nfe += 1
        out = torch.tanh(self.lin(y))
        if self.item and float(y.abs().max().item()) > 100.0:  # data-dependent Python: untraceable
            out = out * 0.5
        return out


@pytest.mark.parametrize("method,options", [("rk4", {"step_size": 0.05, "compile_steps": 2}), ("dopri5", {})])
def test_a_module_counting_its_calls_compiles_once_and_counts_right(method, options):
    # dynamo guards on a module's int attribute by value: every call recompiled, and past its recompile limit
    # (8) fullgraph=True failed; 30 chunks, or 20-odd adaptive steps, are past it.
    func = CountingField()
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.2]], dtype=F64)
    t = torch.linspace(0, 3, 3, dtype=F64)
    eager = solve(func, y0, t, method=method, rtol=1e-9, atol=1e-9, options=options)
    func.nfe = 0
    comp = solve(func, y0, t, method=method, rtol=1e-9, atol=1e-9, options={**options, "compile": BACKEND})
    assert comp.stats.n_accepted == eager.stats.n_accepted > 12
    assert func.nfe == comp.stats.nfe  # (chunks evaluate f at the start afresh: one more than eager's)
    torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-12, atol=1e-12)
    # The counter becomes a graph input on the first recompilation: a graph or two, then none in later solves.
    assert 1 <= comp.stats.n_compiles <= 3
    func.nfe = 0
    again = solve(func, y0, t, method=method, rtol=1e-9, atol=1e-9, options={**options, "compile": BACKEND})
    assert again.stats.n_compiles == 0 and func.nfe == again.stats.nfe


@pytest.mark.parametrize("method,options", [("rk4", {"step_size": 0.1}), ("dopri5", {})])
def test_an_untraceable_func_warns_once_and_runs_eagerly(method, options):
    # .item() and a branch on its value: torch.compile(fullgraph=True) cannot trace it. The solve warns, naming
    # dynamo's reason, and takes the same steps eagerly: the eager answer, and no evaluation counted twice.
    func = CountingField(item=True)
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    eager = solve(func, y0, t, method=method, options=options)
    func.nfe = 0
    with pytest.warns(RuntimeWarning, match=r"could not compile .*UserError.*data-dependent"):
        comp = solve(func, y0, t, method=method, options={**options, "compile": BACKEND})
    assert func.nfe == comp.stats.nfe and comp.stats.n_accepted == eager.stats.n_accepted
    torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-12, atol=1e-12)
    func.nfe = 0
    again = solve(func, y0, t, method=method, options={**options, "compile": BACKEND})  # eager from the start
    assert func.nfe == again.stats.nfe and torch.equal(again.ys, comp.ys)
