"""The typed settings of a training run: one base every task's config extends, and one error type.

Every task (MNIST, CNF, latent ODE) describes a run with a frozen dataclass derived from
:class:`RunConfig`. Each field carries its help text in ``metadata["help"]``; the command line
builds one flag per field from the field itself (``batch_size`` -> ``--batch-size``, a ``bool`` ->
``--x/--no-x``, a tuple -> several values), so a field and its flag cannot drift apart.
Validation lives here, in ``__post_init__``, and raises :class:`ConfigError` naming the field; the
command line turns that into "argument --flag: ...".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A setting has a bad value; ``field`` names it (the command line maps it to its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its help text; ``metadata`` may add ``choices``, ``metavar`` or ``flag=False``."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of the dataclass ``cls`` (annotations are strings here)."""
    return typing.get_type_hints(cls)


def base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``tuple[float, ...]`` -> ``tuple``; other types unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple
    if origin is not None and len(args) == 1:  # a Union with None
        return base_type(args[0])
    return annotation


#: A task's config class: ``from_dict`` and ``merge_for_resume`` return the class they are given.
_Config = typing.TypeVar("_Config", bound="RunConfig")


@dataclass(frozen=True)
class RunConfig:
    """Settings every task has. Subclasses add their own fields and extend ``__post_init__``.

    Attributes:
        out: the run folder.
        resume: continue the run saved in ``out`` instead of starting a new one.
        seed: seeds the initialisation, the data order and every random draw of the run.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        log_every: optimisation steps between ``metrics.jsonl`` training lines.
        checkpoint_every: optimisation steps between checkpoints (0: none by step count). Checkpoints
            are also written at the task's natural boundaries (MNIST's epoch ends, the end of the
            run), every ``checkpoint_seconds`` and on SIGINT/SIGTERM.
        checkpoint_seconds: wall-clock seconds between checkpoints, besides ``checkpoint_every``
            (0: off). A kill loses at most about this much work; the default (3 minutes) bounds
            what a step count cannot, since the cost of a step varies by orders of magnitude
            between tasks, models and machines.
        progress: show a progress bar and progress lines on stderr.
        plot: write the task's figures when training finishes.
    """

    #: The checkpoint kind (see :data:`neuralode.training.checkpoints.CHECKPOINT_KINDS`) and CLI task name.
    KIND: ClassVar[str] = ""
    #: Fields that shape the weights: a resumed run must keep them (the rest may change).
    RESUME_KEEP: ClassVar[tuple[str, ...]] = ("seed",)

    out: Path = setting(Path("runs/run"), "the run folder", metavar="RUN_DIR")
    resume: bool = setting(
        False, "continue the run in --out from its checkpoint; flags not given keep the run's saved values"
    )
    seed: int = setting(0, "seed of everything random in the run")
    device: str = setting("auto", "where to train", choices=DEVICES)
    log_every: int = setting(10, "optimisation steps between training lines in metrics.jsonl", metavar="STEPS")
    checkpoint_every: int = setting(
        100,
        "optimisation steps between checkpoints, besides --checkpoint-seconds (0: none by step count)",
        metavar="STEPS",
    )
    checkpoint_seconds: float = setting(
        180.0,
        "seconds of training between checkpoints, besides --checkpoint-every, so a kill loses at most that (0: off)",
        metavar="SECONDS",
    )
    progress: bool = setting(True, "progress bar and progress lines on stderr")
    plot: bool = setting(True, "write the figures when training finishes")

    def __post_init__(self) -> None:
        # Values from JSON or the command line: lists become tuples, strings paths.
        for f in fields(self):
            # cls as a plain type: mypy checks type[RunConfig] against functools.cache's Hashable through
            # the instances' __hash__, though a class is hashed by its metaclass.
            cls: type = type(self)
            value, kind = getattr(self, f.name), base_type(field_types(cls)[f.name])
            if kind is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif kind is Path and isinstance(value, str) and not value.strip():
                # Path("") is the current folder: a run once trained into the source tree this way.
                raise ConfigError(
                    f.name,
                    f"{type(self).__name__}.{f.name} must be a folder path; got {value!r} "
                    f"(write '.' for the current folder).",
                )
            elif kind is Path and value is not None:
                object.__setattr__(self, f.name, Path(value).expanduser())
        self.check_ints("seed", "checkpoint_every", minimum=0)
        self.check_ints("log_every")
        self.check_numbers("checkpoint_seconds", positive=False)
        self.check_choice("device", DEVICES)

    # Validation helpers: each names the class, the field, what it must be and what it got.

    def fail(self, name: str, requirement: str) -> None:
        raise ConfigError(name, f"{type(self).__name__}.{name} must be {requirement}; got {getattr(self, name)!r}.")

    def check_ints(self, *names: str, minimum: int = 1, optional: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if optional and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
                self.fail(name, what + (" or None" if optional else ""))

    def check_numbers(self, *names: str, positive: bool = True, at_most: float | None = None) -> None:
        for name in names:
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > 0 if positive else value >= 0) and (at_most is None or value <= at_most)
            if not ok:
                what = "a positive" if positive else "a non-negative"
                self.fail(name, f"{what} finite number" + (f" of at most {at_most}" if at_most is not None else ""))

    def check_choice(self, name: str, options: Iterable[Any]) -> None:
        options = tuple(options)
        if getattr(self, name) not in options:
            self.fail(name, "one of " + ", ".join(map(str, options)))

    # Serialisation.

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings, tuples as lists."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
            elif isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls: type[_Config], d: Mapping[str, Any], **overrides: Any) -> _Config:
        """The inverse of :meth:`to_dict`; unknown keys are ignored, ``overrides`` win."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, **overrides})

    @classmethod
    def from_saved(cls: type[_Config], d: Mapping[str, Any]) -> _Config:
        """A config a run saved (``config.json``, a checkpoint's), read back as that run ran: :meth:`from_dict`
        after :meth:`upgrade` has given the settings its version of the package did not have the values that
        version used (not today's defaults, which may differ)."""
        return cls.from_dict(cls.upgrade(d))

    @classmethod
    def upgrade(cls, d: Mapping[str, Any]) -> Mapping[str, Any]:
        """``d`` (a saved config) with the settings added since it was saved set as its run used them; a task
        whose defaults changed overrides this."""
        return d


def resume_differences(saved: Mapping[str, Any], config: RunConfig) -> list[str]:
    """``"name: saved X, now Y"`` for each :attr:`RunConfig.RESUME_KEEP` field that differs."""
    current = config.to_dict()
    return [
        f"{k}: saved {saved.get(k)!r}, now {current[k]!r}" for k in config.RESUME_KEEP if saved.get(k) != current[k]
    ]


def merge_for_resume(
    cls: type[_Config], saved: Mapping[str, Any], given: Mapping[str, Any]
) -> tuple[_Config, list[str]]:
    """The resume rule of every task: the run's saved settings, overridden by those ``given``.

    Args:
        cls: the task's config class.
        saved: the ``config`` the run saved in ``config.json``.
        given: the settings stated explicitly (on the command line), by field name.

    Returns:
        ``(config, changes)``: the merged config (with ``resume=True``) and ``"name: old -> new"``
        for each given setting that differs from the saved one.
    """
    base = cls.from_saved(saved)
    merged = cls.from_dict({**base.to_dict(), **given, "resume": True})
    before, after = base.to_dict(), merged.to_dict()
    changes = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in given if k != "resume" and before.get(k) != after.get(k)]
    return merged, changes
