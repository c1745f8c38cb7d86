"""The MNIST task: the paper's Table 1 classifiers (ODE-Net, RK-Net, ResNet, MLP) trained on MNIST.

``train(TrainConfig(...))`` trains one model into a run folder (:mod:`neuralode.training.rundir`):
``metrics.jsonl`` gets a training line every ``log_every`` steps (``iteration``, ``epochs``
completed as a fraction, ``train_loss``, ``train_error``, NFE, ``lr``, ``seconds``) and one line per
finished epoch (``epoch``, ``test_error``, ``test_loss``, ...); the figure is ``learning_curves.png``.

**Optimisation** follows the paper's reference code (torchdiffeq ``examples/odenet_mnist.py``):
SGD with momentum 0.9, no weight decay, learning rate ``lr * batch_size / 128`` (``lr`` is the rate
for a batch of 128), multiplied by 0.1 at epochs 60, 100 and 140, cross-entropy loss, random-crop
augmentation, and incomplete last batches dropped.

**Reproducibility.** Epoch ``e``'s data order is a permutation drawn from a generator seeded with
``seed + e`` (PyTorch's ``DistributedSampler``), and each sample's crop from
:func:`neuralode.datasets.mnist.epoch_generator` ``(seed, e)``: functions of the seed and the epoch,
not of state carried between epochs. A checkpoint therefore needs no data-loader state, and a run
stopped at any batch boundary and resumed ends with bitwise the same weights as one that never
stopped. Checkpoints are written every ``checkpoint_every`` steps, at each epoch's end, and on
SIGINT/SIGTERM (:mod:`neuralode.training.signals`).

**Data parallel** (:mod:`neuralode.training.distributed`): ``batch_size`` is the global batch;
rank ``r`` takes ``batch_size / W`` samples of step ``k`` (the union of the shards is batch ``k`` of
a single-process run) and evaluates every ``W``-th test sample.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.mnist import MNISTDataset, mnist_dataset
from ..models import MODEL_NAMES, build_classifier, count_parameters
from ..progress import progress_bar
from .checkpoints import CheckpointError, checkpoint_format, load_checkpoint, save_checkpoint
from .config import DEVICES, ConfigError, RunConfig, setting
from .distributed import Dist, Sums, pick_device, resume_hint
from .rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    RunDir,
    load_run_checkpoint,
    read_jsonl,
    read_run_config,
    run_task,
)
from .seeding import rng_state, seed_everything, set_rng_state
from .signals import StopFlag

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "CURVES_NAME",
    "DEVICES",
    "LR_REFERENCE_BATCH",
    "METRICS_NAME",
    "CheckpointError",
    "ConfigError",
    "TrainConfig",
    "epoch_batches",
    "epoch_records",
    "evaluate",
    "evaluate_model",
    "load_checkpoint",
    "read_config",
    "read_metrics",
    "save_checkpoint",
    "train",
]

CURVES_NAME = "learning_curves.png"
CHECKPOINT_FORMAT = checkpoint_format("mnist")

#: The batch size the learning rate refers to (the reference code's ``batch_denom``).
LR_REFERENCE_BATCH = 128

# What a step adds to the running sums of a logging interval and of an epoch.
_FIGURES = ("loss", "wrong", "samples", "nfe_forward", "nfe_backward", "batches")


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """An MNIST run; defaults are the paper's setting. The shared fields are :class:`RunConfig`'s.

    Attributes:
        model: one of ``"odenet"``, ``"rknet"``, ``"resnet"``, ``"mlp"``.
        epochs: total epochs (a resumed run may raise it to train longer).
        batch_size: samples per optimisation step, over all processes together.
        lr: learning rate for a batch of 128; the optimiser uses ``lr * batch_size / 128``.
        momentum, weight_decay: SGD's (the paper: 0.9 and none).
        lr_milestones: epochs after which the rate is multiplied by ``lr_decay``; fractions are
            allowed (``(0.75,)`` decays three quarters into the first epoch). The rate is set per
            step: it drops at step ``int(m * steps_per_epoch)``, as in the reference code's
            ``learning_rate_with_decay``; for whole epochs that is the start of epoch ``m + 1``.
        lr_decay: that factor.
        tol: rtol = atol of the ODE-Net's dopri5 (ignored by the other models).
        adjoint: ODE-Net gradients by the adjoint method, else backpropagation through the solver.
        train_subset, test_subset: use only the first N training / test samples (``None``: all).
        data_dir: folder with the MNIST IDX files; ``None`` downloads into the cache.
        download: allow that download.
        augment: random crops of the training images (pad 4, crop 28x28).
        num_workers: data-loading worker processes (0: in the main process, which for in-memory
            MNIST is usually fastest).
        test_batch_size: batch size of evaluation.
    """

    KIND = "mnist"
    RESUME_KEEP = (
        "model",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "lr_milestones",
        "lr_decay",
        "tol",
        "adjoint",
        "seed",
        "train_subset",
        "augment",
    )

    out: Path = setting(Path("runs/mnist"), "the run folder", metavar="RUN_DIR")
    log_every: int = setting(20, "optimisation steps between training lines in metrics.jsonl", metavar="STEPS")
    checkpoint_every: int = setting(
        200,
        "optimisation steps between checkpoints, besides each epoch's end and --checkpoint-seconds (0: none by step count)",
        metavar="STEPS",
    )
    model: str = setting("odenet", "the classifier", choices=MODEL_NAMES)
    epochs: int = setting(160, "total epochs (raise it on --resume to train longer)", metavar="N")
    batch_size: int = setting(128, "global batch size, over all processes", metavar="N")
    lr: float = setting(0.1, "learning rate for a batch of 128, scaled linearly with --batch-size")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.0, "SGD weight decay")
    lr_milestones: tuple[float, ...] = setting(
        (60, 100, 140),
        "epochs after which the rate is multiplied by --lr-decay; fractions allowed (0.75: three quarters into epoch 1)",
        metavar="EPOCH",
    )
    lr_decay: float = setting(0.1, "the factor at each milestone")
    tol: float = setting(1e-3, "ODE-Net's dopri5 rtol = atol")
    adjoint: bool = setting(True, "ODE-Net gradients by the adjoint method (else backprop through the solver)")
    train_subset: int | None = setting(None, "train on the first N training samples (default: all 60,000)", metavar="N")
    test_subset: int | None = setting(None, "evaluate on the first N test samples (default: all 10,000)", metavar="N")
    data_dir: Path | None = setting(
        None,
        "folder with the MNIST IDX files (.gz or raw); without it they are downloaded into "
        "$NEURALODE_DATA/mnist or ~/.cache/neuralode/mnist and checksummed",
        metavar="DIR",
    )
    download: bool = setting(True, "download MNIST when --data-dir is not given and the cache is empty")
    augment: bool = setting(True, "random-crop augmentation of the training images")
    num_workers: int = setting(0, "data-loading worker processes", metavar="N")
    test_batch_size: int = setting(1000, "evaluation batch size", metavar="N")

    def __post_init__(self) -> None:
        super().__post_init__()
        milestones = self.lr_milestones
        if (
            not isinstance(milestones, tuple)
            or not all(
                isinstance(m, (int, float)) and not isinstance(m, bool) and m == m and 0 < m < float("inf")
                for m in milestones
            )
            or any(b <= a for a, b in zip(milestones, milestones[1:]))
        ):
            self.fail("lr_milestones", "increasing positive epoch counts (fractions allowed)")
        object.__setattr__(
            self, "lr_milestones", tuple(int(m) if float(m).is_integer() else float(m) for m in milestones)
        )
        self.check_choice("model", MODEL_NAMES)
        self.check_ints("epochs", "batch_size", "test_batch_size")
        self.check_ints("train_subset", "test_subset", optional=True)
        self.check_ints("num_workers", minimum=0)
        self.check_numbers("lr", "tol", "lr_decay")
        self.check_numbers("momentum", "weight_decay", positive=False)
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ConfigError(
                "train_subset",
                f"TrainConfig.train_subset={self.train_subset} is smaller than batch_size={self.batch_size}: "
                f"no full batch to train on (incomplete batches are dropped). Lower the batch size or raise the subset.",
            )

    @property
    def effective_lr(self) -> float:
        """The optimiser's initial learning rate, ``lr * batch_size / 128``."""
        return self.lr * self.batch_size / LR_REFERENCE_BATCH

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimisation step ``step`` (counted from 0 over the whole run)."""
        drops = sum(step >= int(m * steps_per_epoch) for m in self.lr_milestones)
        return self.effective_lr * self.lr_decay**drops


def epoch_batches(
    n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's index batches for ``epoch``: a seeded permutation, sharded, incomplete batches dropped.

    ``DistributedSampler`` draws ``randperm(n)`` from a generator seeded with ``seed + epoch`` and gives
    rank ``r`` positions ``r, r + W, r + 2W, ...``; cutting that into pieces of ``batch_size / W``
    makes step ``k``'s shards together exactly positions ``[k B, (k+1) B)`` of the permutation.
    With ``world_size = 1`` these are the single-process batches.

    Returns:
        A list of ``int64`` tensors of ``batch_size // world_size`` indices each.
    """
    from torch.utils.data.distributed import DistributedSampler

    if batch_size % world_size:
        raise ConfigError(
            "batch_size",
            f"TrainConfig.batch_size={batch_size} is the global batch and must be divisible by the "
            f"number of processes ({world_size}).",
        )
    # torch's stub asks for a Dataset; the sampler only takes len() of it, and draws indices.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(n),  # type: ignore[arg-type]  # torch stub gap: any Sized will do
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler), dtype=torch.long)
    local = batch_size // world_size
    steps = indices.numel() // local
    return list(indices[: steps * local].view(steps, local))


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: MNISTDataset,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    _ctx: Dist | None = None,
) -> dict[str, float]:
    """Test loss, error (a fraction) and mean forward NFE per batch of ``model`` on ``dataset``.

    Under data parallel each rank evaluates every ``W``-th sample and the sums are all-reduced,
    so every sample counts exactly once.
    """
    ctx = _ctx or Dist(device=torch.device(device))
    was_training = model.training
    model.eval()
    block = getattr(model, "ode_block", None)
    indices = torch.arange(ctx.rank, len(dataset), ctx.world_size)
    sums = Sums("loss", "wrong", "samples", "nfe", "batches")
    for start in range(0, indices.numel(), batch_size):
        x, y = dataset.batch(indices[start : start + batch_size])
        x, y = x.to(ctx.device), y.to(ctx.device)
        if block is not None:
            block.func.reset_nfe()
        logits = model(x)  # (b, 10)
        sums.add(
            loss=F.cross_entropy(logits, y, reduction="sum").item(),
            wrong=(logits.argmax(1) != y).sum().item(),
            samples=y.numel(),
            nfe=block.nfe_forward if block is not None else 0,
            batches=1,
        )
    model.train(was_training)
    t = sums.totals(ctx)
    return {
        "test_loss": t["loss"] / max(t["samples"], 1),
        "test_error": t["wrong"] / max(t["samples"], 1),
        "test_samples": int(t["samples"]),
        "test_nfe_forward": t["nfe"] / max(t["batches"], 1),
    }


class _BatchList(torch.utils.data.Dataset):
    """Batches as dataset items, so a DataLoader's workers can assemble whole batches."""

    def __init__(self, dataset: MNISTDataset, batches: list[torch.Tensor]) -> None:
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.batch(self.batches[i])


def _load_data(config: TrainConfig, ctx: Dist) -> tuple[MNISTDataset, MNISTDataset]:
    def load() -> tuple[MNISTDataset, MNISTDataset]:
        try:
            train_set = mnist_dataset(
                config.data_dir,
                train=True,
                augment=config.augment,
                subset=config.train_subset,
                seed=config.seed,
                download=config.download,
            )
        except ValueError as exc:
            if "subset must be" in str(exc):
                raise ConfigError("train_subset", f"TrainConfig.train_subset: {exc}") from None
            raise
        try:
            test_set = mnist_dataset(config.data_dir, train=False, subset=config.test_subset, download=config.download)
        except ValueError as exc:
            if "subset must be" in str(exc):
                raise ConfigError("test_subset", f"TrainConfig.test_subset: {exc}") from None
            raise
        return train_set, test_set

    if not (ctx.enabled and config.data_dir is None):
        return load()
    # Downloading: rank 0 fills the cache first, the others then read it.
    sets = load() if ctx.is_main else None
    ctx.barrier()
    return sets if sets is not None else load()


def _rates(t: dict[str, float]) -> dict[str, float]:
    """Mean loss, error and NFE per batch from a step-sum total."""
    return {
        "train_loss": t["loss"] / t["samples"],
        "train_error": t["wrong"] / t["samples"],
        "nfe_forward": t["nfe_forward"] / t["batches"],
        "nfe_backward": t["nfe_backward"] / t["batches"],
    }


def train(config: TrainConfig, *, on_batch_end: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train ``config.model`` on MNIST; see the module docstring for the files, resuming and DDP.

    Args:
        config: the run.
        on_batch_end: called as ``on_batch_end(epoch, batch)`` (both 0-based) after each optimiser
            step, before the stop flag is checked; for monitoring and tests.

    Returns:
        A summary: ``run_dir``, ``model``, ``params``, ``world_size``, ``rank``, ``epochs_completed``,
        ``interrupted`` (``None`` or the signal's name), ``final`` (the last epoch's record, or
        ``None``), ``history`` (all epoch records), ``checkpoint`` (its path).

    Raises:
        ConfigError: a setting is invalid here (no CUDA, batch not divisible by the processes,
            a subset larger than the split, an unusable ``out``).
        FileExistsError: ``out`` holds a run and ``resume`` is off.
        FileNotFoundError: ``resume`` is on and ``out`` holds no checkpoint; or MNIST files missing.
        CheckpointError: the checkpoint is damaged or from a run with different settings.
        RunLockedError: another process is training into ``out``.
        ValueError: the MNIST files are corrupt.
    """
    return run_task(config, "mnist", _train, on_batch_end)


def _train(
    config: TrainConfig, ctx: Dist, run: RunDir, stop: StopFlag, on_batch_end: Callable[[int, int], None] | None
) -> dict[str, Any]:
    checkpoint = run.open(config)
    ctx.shard(config.batch_size)  # the global batch must split evenly over the processes
    train_set, test_set = _load_data(config, ctx)
    steps_per_epoch = len(train_set) // config.batch_size

    seed_everything(config.seed)  # the same initial weights on every rank
    model = build_classifier(config.model, tol=config.tol, adjoint=config.adjoint).to(ctx.device)
    block = getattr(model, "ode_block", None)
    params = count_parameters(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.effective_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    epoch_sums, window = Sums(*_FIGURES), Sums(*_FIGURES)
    start_epoch, first, seconds = 0, 0, {"run": 0.0, "epoch": 0.0}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"], ctx.device)
        start_epoch, first, seconds = (
            checkpoint["position"]["epoch"],
            checkpoint["position"]["batch"],
            dict(checkpoint["seconds"]),
        )
        epoch_sums.load(checkpoint["epoch_sums"], ctx)
        window.load(checkpoint["window_sums"], ctx)
    history = [r for r in run.restart_metrics(start_epoch * steps_per_epoch + first) if "epoch" in r]
    run.write_config(
        config,
        task="mnist",
        effective_lr=config.effective_lr,
        params=params,
        world_size=ctx.world_size,
        device=str(ctx.device),
        torch=torch.__version__,
    )
    if checkpoint is not None:
        run.note(
            f"Resuming {run.path} from its checkpoint at epoch {start_epoch + 1}, batch {first}/{steps_per_epoch} "
            f"(step {start_epoch * steps_per_epoch + first})."
        )
    run.plan(
        config.epochs * steps_per_epoch,
        start_epoch * steps_per_epoch + first,
        f"{config.model} on MNIST, {config.epochs} epochs of {steps_per_epoch:,} steps (batch {config.batch_size})",
    )

    def save(epoch: int, batch: int) -> None:
        # Every rank computes the state (the sums are all-reduced); rank 0 writes it.
        run.save(
            config,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(ctx.device),
                "position": {"epoch": epoch, "batch": batch},
                "seconds": seconds,
                "params": params,
                "epoch_sums": epoch_sums.state(ctx),
                "window_sums": window.state(ctx),
            },
        )

    for epoch in range(start_epoch, config.epochs):
        batches = epoch_batches(
            len(train_set), config.batch_size, seed=config.seed, epoch=epoch, rank=ctx.rank, world_size=ctx.world_size
        )
        train_set.set_epoch(epoch)
        source = _BatchList(train_set, batches[first:])
        loader = (
            torch.utils.data.DataLoader(source, batch_size=None, num_workers=config.num_workers)
            if config.num_workers
            else iter(source)  # batches by index, as enumerate would take them
        )
        model.train()
        tick = time.perf_counter()
        bar = progress_bar(
            steps_per_epoch,
            f"epoch {epoch + 1}/{config.epochs}",
            enabled=config.progress and ctx.is_main,
            unit="batch",
            initial=first,
        )
        with bar:
            for b, (x, y) in enumerate(loader, start=first):
                step = epoch * steps_per_epoch + b  # 0-based over the whole run
                for group in optimizer.param_groups:  # a pure function of the step: nothing to checkpoint
                    group["lr"] = config.lr_at(step, steps_per_epoch)
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                if block is not None:
                    block.func.reset_nfe()
                logits = model(x)  # (B/W, 10)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ctx.average_gradients(model.parameters())
                optimizer.step()
                figures = {
                    "loss": loss.item() * y.numel(),
                    "wrong": (logits.detach().argmax(1) != y).sum().item(),
                    "samples": y.numel(),
                    "nfe_forward": block.nfe_forward if block is not None else 0,
                    "nfe_backward": block.nfe_backward if block is not None else 0,
                    "batches": 1,
                }
                epoch_sums.add(**figures)
                window.add(**figures)
                now = time.perf_counter()
                seconds["run"] += now - tick
                seconds["epoch"] += now - tick
                tick = now
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    nfe_f=figures["nfe_forward"],
                    nfe_b=figures["nfe_backward"],
                    refresh=False,
                )
                bar.update()
                if on_batch_end is not None:
                    on_batch_end(epoch, b)
                if (step + 1) % config.log_every == 0:
                    run.append(
                        {
                            "iteration": step + 1,
                            "epochs": (step + 1) / steps_per_epoch,
                            **_rates(window.totals(ctx)),
                            "lr": optimizer.param_groups[0]["lr"],
                            "seconds": seconds["run"],
                        }
                    )
                    window.reset()
                signum, due = ctx.any_signal(stop.signum), run.after_step(step + 1)
                if signum or (due and b + 1 < steps_per_epoch):  # the epoch's end saves anyway
                    save(epoch, b + 1)
                if signum:
                    run.note_stopped(
                        stop.name,
                        f"epoch {epoch + 1}, batch {b + 1}/{steps_per_epoch}",
                        resume_hint("mnist", config.out, ctx),
                    )
                    return _summary(config, ctx, run, params, history, stop.name or "SIGTERM")
        # The epoch's end: test, one epoch line, a checkpoint at (epoch + 1, 0).
        record = _epoch_record(
            config, ctx, model, test_set, epoch, steps_per_epoch, epoch_sums.totals(ctx), seconds["epoch"]
        )
        record.update(params=params, lr=optimizer.param_groups[0]["lr"])
        history.append(record)
        run.append(record)
        first, seconds["epoch"] = 0, 0.0
        epoch_sums.reset()
        save(epoch + 1, 0)
        if config.progress and ctx.is_main:
            print(
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, test error "
                f"{100 * record['test_error']:.2f}%, {nfe_text(record)}, {record['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    if ctx.is_main and config.plot and history:
        from .figures import plot_run

        plot_run(run.path)
    return _summary(config, ctx, run, params, history, None)


def _epoch_record(
    config: TrainConfig,
    ctx: Dist,
    model: nn.Module,
    test_set: MNISTDataset,
    epoch: int,
    steps_per_epoch: int,
    totals: dict[str, float],
    seconds: float,
) -> dict[str, Any]:
    """The metrics line of a finished epoch: its training sums, and the test set evaluated now."""
    t1 = time.perf_counter()
    test = evaluate_model(model, test_set, batch_size=config.test_batch_size, _ctx=ctx)
    return {
        "epoch": epoch + 1,
        "iteration": (epoch + 1) * steps_per_epoch,
        "model": config.model,
        **_rates(totals),
        "test_loss": test["test_loss"],
        "test_error": test["test_error"],
        "test_nfe_forward": test["test_nfe_forward"],
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
        "samples_per_second": totals["samples"] / seconds if seconds > 0 else None,
        "train_samples": int(totals["samples"]),
        "test_samples": test["test_samples"],
        "world_size": ctx.world_size,
    }


def nfe_text(record: dict[str, Any]) -> str:
    """``"NFE-F 26.0, NFE-B 32.0 per batch"`` for an ODE-Net; the other models solve no ODE."""
    if not record["nfe_forward"]:
        return "no ODE solver (NFE 0)"
    return f"NFE-F {record['nfe_forward']:.1f}, NFE-B {record['nfe_backward']:.1f} per batch"


def _summary(
    config: TrainConfig, ctx: Dist, run: RunDir, params: int, history: list, interrupted: str | None
) -> dict[str, Any]:
    return {
        "run_dir": str(run.path),
        "model": config.model,
        "params": params,
        "world_size": ctx.world_size,
        "rank": ctx.rank,
        "epochs_completed": len(history),
        "interrupted": interrupted,
        "final": history[-1] if history else None,
        "history": history,
        "checkpoint": str(run.checkpoint_path),
    }


# --------------------------------------------------------------------------------------------
# A saved run.


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (training lines and epoch lines; a torn last line is skipped).

    Raises:
        FileNotFoundError: if there is no metrics file.
        ValueError: if a line other than the last is not JSON.
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No {METRICS_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?"
        )
    return read_jsonl(path)


def epoch_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The end-of-epoch lines among an MNIST run's metrics records."""
    return [r for r in records if "epoch" in r]


def read_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The :class:`TrainConfig` saved in ``RUN_DIR/config.json``."""
    return TrainConfig.from_saved(read_run_config(run_dir))


def evaluate(
    run_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    test_subset: int | None = None,
    batch_size: int = 1000,
    full_test_set: bool = False,
) -> dict[str, Any]:
    """Load ``RUN_DIR``'s checkpoint and measure its test error.

    Args:
        run_dir: a folder written by :func:`train`.
        data_dir: MNIST folder; the run's own by default (``None`` there too: the download cache).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        test_subset: the first N test samples; the run's own setting by default.
        batch_size: evaluation batch size.
        full_test_set: evaluate on all 10,000 test samples whatever the run used.

    Returns:
        ``test_error`` (fraction), ``test_loss``, ``test_samples``, ``test_nfe_forward``, ``model``,
        ``epoch`` (epochs completed by the checkpoint), ``mid_epoch_batch``, ``params`` and ``checkpoint``.

    The settings come from the checkpoint, so ``config.json`` is not needed; a damaged latest
    checkpoint gives way to the previous one, with a line on stderr saying so.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        CheckpointError: the checkpoint (and the previous one) is damaged, or not an MNIST run's.
    """
    run_dir = Path(run_dir)
    checkpoint, path, note = load_run_checkpoint(run_dir, "mnist")
    if note:
        print(note, file=sys.stderr)
    config = saved = TrainConfig.from_saved(checkpoint["config"])
    dev = pick_device(device)
    subset = None if full_test_set else (test_subset if test_subset is not None else config.test_subset)
    test_set = mnist_dataset(data_dir if data_dir is not None else config.data_dir, train=False, subset=subset)
    model = build_classifier(saved.model, tol=saved.tol, adjoint=saved.adjoint)
    model.load_state_dict(checkpoint["model"])
    model.to(dev)
    result = evaluate_model(model, test_set, batch_size=batch_size, device=dev)
    position = checkpoint["position"]
    return {
        **result,
        "model": saved.model,
        "epoch": position["epoch"],
        "mid_epoch_batch": position["batch"],
        "params": count_parameters(model),
        "checkpoint": str(path),
    }
