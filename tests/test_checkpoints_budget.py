"""options={"checkpoints": K}: backpropagation storing at most K states (adjoint/recursive.py).

The gradients must be those of backpropagation through the same solve (the same steps, re-run), to rounding,
whatever K; the solution itself must be the plain solve's, bit for bit; the store must hold at most K states
and the backward pass must re-run what the plan in Solution.stats says.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from neuralode import Event, odeint, odeint_adjoint, solve
from neuralode.solvers.adjoint import recursive

RTOL = 1e-10


class Field(torch.nn.Module):
    """A small time-dependent MLP field, float64."""

    def __init__(self, dim: int = 3, hidden: int = 8, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen, dtype=torch.float64) / dim**0.5)
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=gen, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=gen, dtype=torch.float64) / hidden**0.5)

    def forward(self, t, y):
        return torch.tanh(y @ self.w1.T + self.b1) @ self.w2.T * (1 + 0.5 * torch.sin(3 * t))


class TupleField(torch.nn.Module):
    """A tuple state (position, velocity) driven by a Field."""

    def __init__(self):
        super().__init__()
        self.inner = Field(dim=2, seed=1)

    def forward(self, t, state):
        x, v = state
        return v, self.inner(t, x) - 0.1 * v


def gradients(func, y0, t, method, options):
    """The solution and d(loss)/d(y0, t, parameters) of a loss reading every output time."""
    sol = solve(func, y0, t, method=method, rtol=1e-7, atol=1e-9, options=options)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    weights = torch.linspace(0.5, 1.5, len(t), dtype=torch.float64)
    loss = sum(((y**2).flatten(1).sum(1) * weights).sum() + y[1:].sin().sum() for y in ys)
    inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), t, *func.parameters()]
    return sol, torch.autograd.grad(loss, inputs)


def assert_same_gradients(reference, checked):
    for a, b in zip(reference, checked):
        scale = a.abs().max().clamp_min(1e-300)
        assert float((a - b).abs().max() / scale) <= RTOL


CASES = {
    "dopri5": ("dopri5", {}),
    "rk4": ("rk4", {"step_size": 0.05}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("budget", [2, 3, 10_000, "auto"])
def test_gradients_equal_backpropagation_through_the_same_solve(case, budget):
    method, options = CASES[case]
    func = Field()
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    t = torch.tensor([0.0, 0.35, 1.1, 1.7, 2.0], dtype=torch.float64, requires_grad=True)
    plain, g_plain = gradients(func, y0, t, method, options)
    sol, g_budget = gradients(func, y0, t, method, {**options, "checkpoints": budget})
    assert torch.equal(sol.ys, plain.ys)  # the forward pass is the plain solve
    assert sol.stats.n_accepted == plain.stats.n_accepted and sol.stats.nfe == plain.stats.nfe
    assert_same_gradients(g_plain, g_budget)
    n = plain.stats.n_accepted
    assert n > 10  # enough steps for the budget to bind
    stats = sol.stats
    k = recursive.auto_budget(n) if budget == "auto" else budget
    assert 0 < stats.max_stored_states <= min(k, n)
    # Every step but the last (taken with its graph in the forward pass) is re-run at least once to be
    # differentiated; a binding budget re-runs more.
    assert stats.n_recomputed_steps == n - 1 if k >= n else stats.n_recomputed_steps > n
    # The backward pass ran the plan the forward pass reported.
    assert recursive.LAST_BACKWARD == {
        "n_recomputed_steps": stats.n_recomputed_steps,
        "max_stored_states": stats.max_stored_states,
    }


def sweeps(k: int, n: int) -> int:
    """Revolve's bound (Griewank and Walther 2000): with ``k`` checkpoints and ``n`` known in advance, each
    step is advanced over at most ``r`` times, ``r`` the fewest with ``C(k + r, k) >= n``; the backward
    pass re-runs at most ``(r + 1) n`` steps, counting the one that differentiates each step."""
    r = 1
    while math.comb(k + r, k) < n:
        r += 1
    return r


def planned(budget, n: int):
    """The stats of a solve of exactly ``n`` rk4 steps whose backward pass is planned but not run."""
    y0 = torch.full((2,), 0.5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"step_size": 1.0 / n, "checkpoints": budget}
    return solve(Field(dim=2, hidden=2), y0, t, method="rk4", options=options).stats


@pytest.mark.parametrize(("budget", "n"), [(3, 300), (4, 1000), (8, 1000)])
def test_a_small_budget_recomputes_no_more_than_revolve_knowing_n(budget, n):
    stats = planned(budget, n)
    assert stats.n_accepted == n
    assert stats.max_stored_states <= budget
    assert stats.n_recomputed_steps <= (sweeps(budget, n) + 1) * n


def fewest_advances(n: int, k: int) -> int:
    """Revolve's fewest steps advanced to reverse ``n`` steps with ``k`` slots, the start's included (Griewank
    and Walther 2000): ``r n - C(k + r, r - 1)``, ``r`` the fewest sweeps with ``C(k + r, k) >= n``; the first
    of those sweeps (``n - 1`` steps) is the forward pass's own."""
    r = sweeps(k, n) if n > 1 else 0
    return r * n - math.comb(k + r, r - 1) if r else 0


@pytest.mark.parametrize(("budget", "n"), [(3, 300), (4, 1000), (8, 1000), ("auto", 1000)])
def test_a_fixed_grid_recomputes_what_revolve_does_knowing_n(budget, n):
    # A fixed grid's steps are known in advance: the forward pass stores revolve's first-sweep checkpoints and
    # tapes the last step, as revolve's first sweep does, and the backward pass re-runs revolve's fewest steps.
    stats = planned(budget, n)
    k = recursive.auto_budget(n) if budget == "auto" else budget
    # Each step but the last re-run once to be differentiated, plus the advances beyond the first sweep.
    fewest = (n - 1) + fewest_advances(n, k) - (n - 1)
    assert stats.max_stored_states <= k
    assert stats.n_recomputed_steps == fewest


def test_the_split_is_revolves_optimum():
    # Every split of up to 60 steps with up to 5 slots, searched exhaustively: the steps advanced to reverse
    # them with the split recursion equal revolve's fewest.
    for slots in range(2, 6):
        for length in range(2, 61):
            count = recursive.Counter(1)
            recursive.reverse(0, length, None, slots, lambda i, s: s, lambda i, s: None, count)
            assert count.recomputed - length == fewest_advances(length, slots), (length, slots)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 64, 65, 129, 700])
def test_auto_budget_stores_at_most_two_plus_log2_of_the_steps(n):
    stats = planned("auto", n)
    bound = 2 + math.ceil(math.log2(n))
    assert recursive.auto_budget(n) == bound
    assert stats.n_accepted == n
    assert stats.max_stored_states <= min(bound, n + 1)
    assert stats.n_recomputed_steps <= (sweeps(bound, n) + 1) * n


def test_a_tuple_state_gets_backpropagation_gradients():
    func = TupleField()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    v0 = torch.randn(3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64, requires_grad=True)
    plain, g_plain = gradients(func, (x0, v0), t, "dopri5", {})
    sol, g_budget = gradients(func, (x0, v0), t, "dopri5", {"checkpoints": 3})
    assert all(torch.equal(a, b) for a, b in zip(sol.ys, plain.ys))
    assert_same_gradients(g_plain, g_budget)
    assert sol.stats.max_stored_states <= 3


def test_outputs_reached_without_a_step_and_jumps_get_their_gradients():
    # t[2] is within rounding of t[1]: the fixed grid arrives there without a step, its output a copy of
    # the state; at jump_t the first stage is evaluated afresh instead of carried from the step before.
    func = Field()
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    t = torch.tensor([0.0, 1.0, math.nextafter(1.0, 2.0), 2.0], dtype=torch.float64, requires_grad=True)
    for method, options in (("rk4", {}), ("tsit5", {"jump_t": [0.7]}), ("dopri5", {"step_t": [0.3]})):
        _, g_plain = gradients(func, y0, t, method, options)
        _, g_budget = gradients(func, y0, t, method, {**options, "checkpoints": 2})
        assert_same_gradients(g_plain, g_budget)


def test_without_autograd_the_solve_is_the_plain_one():
    func = Field()
    y0 = torch.randn(3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with torch.no_grad():
        sol = solve(func, y0, t, options={"checkpoints": 2})
        plain = solve(func, y0, t)
    assert torch.equal(sol.ys, plain.ys)
    assert sol.stats.n_recomputed_steps == 0 and sol.stats.max_stored_states == 0


@pytest.mark.parametrize(
    ("options", "method", "match"),
    [
        ({"checkpoints": 1}, "dopri5", r"integer >= 2.*got 1"),
        ({"checkpoints": 2.5}, "dopri5", r"integer >= 2.*got 2.5"),
        ({"checkpoints": True}, "dopri5", r"integer >= 2.*got True"),
        ({"checkpoints": "4"}, "rk4", r"integer >= 2.*or 'auto'.*got '4'"),
        ({"checkpoints": 4, "checkpoint": True}, "dopri5", r"'checkpoints'\] and options\['checkpoint'\]"),
        ({"checkpoints": 4, "compile": True}, "dopri5", r"options\['compile'\] cannot be combined"),
        ({"checkpoints": 4, "per_sample": True}, "dopri5", r"options\['per_sample'\] cannot be combined"),
        ({"checkpoints": 4, "dense": True}, "dopri5", r"options\['dense'\] cannot be combined"),
        ({"checkpoints": 4}, "rodas5p", r"explicit Runge-Kutta methods.*'rodas5p' is not one"),
        ({"checkpoints": 4}, "explicit_adams", r"explicit Runge-Kutta methods.*'explicit_adams' is not one"),
    ],
)
def test_bad_options_are_refused_naming_them(options, method, match):
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        odeint(Field(dim=2), y0, t, method=method, options=options)


def test_events_plain_functions_and_double_backward_are_refused():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    func = Field(dim=2)
    with pytest.raises(ValueError, match="does not support events"):
        solve(func, y0, t, options={"checkpoints": 3}, events=[Event(lambda t, y: y[0] - 10.0)])
    with pytest.raises(ValueError, match="needs func to be a torch.nn.Module"):
        odeint(lambda t, y: -y, y0, t, options={"checkpoints": 3})
    ys = odeint(func, y0, t, options={"checkpoints": 3})
    with pytest.raises(ValueError, match="create_graph=True is not supported"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


def test_forward_mode_is_refused():
    # (the first forward-mode call of a process loads torch's decompositions for jvp: about a second)
    func = Field(dim=2)
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot carry forward-mode"):
        torch.func.jvp(lambda y: odeint(func, y, t, options={"checkpoints": 3}), (y0,), (y0,))


def test_a_retained_graph_gives_the_same_gradients_twice():
    # The checkpoints live as long as the graph: a second backward (retain_graph=True) re-runs them.
    func = Field()
    y0 = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    t = torch.linspace(0.0, 1.5, 3, dtype=torch.float64)
    ys = odeint(func, y0, t, options={"checkpoints": 2})
    first = torch.autograd.grad(ys.sum(), [y0, *func.parameters()], retain_graph=True)
    second = torch.autograd.grad(ys.sum(), [y0, *func.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert float(first[0].abs().max()) > 0


def test_odeint_adjoint_refuses_checkpoints():
    """Under the adjoint ``checkpoints`` would have no effect: refused, naming the argument."""
    net = torch.nn.Linear(2, 2).double()
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"options\['checkpoints'\] does not apply to odeint_adjoint"):
        odeint_adjoint(lambda t, y: net(y), y0, t, options={"checkpoints": 4}, adjoint_params=tuple(net.parameters()))
    with pytest.raises(ValueError, match=r"adjoint_options\['checkpoints'\] does not apply"):
        odeint_adjoint(
            lambda t, y: net(y), y0, t, adjoint_options={"checkpoints": 4}, adjoint_params=tuple(net.parameters())
        )


class _GradInside(torch.nn.Module):
    """A field that differentiates inside itself, as a CNF's exact trace does."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=torch.float64)

    def forward(self, t, z):
        with torch.enable_grad():
            z = z if z.requires_grad else z.requires_grad_(True)
            o = torch.tanh(self.lin(z))
            return o + torch.autograd.grad(o.sum(), z, create_graph=True)[0]


def test_per_step_checkpoint_warns_when_func_differentiates_inside_itself_and_keeps_the_gradient():
    torch.manual_seed(0)
    func, t = _GradInside(), torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    opts = {"step_size": 0.25}
    with pytest.warns(UserWarning, match=r"options\['checkpoint'\]: func differentiates inside itself.*'checkpoints'"):
        ys = odeint(func, y0, t, method="rk4", options={**opts, "checkpoint": True})
    (g,) = torch.autograd.grad(ys.square().sum(), y0)
    (ref,) = torch.autograd.grad(odeint(func, y0, t, method="rk4", options=opts).square().sum(), y0)
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=0)


def test_per_step_checkpoint_of_a_plain_field_does_not_warn():
    func = torch.nn.Linear(2, 2, dtype=torch.float64)
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(lambda t, y: func(y), y0, torch.linspace(0.0, 1.0, 3, dtype=torch.float64), options={"checkpoint": True})


def test_the_last_step_is_taped_once_and_re_run_for_a_second_backward_pass():
    # The forward pass takes the last step with its graph (revolve's first sweep tapes it), so the backward pass
    # re-runs every step but that one; a second backward pass (retain_graph) finds that graph used up and re-runs
    # the step from its inputs. Both give backpropagation's gradients.
    func = Field()
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    _, g_plain = gradients(func, y0, t, "dopri5", {})
    sol = solve(func, y0, t, method="dopri5", rtol=1e-7, atol=1e-9, options={"checkpoints": 3})
    weights = torch.linspace(0.5, 1.5, len(t), dtype=torch.float64)
    loss = ((sol.ys**2).flatten(1).sum(1) * weights).sum() + sol.ys[1:].sin().sum()
    inputs = [y0, t, *func.parameters()]
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    assert recursive.LAST_BACKWARD["n_recomputed_steps"] == sol.stats.n_recomputed_steps
    second = torch.autograd.grad(loss, inputs)
    assert recursive.LAST_BACKWARD["n_recomputed_steps"] == sol.stats.n_recomputed_steps + 1
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert_same_gradients(g_plain, first)


@pytest.mark.parametrize(("n", "budget"), [(3, 4), (5, 5), (10, 4), (100, 9), (1000, 12)])
def test_the_checkpoints_kept_re_run_fewest_of_any_subset(n, budget):
    # Of the states the forward pass holds, the backward pass keeps the subset (with step 0) that re-runs the
    # fewest steps, each segment j reversed with the budget - j slots left: checked against every subset.
    import itertools

    positions = list(range(0, n, max(1, n // (budget + 1))))[: budget + 1]

    def cost(kept):
        ends = kept[1:] + [n]
        return sum(recursive.reversal_cost(e - a, budget - j) for j, (a, e) in enumerate(zip(kept, ends)))

    best = min(cost([0, *rest]) for r in range(budget) for rest in itertools.combinations(positions[1:], r))
    kept = recursive.keep_checkpoints(positions, n, budget)
    assert kept[0] == 0 and len(kept) <= budget
    assert cost(kept) == best
    if n <= budget:
        assert kept == positions  # every state kept: each step re-run once


def test_reversal_cost_is_what_reverse_runs():
    for slots in range(1, 6):
        for length in range(0, 80):
            count = recursive.Counter(1)
            recursive.reverse(0, length, None, slots, lambda i, s: s, lambda i, s: None, count)
            assert count.recomputed == recursive.reversal_cost(length, slots), (length, slots)
