"""Training the Table 1 classifiers on MNIST: a typed config, the loop, checkpoints, metrics.

``train(TrainConfig(...))`` trains one model and keeps everything in one run folder::

    RUN_DIR/config.json           the configuration (written at the start)
    RUN_DIR/metrics.jsonl         one JSON object per finished epoch
    RUN_DIR/checkpoint.pt         the latest checkpoint (atomic: temporary file, then os.replace)
    RUN_DIR/learning_curves.png   loss, test error and NFE per epoch (at the end, or `plot_run`)

**Optimisation** follows the paper's reference code (torchdiffeq ``examples/odenet_mnist.py``):
SGD with momentum 0.9, no weight decay, learning rate ``lr * batch_size / 128`` (``lr`` is the rate
for a batch of 128), multiplied by 0.1 at epochs 60, 100 and 140, cross-entropy loss, random-crop
augmentation, and incomplete last batches dropped.

**Reproducibility.** The data order of epoch ``e`` is a permutation drawn from a generator seeded
with ``seed + e`` (PyTorch's ``DistributedSampler``), and each sample's crop from
:func:`neuralode.mnist.epoch_generator` ``(seed, e)``: both are functions of the seed and the epoch,
not of state carried from one epoch to the next. A checkpoint therefore needs no data-loader
state, and a run interrupted (at an epoch end or mid-epoch, at a batch boundary) and resumed ends
with bitwise the same weights as one that never stopped.

**Interruption.** SIGINT (Ctrl-C) and SIGTERM set a flag; the loop finishes the batch in hand,
saves a checkpoint with its position in the epoch, prints how to resume and returns. A second
signal more than a second later aborts at once (the last complete checkpoint stays valid: every
write is atomic). Without any signal a checkpoint is written after every epoch, so a killed run
loses at most the epoch in progress.

**Data parallel.** Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) each process
joins a process group (gloo on CPU, NCCL on CUDA), the model is wrapped in
``DistributedDataParallel`` and the epoch's permutation is split by ``DistributedSampler``.
``batch_size`` is the *global* batch: each of the ``W`` processes takes ``batch_size / W`` samples
per step (it must divide), and the union of the shards of step ``k`` is exactly batch ``k`` of a
single-process run, so with the same learning rate a fixed-step model (MLP, ResNet, RK-Net) follows
the single-process trajectory up to floating-point summation order. An adaptive solver
(ODE-Net) picks its steps from the error on its own shard, so its NFE, and hence its numbers,
differ slightly between 1 and ``W`` processes. Only rank 0 writes files and shows the progress bar;
losses, errors and NFE are all-reduced over the ranks first.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, atomic_write_text, checkpoint_format, load_checkpoint, save_checkpoint
from .mnist import MNISTDataset, mnist_dataset
from .models import MODEL_NAMES, build_classifier, count_parameters
from .progress import progress_bar

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
CURVES_NAME = "learning_curves.png"

CHECKPOINT_FORMAT = checkpoint_format("mnist")

#: The batch size the learning rate refers to (the reference code's ``batch_denom``).
LR_REFERENCE_BATCH = 128

DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A :class:`TrainConfig` field has a bad value; ``field`` names it (the CLI maps it to its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------
# The configuration.


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run can be told; defaults are the paper's MNIST setting.

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
        seed: seeds the initialisation, the data order and the augmentation.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        train_subset, test_subset: use only the first N training / test samples (``None``: all).
        data_dir: folder with the MNIST IDX files; ``None`` downloads into the cache.
        download: allow that download.
        out: the run folder.
        augment: random crops of the training images (pad 4, crop 28x28).
        num_workers: data-loading worker processes (0: in the main process, which for in-memory
            MNIST is usually fastest).
        resume: continue the run saved in ``out`` instead of starting a new one.
        test_batch_size: batch size of evaluation.
        progress: show a progress bar on stderr.
        plot: write ``learning_curves.png`` when training finishes.
    """

    model: str = "odenet"
    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_milestones: tuple[float, ...] = (60, 100, 140)
    lr_decay: float = 0.1
    tol: float = 1e-3
    adjoint: bool = True
    seed: int = 0
    device: str = "auto"
    train_subset: int | None = None
    test_subset: int | None = None
    data_dir: Path | None = None
    download: bool = True
    out: Path = Path("runs/mnist")
    augment: bool = True
    num_workers: int = 0
    resume: bool = False
    test_batch_size: int = 1000
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out).expanduser())
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        milestones = self.lr_milestones
        if not isinstance(milestones, (tuple, list)) or not all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0 for m in milestones
        ) or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ConfigError(
                "lr_milestones",
                f"TrainConfig.lr_milestones must be increasing positive epoch counts (fractions allowed); got {milestones!r}.",
            )
        object.__setattr__(self, "lr_milestones", tuple(int(m) if float(m).is_integer() else float(m) for m in milestones))
        if self.model not in MODEL_NAMES:
            raise ConfigError("model", f"TrainConfig.model must be one of {', '.join(MODEL_NAMES)}; got {self.model!r}.")
        if self.device not in DEVICES:
            raise ConfigError("device", f"TrainConfig.device must be one of {', '.join(DEVICES)}; got {self.device!r}.")
        for name in ("epochs", "batch_size", "test_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"TrainConfig.{name} must be a positive integer; got {value!r}.")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(name, f"TrainConfig.{name} must be a positive integer or None; got {value!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"TrainConfig.seed must be a non-negative integer; got {self.seed!r}.")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError("num_workers", f"TrainConfig.num_workers must be a non-negative integer; got {self.num_workers!r}.")
        for name, low_open in (("lr", True), ("tol", True), ("lr_decay", True), ("momentum", False), ("weight_decay", False)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if low_open else value >= 0)
            if not ok:
                kind = "a positive" if low_open else "a non-negative"
                raise ConfigError(name, f"TrainConfig.{name} must be {kind} finite number; got {value!r}.")
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, tuples as lists."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; unknown keys are ignored, ``overrides`` win."""
        names = {f.name for f in fields(cls)}
        settings = {k: v for k, v in d.items() if k in names}
        settings.update(overrides)
        return cls(**settings)


# Settings that shape the weights: a resumed run must keep them (epochs, device, data location,
# workers and the test subset may change).
_RESUME_MUST_MATCH = (
    "model", "batch_size", "lr", "momentum", "weight_decay", "lr_milestones", "lr_decay",
    "tol", "adjoint", "seed", "train_subset", "augment",
)


# --------------------------------------------------------------------------------------------
# RNG state, devices, processes.


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class _Dist:
    """This process's place in a (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    owns_group: bool = False  # we initialised it, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    """Join the torchrun process group if launched by torchrun; pick the device."""
    import torch.distributed as dist

    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    want_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "TrainConfig.device is 'cuda' but CUDA is not available here; use 'cpu' or 'auto'.")
    if not under_torchrun and not (dist.is_available() and dist.is_initialized()):
        return _Dist(), torch.device("cuda" if want_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owns = True
    ctx = _Dist(dist.get_rank(), dist.get_world_size(), local_rank, True, owns)
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    return ctx, device


def _all_reduce(values: torch.Tensor, ctx: _Dist, device: torch.device, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a float64 vector over the ranks; identity in a single process."""
    if not ctx.enabled:
        return values
    import torch.distributed as dist

    t = values.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu()


class _StopFlag:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop at the next batch boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._when = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._when = signum, time.monotonic()
            print(
                f"\n{signal.Signals(signum).name} received: saving a checkpoint after this batch "
                f"(signal again to abort without saving).",
                file=sys.stderr,
                flush=True,
            )
        elif time.monotonic() - self._when > 1.0:
            # A repeat within a second is the same Ctrl-C reaching us twice (torchrun forwards it).
            raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# Data order, evaluation.


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
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
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler), dtype=torch.long)
    local = batch_size // world_size
    steps = indices.numel() // local
    return list(indices[: steps * local].view(steps, local))


def _ode_block(model: nn.Module) -> Any:
    return getattr(model, "ode_block", None)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: MNISTDataset,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    _ctx: _Dist | None = None,
) -> dict[str, float]:
    """Test loss, error (a fraction) and mean forward NFE per batch of ``model`` on ``dataset``.

    Under data parallel each rank evaluates every ``W``-th sample and the sums are all-reduced,
    so every sample counts exactly once.
    """
    ctx = _ctx or _Dist()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    block = _ode_block(model)
    indices = torch.arange(ctx.rank, len(dataset), ctx.world_size)
    sums = torch.zeros(5, dtype=torch.float64)  # loss, wrong, samples, nfe, batches
    for start in range(0, indices.numel(), batch_size):
        x, y = dataset.batch(indices[start : start + batch_size])
        x, y = x.to(device), y.to(device)
        if block is not None:
            block.func.reset_nfe()
        logits = model(x)
        sums += torch.tensor(
            [
                F.cross_entropy(logits, y, reduction="sum").item(),
                (logits.argmax(1) != y).sum().item(),
                y.numel(),
                block.nfe_forward if block is not None else 0,
                1,
            ],
            dtype=torch.float64,
        )
    model.train(was_training)
    sums = _all_reduce(sums, ctx, device)
    loss, wrong, samples, nfe, batches = sums.tolist()
    return {
        "test_loss": loss / max(samples, 1),
        "test_error": wrong / max(samples, 1),
        "test_samples": int(samples),
        "test_nfe_forward": nfe / max(batches, 1),
    }


# --------------------------------------------------------------------------------------------
# Run-folder helpers.


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def _append_metrics(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl``, one per finished epoch.

    A last line cut short (the process was killed while appending) is skipped.

    Raises:
        FileNotFoundError: if there is no metrics file.
        ValueError: if a line other than the last is not JSON.
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {METRICS_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}, line {i + 1}: not valid JSON; the file is damaged.") from None
    return records


def read_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The :class:`TrainConfig` saved in ``RUN_DIR/config.json``."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}).") from None
    return TrainConfig.from_dict(saved.get("config", saved))


def plot_run(run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, *, dpi: float = 100) -> Path:
    """Draw the run's learning curves (loss, test error, NFE per epoch) into ``RUN_DIR/learning_curves.png``.

    Raises:
        FileNotFoundError / ValueError: if the run has no metrics yet.
    """
    from .plotting import plot_learning_curves, save_figure

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{Path(run_dir) / METRICS_NAME} has no finished epoch to plot yet.")
    model = records[-1].get("model", "")
    fig = plot_learning_curves(
        [r["epoch"] for r in records],
        [r["train_loss"] for r in records],
        [r["test_error"] for r in records],
        [r.get("nfe_forward", 0.0) for r in records],
        [r.get("nfe_backward", 0.0) for r in records],
        title=f"MNIST {model}: learning curves" if model else "MNIST: learning curves",
        dpi=dpi,
    )
    return save_figure(fig, Path(path) if path is not None else Path(run_dir) / CURVES_NAME)


# --------------------------------------------------------------------------------------------
# The training loop.


class _BatchList(torch.utils.data.Dataset):
    """Batches as dataset items, so a DataLoader's workers can assemble whole batches."""

    def __init__(self, dataset: MNISTDataset, batches: list[torch.Tensor]) -> None:
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.batch(self.batches[i])


def _resume_hint(config: TrainConfig, ctx: _Dist) -> str:
    if ctx.enabled:
        return f"relaunch the same torchrun command with --resume (run folder {config.out})"
    return f"neuralode train mnist --out {config.out} --resume"


def _check_resumable(saved: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    diffs = [f"{k}: saved {saved.get(k)!r}, now {current[k]!r}" for k in _RESUME_MUST_MATCH if saved.get(k) != current[k]]
    if diffs:
        raise CheckpointError(
            f"Cannot resume {path}: these settings differ from the saved run's ({'; '.join(diffs)}). "
            f"Resume with the saved settings, or start a new run in another folder."
        )


def train(config: TrainConfig, *, on_batch_end: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train ``config.model`` on MNIST; see the module docstring for files, resumption and DDP.

    Args:
        config: the run.
        on_batch_end: called as ``on_batch_end(epoch, batch)`` (both 0-based) after each optimiser
            step, before the stop flag is checked; for monitoring and tests.

    Returns:
        A summary: ``run_dir``, ``model``, ``params``, ``world_size``, ``rank``, ``epochs_completed``,
        ``interrupted`` (``None`` or the signal's name), ``final`` (the last epoch's metrics, or
        ``None``), ``history`` (all epochs' metrics), ``checkpoint`` (its path).

    Raises:
        ConfigError: a setting is invalid here (no CUDA, batch not divisible by the processes).
        FileExistsError: ``out`` holds a run and ``resume`` is off.
        FileNotFoundError: ``resume`` is on and ``out`` holds no checkpoint; or MNIST files missing.
        CheckpointError: the checkpoint is damaged or from a run with different settings.
        ValueError: the MNIST files are corrupt.
    """
    ctx, device = _init_distributed(config.device)
    try:
        return _train(config, ctx, device, on_batch_end)
    finally:
        if ctx.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: _Dist, device: torch.device, on_batch_end: Callable[[int, int], None] | None) -> dict[str, Any]:
    out = config.out
    ckpt_path = out / CHECKPOINT_NAME
    metrics_path = out / METRICS_NAME
    if config.batch_size % ctx.world_size:
        raise ConfigError(
            "batch_size",
            f"TrainConfig.batch_size={config.batch_size} is the global batch and must be divisible by the "
            f"number of processes ({ctx.world_size}).",
        )
    checkpoint = None
    if config.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(
                f"Cannot resume: no {CHECKPOINT_NAME} in {out}. Start a new run without --resume "
                f"(a run stopped before its first checkpoint has nothing to resume)."
            )
        checkpoint = load_checkpoint(ckpt_path)
        _check_resumable(checkpoint["config"], config, ckpt_path)
    elif ckpt_path.exists():
        raise FileExistsError(
            f"{out} already holds a training run ({CHECKPOINT_NAME}). Pass --resume (resume=True) to continue it, "
            f"or choose another output folder."
        )

    # Data. Without data_dir, rank 0 downloads first so the others find a filled cache.
    load_kwargs: dict[str, Any] = {"download": config.download}

    def load() -> tuple[MNISTDataset, MNISTDataset]:
        train_set = mnist_dataset(config.data_dir, train=True, augment=config.augment, subset=config.train_subset, seed=config.seed, **load_kwargs)
        test_set = mnist_dataset(config.data_dir, train=False, subset=config.test_subset, **load_kwargs)
        return train_set, test_set

    if ctx.enabled and config.data_dir is None:
        import torch.distributed as dist

        if ctx.is_main:
            train_set, test_set = load()
        dist.barrier()
        if not ctx.is_main:
            train_set, test_set = load()
    else:
        train_set, test_set = load()

    # Model and optimiser, seeded identically on every rank.
    _seed_everything(config.seed)
    model = build_classifier(config.model, tol=config.tol, adjoint=config.adjoint).to(device)
    params = count_parameters(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.effective_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, start_batch = 0, 0
    partial = torch.zeros(7, dtype=torch.float64)  # loss, wrong, samples, nfe_f, nfe_b, batches, seconds
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _set_rng_state(checkpoint["rng"], device)
        history = list(checkpoint["history"])
        start_epoch, start_batch = checkpoint["position"]["epoch"], checkpoint["position"]["batch"]
        if ctx.is_main and checkpoint.get("partial") is not None:
            partial = checkpoint["partial"].clone()  # global sums; the other ranks start from zero
    net: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    block = _ode_block(model)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(
            out / CONFIG_NAME,
            {
                "config": config.to_dict(),
                "run": {
                    "effective_lr": config.effective_lr,
                    "params": params,
                    "world_size": ctx.world_size,
                    "device": str(device),
                    "torch": torch.__version__,
                },
            },
        )
        # The checkpoint's history is the truth: drop metrics lines of epochs it does not hold.
        _write_metrics(metrics_path, history)

    stop = _StopFlag()
    stop.install()
    interrupted: str | None = None

    def state(epoch: int, batch: int, partial_sums: torch.Tensor | None) -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(device),
            # The data order and crops of an epoch are functions of (seed, epoch): nothing to store.
            "data_order": {"seed": config.seed, "epoch": epoch},
            "position": {"epoch": epoch, "batch": batch},
            "partial": partial_sums,
            "history": history,
            "params": params,
        }

    try:
        for epoch in range(start_epoch, config.epochs):
            batches = epoch_batches(len(train_set), config.batch_size, seed=config.seed, epoch=epoch, rank=ctx.rank, world_size=ctx.world_size)
            train_set.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            sums = partial.clone() if epoch == start_epoch else torch.zeros(7, dtype=torch.float64)
            if not ctx.is_main:
                sums.zero_()
            source = _BatchList(train_set, batches[first:])
            loader = (
                torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=config.num_workers)
                if config.num_workers > 0
                else source
            )
            net.train()
            t0 = time.perf_counter()
            seen = 0
            bar = progress_bar(len(batches), f"epoch {epoch + 1}/{config.epochs}", enabled=config.progress and ctx.is_main, unit="batch", initial=first)
            with bar:
                for b, (x, y) in enumerate(loader, start=first):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if block is not None:
                        block.func.reset_nfe()
                    logits = net(x)  # (B/W, 10)
                    loss = F.cross_entropy(logits, y)
                    nfe_f = block.nfe_forward if block is not None else 0
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    for group in optimizer.param_groups:  # a pure function of the step: nothing to checkpoint
                        group["lr"] = config.lr_at(epoch * len(batches) + b, len(batches))
                    nfe_b = block.nfe_backward if block is not None else 0
                    optimizer.step()
                    wrong = (logits.detach().argmax(1) != y).sum().item()
                    sums[:6] += torch.tensor([loss.item() * y.numel(), wrong, y.numel(), nfe_f, nfe_b, 1], dtype=torch.float64)
                    seen += y.numel() * ctx.world_size
                    if bar.disable is False:
                        elapsed = time.perf_counter() - t0
                        bar.set_postfix(
                            loss=f"{sums[0] / max(sums[2], 1):.4f}",
                            acc=f"{1 - sums[1] / max(sums[2], 1):.3f}",
                            nfe_f=nfe_f,
                            nfe_b=nfe_b,
                            samples_s=f"{seen / max(elapsed, 1e-9):.0f}",
                            refresh=False,
                        )
                    bar.update()
                    if on_batch_end is not None:
                        on_batch_end(epoch, b)
                    flag = torch.tensor([0.0 if stop.signum is None else float(stop.signum)], dtype=torch.float64)
                    flag = _all_reduce(flag, ctx, device, op="max")
                    if flag.item() > 0:
                        interrupted = signal.Signals(int(flag.item())).name
                        sums[6] += time.perf_counter() - t0
                        global_sums = _all_reduce(sums.clone(), ctx, device)
                        global_sums[6] = sums[6]  # wall time is not additive over ranks
                        if ctx.is_main:
                            save_checkpoint(ckpt_path, state(epoch, b + 1, global_sums))
                            print(
                                f"Stopped by {interrupted} at epoch {epoch + 1}, batch {b + 1}/{len(batches)}; "
                                f"checkpoint saved to {ckpt_path}.\nResume with: {_resume_hint(config, ctx)}",
                                file=sys.stderr,
                                flush=True,
                            )
                        break
            if interrupted:
                break
            sums[6] += time.perf_counter() - t0
            seconds = float(sums[6])
            totals = _all_reduce(sums.clone(), ctx, device)
            t1 = time.perf_counter()
            test = evaluate_model(model, test_set, batch_size=config.test_batch_size, device=device, _ctx=ctx)
            eval_seconds = time.perf_counter() - t1
            loss_sum, wrong, samples, nfe_f_sum, nfe_b_sum, n_batches, _ = totals.tolist()
            record = {
                "epoch": epoch + 1,
                "model": config.model,
                "train_loss": loss_sum / samples,
                "train_error": wrong / samples,
                "test_loss": test["test_loss"],
                "test_error": test["test_error"],
                "nfe_forward": nfe_f_sum / n_batches,
                "nfe_backward": nfe_b_sum / n_batches,
                "test_nfe_forward": test["test_nfe_forward"],
                "params": params,
                "seconds": seconds,
                "eval_seconds": eval_seconds,
                "samples_per_second": samples / seconds if seconds > 0 else None,
                "lr": optimizer.param_groups[0]["lr"],
                "train_samples": int(samples),
                "test_samples": test["test_samples"],
                "world_size": ctx.world_size,
            }
            history.append(record)
            if ctx.is_main:
                _append_metrics(metrics_path, record)
                save_checkpoint(ckpt_path, state(epoch + 1, 0, None))
                if config.progress:
                    print(
                        f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                        f"test error {100 * record['test_error']:.2f}%, NFE-F {record['nfe_forward']:.1f}, "
                        f"NFE-B {record['nfe_backward']:.1f}, {seconds:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        stop.restore()

    if ctx.is_main and config.plot and not interrupted and history:
        plot_run(out)
    return {
        "run_dir": str(out),
        "model": config.model,
        "params": params,
        "world_size": ctx.world_size,
        "rank": ctx.rank,
        "epochs_completed": len(history),
        "interrupted": interrupted,
        "final": history[-1] if history else None,
        "history": history,
        "checkpoint": str(ckpt_path),
    }


# --------------------------------------------------------------------------------------------
# Evaluating a saved run.


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
        ``epoch`` (epochs completed by the checkpoint), ``params`` and ``checkpoint``.

    Raises:
        FileNotFoundError: no config or checkpoint in ``run_dir``.
        CheckpointError: the checkpoint is damaged.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    saved = TrainConfig.from_dict(checkpoint["config"])
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but CUDA is not available here; use 'cpu' or 'auto'.")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    subset = None if full_test_set else (test_subset if test_subset is not None else config.test_subset)
    folder = data_dir if data_dir is not None else config.data_dir
    test_set = mnist_dataset(folder, train=False, subset=subset)
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
        "checkpoint": str(run_dir / CHECKPOINT_NAME),
    }
