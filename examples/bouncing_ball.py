"""Fit a bouncing ball's restitution coefficient and drop height to observed bounce times.

A ball dropped from height ``h0`` falls under gravity, ``dh/dt = v``, ``dv/dt = -g``; at the
floor (``h = 0`` falling) its velocity reverses and shrinks, ``v -> -e v``. Given the first few
bounce times of a real drop (here: generated from ``e = 0.85``, ``h0 = 1.0 m`` with 2 ms timing
noise), gradient descent recovers ``e`` and ``h0``. Each iteration is ONE solve: the floor is a
non-terminal :class:`neuralode.Event` with a reset, and the loss's gradient flows through every
bounce time (implicit function theorem) and every reset into ``e`` and ``h0``. With torchdiffeq
the same fit needs one ``odeint_event`` call per bounce and hand-written restarts.

    python examples/bouncing_ball.py [--iterations 150] [--out bouncing_ball_out]

Writes ``bouncing_ball.png`` (observed vs fitted trajectories and bounce times) and
``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import neuralode

G = 9.81  # m/s^2
F64 = torch.float64


def dynamics(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Free flight: y = (height, velocity)."""
    return torch.stack([y[1], -G * torch.ones_like(y[1])])


def floor_event(e: torch.Tensor) -> neuralode.Event:
    """The floor: fires when the height falls through zero and reverses the velocity."""
    return neuralode.Event(
        lambda t, y: y[0],
        direction=-1,
        terminal=False,
        reset=lambda t, y: torch.stack([y[0], -e * y[1]]),
    )


def simulate(e: torch.Tensor, h0: torch.Tensor, t: torch.Tensor) -> neuralode.Solution:
    y0 = torch.stack([h0, torch.zeros((), dtype=h0.dtype)])
    return neuralode.solve(dynamics, y0, t, events=[floor_event(e)], rtol=1e-9, atol=1e-10)


def observed_bounces(n: int, noise_s: float, seed: int) -> tuple[torch.Tensor, dict]:
    """The first ``n`` bounce times of the 'real' ball, with timing noise."""
    truth = {"e": 0.85, "h0": 1.0}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sol = simulate(
            torch.tensor(truth["e"], dtype=F64),
            torch.tensor(truth["h0"], dtype=F64),
            torch.tensor([0.0, 5.0], dtype=F64),
        )
    times = torch.stack([r.t for r in sol.events[:n]])
    return times + noise_s * torch.randn(n, generator=gen, dtype=F64), truth


def fit(t_obs: torch.Tensor, iterations: int, lr: float) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    # Unconstrained parameters: e = sigmoid(a) in (0, 1), h0 = exp(b) > 0.
    e_guess, h_guess = 0.75, 1.3
    a = torch.tensor(math.log(e_guess / (1 - e_guess)), dtype=F64, requires_grad=True)
    b = torch.tensor(math.log(h_guess), dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=lr)
    span = torch.tensor([0.0, float(t_obs[-1]) + 0.2], dtype=F64)
    history = []
    for it in range(iterations):
        e, h0 = torch.sigmoid(a), torch.exp(b)
        sol = simulate(e, h0, span)
        t_pred = torch.stack([r.t for r in sol.events])
        n = min(len(t_pred), len(t_obs))
        # Bounces the model does not reach within the window count at the window's end.
        missing = len(t_obs) - n
        pred = torch.cat([t_pred[:n], span[1].expand(missing)]) if missing else t_pred[:n]
        loss = ((pred - t_obs) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(
            {
                "iteration": it,
                "loss_s2": loss.item(),
                "e": e.item(),
                "h0_m": h0.item(),
                "nfe": sol.stats.nfe,
                "bounces": len(sol.events),
            }
        )
        if it % max(1, iterations // 10) == 0 or it == iterations - 1:
            print(
                f"iter {it:4d}  rmse {math.sqrt(loss.item()) * 1e3:8.3f} ms  e {e.item():.4f}  "
                f"h0 {h0.item():.4f} m  nfe {sol.stats.nfe}"
            )
    return torch.sigmoid(a).detach(), torch.exp(b).detach(), history


def plot(t_obs, e_fit, h_fit, truth, rmse_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.linspace(0, float(t_obs[-1]) + 0.2, 600, dtype=F64)
    with torch.no_grad():
        true_sol = simulate(torch.tensor(truth["e"], dtype=F64), torch.tensor(truth["h0"], dtype=F64), t)
        fit_sol = simulate(e_fit, h_fit, t)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(
        t.numpy(),
        true_sol.ys[:, 0].numpy(),
        color="0.6",
        lw=3,
        label=f"observed ball (e={truth['e']}, h0={truth['h0']} m)",
    )
    ax.plot(
        t.numpy(),
        fit_sol.ys[:, 0].numpy(),
        color="C0",
        lw=1.2,
        label=f"fitted (e={e_fit.item():.3f}, h0={h_fit.item():.3f} m)",
    )
    ax.plot(t_obs.numpy(), [0.0] * len(t_obs), "kx", ms=8, label="observed bounce times")
    ax.plot(
        [r.t.item() for r in fit_sol.events],
        [0.0] * len(fit_sol.events),
        "o",
        mfc="none",
        color="C0",
        label="fitted bounce times",
    )
    ax.set_xlabel("time [s]")
    ax.set_ylabel("height [m]")
    ax.set_title(f"Bouncing ball fitted to {len(t_obs)} bounce times: RMSE {rmse_ms:.2f} ms")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=150, help="gradient steps (default 150)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    parser.add_argument("--bounces", type=int, default=6, help="observed bounces to fit (default 6)")
    parser.add_argument("--out", type=Path, default=Path("bouncing_ball_out"), help="output folder")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.bounces < 2:
        parser.error("--iterations must be >= 1 and --bounces >= 2")
    args.out.mkdir(parents=True, exist_ok=True)
    t_obs, truth = observed_bounces(args.bounces, noise_s=2e-3, seed=0)
    e_fit, h_fit, history = fit(t_obs, args.iterations, args.lr)
    with torch.no_grad():
        sol = simulate(e_fit, h_fit, torch.tensor([0.0, float(t_obs[-1]) + 0.2], dtype=F64))
    t_pred = torch.stack([r.t for r in sol.events[: len(t_obs)]])
    rmse_ms = float(((t_pred - t_obs) ** 2).mean().sqrt()) * 1e3 if len(t_pred) == len(t_obs) else math.inf
    metrics = {
        "e": e_fit.item(),
        "h0_m": h_fit.item(),
        "truth": truth,
        "bounce_time_rmse_ms": rmse_ms,
        "iterations": args.iterations,
        "history": history,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot(t_obs, e_fit, h_fit, truth, rmse_ms, args.out / "bouncing_ball.png")
    print(
        f"fitted e = {e_fit.item():.4f} (true {truth['e']}), h0 = {h_fit.item():.4f} m (true {truth['h0']}); "
        f"bounce-time RMSE {rmse_ms:.3f} ms; wrote {args.out / 'bouncing_ball.png'}"
    )
    return metrics


if __name__ == "__main__":
    main()
