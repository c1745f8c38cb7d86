"""``neuralode train TASK``: one runner for every task, its flags derived from the task's config.

The resume rule is the same for every task: ``--resume`` starts from the settings the run saved
in ``config.json``, the flags given on the command line override them (and what changed is
printed), and the task refuses changes to the settings that shape the weights.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .flags import add_config_flags, flag_error, given_settings

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

    def load(self) -> tuple[type, Callable[..., dict[str, Any]]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.train)


_FILES = ("Writes config.json, metrics.jsonl (a line every --log-every steps), checkpoint.pt (every\n"
          "--checkpoint-every steps and on Ctrl-C/SIGTERM, exit status 130/143) and the figures into --out.\n"
          "--resume continues from the checkpoint with the run's saved settings; flags given override them.\n"
          "Under torchrun it trains data-parallel (gloo on CPU, NCCL on CUDA): --batch-size is the global batch.")

TASKS = (
    Task("mnist", "neuralode.training.mnist", "TrainConfig", "train",
         "MNIST classification: ODE-Net, RK-Net, ResNet or MLP (the paper's Table 1)",
         "Train a Table 1 classifier on MNIST with the paper's recipe: SGD, momentum 0.9, lr 0.1 per\n"
         "128 samples decayed x0.1 at epochs 60/100/140, random-crop augmentation. The adaptive ODE-Net\n"
         "chooses its steps from each process's shard, so under torchrun its NFE differs slightly.\n" + _FILES,
         "  neuralode train mnist --model odenet --epochs 1 --out runs/odenet            (downloads MNIST)\n"
         "  neuralode train mnist --model odenet --epochs 1 --data-dir PATH --out runs/odenet\n"
         "  neuralode train mnist --out runs/odenet --resume --epochs 2\n"
         "  torchrun --nproc_per_node=2 -m neuralode train mnist --model rknet --device cpu --out runs/ddp"),
    Task("cnf", "neuralode.training.cnf", "CNFTrainConfig", "train_cnf",
         "a continuous normalizing flow on a toy 2-D density (FFJORD-style)",
         "Train a CNF by maximum likelihood on samples drawn on the fly from a toy 2-D density; the\n"
         "final metrics line holds the test NLL in nats on fresh samples.\n" + _FILES,
         "  neuralode train cnf --dataset 8gaussians --iterations 1000 --out runs/cnf"),
    Task("spirals", "neuralode.training.latent", "LatentTrainConfig", "train_latent",
         "a latent ODE (and an RNN baseline) on irregularly sampled spirals (the paper's section 5)",
         "Train a latent ODE and a GRU baseline on the same noisy, irregularly observed spirals; the\n"
         "final metrics line holds both models' extrapolation and reconstruction RMSE.\n" + _FILES,
         "  neuralode train spirals --observations 100 --iterations 3000 --out runs/spirals"),
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
        "train", help="train a model (the paper's experiments)",
        description="Train one of the paper's models. Run 'neuralode train TASK --help' for a task's options.",
    )
    tasks = train.add_subparsers(title="tasks", dest="task", metavar="TASK", required=True)
    wanted = requested_task(argv)
    for task in TASKS:
        parser = tasks.add_parser(task.name, help=task.help, description=task.description, epilog="examples:\n" + task.example,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if wanted is None or wanted == task.name:
            add_config_flags(parser, task.load()[0])
        parser.set_defaults(handler=run_train, subparser=parser, task_spec=task)


def resolve_config(parser: argparse.ArgumentParser, config_cls: type[RunConfig], given: dict[str, Any]) -> RunConfig:
    """The run's config from the flags given: the defaults, or with --resume the run's saved settings."""
    from ..training.config import ConfigError, merge_for_resume
    from ..training.rundir import read_run_config

    try:
        if not given.get("resume"):
            return config_cls.from_dict(given)
        out = given.get("out", config_cls().out)
        try:
            saved = read_run_config(out)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(f"argument --resume: nothing to resume in {str(out)!r}: {exc}")
        config, changes = merge_for_resume(config_cls, saved, given)
    except ConfigError as exc:
        flag_error(parser, exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, said once
        except_ = f", except {'; '.join(changes)}" if changes else ""
        print(f"Resuming {config.out} with its saved settings{except_}.", file=sys.stderr)
    return config


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..checkpoints import CheckpointError
    from ..datasets.mnist import DownloadError
    from ..training.config import ConfigError
    from ..training.rundir import RunLockedError, check_out

    task: Task = args.task_spec
    config_cls, train_fn = task.load()
    config = resolve_config(parser, config_cls, given_settings(args, config_cls))
    try:
        check_out(config.out)
        data_dir = getattr(config, "data_dir", None)
        if data_dir is not None and not data_dir.is_dir():
            raise ConfigError("data_dir", f"{str(data_dir)!r} is not a directory")
        summary = train_fn(config)
    except ConfigError as exc:
        flag_error(parser, exc)
    except (FileExistsError, RunLockedError) as exc:
        parser.error(f"argument --out: {exc}")
    except CheckpointError as exc:
        parser.error(f"argument --resume: {exc}")
    except FileNotFoundError as exc:
        if config.resume and str(exc).startswith("Cannot resume"):
            parser.error(f"argument --resume: {exc}")
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, DownloadError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
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
    return (f"{config.model}: {summary['epochs_completed']} epoch(s), test error {100 * final['test_error']:.2f}% "
            f"on {final['test_samples']} samples, {summary['params']:,} parameters, {nfe_text(final)}, "
            f"{final['seconds']:.1f} s/epoch; run folder {summary['run_dir']}")


def _report_cnf(config: Any, summary: dict[str, Any]) -> str:
    final = summary["final"]
    return (f"cnf on {config.dataset}: {summary['iterations_completed']} iterations, test NLL {final['test_nll']:.4f} nats "
            f"on {final['test_samples']:,} fresh samples; NFE per training iteration (mean, as in metrics.jsonl) "
            f"forward {final['nfe_forward_mean']:.1f}, backward {final['nfe_backward_mean']:.1f}; run folder {summary['run_dir']}")


def _report_spirals(config: Any, summary: dict[str, Any]) -> str:
    return (f"latent ODE, {config.observations} observations: extrapolation RMSE {summary['extrapolation_rmse']:.4f} "
            f"(RNN {summary['rnn_extrapolation_rmse']:.4f}), reconstruction RMSE {summary['reconstruction_rmse']:.4f} "
            f"(RNN {summary['rnn_reconstruction_rmse']:.4f}); run folder {summary['run_dir']}")


_REPORTS = {"mnist": _report_mnist, "cnf": _report_cnf, "spirals": _report_spirals}
