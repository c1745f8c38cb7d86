"""``Solution.adjoint_stats``: every gradient mode with a backward pass of its own reports it.

The backward evaluations of ``func`` are checked against a counter inside ``func`` (the evaluations made while
``backward`` runs), the steps re-run by the checkpointing modes against the forward pass's plan in
``Solution.stats``, and ``held_bytes`` against hand counts of the tensors each mode keeps. A second backward
through a retained graph adds its own work, once.
"""

from __future__ import annotations

import pytest
import torch

from neuralode import solve
from neuralode.solvers.solution import HeldStorages, storage_bytes

F64 = torch.float64
MODES = ("checkpoint", "checkpoints", "backsolve", "interpolating", "gauss")


class Field(torch.nn.Module):
    """A small tanh MLP field, float64, counting its evaluations in ``calls``."""

    def __init__(self, dim: int = 3, hidden: int = 8):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen, dtype=F64) / dim**0.5)
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=gen, dtype=F64))
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=gen, dtype=F64) / hidden**0.5)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        s = torch.sin(3 * t)
        return torch.tanh(y @ self.w1.T + self.b1) @ self.w2.T * (1 + 0.5 * (s[:, None] if s.dim() else s))


class Linear(torch.nn.Module):
    """``dy/dt = tanh(y) A`` with ``A`` a buffer: no parameters, so the only adjoint carried is the state's."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.register_buffer("A", torch.randn(dim, dim, generator=torch.Generator().manual_seed(1), dtype=F64) / 3)

    def forward(self, t, y):
        return torch.tanh(y) @ self.A


def y0_(batch: int = 4, dim: int = 3) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(2), dtype=F64).requires_grad_()


T = torch.linspace(0.0, 1.0, 5, dtype=F64)


def backward_counted(func: Field, loss: torch.Tensor, retain: bool = False) -> int:
    """Evaluations of ``func`` made by ``loss.backward()``."""
    before = func.calls
    loss.backward(retain_graph=retain)
    return func.calls - before


@pytest.mark.parametrize("mode", MODES)
def test_backward_evaluations_are_counted_once_per_backward_pass(mode):
    func = Field()
    sol = solve(func, y0_(), T, rtol=1e-6, atol=1e-8, adjoint=mode)
    assert sol.adjoint_stats is not None
    assert sol.adjoint_stats.nfe == 0  # filled when backward runs
    loss = sol.ys.pow(2).sum()
    first = backward_counted(func, loss, retain=True)
    stats = sol.adjoint_stats
    assert first > 0 and stats.nfe == first
    held = stats.held_bytes
    assert held > 0
    # A second backward through the retained graph adds its own evaluations, and holds as much.
    second = backward_counted(func, loss)
    assert stats.nfe == first + second
    assert stats.held_bytes == held


def test_backprop_has_no_backward_pass_of_its_own():
    # Its backward pass is autograd's, through the recorded solve: nothing to report, no hooks added.
    func = Field()
    sol = solve(func, y0_(), T, rtol=1e-6, atol=1e-8)
    assert sol.adjoint_stats is None
    assert backward_counted(func, sol.ys.pow(2).sum()) == 0
    # An implicit method that takes options['checkpoint'] without checkpointing its steps backpropagates too.
    sol = solve(Field(), y0_(), T, method="kvaerno5", options={"checkpoint": True})
    assert sol.adjoint_stats is None


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("dopri5", {"checkpoint": True}),
        ("rk4", {"step_size": 0.02, "checkpoint": True}),
        ("rodas5p", {"checkpoint": True}),
        ("dopri5", {"checkpoints": 2}),
        ("dopri5", {"checkpoints": "auto"}),
        ("rk4", {"step_size": 0.01, "checkpoints": 3}),
    ],
)
def test_recomputed_steps_are_the_forward_plan(method, options):
    func = Field()
    sol = solve(func, y0_(), T, method=method, rtol=1e-6, atol=1e-8, options=options)
    plan = sol.stats.n_recomputed_steps
    if options.get("checkpoint"):
        # each accepted step re-run once, and the rejected attempts whose evaluated f(t, y) the retry reuses
        assert sol.stats.n_accepted <= plan <= sol.stats.n_steps
    else:
        assert plan > sol.stats.n_accepted  # a binding budget re-runs steps more than once
    counted = backward_counted(func, sol.ys.pow(2).sum())
    stats = sol.adjoint_stats
    assert stats.n_recomputed_steps == plan
    assert stats.nfe == counted
    if method == "rodas5p":  # the re-run Rosenbrock steps form their Jacobians again
        assert stats.n_jac_evals == plan


class Decay(torch.nn.Module):
    """A field with a switch at ``t = 0.5``, on which rodas5p rejects steps."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=gen, dtype=F64) / 3)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.tanh(y) @ self.w - 0.1 * y * (t > 0.5)


def test_checkpoint_plan_counts_the_rejected_steps_backward_re_runs():
    # A rejected rodas5p attempt evaluates f(t, y) itself; the retry reuses it, an output of the attempt's
    # checkpoint, so backward re-runs the attempt too (and stops once f is formed again).
    func = Decay()
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64, requires_grad=True)
    sol = solve(func, y0, T, method="rodas5p", options={"checkpoint": True})
    assert sol.stats.n_rejected > 0
    plan = sol.stats.n_recomputed_steps
    assert plan > sol.stats.n_accepted
    counted = backward_counted(func, sol.ys.pow(2).sum())
    assert sol.adjoint_stats.n_recomputed_steps == plan and sol.adjoint_stats.nfe == counted


@pytest.mark.parametrize(("method", "step"), [("rk4", 0.05), ("rk4", 0.0125), ("dopri5", None)])
def test_checkpoint_holds_the_inputs_of_every_step(method, step):
    # Hand count: every accepted step keeps its input state; dopri5's steps also the derivative they reuse
    # (FSAL), rk4's only the first (the solve's f(t0, y0)).
    y0 = y0_()
    S = y0.nelement() * y0.element_size()
    options = {"checkpoint": True} if step is None else {"checkpoint": True, "step_size": step}
    sol = solve(Field(), y0, T, method=method, rtol=1e-6, atol=1e-8, options=options)
    sol.ys.pow(2).sum().backward()
    n = sol.stats.n_accepted
    expected = 2 * n * S if method == "dopri5" else (n + 1) * S
    assert sol.adjoint_stats.held_bytes == expected


@pytest.mark.parametrize("budget", [2, 3, 5])
@pytest.mark.parametrize("n", [60, 240])
def test_checkpoints_hold_at_most_the_budget(budget, n):
    # Hand count, func without parameters (the only adjoint carried is the state's): K checkpointed states, the
    # derivative the first step reuses (the solve's f(t0, y0)), the state's adjoint; whatever the steps. The
    # backward pass drops each forward checkpoint once its segment is reversed: it held K + 1 states at n = 240,
    # K = 2 while they were kept to the end.
    y0 = y0_()
    S = y0.nelement() * y0.element_size()
    sol = solve(Linear(), y0, T, method="rk4", options={"step_size": 1.0 / n, "checkpoints": budget})
    assert sol.stats.n_accepted == n and sol.stats.max_stored_states == budget
    sol.ys.pow(2).sum().backward()
    assert sol.adjoint_stats.held_bytes == (budget + 2) * S
    assert sol.adjoint_stats.max_stored_states == budget


def test_checkpoints_second_backward_restores_the_dropped_checkpoints():
    func = Field()
    y0 = y0_()
    sol = solve(func, y0, T, method="rk4", options={"step_size": 0.01, "checkpoints": 3})
    loss = sol.ys.pow(2).sum()
    first = torch.autograd.grad(loss, [y0, *func.parameters()], retain_graph=True)
    stats = sol.adjoint_stats
    plan, held, nfe = sol.stats.n_recomputed_steps, stats.held_bytes, stats.nfe
    assert stats.n_recomputed_steps == plan
    before = func.calls
    second = torch.autograd.grad(loss, [y0, *func.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # The dropped checkpoints are set again by advancing from the first (fewer than the solve's 100 steps), four
    # evaluations each (rk4), but three for step 0, which reuses the solve's f(t0, y0).
    restored = stats.n_recomputed_steps - 2 * plan
    assert 0 < restored < sol.stats.n_accepted
    assert stats.nfe - nfe == func.calls - before == nfe + 4 * restored - 1
    assert stats.held_bytes == held


def test_backsolve_holds_the_outputs_and_its_backward_state():
    # Hand count: the saved times and outputs, and the backward solve's state (y, a, *gθ) at both ends of an
    # interval (the solve returns each part stacked over them); the same whatever the steps.
    func = Field()
    y0 = y0_()
    S, P = y0.nelement() * y0.element_size(), sum(p.nelement() * p.element_size() for p in func.parameters())
    held = []
    for rtol in (1e-4, 1e-9):
        sol = solve(func, y0, T, rtol=rtol, atol=rtol, adjoint="backsolve")
        sol.ys.pow(2).sum().backward()
        held.append(sol.adjoint_stats.held_bytes)
    assert held[0] == held[1] == T.nelement() * T.element_size() + len(T) * S + 2 * (2 * S + P)


@pytest.mark.parametrize("mode", ["interpolating", "gauss"])
def test_interpolating_adjoints_hold_the_forward_dense_output(mode):
    # Their forward solve keeps every step's interpolant: held memory grows with the steps, the backsolve's
    # does not (above).
    func = Field()
    held, steps = [], []
    for rtol in (1e-4, 1e-9):
        sol = solve(func, y0_(), T, rtol=rtol, atol=rtol, adjoint=mode)
        sol.ys.pow(2).sum().backward()
        held.append(sol.adjoint_stats.held_bytes)
        steps.append(sol.stats.n_accepted)
    assert steps[1] > 2 * steps[0]
    assert held[1] > 2 * held[0]


def test_per_sample_adjoint_counts_its_backward_pass():
    func = Field()
    y0 = y0_()
    sol = solve(func, y0, T, rtol=1e-6, atol=1e-8, adjoint="backsolve", options={"per_sample": True})
    stats = sol.adjoint_stats
    loss = sol.ys.pow(2).sum()
    first = backward_counted(func, loss, retain=True)
    assert stats.calls == first > 0
    assert int(stats.nfe.max()) <= first
    # Held: the saved outputs (T, B, N), the backward state [y, a] (B, 2N), its states at the stops, the
    # parameter-gradient sums; at least the first two.
    S = y0.nelement() * y0.element_size()
    assert stats.held_bytes >= len(T) * S + 2 * S
    held = stats.held_bytes
    second = backward_counted(func, loss)
    assert stats.calls == first + second and stats.held_bytes == held


def test_held_storages_count_each_storage_once_at_its_size():
    x = torch.zeros(10, dtype=F64)
    view = x[2:4]
    other = torch.zeros(3, dtype=torch.float32)
    assert storage_bytes(x, view, (view, None), [other]) == 80 + 12
    held = HeldStorages(lambda: 5)
    held.add(x, other)
    held.discard(view)  # the storage of x goes
    assert held.nbytes == 12 and held.peak == 80 + 12 + 5


@pytest.mark.parametrize("mode", ["backsolve", "interpolating", "gauss"])
def test_the_adjoints_parameter_gradients_own_their_storage(mode):
    # The backward solve's state is one stacked tensor, so the parameter gradients it ends with are views of it;
    # kept as p.grad, each would hold every parameter's gradient at both ends of the last interval (the first
    # weight's storage was 5x its own size). They are returned in storages of their own.
    func = Field()
    y0 = y0_()
    sol = solve(func, y0, T, rtol=1e-6, atol=1e-8, adjoint=mode)
    sol.ys.pow(2).sum().backward()
    for p in func.parameters():
        assert p.grad is not None
        assert p.grad.untyped_storage().nbytes() == p.grad.nbytes, p.shape
