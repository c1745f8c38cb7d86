"""A continuous normalizing flow on a 2-D toy density, trained by maximum likelihood.

A CNF moves samples with ``dz/dt = f(z, t)``; the log-density along a trajectory obeys the
instantaneous change of variables ``d log p(z(t))/dt = -tr(∂f/∂z)`` (Chen et al. 2018, section 4).
:class:`neuralode.models.CNF` solves the pair ``(z, log p)`` from the data at ``t = 0`` to a standard
normal at ``t = T``, so ``log p(x)`` is exact and its gradient comes from the adjoint method. Training
minimises the negative log-likelihood of batches drawn from the toy density; sampling runs the same
ODE backwards from normal noise.

    python examples/cnf_2d.py [--dataset 8gaussians] [--iterations 300] [--out cnf_2d_out]
    python examples/cnf_2d.py --quick          # a few iterations on a small network (CI)

Writes ``cnf_2d.png`` (data, samples of the flow and its density) and ``metrics.json`` (the loss per
iteration, the test NLL before and after training, evaluations per solve) to ``--out``.
The full ``neuralode train cnf`` task (checkpoints, resume, every setting) trains the same model.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from neuralode.datasets.toy2d import TOY_DATASETS, sample_toy
from neuralode.models import build_cnf
from neuralode.plotting import save_figure


def test_nll(flow: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean negative log-likelihood in nats of held-out points ``x`` (N, 2)."""
    with torch.no_grad():
        return float(-flow.log_prob(x).mean())


def density_on_grid(flow: torch.nn.Module, extent: float, n: int) -> torch.Tensor:
    """``p(x)`` on an ``n x n`` grid over ``[-extent, extent]^2``: shape ``(n, n)``, rows along y."""
    ax = torch.linspace(-extent, extent, n)
    gy, gx = torch.meshgrid(ax, ax, indexing="ij")
    with torch.no_grad():
        logp = flow.log_prob(torch.stack([gx.flatten(), gy.flatten()], -1))  # (n * n,)
    return logp.exp().reshape(n, n)


def plot(
    data: torch.Tensor, samples: torch.Tensor, density: torch.Tensor, extent: float, title: str, path: Path
) -> None:
    fig = Figure(figsize=(10.5, 3.7), dpi=110, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, points, name in ((axes[0], data, "data"), (axes[1], samples, "samples of the flow")):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set_title(name)
    axes[2].imshow(density, origin="lower", extent=(-extent, extent, -extent, extent), cmap="viridis")
    axes[2].set_title("density p(x) of the flow")
    for ax in axes:
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
    fig.suptitle(title)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="8gaussians", choices=list(TOY_DATASETS), help="the toy density")
    parser.add_argument("--iterations", type=int, default=300, help="Adam steps (default 300; quick: 15)")
    parser.add_argument("--batch-size", type=int, default=256, help="points per step (default 256)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--quick", action="store_true", help="15 steps of a 32-32 network at rtol 1e-3 (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("cnf_2d_out"), help="output folder")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1; got {args.iterations}")
    iterations = 15 if args.quick and args.iterations == 300 else args.iterations
    hidden, tol = ((32, 32), 1e-3) if args.quick else ((64, 64, 64), 1e-5)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # these small networks are fastest on one thread
    args.out.mkdir(parents=True, exist_ok=True)

    # The flow: FFJORD-style concat-MLP dynamics, exact trace, dopri5, gradients by the adjoint.
    flow = build_cnf(2, hidden_dims=hidden, rtol=tol, atol=tol, adjoint=True)
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    stream = torch.Generator().manual_seed(args.seed)
    held_out = sample_toy(args.dataset, 2000, seed=args.seed + 1)
    nll_before = test_nll(flow, held_out)

    history, start = [], time.perf_counter()
    for it in range(iterations):
        x = sample_toy(args.dataset, args.batch_size, generator=stream)  # (batch, 2)
        flow.dynamics.reset_nfe()
        loss = -flow.log_prob(x).mean()  # nats
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(
            {
                "iteration": it + 1,
                "nll": loss.item(),
                "nfe_forward": flow.nfe_forward,
                "nfe_backward": flow.nfe_backward,
            }
        )
        if it % max(1, iterations // 10) == 0 or it == iterations - 1:
            print(
                f"iter {it + 1:4d}  nll {loss.item():.3f} nats  nfe {flow.nfe_forward} + {flow.nfe_backward}",
                flush=True,
            )
    seconds = time.perf_counter() - start

    nll_after = test_nll(flow, held_out)
    with torch.no_grad():
        samples = flow.sample(2000, generator=torch.Generator().manual_seed(args.seed + 2))
    extent = 4.0
    plot(
        held_out,
        samples,
        density_on_grid(flow, extent, 60 if args.quick else 120),
        extent,
        f"CNF on {args.dataset}: test NLL {nll_after:.3f} nats after {iterations} steps",
        args.out / "cnf_2d.png",
    )
    metrics = {
        "dataset": args.dataset,
        "iterations": iterations,
        "seconds": seconds,
        "test_nll_before": nll_before,
        "test_nll_after": nll_after,
        "data_entropy_8gaussians": math.log(8) + math.log(2 * math.pi * math.e * 0.354**2),
        "history": history,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"test NLL {nll_before:.3f} -> {nll_after:.3f} nats in {seconds:.0f} s; wrote {args.out / 'cnf_2d.png'}")


if __name__ == "__main__":
    main()
