"""The spirals task: latent ODEs on the paper's irregularly sampled spirals (section 5), with the
RNN baseline trained beside them on the same minibatches.

``train_latent(LatentTrainConfig(...))`` trains into a run folder (:mod:`neuralode.training.rundir`):
``metrics.jsonl`` gets a line every ``log_every`` iterations (``iteration``, ``elbo``,
``log_likelihood``, ``kl``, NFE, ``rnn_loss``, ``lr``, ``seconds``; means over the interval), every
``eval_every`` a line with ``"eval": true`` and the test RMSEs, and at the end a ``"final": true``
line with ``extrapolation_rmse``, ``reconstruction_rmse``, the RNN's two and ``wall_seconds``. The
figures are ``spirals.png`` (test spirals: observations, truth, both models' reconstructions and
extrapolations) and ``latent.png`` (latent trajectories coloured by direction of rotation).

**Data.** One call of :func:`neuralode.datasets.spirals.make_spirals` with ``n_spirals + n_test``
samples; the first ``n_spirals`` train, the rest are the held-out test set.

**Scores.** ``extrapolation_rmse``: the model reads each test sample's observations in its
window and predicts the ``n_future`` (100) points after the window; the root mean squared error
against the noiseless spiral, over samples, points and both coordinates. The latent ODE predicts
from the posterior mean of ``z_{t0}``; the RNN autoregressively. ``reconstruction_rmse``: the same
over the 100 window points (the RNN's are its one-step-ahead filter predictions).

**Reproducibility.** Iteration ``k``'s minibatch and its ELBO noise ``ε`` are drawn for the global
batch from :func:`~neuralode.training.seeding.step_generator` ``(seed, k)``, not from state carried
between iterations; a data-parallel rank trains on its rows of both. So a run stopped and resumed
follows the same trajectory as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..datasets.spirals import OBSERVATION_COUNTS, SpiralDataset, make_spirals
from ..models.latent_ode import LatentODE, RNNBaseline
from ..progress import progress_bar
from .config import ConfigError, RunConfig, setting
from .distributed import Dist, Sums, resume_hint
from .rundir import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, RunDir, load_run_checkpoint, read_jsonl, run_task
from .seeding import step_generator
from .signals import StopFlag

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "LATENT_FIGURE",
    "METRICS_NAME",
    "SPIRALS_FIGURE",
    "LatentConfigError",
    "LatentTrainConfig",
    "build_models",
    "evaluate",
    "evaluate_latent",
    "make_data",
    "make_figures",
    "read_latent_metrics",
    "train_latent",
]

SPIRALS_FIGURE = "spirals.png"
LATENT_FIGURE = "latent.png"
_FIGURES = ("elbo", "log_likelihood", "kl", "nfe_forward", "nfe_backward", "rnn_loss", "n")

#: Kept for old imports: the spirals task raises the shared :class:`ConfigError`.
LatentConfigError = ConfigError


@dataclass(frozen=True)
class LatentTrainConfig(RunConfig):
    """A spirals run. The shared fields (``out``, ``seed``, ``log_every``, ...) are :class:`RunConfig`'s.

    Attributes:
        observations: points observed per sequence, one of 30, 50, 100.
        iterations: optimisation steps in total.
        lr: Adam's initial learning rate, for both models.
        lr_decay: the rate decays exponentially to ``lr * lr_decay`` at the last iteration
            (default 1.0: constant, as in the reference code; 0.1 fitted the window better but
            extrapolated worse on the 100-observation benchmark). Iteration ``k`` uses
            ``lr * lr_decay ** (k / iterations)``, so raising ``iterations`` on resume stretches the rest.
        adjoint: gradients of the latent ODE by the adjoint method. Off by default (as in the
            reference code): with 100 output times the adjoint's backward solve restarts at each of
            them and costs far more than backpropagating through the ~30 forward evaluations.
        tol: rtol = atol of the latent ODE's dopri5.
        batch_size: sequences per step, over all processes.
        n_spirals: training sequences.
        n_test: held-out sequences the RMSEs are measured on.
        noise: observation noise std of the data, also the likelihood's ``s``.
        eval_every: iterations between test-RMSE lines (0: only at the end).
    """

    KIND = "latent"
    RESUME_KEEP = ("observations", "n_spirals", "n_test", "noise", "seed", "batch_size", "lr", "tol", "adjoint")

    out: Path = setting(Path("runs/spirals"), "the run folder", metavar="RUN_DIR")
    checkpoint_every: int = setting(
        250,
        "optimisation steps between checkpoints, besides --checkpoint-seconds (0: none by step count)",
        metavar="STEPS",
    )
    observations: int = setting(100, "observed points per training sequence", choices=OBSERVATION_COUNTS)
    iterations: int = setting(3000, "training iterations (raise it on --resume to train longer)", metavar="N")
    lr: float = setting(0.01, "Adam learning rate of both models")
    lr_decay: float = setting(1.0, "the rate decays exponentially to lr * lr_decay by the last iteration (1: constant)")
    adjoint: bool = setting(False, "latent-ODE gradients by the adjoint method (else backprop through the solver)")
    tol: float = setting(1e-3, "dopri5 rtol = atol")
    batch_size: int = setting(100, "sequences per iteration, over all processes", metavar="N")
    n_spirals: int = setting(1000, "training sequences", metavar="N")
    n_test: int = setting(100, "held-out sequences the RMSEs are measured on", metavar="N")
    noise: float = setting(0.3, "observation noise std of the data (also the likelihood's)")
    eval_every: int = setting(
        250, "iterations between test-RMSE lines in metrics.jsonl (0: only at the end)", metavar="N"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("observations", OBSERVATION_COUNTS)
        self.check_ints("iterations", "batch_size", "n_spirals", "n_test")
        self.check_ints("eval_every", minimum=0)
        self.check_numbers("lr", "tol", "noise")
        self.check_numbers("lr_decay", at_most=1.0)
        if self.batch_size > self.n_spirals:
            raise ConfigError(
                "batch_size", f"LatentTrainConfig.batch_size={self.batch_size} exceeds n_spirals={self.n_spirals}."
            )


def build_models(config: LatentTrainConfig) -> tuple[LatentODE, RNNBaseline]:
    """The latent ODE (reference sizes) and the 25-unit RNN, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    model = LatentODE(obs_std=config.noise, rtol=config.tol, atol=config.tol, adjoint=config.adjoint)
    rnn = RNNBaseline(hidden=25)
    return model, rnn


def make_data(config: LatentTrainConfig) -> tuple[SpiralDataset, SpiralDataset]:
    """``(train, test)`` spirals of ``config`` (one generator call, then a split)."""
    data = make_spirals(config.n_spirals + config.n_test, config.observations, noise_std=config.noise, seed=config.seed)
    return data.subset(slice(0, config.n_spirals)), data.subset(slice(config.n_spirals, None))


def _to_device(data: SpiralDataset, device: torch.device) -> SpiralDataset:
    return dataclasses.replace(data, **{f.name: getattr(data, f.name).to(device) for f in dataclasses.fields(data)})


def _rmse(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float(torch.sqrt(((pred - true) ** 2).mean()))


@torch.no_grad()
def evaluate_latent(model: LatentODE, rnn: RNNBaseline, test: SpiralDataset) -> dict[str, float]:
    """Test RMSEs of both models against the noiseless spirals (see the module docstring)."""
    model.eval(), rnn.eval()
    recon = model.predict(test.values, test.times, test.mask, test.times, t0=0.0)
    extra = model.predict(test.values, test.times, test.mask, test.future_times, t0=0.0)
    rnn_recon, _ = rnn.filter(test.values, test.times, test.mask)
    rnn_extra = rnn.extrapolate(test.values, test.times, test.mask, test.future_times)
    model.train(), rnn.train()
    return {
        "extrapolation_rmse": _rmse(extra, test.true_future),
        "reconstruction_rmse": _rmse(recon, test.true_values),
        "rnn_extrapolation_rmse": _rmse(rnn_extra, test.true_future),
        "rnn_reconstruction_rmse": _rmse(rnn_recon, test.true_values),
    }


def _load_run(run_dir: str | os.PathLike[str]) -> tuple[LatentTrainConfig, dict[str, Any], LatentODE, RNNBaseline]:
    state, _, note = load_run_checkpoint(run_dir, "latent")
    if note:
        print(note, file=sys.stderr)
    config = LatentTrainConfig.from_saved(state["config"])
    model, rnn = build_models(config)
    model.load_state_dict(state["model"])
    rnn.load_state_dict(state["rnn"])
    return config, state, model, rnn


@torch.no_grad()
def evaluate(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``RUN_DIR``'s checkpoint and measure both models on the run's held-out spirals.

    Returns:
        The four RMSEs of :func:`evaluate_latent`, ``iteration``, ``observations`` and ``test_samples``.

    A damaged latest checkpoint gives way to the previous one, with a line on stderr saying so.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        CheckpointError: the checkpoint (and the previous one) is damaged, or not a latent-ODE run's.
    """
    config, state, model, rnn = _load_run(run_dir)
    _, test = make_data(config)
    return {
        **evaluate_latent(model, rnn, test),
        "iteration": int(state["iteration"]),
        "observations": config.observations,
        "test_samples": test.values.shape[0],
    }


@torch.no_grad()
def make_figures(
    model: LatentODE,
    test: SpiralDataset,
    out: Path,
    *,
    rnn: RNNBaseline | None = None,
    iteration: int | None = None,
    scores: dict[str, float] | None = None,
    n_panels: int = 6,
) -> list[Path]:
    """Write ``spirals.png`` and ``latent.png`` for the test set into ``out``.

    The panels are the first ``n_panels`` test samples in index order; ``rnn``, when given, adds the
    baseline's filter and extrapolation to each; ``iteration`` and ``scores`` go into the titles.
    """
    from ..plotting import plot_latent_spirals, plot_latent_trajectories, save_figure

    model.eval()
    span = float(test.times[-1])
    window = torch.linspace(0.0, span, 200)
    forward = torch.linspace(span, float(test.future_times[-1]), 200)
    backward = torch.linspace(-span, 0.0, 200)
    panels = []
    for i in range(min(n_panels, test.values.shape[0])):
        s = test.subset([i])
        times, xy = test.full_spiral(i)
        shown = (times >= -span) & (times <= float(test.future_times[-1]))
        panel = {
            "true": xy[shown],
            "observed": s.values[0][s.mask[0]],
            "reconstruction": model.predict(s.values, s.times, s.mask, window, t0=0.0)[0],
            "forward": model.predict(s.values, s.times, s.mask, forward, t0=0.0)[0],
            "backward": model.predict(s.values, s.times, s.mask, backward, t0=0.0)[0],
            "label": f"test sample {i}: {'clockwise' if bool(test.clockwise[i]) else 'counter-clockwise'}",
        }
        if rnn is not None:
            rnn.eval()
            panel["rnn_forward"] = rnn.extrapolate(s.values, s.times, s.mask, test.future_times)[0]
            rnn.train()
        panels.append(panel)
    when = f" after {iteration} iterations" if iteration is not None else ""
    score = ""
    if scores:
        score = (
            f"\nextrapolation RMSE: latent ODE {scores['extrapolation_rmse']:.3f}, "
            f"RNN {scores['rnn_extrapolation_rmse']:.3f}"
        )
    paths = [
        save_figure(
            plot_latent_spirals(panels, title=f"Latent ODE vs RNN on held-out spirals{when}{score}"),
            out / SPIRALS_FIGURE,
        )
    ]
    both = torch.cat([test.times, test.future_times])
    _, zs = model.predict(test.values, test.times, test.mask, both, t0=0.0, return_latent=True)
    paths.append(
        save_figure(
            plot_latent_trajectories(
                zs, test.clockwise, title=f"Latent trajectories of {zs.shape[0]} test spirals{when}"
            ),
            out / LATENT_FIGURE,
        )
    )
    model.train()
    return paths


def read_latent_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (an empty list if there is none; a torn last line is skipped)."""
    return read_jsonl(Path(run_dir) / METRICS_NAME)


def train_latent(config: LatentTrainConfig) -> dict[str, Any]:
    """Train a latent ODE and the RNN baseline on the spirals; see the module docstring.

    Returns:
        A summary: ``iteration`` reached, the four test RMSEs, ``wall_seconds`` (of this call),
        ``interrupted`` (the signal's name, or ``None``), ``run_dir`` and the figure paths.

    Raises:
        ConfigError: an unusable ``out``, or a batch that does not split over the processes.
        FileExistsError / FileNotFoundError / CheckpointError / RunLockedError: as
            :meth:`neuralode.training.rundir.RunDir.open` says.
    """
    return run_task(config, "latent", _train)


def _train(config: LatentTrainConfig, ctx: Dist, run: RunDir, stop: StopFlag) -> dict[str, Any]:
    checkpoint = run.open(config)
    rows = ctx.shard(config.batch_size)
    started = time.monotonic()
    cpu_test = make_data(config)[1]
    train, test = (_to_device(d, ctx.device) for d in make_data(config))
    ode_model, rnn_model = build_models(config)
    model, rnn = ode_model.to(ctx.device), rnn_model.to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    rnn_opt = torch.optim.Adam(rnn.parameters(), lr=config.lr)
    window = Sums(*_FIGURES)
    iteration = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        rnn.load_state_dict(checkpoint["rnn"])
        opt.load_state_dict(checkpoint["optimizer"])
        rnn_opt.load_state_dict(checkpoint["rnn_optimizer"])
        iteration = int(checkpoint["iteration"])
        window.load(checkpoint["window_sums"], ctx)
        run.note(f"Resuming {run.path} from its checkpoint at iteration {iteration}.")
    run.restart_metrics(iteration)
    run.write_config(config, task="spirals", world_size=ctx.world_size, device=str(ctx.device), torch=torch.__version__)
    run.plan(
        config.iterations,
        iteration,
        f"a latent ODE and an RNN on {config.n_spirals:,} spirals, batch {config.batch_size}",
    )

    def save(iteration: int) -> None:
        run.save(
            config,
            {
                "iteration": iteration,
                "model": model.state_dict(),
                "rnn": rnn.state_dict(),
                "optimizer": opt.state_dict(),
                "rnn_optimizer": rnn_opt.state_dict(),
                "window_sums": window.state(ctx),
            },
        )

    with progress_bar(
        config.iterations, "latent ODE", enabled=config.progress and ctx.is_main, initial=iteration
    ) as bar:
        while iteration < config.iterations:
            gen = step_generator(config.seed, iteration)
            rate = config.lr * config.lr_decay ** (iteration / config.iterations)
            for group in (*opt.param_groups, *rnn_opt.param_groups):
                group["lr"] = rate
            idx = torch.randperm(config.n_spirals, generator=gen)[: config.batch_size]
            eps = torch.randn(config.batch_size, model.latent_dim, generator=gen).to(ctx.device)  # the global batch's ε
            batch = train.subset(idx[rows])
            model.func.reset_nfe()
            terms = model.elbo(batch.values, batch.times, batch.mask, t0=0.0, eps=eps[rows])
            loss = -terms.elbo.mean()
            opt.zero_grad()
            loss.backward()
            ctx.average_gradients(model.parameters())
            opt.step()
            rnn_loss = rnn.loss(batch.values, batch.times, batch.mask)
            rnn_opt.zero_grad()
            rnn_loss.backward()
            ctx.average_gradients(rnn.parameters())
            rnn_opt.step()
            iteration += 1
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"the ELBO became non-finite at iteration {iteration}; lower --lr or --tol.")
            window.add(
                elbo=-loss.item(),
                log_likelihood=terms.log_likelihood.mean().item(),
                kl=terms.kl.mean().item(),
                nfe_forward=model.func.nfe_forward,
                nfe_backward=model.func.nfe_backward,
                rnn_loss=rnn_loss.item(),
                n=1,
            )
            bar.update()
            bar.set_postfix(
                elbo=f"{-loss.item():.1f}", nfe=model.func.nfe_forward, rnn=f"{rnn_loss.item():.3f}", refresh=False
            )
            if iteration % config.log_every == 0 or iteration == config.iterations:
                t = window.totals(ctx)
                run.append(
                    {
                        "iteration": iteration,
                        **{k: t[k] / t["n"] for k in _FIGURES[:-1]},
                        "lr": rate,
                        "seconds": round(time.monotonic() - started, 3),
                    }
                )
                window.reset()
            if config.eval_every and iteration % config.eval_every == 0 and iteration < config.iterations:
                run.append({"iteration": iteration, "eval": True, **evaluate_latent(model, rnn, test)})
            signum, due = ctx.any_signal(stop.signum), run.after_step(iteration)
            if signum or due or iteration == config.iterations:
                save(iteration)
            if signum:
                run.note_stopped(stop.name, f"iteration {iteration}", resume_hint("spirals", config.out, ctx))
                return {
                    "iteration": iteration,
                    "interrupted": stop.name or "SIGTERM",
                    "run_dir": str(run.path),
                    "rank": ctx.rank,
                }

    scores = evaluate_latent(model, rnn, test)
    wall = round(time.monotonic() - started, 3)
    run.append({"iteration": iteration, "final": True, **scores, "wall_seconds": wall})
    summary: dict[str, Any] = {
        "iteration": iteration,
        "interrupted": None,
        "run_dir": str(run.path),
        "rank": ctx.rank,
        **scores,
        "wall_seconds": wall,
    }
    if config.plot and ctx.is_main:
        figures = make_figures(model.cpu(), cpu_test, run.path, rnn=rnn.cpu(), iteration=iteration, scores=scores)
        summary["figures"] = [str(p) for p in figures]
    return summary
