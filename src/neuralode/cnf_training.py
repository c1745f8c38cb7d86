"""Training continuous normalizing flows on the toy 2-D densities: config, loop, evaluation, figures.

``train_cnf(CNFTrainConfig(dataset="8gaussians", out="runs/cnf"))`` keeps everything in one folder::

    RUN_DIR/config.json       the configuration (written at the start)
    RUN_DIR/metrics.jsonl     every ``log_every`` iterations: iteration, loss, nll, kinetic,
                              jacobian, nfe_forward, nfe_backward, lr, seconds; at the end one
                              line with ``test_nll`` (nats, exact trace, fresh samples)
    RUN_DIR/checkpoint.pt     the latest checkpoint (atomic: temporary file, then os.replace)
    RUN_DIR/samples.png       target samples next to model samples
    RUN_DIR/density.png       the learned density on a grid
    RUN_DIR/flow.png          samples flowing from the base density (t = T) to the data (t = 0)

**Loss.** ``mean(-log p(x)) + λ_K · mean(∫‖f‖²) + λ_J · mean(∫‖∂f/∂z‖²_F)`` (Finlay et al. 2020);
with both weights zero it is the plain maximum-likelihood objective of FFJORD. Optimiser: Adam
with a cosine decay of the learning rate to 0 over ``iterations`` (FFJORD uses a constant rate
for 10,000 iterations; the decay reaches the same NLL in far fewer, which is what makes a
ten-minute CPU run possible).

**Data and reproducibility.** Batch ``i`` is drawn from a generator seeded with
``(seed, i)``, and the test set from one seeded with ``seed`` and a fixed offset, so it never
overlaps a training batch's stream. A checkpoint stores the model, the optimiser, the iteration (the learning rate is a function of it)
and the global RNG state (the Hutchinson noise), so a resumed run continues where it stopped.

**Interruption.** SIGINT/SIGTERM set a flag; the loop finishes the iteration in hand, saves a
checkpoint and returns with ``interrupted`` set. Rerun with ``resume=True`` to continue.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .checkpoints import atomic_write_text, load_checkpoint, save_checkpoint
from .models.cnf import CNF, NOISE_TYPES, TRACE_ESTIMATORS, build_cnf
from .progress import progress_bar
from .toy2d import TOY_DATASETS, sample_toy

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"

#: Offset added to the seed for the test set's generator (training batches use ``seed * 2**20 + i``).
_TEST_SEED_OFFSET = 7_919
#: Fields that shape the model or the objective: a resumed run must agree on them.
_MODEL_FIELDS = ("dataset", "arch", "hidden_dims", "nonlinearity", "width", "T", "trace", "noise", "regularize_kinetic", "regularize_jacobian")


@dataclass(frozen=True)
class CNFTrainConfig:
    """Everything a CNF training run can be told. Field names map 1:1 to CLI flags
    (``batch_size`` -> ``--batch-size``; ``adjoint`` -> ``--adjoint/--no-adjoint``).

    Attributes:
        dataset: a toy density, one of ``TOY_DATASETS``.
        iterations: total optimisation steps (a resumed run may raise it to train longer).
        batch_size: samples per step.
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
        seed: seeds the initialisation, the data stream and the noise.
        out: the run folder.
        resume: continue the run saved in ``out``.
        test_samples: fresh samples for the final test NLL.
        checkpoint_every: iterations between checkpoints (one is always written at the end).
        log_every: iterations between ``metrics.jsonl`` lines.
        threads: ``torch.set_num_threads`` for the run (``None``: leave it); one thread is
            fastest for these small models.
        progress: show a progress bar on stderr.
        plot: write the figures at the end.
    """

    dataset: str = "8gaussians"
    iterations: int = 1000
    batch_size: int = 256
    lr: float = 3e-3
    arch: str = "mlp"
    hidden_dims: tuple[int, ...] = (64, 64, 64)
    nonlinearity: str = "tanh"
    width: int = 64
    T: float = 1.0
    tol: float = 1e-5
    adjoint: bool = True
    trace: str = "exact"
    noise: str = "gaussian"
    regularize_kinetic: float = 0.0
    regularize_jacobian: float = 0.0
    seed: int = 0
    out: Path = Path("runs/cnf")
    resume: bool = False
    test_samples: int = 10000
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int | None = 1
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out).expanduser())
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.dataset not in TOY_DATASETS:
            raise ValueError(f"CNFTrainConfig.dataset must be one of {', '.join(TOY_DATASETS)}; got {self.dataset!r}.")
        if self.arch not in ("mlp", "hyper"):
            raise ValueError(f"CNFTrainConfig.arch must be 'mlp' or 'hyper'; got {self.arch!r}.")
        if self.trace not in TRACE_ESTIMATORS:
            raise ValueError(f"CNFTrainConfig.trace must be one of {', '.join(TRACE_ESTIMATORS)}; got {self.trace!r}.")
        if self.noise not in NOISE_TYPES:
            raise ValueError(f"CNFTrainConfig.noise must be one of {', '.join(NOISE_TYPES)}; got {self.noise!r}.")
        for name in ("iterations", "batch_size", "test_samples", "checkpoint_every", "log_every", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CNFTrainConfig.{name} must be a positive integer; got {value!r}.")
        for name in ("lr", "tol", "T"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"CNFTrainConfig.{name} must be a positive number; got {value!r}.")
        for name in ("regularize_kinetic", "regularize_jacobian"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"CNFTrainConfig.{name} must be a non-negative number; got {value!r}.")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"CNFTrainConfig.hidden_dims must be positive widths; got {self.hidden_dims!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"CNFTrainConfig.seed must be a non-negative integer; got {self.seed!r}.")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"CNFTrainConfig.threads must be a positive integer or None; got {self.threads!r}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CNFTrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def _batch_generator(seed: int, iteration: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 2**20 + iteration)


def test_set(config: CNFTrainConfig, n: int | None = None) -> torch.Tensor:
    """The run's fresh test samples, ``(n, 2)``: seeded apart from every training batch."""
    return sample_toy(config.dataset, n or config.test_samples, seed=config.seed * 2**20 + 2**19 + _TEST_SEED_OFFSET)


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
    """Read a CNF checkpoint (CPU tensors), checked as :func:`neuralode.checkpoints.load_checkpoint` does.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: (a ``ValueError``) unreadable, damaged, or not a CNF checkpoint.
    """
    return load_checkpoint(path, kind="cnf")


class _Stop:
    """SIGINT/SIGTERM: remember the signal; the loop saves and returns after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal aborts at once
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this iteration.", file=sys.stderr, flush=True)


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Training.


def train_cnf(config: CNFTrainConfig) -> dict[str, Any]:
    """Train a CNF on a toy 2-D density; see the module docstring for the files written.

    Returns:
        A summary: ``run_dir``, ``iterations_completed``, ``interrupted`` (``None`` or the
        signal's name), ``test_nll`` (``None`` when interrupted), ``test_nfe_forward``,
        ``seconds`` (training wall time, summed over resumed sessions), ``nfe_forward`` /
        ``nfe_backward`` (means over the run's logged iterations), ``checkpoint`` and ``figures``.

    Raises:
        FileExistsError: ``out`` holds a run and ``resume`` is off.
        FileNotFoundError: ``resume`` is on and ``out`` has no checkpoint.
        ValueError: the checkpoint is unreadable or from a run with a different model.
    """
    out = config.out
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    checkpoint = None
    if config.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"Cannot resume: no {CHECKPOINT_NAME} in {out}. Start a new run without --resume.")
        checkpoint = load_cnf_checkpoint(ckpt_path)
        saved = checkpoint["config"]
        for name in _MODEL_FIELDS:
            theirs, ours = saved.get(name), config.to_dict()[name]
            if theirs != ours:
                raise ValueError(
                    f"Cannot resume {out}: the checkpoint was trained with {name}={theirs!r}, this run asks for "
                    f"{name}={ours!r}. Use the same setting or another output folder."
                )
    elif ckpt_path.exists():
        raise FileExistsError(f"{out} already holds a CNF run ({CHECKPOINT_NAME}); pass --resume to continue it or choose another --out.")

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start, seconds = 0, 0.0
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        start, seconds = int(checkpoint["iteration"]), float(checkpoint["seconds"])
        history = [r for r in _read_metrics(metrics_path) if "test_nll" not in r and r.get("iteration", 0) <= start]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_NAME, json.dumps({"config": config.to_dict(), "torch": torch.__version__}, indent=2) + "\n")
    _write_metrics(metrics_path, history)

    def save(iteration: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "config": config.to_dict(),
                "iteration": iteration,
                "seconds": seconds,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
            },
            kind="cnf",
        )

    reg = config.regularize_kinetic > 0 or config.regularize_jacobian > 0
    window = {"loss": 0.0, "nll": 0.0, "kinetic": 0.0, "jacobian": 0.0, "nfe_forward": 0, "nfe_backward": 0, "n": 0}
    interrupted: str | None = None
    iteration = start
    bar = progress_bar(config.iterations, f"cnf {config.dataset}", enabled=config.progress, unit="it", initial=start)
    with _Stop() as stop, bar:
        for iteration in range(start + 1, config.iterations + 1):
            t0 = time.perf_counter()
            # The rate is a function of the iteration (nothing to checkpoint); a resumed run with
            # a raised `iterations` stretches the cosine from there on.
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(config.lr, iteration - 1, config.iterations)
            x = sample_toy(config.dataset, config.batch_size, generator=_batch_generator(config.seed, iteration))
            model.dynamics.reset_nfe()
            outs = model(x)
            nll = -outs[1].mean()
            loss = nll
            extra = list(outs[2:])
            kinetic = extra.pop(0).mean() if config.regularize_kinetic > 0 else None
            jacobian = extra.pop(0).mean() if config.regularize_jacobian > 0 else None
            if kinetic is not None:
                loss = loss + config.regularize_kinetic * kinetic
            if jacobian is not None:
                loss = loss + config.regularize_jacobian * jacobian
            nfe_f = model.nfe_forward
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nfe_b = model.nfe_backward
            optimizer.step()
            seconds += time.perf_counter() - t0

            window["loss"] += loss.item()
            window["nll"] += nll.item()
            window["kinetic"] += kinetic.item() if kinetic is not None else 0.0
            window["jacobian"] += jacobian.item() if jacobian is not None else 0.0
            window["nfe_forward"] += nfe_f
            window["nfe_backward"] += nfe_b
            window["n"] += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", nfe_f=nfe_f, nfe_b=nfe_b, refresh=False)
            bar.update()
            if iteration % config.log_every == 0 or iteration == config.iterations:
                n = window["n"]
                record = {
                    "iteration": iteration,
                    "loss": window["loss"] / n,
                    "nll": window["nll"] / n,
                    "nfe_forward": window["nfe_forward"] / n,
                    "nfe_backward": window["nfe_backward"] / n,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": seconds,
                }
                if reg:
                    record["kinetic"] = window["kinetic"] / n if config.regularize_kinetic > 0 else None
                    record["jacobian"] = window["jacobian"] / n if config.regularize_jacobian > 0 else None
                history.append(record)
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                window = dict.fromkeys(window, 0)
            if stop.signum is not None:
                interrupted = signal.Signals(stop.signum).name
                save(iteration)
                print(f"Stopped at iteration {iteration}; checkpoint saved to {ckpt_path}. Resume with --resume.", file=sys.stderr, flush=True)
                break
            if iteration % config.checkpoint_every == 0:
                save(iteration)
    if interrupted is None:
        save(iteration)

    summary: dict[str, Any] = {
        "run_dir": str(out),
        "dataset": config.dataset,
        "iterations_completed": iteration,
        "interrupted": interrupted,
        "seconds": seconds,
        "nfe_forward": _mean(history, "nfe_forward"),
        "nfe_backward": _mean(history, "nfe_backward"),
        "test_nll": None,
        "test_nfe_forward": None,
        "checkpoint": str(ckpt_path),
        "figures": [],
    }
    if interrupted is not None:
        return summary
    t1 = time.perf_counter()
    test_nll, test_nfe = evaluate_nll(model, test_set(config))
    final = {
        "iteration": iteration,
        "test_nll": test_nll,
        "test_nfe_forward": test_nfe,
        "test_samples": config.test_samples,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
        "nfe_forward_mean": summary["nfe_forward"],
        "nfe_backward_mean": summary["nfe_backward"],
    }
    with metrics_path.open("a") as fh:
        fh.write(json.dumps(final) + "\n")
    summary.update(test_nll=test_nll, test_nfe_forward=test_nfe)
    if config.progress:
        print(f"{config.dataset}: test NLL {test_nll:.4f} nats after {iteration} iterations, {seconds:.0f} s", file=sys.stderr, flush=True)
    if config.plot:
        summary["figures"] = [str(p) for p in write_figures(model, config, out)]
    return summary


def _mean(history: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in history if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def write_figures(model: CNF, config: CNFTrainConfig, out: Path, *, n_samples: int = 2000, grid: int = 100, extent: float = 4.0) -> list[Path]:
    """Write ``samples.png``, ``density.png`` and ``flow.png`` for a trained model into ``out``."""
    from .plotting import plot_density_grid, plot_point_clouds, save_figure

    target = test_set(config, n_samples)
    g = torch.Generator().manual_seed(config.seed + 1)
    times = [config.T * (1 - k / 5) for k in range(6)]  # T -> 0
    with torch.no_grad():
        xs, _ = model.sample_with_log_prob(n_samples, times=times, generator=g)  # (6, n, 2)
        ticks = torch.linspace(-extent, extent, grid)
        gx, gy = torch.meshgrid(ticks, ticks, indexing="xy")
        points = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
        saved = model.dynamics.trace
        model.dynamics.trace = "exact"
        try:
            logp = torch.cat([model.log_prob(c) for c in torch.split(points, 5000)])
        finally:
            model.dynamics.trace = saved
    lim = (-extent, extent)
    paths = [
        save_figure(plot_point_clouds([("target samples", target), ("model samples", xs[-1])], limits=lim), out / "samples.png"),
        save_figure(plot_density_grid(logp.exp().reshape(grid, grid), limits=lim, title=f"learned density ({config.dataset})"), out / "density.png"),
        save_figure(
            plot_point_clouds([(f"t = {t:.2f}", xs[k]) for k, t in enumerate(times)], limits=lim, suptitle="samples flowing from the base (t = T) to the data (t = 0)"),
            out / "flow.png",
        ),
    ]
    return paths


def evaluate(run_dir: str | os.PathLike[str], *, test_samples: int | None = None) -> dict[str, Any]:
    """Load ``RUN_DIR``'s checkpoint and measure its test NLL (nats, exact trace, fresh samples).

    Returns:
        ``test_nll``, ``test_nfe_forward``, ``test_samples``, ``iteration``, ``dataset``.
    """
    run_dir = Path(run_dir)
    state = load_cnf_checkpoint(run_dir / CHECKPOINT_NAME)
    config = CNFTrainConfig.from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    n = test_samples or config.test_samples
    nll, nfe = evaluate_nll(model, test_set(config, n))
    return {"test_nll": nll, "test_nfe_forward": nfe, "test_samples": n, "iteration": int(state["iteration"]), "dataset": config.dataset}
