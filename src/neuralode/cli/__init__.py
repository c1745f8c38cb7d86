"""The ``neuralode`` command line: flags parsed into the tasks' typed configs, then the library.

* :mod:`.flags` -- flags derived from a config dataclass, argument types, flag errors.
* :mod:`.train` -- ``neuralode train mnist|cnf|flow|spirals``, one runner and one resume rule.
* :mod:`.runs` -- ``neuralode eval`` and ``neuralode plot`` for a run of any task.
* :mod:`.demo` -- ``neuralode demo``.

Library code never sees ``argparse``. To add a subcommand, write its ``add_``/``run_`` pair in a
module here and list the ``add_`` function in :func:`build_parser`; to add a training task, add a
:class:`~neuralode.cli.train.Task`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__


def build_parser(prog: str | None = None, argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``neuralode`` argument parser with every subcommand registered.

    With ``argv``, only the training task it names gets its flags (see :func:`.train.add_train`).
    """
    from .demo import add_demo
    from .runs import add_eval, add_plot
    from .train import add_train

    parser = argparse.ArgumentParser(
        prog=prog or "neuralode",
        description="Neural Ordinary Differential Equations on PyTorch. Run '%(prog)s COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    add_demo(subparsers)
    add_train(subparsers, argv)
    add_eval(subparsers)
    add_plot(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``neuralode`` with ``argv`` (``sys.argv[1:]`` by default) and return the exit status.

    Bad flags exit through ``SystemExit(2)`` with a message naming the flag, as argparse does.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog, argv)
    args = parser.parse_args(argv)
    try:
        # The subcommand's own parser is passed on so its errors read "neuralode train cnf: error: ...".
        return args.handler(args, args.subparser)
    except KeyboardInterrupt:
        print(f"\n{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
