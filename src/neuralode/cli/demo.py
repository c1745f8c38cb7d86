"""``neuralode demo``: the Neural-ODE story in one run (see :mod:`neuralode.cli.demo_study`)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .flags import nonnegative_int, path_arg, positive_int, runtime_error


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the Neural-ODE story in one run: solver convergence, a fitted spiral, figures",
        description=(
            "Run the demo: (1) solve the harmonic oscillator with euler and rk4 at halving step sizes "
            "and with dopri5 at several tolerances, and print errors against the closed form and "
            "function evaluations; (2) fit a small Neural ODE to the spiral dy/dt = y**3 @ A by "
            "backpropagating through the solver; (3) write convergence.png, trajectories.png, "
            "phase_portrait.png and vector_field.png into --out. Results go to stdout, the progress "
            "bar to stderr. No downloads."
        ),
        epilog="example: neuralode demo --out demo_out --seed 1",
    )
    parser.add_argument(
        "--out",
        type=path_arg,
        default=Path("demo_out"),
        metavar="DIR",
        help="folder to write the figures to, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the model's initialisation and the minibatches (default: %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        metavar="N",
        help="training iterations (default: the demo's, fewer with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few-second run: the same study with a short training and small figures (for tests)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the training progress bar")
    parser.set_defaults(handler=run_demo_command, subparser=parser)


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .demo_study import DemoConfig, run_demo

    settings: dict = {"out": args.out, "seed": args.seed}
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    if args.no_progress:
        settings["progress"] = False
    try:
        config = DemoConfig.quick(**settings) if args.quick else DemoConfig(**settings)
    except ValueError as exc:
        parser.error(str(exc))
    # The folder is checked and made before the demo runs, not when its first figure is written.
    from ..training.config import ConfigError
    from ..training.rundir import check_out

    try:
        check_out(config.out, what="figure folder")
        config.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=config.out):  # writable? (root passes the permission checks)
            pass
    except ConfigError as exc:
        runtime_error(parser, exc)
    except OSError as exc:  # what check_out cannot foresee: /proc, a read-only mount
        runtime_error(parser, f"argument --out: cannot write the figure folder {str(config.out)!r}: {exc.strerror}.")
    run_demo(config)
    return 0
