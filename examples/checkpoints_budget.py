"""Backpropagation through a long solve in a fixed memory budget: ``options={"checkpoints": K}``.

A Neural ODE ``y' = f_θ(y)`` (an MLP 2 → 64 → 2) learns the damped rotation ``y' = A y`` from its
trajectory, integrated with rk4 over many small steps. Plain backpropagation keeps every stage of
every step for the backward pass (memory grows with the steps); with ``options={"checkpoints": K}``
the solve stores at most ``K`` states and recomputes the rest in the backward pass (Griewank and
Walther's revolve; diffrax's ``RecursiveCheckpointAdjoint``), with backpropagation's gradients.

The script first checks that claim on the untrained model: the gradient with ``checkpoints=K``
against plain backpropagation through the same solve (their largest relative difference), and the
stored states and recomputed steps the solve reports (``Solution.stats``), with what its backward pass did
(``Solution.adjoint_stats``: steps re-run, evaluations, the most bytes held). Then it lets
``adjoint="auto"`` choose the mode for two memory budgets (one that holds backpropagation's graph, one a quarter
of it) and prints each choice with its reason (``Solution.adjoint_choice``). Then it trains with the budget and
prints the loss before and after. ``--out`` receives ``metrics.json``.

    python examples/checkpoints_budget.py [--steps 400] [--checkpoints 8] [--iterations 60] [--out checkpoints_out]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import neuralode

A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)).double()

    def forward(self, t, y):
        return self.net(y)


def solve(field: Field, y0: torch.Tensor, t: torch.Tensor, steps: int, checkpoints: int | None):
    options = {"step_size": float(t[-1] - t[0]) / steps}
    if checkpoints is not None:
        options["checkpoints"] = checkpoints
    return neuralode.solve(field, y0, t, method="rk4", options=options)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="rk4 steps over the span (default 400)")
    parser.add_argument("--checkpoints", type=int, default=8, help="states stored at most (default 8)")
    parser.add_argument("--iterations", type=int, default=60, help="Adam iterations (default 60)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints_out"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    t = torch.linspace(0.0, 4.0, 21, dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)  # three trajectories
    with torch.no_grad():
        target = neuralode.solve(lambda t, y: y @ A.T, y0, t, rtol=1e-10, atol=1e-12).ys

    field = Field()

    def loss_and_grads(checkpoints):
        field.zero_grad()
        sol = solve(field, y0, t, args.steps, checkpoints)
        loss = ((sol.ys - target) ** 2).mean()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in field.parameters()], sol

    _, g_backprop, _ = loss_and_grads(None)
    loss0, g_budget, sol = loss_and_grads(args.checkpoints)
    stats, backward = sol.stats, sol.adjoint_stats  # the forward pass's plan; what the backward pass did
    assert backward is not None
    rel = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-300)) for a, b in zip(g_budget, g_backprop))
    print(
        f"rk4, {args.steps} steps, checkpoints={args.checkpoints}: at most {stats.max_stored_states} states stored, "
        f"{stats.n_recomputed_steps} steps recomputed in the backward pass; gradient vs backprop: {rel:.2e} relative"
    )
    print(
        f"backward pass: {backward.n_recomputed_steps} steps re-run, {backward.nfe} evaluations of func, "
        f"at most {backward.held_bytes} bytes held (checkpoints and the adjoints carried between steps)"
    )

    # adjoint="auto": the mode chosen from the measured bytes per evaluation, the steps and the memory budget.
    options = {"step_size": float(t[-1] - t[0]) / args.steps}
    backprop_bytes = neuralode.choose_adjoint(field, y0, t, method="rk4", options=options).estimated_bytes["backprop"]
    choices = {}
    for budget in (4 * backprop_bytes, backprop_bytes // 4):
        field.zero_grad()
        sol = neuralode.solve(field, y0, t, method="rk4", options=options, adjoint="auto", memory_budget=budget)
        ((sol.ys - target) ** 2).mean().backward()
        g_auto = [p.grad.clone() for p in field.parameters()]
        auto_rel = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_auto, g_backprop))
        choice = sol.adjoint_choice
        assert choice is not None
        choices[choice.mode] = auto_rel
        print(f'adjoint="auto", memory_budget={budget} bytes: {choice.mode} ({choice.reason})')

    optimizer = torch.optim.Adam(field.parameters(), lr=1e-2)
    for _ in range(args.iterations):
        optimizer.zero_grad()
        loss = ((solve(field, y0, t, args.steps, args.checkpoints).ys - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        loss_end = float(((solve(field, y0, t, args.steps, None).ys - target) ** 2).mean())
    print(f"trajectory loss: {loss0:.4g} before training, {loss_end:.4g} after {args.iterations} iterations")

    metrics = {
        "steps": args.steps,
        "checkpoints": args.checkpoints,
        "max_stored_states": int(stats.max_stored_states),
        "n_recomputed_steps": int(stats.n_recomputed_steps),
        "backward_recomputed_steps": int(backward.n_recomputed_steps),
        "backward_nfe": int(backward.nfe),
        "backward_held_bytes": int(backward.held_bytes),
        "state_bytes": y0.nelement() * y0.element_size(),
        "parameter_bytes": sum(p.nelement() * p.element_size() for p in field.parameters()),
        "gradient_relative_difference": rel,
        "auto_modes": choices,  # mode chosen -> its gradient's relative difference from backprop's
        "loss_before": loss0,
        "loss_after": loss_end,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
