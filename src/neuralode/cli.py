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

from . import __version__

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
    from .demo import DemoConfig  # imports torch; only when the parser is built

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
    from .demo import DemoConfig, run_demo

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
# The parser and the entry point.

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_demo,)


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
