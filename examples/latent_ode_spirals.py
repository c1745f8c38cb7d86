"""A latent ODE learns irregularly sampled spirals and extrapolates them (the paper's section 5).

Each sample is a window of a noisy spiral (clockwise or not) observed at a few irregular times. A
recognition GRU reads the observations backwards in time and gives ``q(z_{t0})``; the latent state
follows ``dz/dt = f(z)`` (an MLP) through one batched solve; a decoder maps ``z(t)`` back to the
plane. Training maximises the ELBO (:meth:`neuralode.models.LatentODE.elbo`); afterwards
:meth:`~neuralode.models.LatentODE.predict` decodes the latent trajectory at any times, including
the stretch after the window that no observation covers.

    python examples/latent_ode_spirals.py [--observations 30] [--iterations 1000] [--out latent_ode_out]
    python examples/latent_ode_spirals.py --quick       # a few iterations on a small data set (CI)

Writes ``latent_ode_spirals.png`` (observations, truth and the model's reconstruction and
extrapolation of held-out spirals) and ``metrics.json`` (ELBO per iteration, extrapolation RMSE
before and after training) to ``--out``. ``neuralode train spirals`` is the full task (the RNN
baseline, checkpoints, resume).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from neuralode.datasets.spirals import make_spirals
from neuralode.models import LatentODE
from neuralode.plotting import save_figure


def extrapolation_rmse(model: LatentODE, data) -> tuple[float, torch.Tensor]:
    """RMSE against the noiseless spiral over the points after the window, and the predictions
    ``(N, T + F, 2)`` at the window and future times."""
    query = torch.cat([data.times, data.future_times])  # (T + F,)
    with torch.no_grad():
        pred = model.predict(data.values, data.times, data.mask, query)  # (N, T + F, 2)
    future = pred[:, data.times.numel() :]
    return float((future - data.true_future).pow(2).mean().sqrt()), pred


def plot(data, pred: torch.Tensor, rmse: float, iterations: int, path: Path, n: int = 4) -> None:
    fig = Figure(figsize=(3.2 * n, 3.4), dpi=110, layout="constrained")
    for i, ax in enumerate(fig.subplots(1, n)):
        seen = data.mask[i]
        truth = torch.cat([data.true_values[i], data.true_future[i]])  # (T + F, 2)
        ax.plot(truth[:, 0], truth[:, 1], color="0.6", lw=1, label="truth")
        t_window = data.times.numel()
        ax.plot(pred[i, :t_window, 0], pred[i, :t_window, 1], color="C0", lw=1.5, label="reconstruction")
        ax.plot(pred[i, t_window:, 0], pred[i, t_window:, 1], color="C3", lw=1.5, label="extrapolation")
        ax.scatter(data.values[i, seen, 0], data.values[i, seen, 1], s=8, color="k", label="observations")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_aspect("equal", adjustable="datalim")
    fig.axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Latent ODE on held-out spirals after {iterations} steps: extrapolation RMSE {rmse:.3f}")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=30, help="observed points per window (default 30)")
    parser.add_argument("--iterations", type=int, default=1000, help="Adam steps (default 1000; quick: 20)")
    parser.add_argument("--batch-size", type=int, default=100, help="spirals per step (default 100)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    parser.add_argument("--quick", action="store_true", help="20 steps on 200 spirals (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("latent_ode_out"), help="output folder")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1; got {args.iterations}")
    iterations = 20 if args.quick and args.iterations == 1000 else args.iterations
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    n_train = 200 if args.quick else 1000
    data = make_spirals(n_train + 100, args.observations, seed=args.seed)
    train, test = data.subset(slice(0, n_train)), data.subset(slice(n_train, n_train + 100))
    # The paper's sizes: 4 latent dimensions, a 25-unit recognition GRU, 20-unit dynamics and decoder.
    model = LatentODE(obs_dim=2, latent_dim=4, rec_hidden=25, ode_hidden=20, dec_hidden=20, obs_std=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rmse_before, _ = extrapolation_rmse(model, test)

    stream = torch.Generator().manual_seed(args.seed)
    history, start = [], time.perf_counter()
    for it in range(iterations):
        idx = torch.randperm(n_train, generator=stream)[: args.batch_size]
        batch = train.subset(idx)
        terms = model.elbo(batch.values, batch.times, batch.mask, generator=stream)
        loss = -terms.elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"iteration": it + 1, "elbo": -loss.item(), "nfe_forward": model.func.nfe_forward})
        if it % max(1, iterations // 10) == 0 or it == iterations - 1:
            print(f"iter {it + 1:4d}  elbo {-loss.item():9.2f}", flush=True)
    seconds = time.perf_counter() - start

    rmse_after, pred = extrapolation_rmse(model, test)
    plot(test, pred, rmse_after, iterations, args.out / "latent_ode_spirals.png")
    metrics = {
        "observations": args.observations,
        "iterations": iterations,
        "seconds": seconds,
        "extrapolation_rmse_before": rmse_before,
        "extrapolation_rmse_after": rmse_after,
        "history": history,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(
        f"extrapolation RMSE {rmse_before:.3f} -> {rmse_after:.3f} in {seconds:.0f} s; "
        f"wrote {args.out / 'latent_ode_spirals.png'}"
    )


if __name__ == "__main__":
    main()
