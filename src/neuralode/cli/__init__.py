"""The ``neuralode`` command line: parses flags into typed configs and calls the library.

One ``_add_<command>`` function registers each subcommand's flags and one ``_run_<command>(args, parser)``
function turns the parsed flags into the library's config dataclass and runs it. Library code
never sees ``argparse``. To add a subcommand (``train``, ``eval``, ``plot``, ``bench``), write the
pair and list the ``_add_`` function in ``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .. import __version__

# --------------------------------------------------------------------------------------------
# Argument types: a bad value becomes "argument --flag: <message>" and exit status 2.


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a non-negative finite number, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# neuralode demo


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    from ..demo import DemoConfig  # imports torch; only when the parser is built

    defaults = DemoConfig()
    quick = DemoConfig.quick()
    parser = subparsers.add_parser(
        "demo",
        help="the Neural-ODE story in one run: solver convergence, a fitted spiral, figures",
        description=(
            "Run the demo: (1) solve the harmonic oscillator with euler and rk4 at halving step sizes "
            "and with dopri5 at several tolerances, and print errors against the closed form and "
            "function evaluations; (2) fit a small Neural ODE to the spiral dy/dt = y**3 @ A by "
            "backpropagating through the solver; (3) write convergence.png, trajectories.png, "
            "phase_portrait.png and vector_field.png into --out. Results go to stdout, the progress "
            "bar to stderr. No downloads; about ten seconds on two CPU cores."
        ),
        epilog="example: neuralode demo --out demo_out --seed 1",
    )
    parser.add_argument(
        "--out", type=Path, default=defaults.out, metavar="DIR",
        help="folder to write the figures to, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=defaults.seed,
        help="seed of the model's initialisation and the minibatches (default: %(default)s)",
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=None, metavar="N",
        help=f"training iterations (default: {defaults.iterations}, or {quick.iterations} with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a few-second run: the same study with a short training and small figures (for tests)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the training progress bar")
    parser.set_defaults(handler=_run_demo, subparser=parser)


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..demo import DemoConfig, run_demo

    settings: dict = {"out": args.out, "seed": args.seed}
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    if args.no_progress:
        settings["progress"] = False
    try:
        config = DemoConfig.quick(**settings) if args.quick else DemoConfig(**settings)
    except ValueError as exc:
        parser.error(str(exc))
    if config.out.exists() and not config.out.is_dir():
        parser.error(f"argument --out: {str(config.out)!r} exists and is not a directory")
    run_demo(config)
    return 0


# --------------------------------------------------------------------------------------------
# neuralode train mnist / eval / plot

# TrainConfig fields set by `train mnist` flags (dest names); with --resume, those not given on
# the command line come from the run's saved config.json.
_TRAIN_FLAGS = (
    "model", "epochs", "batch_size", "lr", "lr_milestones", "lr_decay", "momentum", "tol", "adjoint", "seed", "device",
    "train_subset", "test_subset", "data_dir", "out", "augment", "num_workers",
)


def _flag_for(parser: argparse.ArgumentParser, dest: str) -> str | None:
    for action in parser._actions:
        if action.dest == dest:
            return action.option_strings[0] if action.option_strings else action.metavar or dest
    return None


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from ..models import MODEL_NAMES
    from ..training.mnist import DEVICES, TrainConfig

    d = TrainConfig()
    train = subparsers.add_parser(
        "train",
        help="train a model (the paper's experiments)",
        description="Train one of the paper's models. Run 'neuralode train TASK --help' for a task's options.",
    )
    tasks = train.add_subparsers(title="tasks", dest="task", metavar="TASK", required=True)
    parser = tasks.add_parser(
        "mnist",
        help="MNIST classification: ODE-Net, RK-Net, ResNet or MLP (the paper's Table 1)",
        description=(
            "Train a Table 1 classifier on MNIST with the paper's recipe: SGD, momentum 0.9, lr 0.1 per\n"
            "128 samples decayed x0.1 at epochs 60/100/140, random-crop augmentation.\n\n"
            "Writes config.json, metrics.jsonl (one line per epoch), checkpoint.pt (after every epoch and\n"
            "on Ctrl-C/SIGTERM, exit status 130/143) and learning_curves.png into --out; --resume continues\n"
            "exactly where the checkpoint stopped.\n\n"
            "Under torchrun it trains data-parallel (gloo on CPU, NCCL on CUDA): --batch-size is then the\n"
            "global batch, split evenly over the processes, and fixed-step models (mlp, resnet, rknet)\n"
            "match a single-process run up to rounding. The adaptive ODE-Net chooses its steps from each\n"
            "process's shard, so its NFE and results differ slightly from a single-process run."
        ),
        epilog=(
            "examples:\n"
            "  neuralode train mnist --model odenet --epochs 1 --data-dir ../shared/data/mnist --out runs/odenet\n"
            "  neuralode train mnist --out runs/odenet --resume --epochs 2\n"
            "  torchrun --nproc_per_node=2 -m neuralode train mnist --model rknet --device cpu --out runs/ddp"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=MODEL_NAMES, default=None, help=f"the classifier (default: {d.model})")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N", help=f"total epochs (default: {d.epochs})")
    parser.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR",
        help="folder with the MNIST IDX files (.gz or raw); without it they are downloaded into "
        "$NEURALODE_DATA/mnist or ~/.cache/neuralode/mnist and checksummed",
    )
    parser.add_argument("--out", type=Path, default=None, metavar="RUN_DIR", help=f"the run folder (default: {d.out})")
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="N",
        help=f"global batch size, over all processes (default: {d.batch_size})",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=None,
        help=f"learning rate for a batch of 128, scaled linearly with --batch-size (default: {d.lr})",
    )
    parser.add_argument(
        "--lr-milestones", type=positive_float, nargs="+", default=None, metavar="EPOCH",
        help="epochs after which the rate is multiplied by --lr-decay; fractions allowed, e.g. 0.75 for "
        f"three quarters into the first epoch (default: {' '.join(map(str, d.lr_milestones))})",
    )
    parser.add_argument("--lr-decay", type=positive_float, default=None, help=f"the factor at each milestone (default: {d.lr_decay})")
    parser.add_argument("--momentum", type=nonnegative_float, default=None, help=f"SGD momentum (default: {d.momentum})")
    parser.add_argument("--tol", type=positive_float, default=None, help=f"ODE-Net's rtol = atol (default: {d.tol})")
    parser.add_argument(
        "--adjoint", action=argparse.BooleanOptionalAction, default=None,
        help="ODE-Net gradients by the adjoint method, or backprop through the solver (default: adjoint)",
    )
    parser.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=None,
        help="random-crop augmentation of the training images (default: on)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=None, help=f"seed of everything random (default: {d.seed})")
    parser.add_argument("--device", choices=DEVICES, default=None, help=f"where to train (default: {d.device})")
    parser.add_argument("--train-subset", type=positive_int, default=None, metavar="N", help="train on the first N training samples")
    parser.add_argument("--test-subset", type=positive_int, default=None, metavar="N", help="evaluate on the first N test samples")
    parser.add_argument("--num-workers", type=nonnegative_int, default=None, metavar="N", help="data-loading worker processes (default: 0)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its checkpoint; flags not given take the run's saved values",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines on stderr")
    parser.set_defaults(handler=_run_train_mnist, subparser=parser)
    _add_train_cnf(tasks)
    _add_train_spirals(tasks)


def _run_train_mnist(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from ..datasets.mnist import DownloadError
    from ..training.mnist import CheckpointError, ConfigError, TrainConfig, read_config, train

    explicit = {name: getattr(args, name) for name in _TRAIN_FLAGS if getattr(args, name) is not None}
    settings: dict = {}
    if args.resume:
        out = args.out if args.out is not None else TrainConfig().out
        try:
            settings = read_config(out).to_dict()
        except (FileNotFoundError, ValueError) as exc:
            parser.error(f"argument --resume: nothing to resume in {str(out)!r}: {exc}")
    settings.update(explicit)
    settings.update(resume=args.resume, progress=not args.no_progress)
    try:
        config = TrainConfig.from_dict(settings)
    except ConfigError as exc:
        flag = _flag_for(parser, exc.field)
        parser.error(f"argument {flag}: {exc}" if flag else str(exc))
    if config.data_dir is not None and not config.data_dir.is_dir():
        parser.error(f"argument --data-dir: {str(config.data_dir)!r} is not a directory")
    if config.out.exists() and not config.out.is_dir():
        parser.error(f"argument --out: {str(config.out)!r} exists and is not a directory")
    if config.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available on this machine; use --device cpu or auto")
    try:
        summary = train(config)
    except ConfigError as exc:
        flag = _flag_for(parser, exc.field)
        parser.error(f"argument {flag}: {exc}" if flag else str(exc))
    except FileExistsError as exc:
        parser.error(f"argument --out: {exc}")
    except CheckpointError as exc:
        parser.error(f"argument --resume: {exc}")
    except (FileNotFoundError, ValueError, DownloadError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    if summary["interrupted"]:
        import signal

        return 128 + int(signal.Signals[summary["interrupted"]])
    final = summary["final"]
    if final is not None and summary.get("rank", 0) == 0:
        print(
            f"{config.model}: {summary['epochs_completed']} epoch(s), test error {100 * final['test_error']:.2f}% "
            f"on {final['test_samples']} samples, {summary['params']:,} parameters, "
            f"NFE-F {final['nfe_forward']:.1f}, NFE-B {final['nfe_backward']:.1f}, {final['seconds']:.1f} s/epoch; "
            f"run folder {summary['run_dir']}"
        )
    return 0


# --------------------------------------------------------------------------------------------
# neuralode train cnf / neuralode train spirals


def _add_train_cnf(tasks: argparse._SubParsersAction) -> None:
    from ..training.cnf import CNFTrainConfig
    from ..datasets.toy2d import TOY_DATASETS

    d = CNFTrainConfig()
    parser = tasks.add_parser(
        "cnf",
        help="a continuous normalizing flow on a toy 2-D density (FFJORD-style)",
        description=(
            "Train a CNF by maximum likelihood on samples drawn on the fly from a toy 2-D density.\n"
            "Writes config.json, metrics.jsonl (iteration, loss, nfe_forward, nfe_backward; a final\n"
            "test_nll line in nats on fresh samples), checkpoint.pt and samples.png, density.png,\n"
            "flow.png into --out; --resume continues from the checkpoint."
        ),
        epilog="example:\n  neuralode train cnf --dataset 8gaussians --iterations 1000 --out runs/cnf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=TOY_DATASETS, default=d.dataset, help=f"the density (default: {d.dataset})")
    parser.add_argument("--iterations", type=positive_int, default=d.iterations, metavar="N", help=f"training iterations (default: {d.iterations})")
    parser.add_argument("--out", type=Path, default=d.out, metavar="RUN_DIR", help=f"the run folder (default: {d.out})")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, metavar="N", help=f"samples per iteration (default: {d.batch_size})")
    parser.add_argument("--lr", type=positive_float, default=d.lr, help=f"Adam learning rate, cosine-decayed (default: {d.lr})")
    parser.add_argument("--tol", type=positive_float, default=d.tol, help=f"dopri5 rtol = atol (default: {d.tol})")
    parser.add_argument(
        "--adjoint", action=argparse.BooleanOptionalAction, default=d.adjoint,
        help="gradients by the adjoint method, or backprop through the solver (default: adjoint)",
    )
    parser.add_argument("--trace", choices=("exact", "hutchinson"), default=d.trace, help=f"divergence estimator (default: {d.trace})")
    parser.add_argument("--arch", choices=("mlp", "hyper"), default=d.arch, help=f"dynamics: concat MLP or the paper's hypernetwork (default: {d.arch})")
    parser.add_argument(
        "--regularize-kinetic", type=nonnegative_float, default=d.regularize_kinetic, metavar="W",
        help=f"weight of the kinetic energy penalty (default: {d.regularize_kinetic})",
    )
    parser.add_argument(
        "--regularize-jacobian", type=nonnegative_float, default=d.regularize_jacobian, metavar="W",
        help=f"weight of the Jacobian Frobenius penalty (default: {d.regularize_jacobian})",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=d.seed, help=f"seed (default: {d.seed})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_train_cnf, subparser=parser)


def _run_train_cnf(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..training.cnf import CNFTrainConfig, train_cnf

    try:
        config = CNFTrainConfig(
            dataset=args.dataset, iterations=args.iterations, out=args.out, batch_size=args.batch_size,
            lr=args.lr, tol=args.tol, adjoint=args.adjoint, trace=args.trace, arch=args.arch,
            regularize_kinetic=args.regularize_kinetic, regularize_jacobian=args.regularize_jacobian,
            seed=args.seed, resume=args.resume, progress=not args.no_progress,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if config.out.exists() and not config.out.is_dir():
        parser.error(f"argument --out: {str(config.out)!r} exists and is not a directory")
    try:
        summary = train_cnf(config)
    except FileExistsError as exc:
        parser.error(f"argument --out: {exc}")
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"argument --resume: {exc}")
    if summary["interrupted"]:
        import signal

        return 128 + int(signal.Signals[summary["interrupted"]])
    print(
        f"cnf on {config.dataset}: {summary['iterations_completed']} iterations, test NLL {summary['test_nll']:.3f} nats, "
        f"NFE-F {summary['nfe_forward']:.1f}, NFE-B {summary['nfe_backward']:.1f}; run folder {summary['run_dir']}"
    )
    return 0


def _add_train_spirals(tasks: argparse._SubParsersAction) -> None:
    from ..training.latent import LatentTrainConfig
    from ..datasets.spirals import OBSERVATION_COUNTS

    d = LatentTrainConfig()
    parser = tasks.add_parser(
        "spirals",
        help="a latent ODE (and an RNN baseline) on irregularly sampled spirals (the paper's section 5)",
        description=(
            "Train a latent ODE and a GRU baseline on the same noisy, irregularly observed spirals.\n"
            "Writes config.json, metrics.jsonl (iteration, elbo, nfe_forward, nfe_backward; a final line\n"
            "with extrapolation_rmse, reconstruction_rmse and the RNN's), checkpoint.pt and spirals.png,\n"
            "latent.png into --out; --resume continues from the checkpoint."
        ),
        epilog="example:\n  neuralode train spirals --observations 100 --iterations 3000 --out runs/spirals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--observations", type=int, choices=OBSERVATION_COUNTS, default=d.observations,
        help=f"observed points per training sequence (default: {d.observations})",
    )
    parser.add_argument("--iterations", type=positive_int, default=d.iterations, metavar="N", help=f"training iterations (default: {d.iterations})")
    parser.add_argument("--out", type=Path, default=d.out, metavar="RUN_DIR", help=f"the run folder (default: {d.out})")
    parser.add_argument("--lr", type=positive_float, default=d.lr, help=f"Adam learning rate (default: {d.lr})")
    parser.add_argument("--tol", type=positive_float, default=d.tol, help=f"dopri5 rtol = atol (default: {d.tol})")
    parser.add_argument(
        "--adjoint", action=argparse.BooleanOptionalAction, default=d.adjoint,
        help="gradients by the adjoint method, or backprop through the solver (default: backprop)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=d.seed, help=f"seed (default: {d.seed})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_train_spirals, subparser=parser)


def _run_train_spirals(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..training.latent import LatentConfigError, LatentTrainConfig, train_latent

    try:
        config = LatentTrainConfig(
            observations=args.observations, iterations=args.iterations, out=args.out, lr=args.lr, tol=args.tol,
            adjoint=args.adjoint, seed=args.seed, resume=args.resume, progress=not args.no_progress,
        )
    except LatentConfigError as exc:
        flag = _flag_for(parser, exc.field)
        parser.error(f"argument {flag}: {exc}" if flag else str(exc))
    if config.out.exists() and not config.out.is_dir():
        parser.error(f"argument --out: {str(config.out)!r} exists and is not a directory")
    try:
        summary = train_latent(config)
    except LatentConfigError as exc:
        flag = _flag_for(parser, exc.field)
        parser.error(f"argument {flag}: {exc}" if flag else str(exc))
    except FileExistsError as exc:
        parser.error(f"argument --out: {exc}")
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"argument --resume: {exc}")
    if summary["interrupted"]:
        import signal

        return 128 + int(signal.Signals[summary["interrupted"]])
    print(
        f"latent ODE, {config.observations} observations: extrapolation RMSE {summary['extrapolation_rmse']:.4f} "
        f"(RNN {summary['rnn_extrapolation_rmse']:.4f}), reconstruction RMSE {summary['reconstruction_rmse']:.4f}; "
        f"run folder {summary['run_dir']}"
    )
    return 0


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    from ..training.mnist import DEVICES

    parser = subparsers.add_parser(
        "eval",
        help="test metrics of a trained run's checkpoint (MNIST, CNF or latent ODE)",
        description=(
            "Load RUN_DIR/checkpoint.pt and report its test metrics: an MNIST run's test error (by default on "
            "the run's own test subset), a CNF run's test NLL, a latent-ODE run's extrapolation and "
            "reconstruction RMSE beside its RNN baseline's."
        ),
        epilog="example: neuralode eval runs/odenet --full",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by 'neuralode train'")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help="MNIST folder (default: the run's)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to evaluate (default: %(default)s)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--test-subset", type=positive_int, default=None, metavar="N", help="the first N test samples (CNF: N fresh samples)")
    group.add_argument("--full", action="store_true", help="all 10,000 test samples, whatever the run used")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=_run_eval, subparser=parser)


def _run_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    import torch

    from ..checkpoints import checkpoint_kind
    from ..datasets.mnist import DownloadError
    from ..training.mnist import CheckpointError, evaluate

    if not args.run_dir.is_dir():
        parser.error(f"argument RUN_DIR: {str(args.run_dir)!r} is not a directory")
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"argument --data-dir: {str(args.data_dir)!r} is not a directory")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available on this machine; use --device cpu or auto")
    checkpoint = args.run_dir / "checkpoint.pt"
    kind = checkpoint_kind(checkpoint) if checkpoint.is_file() else None
    if kind in ("cnf", "latent"):
        return _run_eval_other(args, parser, kind)
    try:
        result = evaluate(args.run_dir, data_dir=args.data_dir, device=args.device, test_subset=args.test_subset, full_test_set=args.full)
    except (FileNotFoundError, CheckpointError) as exc:
        parser.error(f"argument RUN_DIR: {exc}")
    except (ValueError, DownloadError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['model']} after {result['epoch']} epoch(s): test error {100 * result['test_error']:.2f}% "
            f"({round(result['test_error'] * result['test_samples'])}/{result['test_samples']} wrong), "
            f"test loss {result['test_loss']:.4f}, {result['params']:,} parameters"
        )
    return 0


def _run_eval_other(args: argparse.Namespace, parser: argparse.ArgumentParser, kind: str) -> int:
    """``neuralode eval`` of a CNF run (test NLL) or a latent-ODE run (test RMSEs)."""
    import json

    from ..checkpoints import CheckpointError

    for flag, given in (("--data-dir", args.data_dir is not None), ("--full", args.full)):
        if given:
            parser.error(f"argument {flag}: applies to MNIST runs; {args.run_dir} is a {kind} run")
    try:
        if kind == "cnf":
            from ..training.cnf import evaluate as evaluate_cnf

            result = evaluate_cnf(args.run_dir, test_samples=args.test_subset)
            text = (f"CNF on {result['dataset']} after {result['iteration']} iterations: test NLL "
                    f"{result['test_nll']:.4f} nats on {result['test_samples']:,} samples, "
                    f"{result['test_nfe_forward']:.1f} evaluations per batch")
        else:
            if args.test_subset is not None:
                parser.error(f"argument --test-subset: a latent-ODE run is evaluated on its own held-out spirals; {args.run_dir} is one")
            from ..training.latent import evaluate as evaluate_latent

            result = evaluate_latent(args.run_dir)
            text = (f"latent ODE, {result['observations']} observations, after {result['iteration']} iterations "
                    f"({result['test_samples']} held-out spirals): extrapolation RMSE {result['extrapolation_rmse']:.4f} "
                    f"(RNN {result['rnn_extrapolation_rmse']:.4f}), reconstruction RMSE "
                    f"{result['reconstruction_rmse']:.4f} (RNN {result['rnn_reconstruction_rmse']:.4f})")
    except (FileNotFoundError, CheckpointError) as exc:
        parser.error(f"argument RUN_DIR: {exc}")
    print(json.dumps(result) if args.json else text)
    return 0


def _add_plot(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="learning curves of a training run as a PNG",
        description="Draw RUN_DIR/metrics.jsonl (training loss, test error, NFE per epoch) into RUN_DIR/learning_curves.png.",
        epilog="example: neuralode plot runs/odenet",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by 'neuralode train'")
    parser.add_argument("--output", type=Path, default=None, metavar="PATH", help="where to write the figure (default: RUN_DIR/learning_curves.png)")
    parser.set_defaults(handler=_run_plot, subparser=parser)


def _run_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..training.mnist import plot_run

    if not args.run_dir.is_dir():
        parser.error(f"argument RUN_DIR: {str(args.run_dir)!r} is not a directory")
    if args.output is not None and not args.output.parent.is_dir():
        parser.error(f"argument --output: folder {str(args.output.parent)!r} does not exist")
    try:
        path = plot_run(args.run_dir, args.output)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"argument RUN_DIR: {exc}")
    print(path)
    return 0


# --------------------------------------------------------------------------------------------
# The parser and the entry point.

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_demo, _add_train, _add_eval, _add_plot)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``neuralode`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog=prog or "neuralode",
        description=(
            "Neural Ordinary Differential Equations on PyTorch. "
            "Run '%(prog)s COMMAND --help' for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``neuralode`` with ``argv`` (``sys.argv[1:]`` by default) and return the exit status.

    Bad flags exit through ``SystemExit(2)`` with a message naming the flag, as argparse does.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        # The subcommand's own parser is passed on so its errors read "neuralode demo: error: ...".
        return args.handler(args, args.subparser)
    except KeyboardInterrupt:
        print(f"\n{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
