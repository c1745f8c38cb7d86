"""Command-line flags derived from a task's config dataclass, so a field and its flag cannot drift.

Each field of a :class:`~neuralode.training.config.RunConfig` subclass becomes one flag:
``batch_size`` -> ``--batch-size``, a ``bool`` -> ``--x/--no-x`` (``--resume`` is a plain switch),
a tuple -> one or more values, ``choices`` from the field's metadata. Every flag defaults to
``None`` so that :func:`given_settings` can tell what the user typed from what was left out: a new
run fills the gaps from the dataclass defaults, a resumed run from the run's saved settings.
Values are validated once, by the dataclass; :func:`flag_error` turns its
:class:`~neuralode.training.config.ConfigError` into "argument --flag: ...".

Errors come in two forms. A flag's value that is wrong in itself (argparse's own errors and the
dataclass's) is printed after the usage block, as argparse does; an error the run meets later (a
locked or foreign run folder, a damaged checkpoint, a resume mismatch, a file that cannot be
written) is printed alone by :func:`runtime_error`, where fifteen lines of usage would bury it.
Both exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn


def flag_of(name: str) -> str:
    """The flag of config field ``name``: ``"batch_size"`` -> ``"--batch-size"``."""
    return "--" + name.replace("_", "-")


def _number(kind: type) -> Any:
    word = {int: "an integer", float: "a number"}[kind]

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


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


def path_arg(text: str) -> Path:
    """A path; an empty string is refused (``Path("")`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a path, got an empty string {text!r} (write '.' for the current folder)"
        )
    return Path(text)


path_arg.__name__ = "path"

_PARSERS = {int: _number(int), float: _number(float), Path: path_arg, str: str}


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the config dataclass ``cls`` (help from ``metadata["help"]``)."""
    from ..training.config import base_type, field_types

    hints = field_types(cls)
    for f in fields(cls):
        if f.metadata.get("flag", True) is False:
            continue
        kind, default = base_type(hints[f.name]), f.default if f.default is not MISSING else None
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata.get("help", "") + (
            "" if default is None or f.name == "resume" else f" (default: {shown})"
        )
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text.replace("%", "%%")}
        if kind is bool:
            kw["action"] = "store_true" if f.name == "resume" else argparse.BooleanOptionalAction
            if f.name == "resume":
                kw["default"] = None
        else:
            if kind is tuple:
                element = typing.get_args(hints[f.name])[0]
                kw.update(nargs="+", type=_PARSERS[element])
            else:
                kw["type"] = _PARSERS[kind]
            if "choices" in f.metadata:
                kw["choices"] = tuple(f.metadata["choices"])
            if "metavar" in f.metadata:
                kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag_of(f.name), **kw)


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The config fields the command line set explicitly, by field name."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def flag_error(parser: argparse.ArgumentParser, exc: Exception) -> NoReturn:
    """Exit with status 2 after the usage block: "argument --flag: message" for a ConfigError, else the message."""
    field = getattr(exc, "field", None)
    parser.error(f"argument {flag_of(field)}: {exc}" if field else str(exc))


def runtime_error(parser: argparse.ArgumentParser, message: str | Exception, *, status: int = 2) -> NoReturn:
    """Exit with ``status``, printing "PROG: error: message" alone (no usage block).

    A :class:`~neuralode.training.config.ConfigError` is prefixed with its flag, as in :func:`flag_error`.
    """
    field = getattr(message, "field", None)
    text = f"argument {flag_of(field)}: {message}" if field else str(message)
    print(f"{parser.prog}: error: {text}", file=sys.stderr)
    raise SystemExit(status)
