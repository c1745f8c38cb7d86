"""The CNF task: continuous normalizing flows trained by maximum likelihood on toy 2-D densities.

``train_cnf(CNFTrainConfig(dataset="8gaussians", out="runs/cnf"))`` trains into a run folder
(:mod:`neuralode.training.rundir`): ``metrics.jsonl`` gets a line every ``log_every`` iterations
(``iteration``, ``loss``, ``nll``, ``kinetic``, ``jacobian``, ``nfe_forward``, ``nfe_backward``, ``lr``,
``seconds``; means over the interval) and at the end one ``"final": true`` line with ``test_nll``
(nats, exact trace, fresh samples); the figures are ``samples.png``, ``density.png`` and ``flow.png``.

**Loss.** ``mean(-log p(x)) + λ_K · mean(∫‖f‖²) + λ_J · mean(∫‖∂f/∂z‖²_F)`` (Finlay et al. 2020);
with both weights zero it is the plain maximum-likelihood objective of FFJORD. Optimiser: Adam
with a cosine decay of the learning rate to 0 over ``iterations`` (FFJORD uses a constant rate
for 10,000 iterations; the decay reaches the same NLL in far fewer, which is what makes a
ten-minute CPU run possible).

**Data.** Iteration ``i``'s batch is drawn from :func:`~neuralode.training.seeding.step_generator`
``(seed, i)``, the test set from stream 1 of step 0 (never a training batch's stream). Under data
parallel every rank draws the global batch and trains on its own rows. A checkpoint stores the
model, the optimiser, the iteration (the learning rate is a function of it), the running sums of
the logging interval and the global RNG state (the Hutchinson noise).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..datasets.toy2d import TOY_DATASETS, sample_toy
from ..models.cnf import CNF, NOISE_TYPES, TRACE_ESTIMATORS, build_cnf
from ..progress import progress_bar
from .checkpoints import load_checkpoint
from .config import RunConfig, setting
from .distributed import Dist, Sums, resume_hint
from .rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    RunDir,
    iteration_state,
    load_run_checkpoint,
    restore_iteration_state,
    run_task,
)
from .seeding import step_generator
from .signals import StopFlag

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "FIGURE_NAMES",
    "METRICS_NAME",
    "CNFTrainConfig",
    "build_model",
    "cosine_lr",
    "evaluate",
    "evaluate_nll",
    "load_cnf_checkpoint",
    "test_set",
    "train_cnf",
    "write_figures",
]

FIGURE_NAMES = ("samples.png", "density.png", "flow.png")
_FIGURES = ("loss", "nll", "kinetic", "jacobian", "nfe_forward", "nfe_backward", "n")


@dataclass(frozen=True)
class CNFTrainConfig(RunConfig):
    """A CNF run. The shared fields (``out``, ``seed``, ``log_every``, ...) are :class:`RunConfig`'s.

    Attributes:
        dataset: a toy density, one of ``TOY_DATASETS``.
        iterations: total optimisation steps (a resumed run may raise it to train longer).
        batch_size: samples per step, over all processes together.
        lr: Adam's initial learning rate (cosine-decayed to 0 over ``iterations``).
        arch: ``"mlp"`` (FFJORD-style ConcatLinear MLP) or ``"hyper"`` (the paper's hypernetwork CNF).
        hidden_dims: hidden widths of the MLP.
        nonlinearity: ``"tanh"`` or ``"softplus"`` (MLP).
        width: planar units ``M`` of the hypernetwork CNF.
        T: integration time of the flow.
        tol: rtol = atol of dopri5, forward and adjoint.
        adjoint: gradients by the adjoint method, else backpropagation through the solver.
        trace: ``"exact"`` (D vector-Jacobian products) or ``"hutchinson"`` (one).
        noise: Hutchinson noise, ``"gaussian"`` or ``"rademacher"``.
        regularize_kinetic: λ_K, weight of the kinetic energy ``∫‖f‖²`` (0: off).
        regularize_jacobian: λ_J, weight of the Jacobian Frobenius norm ``∫‖∂f/∂z‖²_F`` (0: off).
        test_samples: fresh samples for the final test NLL.
        threads: ``torch.set_num_threads`` for the run (``None``: leave it); one thread is
            fastest for these small models.
    """

    KIND = "cnf"
    RESUME_KEEP = (
        "dataset",
        "arch",
        "hidden_dims",
        "nonlinearity",
        "width",
        "T",
        "trace",
        "noise",
        "regularize_kinetic",
        "regularize_jacobian",
        "seed",
        "batch_size",
    )

    out: Path = setting(Path("runs/cnf"), "the run folder", metavar="RUN_DIR")
    dataset: str = setting("8gaussians", "the toy density", choices=TOY_DATASETS)
    iterations: int = setting(1000, "training iterations (raise it on --resume to train longer)", metavar="N")
    batch_size: int = setting(256, "samples per iteration, over all processes", metavar="N")
    lr: float = setting(3e-3, "Adam learning rate, cosine-decayed to 0 over --iterations")
    arch: str = setting("mlp", "dynamics: concat MLP or the paper's hypernetwork", choices=("mlp", "hyper"))
    hidden_dims: tuple[int, ...] = setting((64, 64, 64), "hidden widths of the MLP", metavar="W")
    nonlinearity: str = setting("tanh", "MLP nonlinearity", choices=("tanh", "softplus"))
    width: int = setting(64, "planar units of the hypernetwork", metavar="M")
    T: float = setting(1.0, "integration time of the flow")
    tol: float = setting(1e-5, "dopri5 rtol = atol, forward and adjoint")
    adjoint: bool = setting(True, "gradients by the adjoint method (else backprop through the solver)")
    trace: str = setting("exact", "divergence estimator", choices=TRACE_ESTIMATORS)
    noise: str = setting("gaussian", "Hutchinson noise", choices=NOISE_TYPES)
    regularize_kinetic: float = setting(0.0, "weight of the kinetic energy penalty", metavar="W")
    regularize_jacobian: float = setting(0.0, "weight of the Jacobian Frobenius penalty", metavar="W")
    test_samples: int = setting(10000, "fresh samples for the final test NLL", metavar="N")
    threads: int | None = setting(1, "torch threads for the run (one is fastest for these small models)", metavar="N")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("dataset", TOY_DATASETS)
        self.check_choice("arch", ("mlp", "hyper"))
        self.check_choice("nonlinearity", ("tanh", "softplus"))
        self.check_choice("trace", TRACE_ESTIMATORS)
        self.check_choice("noise", NOISE_TYPES)
        self.check_ints("iterations", "batch_size", "test_samples", "width")
        self.check_ints("threads", optional=True)
        self.check_numbers("lr", "tol", "T")
        self.check_numbers("regularize_kinetic", "regularize_jacobian", positive=False)
        if not self.hidden_dims or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden_dims
        ):
            self.fail("hidden_dims", "one or more positive integer widths")


def build_model(config: CNFTrainConfig) -> CNF:
    """The CNF a config describes (untrained)."""
    return build_cnf(
        2,
        arch=config.arch,
        hidden_dims=config.hidden_dims,
        nonlinearity=config.nonlinearity,
        width=config.width,
        T=config.T,
        trace=config.trace,
        noise=config.noise,
        kinetic=config.regularize_kinetic > 0,
        jacobian=config.regularize_jacobian > 0,
        rtol=config.tol,
        atol=config.tol,
        adjoint=config.adjoint,
    )


def cosine_lr(lr: float, step: int, total: int) -> float:
    """``lr · (1 + cos(π step / total)) / 2``: the rate of step ``step`` (0-based) of ``total``."""
    return 0.5 * lr * (1 + math.cos(math.pi * min(step, total) / total))


def test_set(config: CNFTrainConfig, n: int | None = None) -> torch.Tensor:
    """The run's fresh test samples, ``(n, 2)``: drawn apart from every training batch."""
    return sample_toy(config.dataset, n or config.test_samples, generator=step_generator(config.seed, 0, stream=1))


@torch.no_grad()
def evaluate_nll(model: CNF, x: torch.Tensor, *, batch_size: int = 5000) -> tuple[float, float]:
    """Mean negative log-likelihood (nats) of ``x`` under ``model`` with the **exact** trace.

    Returns:
        ``(nll, mean forward NFE per batch)``.
    """
    saved = model.dynamics.trace
    model.dynamics.trace = "exact"
    total, nfe, batches = 0.0, 0, 0
    try:
        for chunk in torch.split(x, batch_size):
            model.dynamics.reset_nfe()
            total += -model.log_prob(chunk).sum().item()
            nfe += model.nfe_forward
            batches += 1
    finally:
        model.dynamics.trace = saved
        model.dynamics.reset_nfe()
    return total / x.shape[0], nfe / batches


def load_cnf_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a CNF checkpoint (CPU tensors), checked as :func:`neuralode.training.checkpoints.load_checkpoint` does.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: (a ``ValueError``) unreadable, damaged, or not a CNF checkpoint.
    """
    return load_checkpoint(path, kind="cnf")


def train_cnf(config: CNFTrainConfig) -> dict[str, Any]:
    """Train a CNF on a toy 2-D density; see the module docstring for the files written.

    Returns:
        A summary: ``run_dir``, ``dataset``, ``iterations_completed``, ``interrupted`` (``None`` or the
        signal's name), ``final`` (the final metrics line, ``None`` when interrupted), ``test_nll``,
        ``test_nfe_forward``, ``seconds`` (training wall time, over resumed sessions too),
        ``nfe_forward`` / ``nfe_backward`` (means over the run's logged intervals), ``checkpoint``, ``figures``.

    Raises:
        ConfigError: an unusable ``out``, or a batch that does not split over the processes.
        FileExistsError / FileNotFoundError / CheckpointError / RunLockedError: as
            :meth:`neuralode.training.rundir.RunDir.open` says.
    """
    return run_task(config, "cnf", _train)


def _train(config: CNFTrainConfig, ctx: Dist, run: RunDir, stop: StopFlag) -> dict[str, Any]:
    checkpoint = run.open(config)
    rows = ctx.shard(config.batch_size)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(config).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    window = Sums(*_FIGURES)
    start, seconds = restore_iteration_state(checkpoint, model, optimizer, window, ctx)
    history = run.restart_metrics(start)
    run.write_config(config, task="cnf", world_size=ctx.world_size, device=str(ctx.device), torch=torch.__version__)
    if checkpoint is not None:
        run.note(f"Resuming {run.path} from its checkpoint at iteration {start}.")
    run.plan(config.iterations, start, f"a CNF on {config.dataset}, batch {config.batch_size}")

    def save(iteration: int) -> None:
        run.save(config, iteration_state(iteration, seconds, model, optimizer, window, ctx))

    iteration = start
    with progress_bar(
        config.iterations, f"cnf {config.dataset}", enabled=config.progress and ctx.is_main, unit="it", initial=start
    ) as bar:
        for iteration in range(start + 1, config.iterations + 1):
            t0 = time.perf_counter()
            # A function of the iteration (nothing to checkpoint): raising `iterations` on resume stretches the cosine.
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(config.lr, iteration - 1, config.iterations)
            x = sample_toy(config.dataset, config.batch_size, generator=step_generator(config.seed, iteration))[
                rows
            ].to(ctx.device)
            model.dynamics.reset_nfe()
            _, logp, *penalties = model(x)  # penalties: the kinetic and Jacobian integrals, when asked for
            nll = -logp.mean()
            kinetic = penalties.pop(0).mean() if config.regularize_kinetic > 0 else torch.zeros(())
            jacobian = penalties.pop(0).mean() if config.regularize_jacobian > 0 else torch.zeros(())
            loss = nll + config.regularize_kinetic * kinetic + config.regularize_jacobian * jacobian
            nfe_forward = model.nfe_forward
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.average_gradients(model.parameters())
            optimizer.step()
            seconds += time.perf_counter() - t0
            window.add(
                loss=loss.item(),
                nll=nll.item(),
                kinetic=kinetic.item(),
                jacobian=jacobian.item(),
                nfe_forward=nfe_forward,
                nfe_backward=model.nfe_backward,
                n=1,
            )
            bar.set_postfix(loss=f"{loss.item():.3f}", nfe_f=nfe_forward, nfe_b=model.nfe_backward, refresh=False)
            bar.update()
            if iteration % config.log_every == 0 or iteration == config.iterations:
                t = window.totals(ctx)
                record = {
                    "iteration": iteration,
                    **{k: t[k] / t["n"] for k in _FIGURES[:-1]},
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": seconds,
                }
                for name in ("kinetic", "jacobian"):
                    if getattr(config, f"regularize_{name}") == 0:
                        del record[name]
                history.append(record)
                run.append(record)
                window.reset()
            signum, due = ctx.any_signal(stop.signum), run.after_step(iteration)
            if signum or due or iteration == config.iterations:
                save(iteration)
            if signum:
                run.note_stopped(stop.name, f"iteration {iteration}", resume_hint("cnf", config.out, ctx))
                return _summary(config, ctx, run, iteration, stop.name or "SIGTERM", history, seconds)

    summary = _summary(config, ctx, run, iteration, None, history, seconds)
    t1 = time.perf_counter()
    test_nll, test_nfe = evaluate_nll(model, test_set(config).to(ctx.device))
    final = {
        "iteration": iteration,
        "final": True,
        "test_nll": test_nll,
        "test_nfe_forward": test_nfe,
        "test_samples": config.test_samples,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
        "nfe_forward_mean": summary["nfe_forward"],
        "nfe_backward_mean": summary["nfe_backward"],
    }
    run.append(final)
    summary.update(final=final, test_nll=test_nll, test_nfe_forward=test_nfe)
    if config.plot and ctx.is_main:
        summary["figures"] = [
            str(p) for p in write_figures(model, config, run.path, iteration=iteration, test_nll=test_nll)
        ]
    return summary


def _summary(
    config: CNFTrainConfig,
    ctx: Dist,
    run: RunDir,
    iteration: int,
    interrupted: str | None,
    history: list,
    seconds: float,
) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [r[key] for r in history if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "run_dir": str(run.path),
        "rank": ctx.rank,
        "dataset": config.dataset,
        "iterations_completed": iteration,
        "interrupted": interrupted,
        "seconds": seconds,
        "nfe_forward": mean("nfe_forward"),
        "nfe_backward": mean("nfe_backward"),
        "final": None,
        "test_nll": None,
        "test_nfe_forward": None,
        "checkpoint": str(run.checkpoint_path),
        "figures": [],
    }


def write_figures(
    model: CNF,
    config: CNFTrainConfig,
    out: Path,
    *,
    iteration: int | None = None,
    test_nll: float | None = None,
    n_samples: int = 2000,
    grid: int = 100,
    extent: float = 4.0,
) -> list[Path]:
    """Write ``samples.png``, ``density.png`` and ``flow.png`` for a trained model into ``out``.

    ``iteration`` and ``test_nll`` (nats), when given, go into the titles.
    """
    from ..plotting import plot_density_grid, plot_point_clouds, save_figure

    model = model.cpu()
    target = test_set(config, n_samples)
    g = step_generator(config.seed, 0, stream=2)
    times = [config.T * (1 - k / 5) for k in range(6)]  # T -> 0
    with torch.no_grad():
        xs, _ = model.sample_with_log_prob(n_samples, times=times, generator=g)  # (6, n, 2)
        ticks = torch.linspace(-extent, extent, grid)
        gx, gy = torch.meshgrid(ticks, ticks, indexing="xy")
        points = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)  # (grid * grid, 2)
        saved = model.dynamics.trace
        model.dynamics.trace = "exact"
        try:
            logp = torch.cat([model.log_prob(c) for c in torch.split(points, 5000)])
        finally:
            model.dynamics.trace = saved
    lim = (-extent, extent)
    where = f"{config.dataset}, iteration {iteration}" if iteration is not None else config.dataset
    score = f", test NLL {test_nll:.3f} nats" if test_nll is not None else ""
    return [
        save_figure(
            plot_point_clouds(
                [("target samples", target), ("model samples", xs[-1])],
                limits=lim,
                suptitle=f"CNF on {where}{score}: {n_samples} samples each",
            ),
            out / FIGURE_NAMES[0],
        ),
        save_figure(
            plot_density_grid(
                logp.exp().reshape(grid, grid), limits=lim, title=f"learned density p(x)\n{where}{score}"
            ),
            out / FIGURE_NAMES[1],
        ),
        save_figure(
            plot_point_clouds(
                [(f"t = {t:.2f}", xs[k]) for k, t in enumerate(times)],
                limits=lim,
                suptitle=f"CNF on {where}: samples flowing from the base N(0, I) at t = T to the data at t = 0",
            ),
            out / FIGURE_NAMES[2],
        ),
    ]


def evaluate(run_dir: str | os.PathLike[str], *, test_samples: int | None = None) -> dict[str, Any]:
    """Load ``RUN_DIR``'s checkpoint and measure its test NLL (nats, exact trace, fresh samples).

    A damaged latest checkpoint gives way to the previous one, with a line on stderr saying so.

    Returns:
        ``test_nll``, ``test_nfe_forward``, ``test_samples``, ``iteration``, ``dataset``.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        CheckpointError: the checkpoint (and the previous one) is damaged, or not a CNF run's.
    """
    state, _, note = load_run_checkpoint(run_dir, "cnf")
    if note:
        print(note, file=sys.stderr)
    config = CNFTrainConfig.from_saved(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    n = test_samples or config.test_samples
    nll, nfe = evaluate_nll(model, test_set(config, n))
    return {
        "test_nll": nll,
        "test_nfe_forward": nfe,
        "test_samples": n,
        "iteration": int(state["iteration"]),
        "dataset": config.dataset,
    }
