"""Training latent ODEs on the paper's spirals (section 5), with the RNN baseline beside them.

``train_latent(LatentTrainConfig(...))`` trains a :class:`~neuralode.models.LatentODE` and a
:class:`~neuralode.models.RNNBaseline` on the same minibatches, and keeps everything in one folder::

    RUN_DIR/config.json        the configuration
    RUN_DIR/metrics.jsonl      every ``log_every`` iterations: iteration, elbo, log_likelihood, kl,
                               nfe_forward, nfe_backward, rnn_loss, seconds; every ``eval_every``
                               a line with "eval": true and the test RMSEs; at the end a line with
                               "final": true, extrapolation_rmse, reconstruction_rmse,
                               rnn_extrapolation_rmse, rnn_reconstruction_rmse, wall_seconds
    RUN_DIR/checkpoint.pt      the latest checkpoint (atomic; see neuralode.checkpoints)
    RUN_DIR/spirals.png        test spirals: observations, truth, reconstruction, extrapolation
                               forwards and backwards in time
    RUN_DIR/latent.png         latent trajectories coloured by direction of rotation

**Data.** One call of :func:`neuralode.spirals.make_spirals` with ``n_spirals + n_test`` samples;
the first ``n_spirals`` train, the rest are the held-out test set the RMSEs are measured on.

**Scores.** ``extrapolation_rmse``: the model reads each test sample's observations in its
window and predicts the ``n_future`` (100) points after the window; the root mean squared error
against the noiseless spiral, over samples, points and both coordinates. The latent ODE predicts
from the posterior mean of ``z_{t0}``; the RNN autoregressively. ``reconstruction_rmse``: the same
over the 100 window points (the RNN's are its one-step-ahead filter predictions).

**Reproducibility.** Iteration ``k``'s minibatch and its ELBO noise come from generators seeded
with ``(seed, k)``, not from state carried between iterations, so a run interrupted and resumed
follows the same trajectory as one that never stopped.

**Interruption.** SIGINT / SIGTERM: the iteration in hand finishes, a checkpoint is written, and
``train_latent`` returns (``summary["interrupted"]`` is the signal's name). ``resume=True`` then
continues from the checkpoint; ``iterations`` may be raised to train longer.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from .models.latent_ode import LatentODE, RNNBaseline
from .plotting import plot_latent_spirals, plot_latent_trajectories, save_figure
from .progress import progress_bar
from .spirals import OBSERVATION_COUNTS, SpiralDataset, make_spirals

# The shared atomic, digest-checked checkpoints, and the MNIST program's signal flag.
from .checkpoints import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .training import _StopFlag

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
SPIRALS_FIGURE = "spirals.png"
LATENT_FIGURE = "latent.png"

# Fields that must match for --resume to continue a run (the rest, e.g. iterations, may change).
_RESUME_FIXED = ("observations", "n_spirals", "n_test", "noise", "seed", "batch_size", "lr")


class LatentConfigError(ValueError):
    """A :class:`LatentTrainConfig` field has a bad value; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LatentTrainConfig:
    """Everything a spiral training run can be told.

    Attributes (CLI flag in brackets):
        observations: points observed per sequence, one of 30, 50, 100 [--observations].
        iterations: optimisation steps in total [--iterations].
        out: the run folder [--out].
        lr: Adam's initial learning rate, for both models [--lr].
        lr_decay: the learning rate decays exponentially to ``lr * lr_decay`` at the last
            iteration (default ``1.0``: constant, as in the reference code; ``0.1`` fitted the
            window better but extrapolated worse on the 100-observation benchmark) [--lr-decay]. Iteration ``k``
            uses ``lr * lr_decay ** (k / iterations)``, so raising ``iterations`` on resume
            stretches the rest of the schedule.
        seed: seeds the data, the initialisation and every minibatch [--seed].
        resume: continue the run saved in ``out`` [--resume].
        adjoint: gradients of the latent ODE by the adjoint method [--adjoint/--no-adjoint].
            Off by default (as in the reference code): with 100 output times the adjoint's
            backward solve restarts at each of them and costs far more than backpropagating
            through the ~30 forward evaluations.
        tol: rtol = atol of the latent ODE's dopri5 [--tol].
        batch_size: sequences per step [--batch-size].
        n_spirals: training sequences [--n-spirals].
        n_test: held-out sequences the RMSEs are measured on [--n-test].
        noise: observation noise std of the data, also the likelihood's ``s`` [--noise].
        log_every: iterations between metrics lines.
        eval_every: iterations between test-RMSE lines (0: only at the end).
        checkpoint_every: iterations between checkpoints (also written at the end and on a signal).
        progress: show a progress bar on stderr.
        plot: write the figures at the end.
    """

    observations: int = 100
    iterations: int = 3000
    out: Path = Path("runs/spirals")
    lr: float = 0.01
    lr_decay: float = 1.0
    seed: int = 0
    resume: bool = False
    adjoint: bool = False
    tol: float = 1e-3
    batch_size: int = 100
    n_spirals: int = 1000
    n_test: int = 100
    noise: float = 0.3
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 250
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out).expanduser())
        if self.observations not in OBSERVATION_COUNTS:
            raise LatentConfigError(
                "observations", f"LatentTrainConfig.observations must be one of {OBSERVATION_COUNTS}; got {self.observations!r}."
            )
        for name in ("iterations", "batch_size", "n_spirals", "n_test", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LatentConfigError(name, f"LatentTrainConfig.{name} must be a positive integer; got {value!r}.")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise LatentConfigError("eval_every", f"LatentTrainConfig.eval_every must be a non-negative integer; got {self.eval_every!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise LatentConfigError("seed", f"LatentTrainConfig.seed must be a non-negative integer; got {self.seed!r}.")
        if not (isinstance(self.lr_decay, (int, float)) and 0 < self.lr_decay <= 1):
            raise LatentConfigError("lr_decay", f"LatentTrainConfig.lr_decay must be in (0, 1]; got {self.lr_decay!r}.")
        for name in ("lr", "tol", "noise"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise LatentConfigError(name, f"LatentTrainConfig.{name} must be a positive finite number; got {value!r}.")
        if self.batch_size > self.n_spirals:
            raise LatentConfigError(
                "batch_size", f"LatentTrainConfig.batch_size={self.batch_size} exceeds n_spirals={self.n_spirals}."
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "LatentTrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, **overrides})


# --------------------------------------------------------------------------------------------
# Pieces.


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


def _generator(seed: int, iteration: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


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


@torch.no_grad()
def evaluate(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``RUN_DIR``'s checkpoint and measure both models on the run's held-out spirals.

    Returns:
        The four RMSEs of :func:`evaluate_latent`, ``iteration``, ``observations`` and ``test_samples``.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        CheckpointError: the checkpoint is damaged or not a latent-ODE run's.
    """
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME, kind="latent")
    config = LatentTrainConfig.from_dict(state["config"])
    _, test = make_data(config)
    model, rnn = build_models(config)
    model.load_state_dict(state["model"])
    rnn.load_state_dict(state["rnn"])
    return {**evaluate_latent(model, rnn, test), "iteration": int(state["iteration"]),
            "observations": config.observations, "test_samples": test.values.shape[0]}


@torch.no_grad()
def make_figures(model: LatentODE, test: SpiralDataset, out: Path, *, n_panels: int = 6) -> list[Path]:
    """Write ``spirals.png`` and ``latent.png`` for the test set into ``out``."""
    model.eval()
    span = float(test.times[-1])
    # Up to n_panels samples, alternating directions so both appear.
    cw = torch.nonzero(test.clockwise).flatten().tolist()
    ccw = torch.nonzero(~test.clockwise).flatten().tolist()
    order = [i for pair in zip(cw, ccw) for i in pair] + cw[len(ccw):] + ccw[len(cw):]
    picks = order[:n_panels]
    window = torch.linspace(0.0, span, 200)
    forward = torch.linspace(span, float(test.future_times[-1]), 200)
    backward = torch.linspace(-span, 0.0, 200)
    panels = []
    for i in picks:
        s = test.subset([i])
        recon = model.predict(s.values, s.times, s.mask, window, t0=0.0)[0]
        fwd = model.predict(s.values, s.times, s.mask, forward, t0=0.0)[0]
        bwd = model.predict(s.values, s.times, s.mask, backward, t0=0.0)[0]
        times, xy = test.full_spiral(i)
        shown = (times >= -span) & (times <= float(test.future_times[-1]))
        panels.append({
            "true": xy[shown], "observed": s.values[0][s.mask[0]], "reconstruction": recon,
            "forward": fwd, "backward": bwd,
            "label": f"test {i}: {'clockwise' if bool(test.clockwise[i]) else 'counter-clockwise'}",
        })
    paths = [save_figure(plot_latent_spirals(panels), out / SPIRALS_FIGURE)]
    both = torch.cat([test.times, test.future_times])
    _, zs = model.predict(test.values, test.times, test.mask, both, t0=0.0, return_latent=True)
    paths.append(save_figure(plot_latent_trajectories(zs, test.clockwise), out / LATENT_FIGURE))
    model.train()
    return paths


def _append(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def read_latent_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (an empty list if there is none)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# The loop.


def train_latent(config: LatentTrainConfig) -> dict[str, Any]:
    """Train a latent ODE and the RNN baseline on the spirals; see the module docstring.

    Returns:
        A summary: ``iteration`` reached, the four test RMSEs, ``wall_seconds`` (of this call),
        ``interrupted`` (the signal's name, or ``None``), ``run_dir`` and the figure paths.

    Raises:
        FileExistsError: if ``out`` already holds a run and ``resume`` is false.
        FileNotFoundError: if ``resume`` is true and there is no checkpoint.
        CheckpointError: if the checkpoint is corrupt or from an incompatible run.
    """
    out = config.out
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    started = time.monotonic()
    train, test = make_data(config)
    model, rnn = build_models(config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    rnn_opt = torch.optim.Adam(rnn.parameters(), lr=config.lr)
    start_iter = 0
    if config.resume:
        state = load_checkpoint(ckpt_path, kind="latent")
        saved = state["config"]
        for name in _RESUME_FIXED:
            if saved.get(name) != getattr(config, name):
                raise CheckpointError(
                    f"Cannot resume {out}: it was trained with {name}={saved.get(name)!r}, not {getattr(config, name)!r}."
                )
        model.load_state_dict(state["model"])
        rnn.load_state_dict(state["rnn"])
        opt.load_state_dict(state["optimizer"])
        rnn_opt.load_state_dict(state["rnn_optimizer"])
        start_iter = int(state["iteration"])
        # Drop metrics written after the checkpoint: those iterations are about to be redone.
        kept = [r for r in read_latent_metrics(out) if r.get("iteration", 0) <= start_iter and not r.get("final")]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    else:
        if ckpt_path.exists() or metrics_path.exists():
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to continue it or choose another --out.")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(metrics_path, "")
    atomic_write_text(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")

    def checkpoint(iteration: int) -> None:
        save_checkpoint(ckpt_path, {
            "config": config.to_dict(), "iteration": iteration,
            "model": model.state_dict(), "rnn": rnn.state_dict(),
            "optimizer": opt.state_dict(), "rnn_optimizer": rnn_opt.state_dict(),
        }, kind="latent")

    stop = _StopFlag()
    stop.install()
    iteration = start_iter
    try:
        with progress_bar(config.iterations, "latent ODE", enabled=config.progress, initial=start_iter) as bar:
            while iteration < config.iterations and stop.signum is None:
                gen = _generator(config.seed, iteration)
                rate = config.lr * config.lr_decay ** (iteration / config.iterations)
                for group in (*opt.param_groups, *rnn_opt.param_groups):
                    group["lr"] = rate
                idx = torch.randperm(config.n_spirals, generator=gen)[: config.batch_size]
                batch = train.subset(idx)
                model.func.reset_nfe()
                terms = model.elbo(batch.values, batch.times, batch.mask, t0=0.0, generator=gen)
                loss = -terms.elbo.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rnn_loss = rnn.loss(batch.values, batch.times, batch.mask)
                rnn_opt.zero_grad()
                rnn_loss.backward()
                rnn_opt.step()
                iteration += 1
                loss_value, rnn_value = loss.item(), rnn_loss.item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"the ELBO became non-finite at iteration {iteration}; lower --lr or --tol.")
                if iteration % config.log_every == 0 or iteration == config.iterations:
                    _append(metrics_path, {
                        "iteration": iteration, "elbo": -loss_value,
                        "log_likelihood": terms.log_likelihood.mean().item(), "kl": terms.kl.mean().item(),
                        "nfe_forward": model.func.nfe_forward, "nfe_backward": model.func.nfe_backward,
                        "rnn_loss": rnn_value, "lr": rate, "seconds": round(time.monotonic() - started, 3),
                    })
                if config.eval_every and iteration % config.eval_every == 0 and iteration < config.iterations:
                    _append(metrics_path, {"iteration": iteration, "eval": True, **evaluate_latent(model, rnn, test)})
                if iteration % config.checkpoint_every == 0:
                    checkpoint(iteration)
                bar.update()
                bar.set_postfix(elbo=f"{-loss_value:.1f}", nfe=model.func.nfe_forward, rnn=f"{rnn_value:.3f}")
        checkpoint(iteration)
    finally:
        stop.restore()
    interrupted = None if stop.signum is None else signal.Signals(stop.signum).name
    summary: dict[str, Any] = {"iteration": iteration, "interrupted": interrupted, "run_dir": str(out)}
    if interrupted is not None:
        print(f"Stopped at iteration {iteration}; continue with the same flags and --resume.", file=sys.stderr)
        return summary
    scores = evaluate_latent(model, rnn, test)
    wall = round(time.monotonic() - started, 3)
    _append(metrics_path, {"iteration": iteration, "final": True, **scores, "wall_seconds": wall})
    summary.update(scores, wall_seconds=wall)
    if config.plot:
        summary["figures"] = [str(p) for p in make_figures(model, test, out)]
    return summary
