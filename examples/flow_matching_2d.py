"""Flow matching on a 2-D density: independent against minibatch-OT coupling, sampled in few steps.

Two velocity fields ``v(t, x)`` are trained by conditional flow matching on 8 gaussians (or any
toy density of ``neuralode.datasets.toy2d``), one pairing noise and data as drawn (I-CFM), one
pairing them by the exact optimal-transport assignment of each batch (OT-CFM; Tong et al. 2024).
No ODE is solved in training. Then each is sampled with Euler at 1, 2, 5 and 20 steps and with
dopri5, and scored by the exact 2-Wasserstein distance to held-out data, and its held-out
log-likelihood is computed exactly (divergence integrated along the flow). The OT field's paths
are straighter, so its few-step samples are better. Writes ``flow_matching_2d.png`` (samples
per solver setting) and ``metrics.json`` to ``--out``.

    python examples/flow_matching_2d.py [--dataset 8gaussians] [--iterations 1500] [--out flow_matching_out]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neuralode.datasets.toy2d import TOY_DATASETS, sample_toy
from neuralode.models.flow_matching import VelocityMLP, cfm_loss, log_prob, sample, wasserstein2
from neuralode.plotting import plot_point_clouds, save_figure


def train(coupling: str, dataset: str, iterations: int, batch: int, seed: int) -> tuple[VelocityMLP, float]:
    """A velocity field trained by flow matching with ``coupling``; returns it and the training seconds."""
    torch.manual_seed(seed)
    model = VelocityMLP(2)  # 64-64-64 tanh, t as an input: the flow task's defaults for 2-D data
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(iterations):
        x1 = sample_toy(dataset, batch, generator=g)
        loss = cfm_loss(model, x1, coupling=coupling, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model, time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="8gaussians", choices=tuple(TOY_DATASETS), help="toy density (default 8gaussians)"
    )
    parser.add_argument("--iterations", type=int, default=1500, help="training iterations per coupling (default 1500)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--samples", type=int, default=1000, help="samples scored per solver setting (default 1000)")
    parser.add_argument(
        "--tol", type=float, default=1e-5, help="dopri5 rtol = atol for sampling and the NLL (default 1e-5)"
    )
    parser.add_argument("--out", type=Path, default=Path("flow_matching_out"), help="output folder")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.batch < 2 or args.samples < 2 or not 0 < args.tol < 1:
        parser.error("--iterations must be >= 1, --batch and --samples >= 2, --tol in (0, 1)")
    args.out.mkdir(parents=True, exist_ok=True)

    held_out = sample_toy(args.dataset, args.samples, seed=12345)
    noise = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(1))  # the same start for every setting
    settings = [("euler", 1), ("euler", 2), ("euler", 5), ("euler", 20), ("dopri5", None)]
    metrics: dict = {
        "dataset": args.dataset,
        "iterations": args.iterations,
        "noise_w2": wasserstein2(noise, held_out),
        "data_w2_floor": wasserstein2(sample_toy(args.dataset, args.samples, seed=54321), held_out),
    }
    panels = [("held-out data", held_out)]
    for coupling in ("independent", "ot"):
        model, seconds = train(coupling, args.dataset, args.iterations, args.batch, seed=0)
        rows = []
        for method, steps in settings:
            kw = {"steps": steps} if steps else {"rtol": args.tol, "atol": args.tol}
            result = sample(model, x0=noise, method=method, **kw)
            rows.append({"method": method, "steps": steps, "nfe": result.nfe, "w2": wasserstein2(result.x, held_out)})
            if steps in (1, 5):
                panels.append((f"{coupling}: {method}, {result.nfe} NFE", result.x))
        with torch.no_grad():
            nll = -log_prob(model, held_out, rtol=args.tol, atol=args.tol).mean().item()
        metrics[coupling] = {"train_seconds": seconds, "test_nll": nll, "sampling": rows}
        print(
            f"{coupling:>11}: trained in {seconds:.1f} s, held-out NLL {nll:.3f} nats; W2 to held-out data at NFE "
            + ", ".join(f"{r['nfe']}: {r['w2']:.3f}" for r in rows)
        )
    print(
        f"data against data: W2 {metrics['data_w2_floor']:.3f} (the floor at {args.samples} samples); "
        f"the noise itself: {metrics['noise_w2']:.3f}"
    )
    fig = plot_point_clouds(
        panels,
        suptitle=f"Flow matching on {args.dataset}, {args.iterations} iterations: "
        f"few-step Euler samples, independent against OT coupling",
    )
    save_figure(fig, args.out / "flow_matching_2d.png")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main()
