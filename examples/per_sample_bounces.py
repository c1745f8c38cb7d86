"""Fit a batch of bouncing balls at once, each on its own clock, from each ball's bounce times.

Ball ``i`` is dropped from height ``h0_i`` and bounces with restitution ``e_i``: ``dh/dt = v``,
``dv/dt = -g``, and at the floor (``h = 0`` falling) ``v -> -e_i v``. Each ball's bounce times
are observed with 2 ms timing noise; gradient descent recovers every ``(e_i, h0_i)``.

Every iteration is ONE solve of the whole batch with ``options={"per_sample": True}``: each ball
takes its own steps, its floor crossings are located on its own interpolant, only the balls that
hit the floor are reset, and the loss's gradient reaches each ball's parameters through its own
bounce times (implicit function theorem, row by row). With one clock for the batch every ball's
step would be cut at every other ball's bounce. The script also solves each ball alone with the
joint loop once, checks that the per-sample gradients equal the solo ones, and reports both
times.

    python examples/per_sample_bounces.py [--balls 32] [--iterations 150] [--out per_sample_bounces_out]

Writes ``per_sample_bounces.png`` (fitted against true parameters, and the bounce-time error per
iteration) and ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import neuralode

G = 9.81  # m/s^2
F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)


def dynamics(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Free flight of every ball: ``y[:, 0]`` height, ``y[:, 1]`` velocity, ``y[:, 2]`` bounces so far."""
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G), torch.zeros_like(y[:, 2])], -1)


def floor(e: torch.Tensor, bounces: int) -> neuralode.Event:
    """The floor: fires per ball when its height falls through zero, reverses its velocity, counts.

    A ball bounces infinitely often before its Zeno time ``t_1 (1 + e) / (1 - e)``; a model whose
    ``e`` is still far too small would reach it inside the window and spend its steps on ever
    shorter flights. Only the first ``bounces`` bounces enter the loss, so after them the floor
    is moved out of reach (``h + 1000 m``): at most ``bounces`` events per ball.
    """
    return neuralode.Event(
        lambda t, y: y[:, 0] + 1e3 * (y[:, 2] >= bounces - 0.5),
        direction=-1,
        terminal=False,
        reset=lambda t, y: torch.stack([y[:, 0], -e * y[:, 1], y[:, 2] + 1], -1),
    )


def start(h0: torch.Tensor) -> torch.Tensor:
    return torch.stack([h0, torch.zeros_like(h0), torch.zeros_like(h0)], -1)


def bounce_times(e: torch.Tensor, h0: torch.Tensor, t_end: float, bounces: int):
    """Each ball's first ``bounces`` bounce times in ``[0, t_end]`` from one solve (per-sample clocks)."""
    span = torch.tensor([0.0, t_end], dtype=F64)
    sol = neuralode.solve(dynamics, start(h0), span, events=floor(e, bounces), options={"per_sample": True}, **TOL)
    times: list[list[torch.Tensor]] = [[] for _ in range(len(h0))]
    for record in sol.events:
        times[record.sample].append(record.t)
    return times, sol


def solo_bounce_times(e: torch.Tensor, h0: torch.Tensor, t_end: float, bounces: int) -> list[torch.Tensor]:
    """One ball (``e``, ``h0`` of shape ``(1,)``) by the joint loop: its bounce times."""
    sol = neuralode.solve(dynamics, start(h0), torch.tensor([0.0, t_end], dtype=F64), events=floor(e, bounces), **TOL)
    return [record.t for record in sol.events]


def bounce_loss(pred: list[list[torch.Tensor]], t_obs: torch.Tensor, t_end: float) -> torch.Tensor:
    """Mean squared bounce-time error; a bounce the model does not reach counts at the window's end."""
    n = t_obs.shape[1]
    rows = []
    for times in pred:
        times = times[:n]
        end = torch.tensor(t_end, dtype=F64)
        rows.append(torch.stack(times + [end] * (n - len(times))))
    return ((torch.stack(rows) - t_obs) ** 2).mean()


def observed(balls: int, bounces: int, noise_s: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True ``(e, h0)`` per ball and its first ``bounces`` bounce times with timing noise (closed form)."""
    gen = torch.Generator().manual_seed(seed)
    e = 0.6 + 0.3 * torch.rand(balls, generator=gen, dtype=F64)
    h0 = 0.5 + 1.5 * torch.rand(balls, generator=gen, dtype=F64)
    # t_1 = sqrt(2 h0 / g); each bounce leaves at speed e^k g t_1 and lands 2 e^k t_1 later.
    t1 = torch.sqrt(2 * h0 / G)
    k = torch.arange(bounces - 1, dtype=F64)
    gaps = 2 * t1[:, None] * e[:, None] ** (k + 1)
    t = torch.cat([t1[:, None], t1[:, None] + gaps.cumsum(1)], 1)
    return e, h0, t + noise_s * torch.randn(t.shape, generator=gen, dtype=F64)


def fit(t_obs: torch.Tensor, iterations: int, lr: float, t_end: float) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    balls = t_obs.shape[0]
    # Unconstrained parameters: e = sigmoid(a) in (0, 1), h0 = exp(b) > 0; every ball starts at the same guess.
    a = torch.full((balls,), math.log(0.7 / 0.3), dtype=F64, requires_grad=True)
    b = torch.full((balls,), math.log(1.2), dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=lr)
    history = []
    for it in range(iterations):
        e, h0 = torch.sigmoid(a), torch.exp(b)
        pred, sol = bounce_times(e, h0, t_end, t_obs.shape[1])
        loss = bounce_loss(pred, t_obs, t_end)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps = sol.stats.n_accepted
        history.append(
            {
                "iteration": it,
                "loss_s2": loss.item(),
                "steps_mean": float(steps.double().mean()),
                "steps_max": int(steps.max()),
                "events": len(sol.events),
            }
        )
        if it % max(1, iterations // 10) == 0 or it == iterations - 1:
            print(
                f"iter {it:4d}  rmse {math.sqrt(loss.item()) * 1e3:8.3f} ms  steps per ball "
                f"{history[-1]['steps_mean']:.1f} (max {history[-1]['steps_max']})  bounces {len(sol.events)}"
            )
    return torch.sigmoid(a).detach(), torch.exp(b).detach(), history


def check_against_solo(t_obs: torch.Tensor, t_end: float, balls: int) -> dict:
    """The batch's gradient equals each ball's solo gradient; the times of one batch solve and of the solo loop."""
    balls = min(balls, t_obs.shape[0])
    gen = torch.Generator().manual_seed(1)
    e = (0.65 + 0.2 * torch.rand(balls, generator=gen, dtype=F64)).requires_grad_()
    h0 = (0.7 + torch.rand(balls, generator=gen, dtype=F64)).requires_grad_()
    obs = t_obs[:balls]
    n = obs.shape[1]
    start = time.perf_counter()
    pred, _ = bounce_times(e, h0, t_end, n)
    loss = bounce_loss(pred, obs, t_end) * balls * n  # sum of squares: ball i's term depends on ball i only
    ge, gh = torch.autograd.grad(loss, (e, h0))
    batch_s = time.perf_counter() - start
    start = time.perf_counter()
    worst = 0.0
    for i in range(balls):
        ei, hi = (x.detach()[i : i + 1].clone().requires_grad_() for x in (e, h0))
        times = solo_bounce_times(ei, hi, t_end, n)
        loss_i = bounce_loss([times], obs[i : i + 1], t_end) * n
        gei, ghi = torch.autograd.grad(loss_i, (ei, hi))
        for got, want in ((ge[i], gei[0]), (gh[i], ghi[0])):
            worst = max(worst, abs(float(got - want)) / max(1.0, abs(float(want))))
    solo_s = time.perf_counter() - start
    return {
        "balls": balls,
        "max_rel_gradient_difference": worst,
        "batch_solve_and_gradient_s": batch_s,
        "solo_solves_and_gradients_s": solo_s,
    }


def plot(e_true, h_true, e_fit, h_fit, history, rmse_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, true, got, name, unit in (
        (ax0, e_true, e_fit, "restitution e", ""),
        (ax1, h_true, h_fit, "drop height h0", " [m]"),
    ):
        lo, hi = float(min(true.min(), got.min())), float(max(true.max(), got.max()))
        ax.plot([lo, hi], [lo, hi], color="0.7", lw=1, label="fitted = true")
        ax.plot(true.numpy(), got.numpy(), "o", ms=4, color="C0", label="one ball")
        ax.set_xlabel(f"true {name}{unit}")
        ax.set_ylabel(f"fitted {name}{unit}")
        ax.set_title(f"{name}: max error {float((got - true).abs().max()):.3g}{unit.strip(' []') and ' m'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax2.semilogy([h["iteration"] for h in history], [math.sqrt(h["loss_s2"]) * 1e3 for h in history], color="C1")
    ax2.axhline(2.0, color="0.5", ls="--", lw=1, label="timing noise (2 ms)")
    ax2.set_xlabel("Adam iteration")
    ax2.set_ylabel("bounce-time RMSE [ms]")
    ax2.set_title(f"{len(e_true)} balls: bounce-time RMSE {rmse_ms:.2f} ms")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--balls", type=int, default=32, help="balls in the batch (default 32)")
    parser.add_argument("--bounces", type=int, default=5, help="observed bounces per ball (default 5)")
    parser.add_argument("--iterations", type=int, default=150, help="Adam steps (default 150)")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default 0.1)")
    parser.add_argument(
        "--check-balls",
        type=int,
        default=8,
        help="balls whose batch gradient is compared with a solo solve's (default 8)",
    )
    parser.add_argument("--out", type=Path, default=Path("per_sample_bounces_out"), help="output folder")
    args = parser.parse_args(argv)
    if args.balls < 1 or args.bounces < 2 or args.iterations < 1 or args.check_balls < 1:
        parser.error("--balls, --iterations and --check-balls must be >= 1 and --bounces >= 2")
    args.out.mkdir(parents=True, exist_ok=True)
    e_true, h_true, t_obs = observed(args.balls, args.bounces, noise_s=2e-3, seed=0)
    t_end = float(t_obs.max()) + 0.2
    e_fit, h_fit, history = fit(t_obs, args.iterations, args.lr, t_end)
    with torch.no_grad():
        pred, _ = bounce_times(e_fit, h_fit, t_end, args.bounces)
    rmse_ms = math.sqrt(bounce_loss(pred, t_obs, t_end).item()) * 1e3
    check = check_against_solo(t_obs, t_end, args.check_balls)
    metrics = {
        "balls": args.balls,
        "bounces": args.bounces,
        "iterations": args.iterations,
        "bounce_time_rmse_ms": rmse_ms,
        "max_abs_error_e": float((e_fit - e_true).abs().max()),
        "max_abs_error_h0_m": float((h_fit - h_true).abs().max()),
        "first_rmse_ms": math.sqrt(history[0]["loss_s2"]) * 1e3,
        "solo_check": check,
        "history": history,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot(e_true, h_true, e_fit, h_fit, history, rmse_ms, args.out / "per_sample_bounces.png")
    print(
        f"{args.balls} balls: bounce-time RMSE {metrics['first_rmse_ms']:.1f} -> {rmse_ms:.2f} ms; max |e error| "
        f"{metrics['max_abs_error_e']:.4f}, max |h0 error| {metrics['max_abs_error_h0_m']:.4f} m"
    )
    print(
        f"gradients of {check['balls']} balls vs solo solves: max relative difference "
        f"{check['max_rel_gradient_difference']:.1e}; one batch solve + gradient "
        f"{check['batch_solve_and_gradient_s']:.2f} s, {check['balls']} solo solves + gradients "
        f"{check['solo_solves_and_gradients_s']:.2f} s; wrote {args.out / 'per_sample_bounces.png'}"
    )
    return metrics


if __name__ == "__main__":
    main()
