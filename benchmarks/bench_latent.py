"""Latent ODE vs RNN on the paper's spirals (Table 2): extrapolation RMSE and wall time per run.

For each number of observations (100 first, then 30 and 50 unless ``--observations`` says
otherwise) this trains one :class:`~neuralode.models.LatentODE` and the RNN baseline on the same
minibatches with the default :class:`~neuralode.training.latent.LatentTrainConfig`, then writes
``latent.md`` beside the paper's Table 2, and copies the 100-observation run's figures next to it
(``latent_spirals.png``, ``latent_trajectories.png``). Each run's folder (metrics, checkpoint,
figures) is kept under ``runs/bench_latent/`` (git-ignored). The peer here is the RNN baseline, trained in the same process on the same data.

Acceptance (issue 5): with 100 observations, latent ODE extrapolation RMSE <= 0.60 and clearly
below the RNN's.

    python benchmarks/bench_latent.py                    # 100, 30, 50 observations
    python benchmarks/bench_latent.py --observations 100 --iterations 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import RESULTS_DIR, setup  # noqa: E402
from neuralode.training.latent import LatentTrainConfig, read_latent_metrics, train_latent  # noqa: E402

#: The paper's Table 2 (predictive RMSE on the test set), by number of observations out of 100.
PAPER_TABLE2 = {"rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813}, "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346}}
GOAL_RMSE_100 = 0.60


def main(argv: list[str] | None = None) -> int:
    defaults = LatentTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--observations", type=int, nargs="+", default=[100, 30, 50])
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 iterations")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a finished run already in runs/bench_latent/obsN (same settings) instead of training again",
    )
    args = parser.parse_args(argv)
    setup(0)
    iterations = 50 if args.quick else args.iterations
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.observations:
        run_dir = ROOT / "runs" / "bench_latent" / f"obs{n}"
        config = LatentTrainConfig(observations=n, iterations=iterations, out=run_dir, progress=sys.stderr.isatty())
        s = _finished_run(config) if args.reuse else None
        if s is None:
            shutil.rmtree(run_dir, ignore_errors=True)
            t = time.perf_counter()
            s = train_latent(config)
            wall = time.perf_counter() - t
        else:
            wall = s["wall_seconds"]
        evals = [
            r["extrapolation_rmse"]
            for r in read_latent_metrics(run_dir)
            if "extrapolation_rmse" in r and r.get("iteration", 0) >= 0.75 * iterations
        ]
        s = {**s, "late_range": (min(evals), max(evals)) if evals else None}
        rows.append((n, s, wall))
        if n == 100 and s.get("figures"):
            shutil.copyfile(run_dir / "spirals.png", args.out / "latent_spirals.png")
            shutil.copyfile(run_dir / "latent.png", args.out / "latent_trajectories.png")
        print(
            f"obs={n}: latent ODE extrapolation RMSE {s['extrapolation_rmse']:.4f} (reconstruction "
            f"{s['reconstruction_rmse']:.4f}); RNN {s['rnn_extrapolation_rmse']:.4f} ({s['rnn_reconstruction_rmse']:.4f}); "
            f"ratio RNN/latent {s['rnn_extrapolation_rmse'] / s['extrapolation_rmse']:.2f}; {wall:.0f} s",
            flush=True,
        )
        write_table(args.out / "latent.md", rows, defaults, iterations)
    return 0


def _finished_run(config: LatentTrainConfig) -> dict | None:
    """The final record of a finished run in ``config.out`` trained with the same settings, else None."""
    try:
        saved = json.loads((config.out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    same = all(saved.get(k) == v for k, v in config.to_dict().items() if k not in ("out", "progress", "resume"))
    finals = [r for r in read_latent_metrics(config.out) if r.get("final")]
    if not same or not finals:
        return None
    return {**finals[-1], "figures": [str(config.out / "spirals.png")]}


def write_table(path: Path, rows, defaults: LatentTrainConfig, iterations: int) -> None:
    lines = [
        "# Latent ODE vs RNN on the spirals (paper, Table 2)",
        "",
        f"`python benchmarks/bench_latent.py` on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s). Default `LatentTrainConfig`: "
        f"{iterations} iterations, batch {defaults.batch_size} of {defaults.n_spirals} training spirals, Adam lr {defaults.lr}, "
        f"dopri5 tol {defaults.tol}, adjoint={defaults.adjoint}, noise {defaults.noise}; both models trained on the same minibatches. "
        f"RMSE on {defaults.n_test} held-out spirals against the noiseless spiral: *extrapolation* = the 100 points after "
        "the observed window, *reconstruction* = the 100 window points. Latent ODE: posterior mean of z_t0; "
        "RNN: 25-unit GRU with time gaps, autoregressive extrapolation.",
        "",
        "| observations | latent ODE extrap. RMSE | its range over the last quarter | RNN extrap. RMSE | RNN / latent | latent ODE recon. RMSE | RNN recon. RMSE | wall time (both models) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, s, wall in rows:
        lines.append(
            f"| {n}/100 | {s['extrapolation_rmse']:.4f} | "
            + (f"{s['late_range'][0]:.3f}–{s['late_range'][1]:.3f}" if s.get("late_range") else "—")
            + f" | {s['rnn_extrapolation_rmse']:.4f} | "
            f"{s['rnn_extrapolation_rmse'] / s['extrapolation_rmse']:.2f} | {s['reconstruction_rmse']:.4f} | "
            f"{s['rnn_reconstruction_rmse']:.4f} | {wall:.0f} s |"
        )
    lines += [
        "",
        "The paper's Table 2 (predictive RMSE on its test set; its protocol, sizes and training length differ, "
        "so compare the ordering and the ratio, not the digits):",
        "",
        "| observations | latent ODE | RNN |",
        "|---|---|---|",
    ]
    for n in (30, 50, 100):
        lines.append(f"| {n}/100 | {PAPER_TABLE2['latent_ode'][n]} | {PAPER_TABLE2['rnn'][n]} |")
    lines += [
        "",
        "For scale on these machines (figures from the project's issue, not rerun here): the paper's reference "
        "code trained for 3,000 iterations reaches latent-ODE extrapolation RMSE 0.52 with 100 observations "
        "and 0.59 with 30, and a 25-unit RNN baseline with time gaps as input 1.36. The RNN here is a GRU, "
        "a stronger baseline than that plain RNN.",
        "",
        "One seed per row. The range column is the test RMSE at the evaluations of the last quarter of "
        "training (every 250 iterations): differences between rows smaller than that spread are noise.",
    ]
    for n, s, _ in rows:
        if n == 100:
            ok = s["extrapolation_rmse"] <= GOAL_RMSE_100 and s["extrapolation_rmse"] < s["rnn_extrapolation_rmse"]
            lines += [
                "",
                f"Acceptance (100 observations: latent ODE <= {GOAL_RMSE_100} and below the RNN): "
                f"{'met' if ok else 'NOT met'}.",
            ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
