"""``neuralode train TASK``: one runner for every task, its flags derived from the task's config.

The resume rule is the same for every task: ``--resume`` starts from the settings the run saved
in ``config.json`` (or, when that file is missing or damaged, in the checkpoint, saying so), the
flags given on the command line override them (and what changed is printed), and the task refuses
changes to the settings that shape the weights, and folders holding another task's run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .flags import add_config_flags, flag_error, given_settings, runtime_error

if TYPE_CHECKING:  # the training package is imported only when a task runs
    from ..training.config import RunConfig


@dataclass(frozen=True)
class Task:
    """A trainable task: where its config and training function live, and how it is described."""

    name: str
    module: str
    config: str
    train: str
    help: str
    description: str
    example: str

    def load(self) -> tuple[type[RunConfig], Callable[..., dict[str, Any]]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.train)


_FILES = (
    "Writes config.json, metrics.jsonl (a line every --log-every steps), checkpoint.pt (every\n"
    "--checkpoint-every steps, every --checkpoint-seconds and on Ctrl-C/SIGTERM, exit status 130/143;\n"
    "the one before is kept as checkpoint.prev.pt) and the figures into --out. With --progress it states\n"
    "the plan first, then a time estimate. --resume continues from the checkpoint (the previous one if it\n"
    "is damaged) with the run's saved settings; flags given override them; a missing metrics.jsonl or\n"
    "config.json is rebuilt from the checkpoint.\n"
    "Under torchrun it trains data-parallel (gloo on CPU, NCCL on CUDA): --batch-size is the global batch."
)

TASKS = (
    Task(
        "mnist",
        "neuralode.training.mnist",
        "TrainConfig",
        "train",
        "MNIST classification: ODE-Net, RK-Net, ResNet or MLP (the paper's Table 1)",
        "Train a Table 1 classifier on MNIST with the paper's recipe: SGD, momentum 0.9, lr 0.1 per\n"
        "128 samples decayed x0.1 at epochs 60/100/140, random-crop augmentation. The adaptive ODE-Net\n"
        "chooses its steps from each process's shard, so under torchrun its NFE differs slightly.\n" + _FILES,
        "  neuralode train mnist --model odenet --epochs 1 --out runs/odenet            (downloads MNIST)\n"
        "  neuralode train mnist --model odenet --epochs 1 --data-dir PATH --out runs/odenet\n"
        "  neuralode train mnist --out runs/odenet --resume --epochs 2\n"
        "  torchrun --nproc_per_node=2 -m neuralode train mnist --model rknet --device cpu --out runs/ddp",
    ),
    Task(
        "cnf",
        "neuralode.training.cnf",
        "CNFTrainConfig",
        "train_cnf",
        "a continuous normalizing flow on a toy 2-D density (FFJORD-style)",
        "Train a CNF by maximum likelihood on samples drawn on the fly from a toy 2-D density; the\n"
        "final metrics line holds the test NLL in nats on fresh samples.\n" + _FILES,
        "  neuralode train cnf --dataset 8gaussians --iterations 1000 --out runs/cnf",
    ),
    Task(
        "flow",
        "neuralode.training.flow",
        "FlowTrainConfig",
        "train_flow",
        "a continuous flow trained by flow matching (independent or minibatch-OT coupling)",
        "Train a velocity field by conditional flow matching (Lipman et al. 2023; Tong et al. 2024):\n"
        "no ODE is solved in training. The final metrics line holds the held-out NLL in nats (through\n"
        "dopri5: exact divergence up to 16 dimensions, Hutchinson's estimate above; bits/dim for images)\n"
        "and a samples-per-NFE table (euler, midpoint, rk4, dopri5; 2-Wasserstein distance to held-out\n"
        "data). digits needs scikit-learn (pip install 'neuralode[digits]').\n" + _FILES,
        "  neuralode train flow --dataset 8gaussians --coupling ot --out runs/flow\n"
        "  neuralode train flow --dataset digits --conditional --iterations 3000 --out runs/digits",
    ),
    Task(
        "spirals",
        "neuralode.training.latent",
        "LatentTrainConfig",
        "train_latent",
        "a latent ODE (and an RNN baseline) on irregularly sampled spirals (the paper's section 5)",
        "Train a latent ODE and a GRU baseline on the same noisy, irregularly observed spirals; the\n"
        "final metrics line holds both models' extrapolation and reconstruction RMSE.\n" + _FILES,
        "  neuralode train spirals --observations 100 --iterations 3000 --out runs/spirals",
    ),
)


def requested_task(argv: Sequence[str] | None) -> str | None:
    """The task ``argv`` trains (``"cnf"`` for ``train cnf ...``); ``""`` for none, ``None`` if unknown (all)."""
    if argv is None:
        return None
    words = [w for w in argv if not w.startswith("-")]
    return words[1] if len(words) > 1 and words[0] == "train" else ""


def add_train(subparsers: argparse._SubParsersAction, argv: Sequence[str] | None = None) -> None:
    """Register ``train TASK``. Only the task ``argv`` names gets its flags, so its config module
    alone is imported (``neuralode --help`` imports none); with ``argv=None`` every task gets them."""
    train = subparsers.add_parser(
        "train",
        help="train a model (the paper's experiments)",
        description="Train one of the paper's models. Run 'neuralode train TASK --help' for a task's options.",
    )
    tasks = train.add_subparsers(title="tasks", dest="task", metavar="TASK", required=True)
    wanted = requested_task(argv)
    for task in TASKS:
        parser = tasks.add_parser(
            task.name,
            help=task.help,
            description=task.description,
            epilog="examples:\n" + task.example,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if wanted is None or wanted == task.name:
            add_config_flags(parser, task.load()[0])
        parser.set_defaults(handler=run_train, subparser=parser, task_spec=task)


def resolve_config(
    parser: argparse.ArgumentParser, config_cls: type[RunConfig], given: dict[str, Any], task_name: str | None = None
) -> RunConfig:
    """The run's config from the flags given: the defaults, or with --resume the run's saved settings
    (from ``config.json``, else from the checkpoint)."""
    from ..training.checkpoints import CheckpointError
    from ..training.config import ConfigError, merge_for_resume
    from ..training.rundir import WrongTaskError, check_run_task, read_run_config, recover_run_config

    try:
        if not given.get("resume"):
            return config_cls.from_dict(given)
        out = given.get("out", config_cls().out)
    except ConfigError as exc:
        flag_error(parser, exc)
    try:
        check_run_task(out, config_cls.KIND, task_name)
    except WrongTaskError as exc:
        runtime_error(parser, f"argument --resume: {exc}")
    recovered = None
    try:
        saved = read_run_config(out)
    except (FileNotFoundError, ValueError) as exc:
        try:
            saved, recovered = recover_run_config(out, config_cls.KIND)
        except FileNotFoundError:
            runtime_error(parser, f"argument --resume: nothing to resume in {str(out)!r}: {exc}")
        except CheckpointError as damaged:
            runtime_error(parser, f"argument --resume: {exc} The checkpoint cannot stand in for it: {damaged}")
    try:
        config, changes = merge_for_resume(config_cls, saved, given)
    except ConfigError as exc:
        flag_error(parser, exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, said once
        if recovered:
            print(recovered, file=sys.stderr)
        except_ = f", except {'; '.join(changes)}" if changes else ""
        print(f"Resuming {config.out} with its saved settings{except_}.", file=sys.stderr)
    return config


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..datasets.mnist import DownloadError
    from ..training.checkpoints import CheckpointError
    from ..training.config import ConfigError
    from ..training.rundir import (
        CHECKPOINT_NAME,
        PREVIOUS_CHECKPOINT_NAME,
        RunLockedError,
        WrongTaskError,
        check_out,
        check_run_task,
    )

    task: Task = args.task_spec
    config_cls, train_fn = task.load()
    config = resolve_config(parser, config_cls, given_settings(args, config_cls), task.name)
    # From here on every error is about the run, not the flags' syntax: printed alone, exit status 2.
    try:
        check_out(config.out)
        if (config.out / CHECKPOINT_NAME).exists() or (config.out / PREVIOUS_CHECKPOINT_NAME).exists():
            check_run_task(config.out, config_cls.KIND, task.name)
        data_dir = getattr(config, "data_dir", None)
        if data_dir is not None and not data_dir.is_dir():
            raise ConfigError("data_dir", f"{str(data_dir)!r} is not a directory")
        summary = train_fn(config)
    except ConfigError as exc:
        runtime_error(parser, exc)
    except (FileExistsError, RunLockedError, WrongTaskError) as exc:
        runtime_error(parser, f"argument --out: {exc}")
    except CheckpointError as exc:
        runtime_error(parser, f"argument --resume: {exc}")
    except FileNotFoundError as exc:
        if config.resume and str(exc).startswith(("Cannot resume", str(config.out))):
            runtime_error(parser, f"argument --resume: {exc}")
        runtime_error(parser, exc, status=1)
    except (
        ValueError,
        DownloadError,
        ImportError,
    ) as exc:  # ImportError: an optional dependency (digits: scikit-learn)
        runtime_error(parser, exc, status=1)
    if summary["interrupted"]:
        return 128 + int(signal.Signals[summary["interrupted"]])
    if summary.get("rank", 0) == 0:
        print(_REPORTS[task.name](config, summary))
    return 0


def _report_mnist(config: Any, summary: dict[str, Any]) -> str:
    from ..training.mnist import nfe_text

    final = summary["final"]
    if final is None:
        return f"{config.model}: nothing left to train ({summary['epochs_completed']} epoch(s) done); run folder {summary['run_dir']}"
    return (
        f"{config.model}: {summary['epochs_completed']} epoch(s), test error {100 * final['test_error']:.2f}% "
        f"on {final['test_samples']} samples, {summary['params']:,} parameters, {nfe_text(final)}, "
        f"{final['seconds']:.1f} s/epoch; run folder {summary['run_dir']}"
    )


def _report_cnf(config: Any, summary: dict[str, Any]) -> str:
    final = summary["final"]
    forward, backward = final["nfe_forward_mean"], final["nfe_backward_mean"]
    # The means are over metrics.jsonl's lines; a run resumed after accepting their loss has none.
    nfe = (
        f"forward {forward:.1f}, backward {backward:.1f}"
        if forward is not None and backward is not None
        else "not known (no lines)"
    )
    return (
        f"cnf on {config.dataset}: {summary['iterations_completed']} iterations, test NLL {final['test_nll']:.4f} nats "
        f"on {final['test_samples']:,} fresh samples; NFE per training iteration (mean, as in metrics.jsonl) "
        f"{nfe}; run folder {summary['run_dir']}"
    )


def _report_spirals(config: Any, summary: dict[str, Any]) -> str:
    return (
        f"latent ODE, {config.observations} observations: extrapolation RMSE {summary['extrapolation_rmse']:.4f} "
        f"(RNN {summary['rnn_extrapolation_rmse']:.4f}), reconstruction RMSE {summary['reconstruction_rmse']:.4f} "
        f"(RNN {summary['rnn_reconstruction_rmse']:.4f}); run folder {summary['run_dir']}"
    )


def _report_flow(config: Any, summary: dict[str, Any]) -> str:
    final = summary["final"]
    bpd = f" ({final['test_bpd']:.3f} bits/dim)" if "test_bpd" in final else ""
    return (
        f"flow on {config.dataset} ({config.coupling} coupling, {config.path} path): {summary['iterations_completed']} iterations "
        f"in {final['seconds']:.1f} s, test NLL {final['test_nll']:.4f} nats{bpd} on {final['test_samples']:,} held-out samples; "
        f"{sampling_text(final['sampling'])}; run folder {summary['run_dir']}"
    )


def sampling_text(rows: list[dict[str, Any]]) -> str:
    """The sampling table's gist: W2 of the cheapest and the dearest rows of each method."""
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["nfe"])
        parts.append(f"{method} " + ", ".join(f"{r['w2']:.3f} @ {r['nfe']}" for r in (mine[0], mine[-1])))
    return "W2 @ NFE: " + "; ".join(parts)


_REPORTS = {"mnist": _report_mnist, "cnf": _report_cnf, "spirals": _report_spirals, "flow": _report_flow}
