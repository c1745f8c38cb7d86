"""``solve``/``odeint(..., adjoint=...)``: each gradient mode by name, and the choice ``adjoint="auto"`` makes.

Each named mode must give its direct call's gradient bit for bit (it is that call) and backprop's to the mode's
accuracy; ``"auto"`` must follow the rule in :mod:`neuralode.solvers.adjoint.modes` as the problem's size and
the budget change; the default call must not change.
"""

from __future__ import annotations

import math

import pytest
import torch

import neuralode
from neuralode import choose_adjoint, odeint, odeint_adjoint, solve
from neuralode.solvers.adjoint import modes
from neuralode.solvers.adjoint.recursive import auto_budget


class Field(torch.nn.Module):
    """``dy/dt = W2 tanh(W1 y + b1) + b2``, with a counter of evaluations."""

    def __init__(self, m: int = 3, hidden: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(m, hidden, dtype=torch.float64)
        self.l2 = torch.nn.Linear(hidden, m, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.l2(torch.tanh(self.l1(y)))


def y0_of(m: int = 3, batch: int = 4) -> torch.Tensor:
    return torch.linspace(-1, 1, batch * m, dtype=torch.float64).reshape(batch, m)


T = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)


def gradients(run, func, y0):
    """``(dL/dy0, *dL/dθ)`` of ``L = sum(ys²)`` for ``run(y0) -> ys``."""
    y0 = y0.clone().requires_grad_(True)
    ys = run(y0)
    return torch.autograd.grad(ys.pow(2).sum(), (y0, *func.parameters()))


def rel(a, b) -> float:
    num = math.sqrt(sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)))
    return num / math.sqrt(sum(float(y.pow(2).sum()) for y in b))


# (mode, method, the direct call's keywords, rtol = atol, relative accuracy against backprop at that tolerance).
# The implicit method on a smaller problem, at a looser tolerance: its steps are slow.
DIRECT = [
    ("checkpoint", "dopri5", dict(options={"checkpoint": True}), 1e-10, 1e-13),
    ("checkpoints", "dopri5", dict(options={"checkpoints": "auto"}), 1e-10, 1e-13),
    ("backsolve", "dopri5", dict(adjoint=True), 1e-10, 1e-9),
    ("backsolve", "rodas5p", dict(adjoint=True, adjoint_options={"interpolate": False}), 1e-6, 1e-5),
    ("interpolating", "dopri5", dict(adjoint=True, adjoint_options={"interpolate": True}), 1e-10, 1e-9),
    ("interpolating", "rodas5p", dict(adjoint=True), 1e-6, 1e-5),
    ("gauss", "rodas5p", dict(adjoint=True, adjoint_options={"quadrature": True}), 1e-6, 1e-5),
]


@pytest.mark.parametrize("mode, method, direct, tol, accuracy", DIRECT, ids=[f"{d[0]}-{d[1]}" for d in DIRECT])
def test_each_mode_by_keyword_is_its_direct_call(mode, method, direct, tol, accuracy):
    implicit = method == "rodas5p"
    func, y0, t = Field(), y0_of(3, 1 if implicit else 4), T[:2] if implicit else T
    tols = dict(rtol=tol, atol=tol, method=method)
    kw = dict(direct)
    call = odeint_adjoint if kw.pop("adjoint", False) else odeint
    by_name = gradients(lambda y: odeint(func, y, t, adjoint=mode, **tols), func, y0)
    by_call = gradients(lambda y: call(func, y, t, **tols, **kw), func, y0)
    for a, b in zip(by_name, by_call):
        assert torch.equal(a, b)
    backprop = gradients(lambda y: odeint(func, y, t, **tols), func, y0)
    assert rel(by_name, backprop) < accuracy


def test_the_solution_records_the_mode_that_ran():
    func, y0 = Field(), y0_of()
    assert solve(func, y0, T).adjoint_choice is None
    assert solve(func, y0, T, adjoint="backprop").adjoint_choice is None
    choice = solve(func, y0, T, adjoint="gauss", method="rodas5p").adjoint_choice
    assert choice is not None and choice.mode == "gauss" and "asked for" in choice.reason
    auto = solve(func, y0, T, adjoint="auto", memory_budget=1)
    assert auto.adjoint_choice is not None and auto.adjoint_choice.mode == "backsolve"
    assert auto.adjoint_choice.memory_budget == 1 and auto.adjoint_choice.reason


def test_the_default_call_evaluates_func_only_for_the_solve():
    """No measurement and no probe unless ``adjoint="auto"`` is asked for: every call of func is the solve's."""
    func, y0 = Field(), y0_of()
    for kw in ({}, {"adjoint": "backprop"}, {"adjoint": "backsolve"}):
        func.calls = 0
        sol = solve(func, y0, T, **kw)
        assert func.calls == sol.stats.nfe
    func.calls = 0
    sol = solve(func, y0, T, adjoint="auto")
    # one evaluation measured, one probe solve of the same steps, then the solve
    assert func.calls == 1 + 2 * sol.stats.nfe


def test_auto_without_autograd_measures_nothing():
    func, y0 = Field(), y0_of()
    with torch.no_grad():
        sol = solve(func, y0, T, adjoint="auto")
    assert func.calls == sol.stats.nfe
    assert sol.adjoint_choice is not None and sol.adjoint_choice.mode == "backprop"
    assert torch.equal(sol.ys, solve(func, y0, T).ys)


def test_eval_bytes_counts_what_one_evaluation_saves():
    """Linear saves its input, tanh its output (which the second Linear saves again: one storage); the
    parameters are shared by every evaluation and left out."""
    for hidden, batch in ((8, 4), (32, 16)):
        func, y0 = Field(3, hidden), y0_of(3, batch)
        assert modes.eval_bytes(func, y0) == (batch * 3 + batch * hidden) * 8
    f32 = Field(3, 8).float()
    assert modes.eval_bytes(f32, y0_of().float()) == (4 * 3 + 4 * 8) * 4


def peak_saved_bytes(run) -> int:
    """The bytes autograd saves over ``run()``, each storage once (what backprop holds when backward starts: a
    forward pass frees none of them), as benchmarks/results/adjoint.md counts memory for backward."""
    alive: dict[int, int] = {}
    peak = 0

    def pack(x):
        nonlocal peak
        alive[x.untyped_storage().data_ptr()] = x.numel() * x.element_size()
        peak = max(peak, sum(alive.values()))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        run()
    return peak


def test_the_backprop_estimate_matches_what_backprop_saves():
    func, y0 = Field(3, 64), y0_of(3, 32)
    y0.requires_grad_(True)
    for steps in (10, 40):
        choice = choose_adjoint(func, y0, T, method="rk4", options={"step_size": 1 / steps})
        assert choice.steps == (steps, "grid")
        measured = peak_saved_bytes(lambda: odeint(func, y0, T, method="rk4", options={"step_size": 1 / steps}))
        assert abs(choice.estimated_bytes["backprop"] - measured) < 0.05 * measured
    # adaptive: the steps and evaluations per step of the probe
    choice = choose_adjoint(func, y0, T, rtol=1e-5, atol=1e-5)
    assert choice.steps is not None and choice.steps[1] == "probe"
    measured = peak_saved_bytes(lambda: odeint(func, y0, T, rtol=1e-5, atol=1e-5))
    assert abs(choice.estimated_bytes["backprop"] - measured) < 0.05 * measured


def rk4(steps):
    return dict(method="rk4", options={"step_size": 1 / steps})


def test_auto_takes_backprop_when_it_fits_and_recursive_checkpointing_when_the_steps_grow():
    func, y0 = Field(), y0_of()
    few = choose_adjoint(func, y0, T, **rk4(10), memory_budget=1 << 40)
    assert few.mode == "backprop" and few.steps == (10, "grid")
    budget = few.estimated_bytes["backprop"]  # backprop of 10 steps fits exactly
    assert choose_adjoint(func, y0, T, **rk4(10), memory_budget=budget).mode == "backprop"
    many = choose_adjoint(func, y0, T, **rk4(100), memory_budget=budget)
    assert many.estimated_bytes["backprop"] == 10 * budget  # n e b, linear in the steps
    assert many.mode == "checkpoints"
    assert many.estimated_bytes["checkpoints"] <= budget < many.estimated_bytes["backprop"]
    # a budget below recursive checkpointing's: the backsolve adjoint, whose memory does not grow with the steps
    small = many.estimated_bytes["checkpoints"] - 1
    tiny = choose_adjoint(func, y0, T, **rk4(100), memory_budget=small)
    assert tiny.mode == "backsolve"
    assert (
        choose_adjoint(func, y0, T, **rk4(1000), memory_budget=small).estimated_bytes["backsolve"]
        == (tiny.estimated_bytes["backsolve"])
    )
    # the checkpoints estimate follows K = 2 + ceil(log2 n)
    e_b = many.estimated_bytes["checkpoint"] - 100 * y0.numel() * 8
    assert many.estimated_bytes["checkpoints"] == 2 * auto_budget(100) * y0.numel() * 8 + e_b


def test_auto_solves_with_the_mode_it_chose():
    func, y0 = Field(), y0_of()
    tol = dict(rtol=1e-10, atol=1e-10)
    for budget, mode in ((1 << 40, "backprop"), (1, "backsolve")):
        sol = solve(func, y0, T, **tol, adjoint="auto", memory_budget=budget)
        assert sol.adjoint_choice is not None and sol.adjoint_choice.mode == mode
        auto = gradients(lambda y: odeint(func, y, T, **tol, adjoint="auto", memory_budget=budget), func, y0)
        named = gradients(lambda y: odeint(func, y, T, **tol, adjoint=mode), func, y0)
        for a, b in zip(auto, named):
            assert torch.equal(a, b)


def test_auto_takes_the_interpolating_or_gauss_adjoint_for_an_implicit_method_as_P_grows():
    y0 = y0_of(3, 2)  # m = 6
    small = Field(3, 2)  # P = 3*2 + 2 + 2*3 + 3 = 17 < 10 m
    large = Field(3, 16)  # P = 48 + 16 + 48 + 3 = 115 >= 10 m
    choice = choose_adjoint(small, y0, T, method="rodas5p", memory_budget=1)
    assert (choice.mode, choice.params, choice.state) == ("interpolating", 17, 6)
    choice = choose_adjoint(large, y0, T, method="rodas5p", memory_budget=1)
    assert (choice.mode, choice.params) == ("gauss", 115)
    # the threshold is P >= GAUSS_RATIO m: P = 59 against m = 3 and m = 6
    exact = Field(3, 8)
    assert choose_adjoint(exact, y0_of(3, 1), T, method="rodas5p", memory_budget=1).mode == "gauss"
    assert choose_adjoint(exact, y0_of(3, 2), T, method="rodas5p", memory_budget=1).mode == "interpolating"
    # with a large budget, backprop
    assert choose_adjoint(large, y0, T, method="rodas5p", memory_budget=1 << 40).mode == "backprop"


def test_auto_without_a_module_keeps_to_per_step_checkpointing():
    func = Field()

    def plain(t, y):
        return func(t, y)

    choice = choose_adjoint(plain, y0_of(), T, memory_budget=1)
    assert choice.mode == "checkpoint" and "not a torch.nn.Module" in choice.reason
    assert choice.params == 0
    # the parameters it closes over get backprop's gradient
    auto = gradients(lambda y: odeint(plain, y, T, adjoint="auto", memory_budget=1), func, y0_of())
    backprop = gradients(lambda y: odeint(plain, y, T), func, y0_of())
    assert rel(auto, backprop) < 1e-13


def test_a_tuple_state_is_measured_and_solved():
    func = Field(2, 8)

    def pair(t, y):
        dy = func(t, torch.cat(y, dim=-1))
        return dy[..., :1], dy[..., 1:]

    y0 = (y0_of(2, 4)[:, :1].contiguous(), y0_of(2, 4)[:, 1:].contiguous())
    # the same saved tensors, and the weights the Linear layers save: a plain function has no parameters to leave out
    weights = (func.l1.weight.numel() + func.l2.weight.numel()) * 8
    assert modes.eval_bytes(pair, y0) == modes.eval_bytes(func, y0_of(2, 4)) + weights
    sol = solve(pair, y0, T, adjoint="auto", memory_budget=1)
    assert sol.adjoint_choice is not None and sol.adjoint_choice.mode == "checkpoint" and isinstance(sol.ys, tuple)


def test_adaptive_steps_come_from_a_probe_then_from_the_previous_solve():
    func, y0 = Field(), y0_of()
    first = choose_adjoint(func, y0, T, rtol=1e-6, atol=1e-8, memory_budget=1 << 40)
    assert first.steps is not None and first.steps[1] == "probe"
    sol = solve(func, y0, T, rtol=1e-6, atol=1e-8, adjoint="auto", memory_budget=1 << 40)
    assert sol.adjoint_choice is not None and sol.adjoint_choice.steps == (sol.stats.n_accepted, "previous solve")
    assert first.steps[0] == sol.stats.n_accepted
    # other tolerances are another problem: probed again
    other = choose_adjoint(func, y0, T, rtol=1e-9, atol=1e-11, memory_budget=1 << 40)
    assert other.steps is not None and other.steps[1] == "probe" and other.steps[0] > first.steps[0]


def test_the_default_budget_is_half_the_free_memory():
    free = modes.free_memory(torch.device("cpu"))
    assert free > 0
    budget = modes.default_memory_budget(torch.device("cpu"))
    assert abs(budget - modes.MEMORY_FRACTION * free) <= 0.05 * free  # free memory moves between the two reads
    choice = choose_adjoint(Field(), y0_of(), T, **rk4(10))
    assert choice.memory_budget is not None and abs(choice.memory_budget - budget) <= 0.05 * free


def test_event_mode_takes_the_modes_that_handle_events():
    func, y0 = Field(), y0_of()

    def event_fn(t, y):
        return t - 0.5

    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for mode, direct in (
        ("backsolve", lambda y: odeint_adjoint(func, y, t, event_fn=event_fn)),
        ("checkpoint", lambda y: odeint(func, y, t, event_fn=event_fn, options={"checkpoint": True})),
    ):
        by_name = gradients(lambda y: odeint(func, y, t, event_fn=event_fn, adjoint=mode)[1], func, y0)
        by_call = gradients(lambda y: direct(y)[1], func, y0)
        for a, b in zip(by_name, by_call):
            assert torch.equal(a, b)
    for mode in ("gauss", "auto"):
        with pytest.raises(
            ValueError, match="adjoint must be one of 'backprop', 'checkpoint', 'backsolve' with event_fn"
        ):
            odeint(func, y0, t, event_fn=event_fn, adjoint=mode)


def test_bad_modes_and_budgets_are_refused_naming_the_argument():
    func, y0 = Field(), y0_of()
    listing = "'backprop', 'checkpoint', 'checkpoints', 'backsolve', 'interpolating', 'gauss', 'auto'"
    with pytest.raises(ValueError, match=f"adjoint must be one of {listing}; got 'adjiont'.$"):
        solve(func, y0, T, adjoint="adjiont")
    with pytest.raises(ValueError, match="got 'checkpiont'. Did you mean 'checkpoint'?"):
        solve(func, y0, T, adjoint="checkpiont")
    with pytest.raises(TypeError, match="adjoint must be one of .*; got NoneType"):
        odeint(func, y0, T, adjoint=None)  # type: ignore[arg-type]
    for bad in (0, 0.5, -3, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"memory_budget must be a finite number of bytes >= 1"):
            solve(func, y0, T, adjoint="auto", memory_budget=bad)
    for bad in ("1GB", True, torch.tensor(1e9)):
        with pytest.raises(TypeError, match="memory_budget must be a number of bytes >= 1"):
            odeint(func, y0, T, adjoint="auto", memory_budget=bad)
    with pytest.raises(ValueError, match="memory_budget"):  # checked with every mode
        odeint(func, y0, T, memory_budget=0)
    with pytest.raises(ValueError, match=r"options\['checkpoint'\] and adjoint='backsolve' both choose"):
        solve(func, y0, T, adjoint="backsolve", options={"checkpoint": True})
    with pytest.raises(ValueError, match=r"adjoint='backsolve' differentiates func.parameters\(\), so func must be"):
        solve(lambda t, y: -y, y0, T, adjoint="backsolve")
    with pytest.raises(ValueError, match="adjoint='gauss' reads y"):
        solve(func, y0, T, adjoint="gauss", events=[neuralode.Event(lambda t, y: t - 0.5)])


def test_auto_with_per_sample_or_events_keeps_to_the_modes_that_handle_them():
    func, y0 = Field(), y0_of(3, 2)
    t_rows = torch.stack([T[:2] * (1 + 0.5 * i) for i in range(y0.shape[0])])  # (B, T): each sample its own times
    kw = dict(rtol=1e-5, atol=1e-5, options={"per_sample": True})
    sol = solve(func, y0, t_rows, **kw, adjoint="auto", memory_budget=1)
    assert sol.adjoint_choice is not None and sol.adjoint_choice.mode == "backsolve"
    auto = gradients(lambda y: solve(func, y, t_rows, **kw, adjoint="auto", memory_budget=1).ys, func, y0)
    direct = gradients(lambda y: neuralode.solve_adjoint(func, y, t_rows, **kw).ys, func, y0)
    for a, b in zip(auto, direct):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"adjoint='gauss' does not support options\['per_sample'\]"):
        solve(func, y0, t_rows, **kw, adjoint="gauss")
    events = [neuralode.Event(lambda t, y: y[0, 0] - 5.0)]
    explicit = choose_adjoint(func, y0, T, events=events, memory_budget=1)
    assert explicit.mode == "backsolve"  # recursive checkpointing refuses events
    implicit = choose_adjoint(func, y0_of(3, 1), T[:2], rtol=1e-4, method="rodas5p", events=events, memory_budget=1)
    assert implicit.mode == "checkpoint" and "events" in implicit.reason
