"""Integrity-checked training checkpoints, shared by every training program.

:func:`save_checkpoint` stores a ``torch.save`` archive of plain data (tensors,
dicts, lists, numbers, strings) tagged with its program (``kind``: ``"mnist"``, ``"cnf"``,
``"latent"``), a format version and a SHA-256 digest of the contents. torch's zip container
notices truncation but not a flipped byte inside a tensor; the digest does. :func:`load_checkpoint`
opens it with ``weights_only=True`` (loading a checkpoint must not run pickled code) and refuses,
with :class:`CheckpointError`, anything unreadable, damaged, of another program or another version;
damage (unreadable, truncated, digest mismatch) is the subclass :class:`CheckpointDamagedError`,
the case where falling back to the previous checkpoint makes sense. Files are written by
:func:`neuralode._atomic.atomic_write` (``keep_previous`` keeps the checkpoint a new one replaces).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write_bytes

CHECKPOINT_VERSION = 1

#: The programs that write checkpoints, and how messages name them.
CHECKPOINT_KINDS = {
    "mnist": "MNIST training",
    "cnf": "CNF training",
    "latent": "latent-ODE spirals training",
    "flow": "flow-matching training",
}


class CheckpointError(ValueError):
    """A checkpoint is unreadable, corrupt, from another program, or from an incompatible run."""


class CheckpointDamagedError(CheckpointError):
    """A checkpoint's bytes are damaged: unreadable, truncated, or not matching their digest.

    Attributes:
        problem: what is wrong, naming the file.
        remedy: what to do about it.
    """

    def __init__(self, problem: str, remedy: str = "") -> None:
        super().__init__(f"{problem} {remedy}".strip())
        self.problem, self.remedy = problem, remedy


def checkpoint_format(kind: str) -> str:
    """The format tag stored in a ``kind`` checkpoint, e.g. ``"neuralode.mnist-training-checkpoint"``."""
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"Unknown checkpoint kind {kind!r}. Valid kinds: {', '.join(CHECKPOINT_KINDS)}.")
    return f"neuralode.{kind}-training-checkpoint"


def _kind_of(state: Any) -> str | None:
    """The kind whose format tag ``state`` (a loaded checkpoint) carries, or ``None``."""
    found = state.get("format") if isinstance(state, dict) else None
    return next((k for k in CHECKPOINT_KINDS if found == checkpoint_format(k)), None)


# --------------------------------------------------------------------------------------------
# Checkpoints.


def _digest_into(h: hashlib._Hash, obj: Any) -> None:
    # A canonical walk over the contents: type tags and lengths keep different structures with
    # the same leaves apart (a list of two from a tuple of two, "1" from 1).
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _digest_into(h, key)
            _digest_into(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _digest_into(h, item)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj}".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj};".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()};".encode())
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(f"S{len(data)}:".encode() + data)
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__} in a checkpoint")


def _digest(obj: Any) -> str:
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    *,
    kind: str = "mnist",
    keep_previous: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``state`` (plus format tag, version and content digest) atomically to ``path``.

    The file is a plain ``torch.save`` archive: ``torch.load(path, weights_only=True)`` opens it.
    With ``keep_previous``, the checkpoint it replaces is kept under that name (see :func:`neuralode._atomic.atomic_write`).

    Raises:
        TypeError: if ``state`` holds something other than tensors, mappings, lists, tuples,
            numbers, strings, booleans and ``None``.
    """
    body = {"format": checkpoint_format(kind), "version": CHECKPOINT_VERSION, **state}
    body["sha256"] = _digest({k: v for k, v in body.items() if k != "sha256"})
    buffer = io.BytesIO()
    torch.save(body, buffer)
    return atomic_write_bytes(path, buffer.getvalue(), keep_previous=keep_previous)


def checkpoint_kind(path: str | os.PathLike[str]) -> str | None:
    """Which program wrote the checkpoint at ``path`` (a key of :data:`CHECKPOINT_KINDS`), or ``None``.

    ``None`` for a file that cannot be read or is not a neuralode checkpoint; :func:`load_checkpoint`
    says what is wrong with it. Raises ``FileNotFoundError`` if there is no file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any damage: the caller's load_checkpoint explains it
        return None
    return _kind_of(state)


def load_checkpoint(path: str | os.PathLike[str], *, kind: str = "mnist") -> dict[str, Any]:
    """Read a ``kind`` checkpoint written by :func:`save_checkpoint`, on the CPU, and check it.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointDamagedError: (a :class:`CheckpointError`) if it cannot be read (truncated, not a
            torch file) or its contents do not match the digest stored when it was written.
        CheckpointError: if it is not a neuralode checkpoint of this ``kind``, or of another version.
    """
    path = Path(path)
    checkpoint_format(kind)  # an unknown kind is the caller's error, before any file is read
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    remedy = "Delete it (and start the run over without --resume) or restore it from a copy."
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = str(exc).split("\n")[0][:200] or type(exc).__name__
        raise CheckpointDamagedError(
            f"Checkpoint {path} is corrupt or truncated and cannot be read ({reason}).", remedy
        ) from None
    found = _kind_of(state)
    if found != kind:
        what = f" (it is a neuralode {CHECKPOINT_KINDS[found]} checkpoint)" if found else ""
        raise CheckpointError(f"{path} is not a neuralode {CHECKPOINT_KINDS[kind]} checkpoint{what}. {remedy}")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {state.get('version')!r}; this neuralode reads version {CHECKPOINT_VERSION}."
        )
    try:
        actual = _digest({k: v for k, v in state.items() if k != "sha256"})
    except TypeError as exc:
        raise CheckpointDamagedError(f"Checkpoint {path} holds unexpected contents ({exc}).", remedy) from None
    if state.get("sha256") != actual:
        raise CheckpointDamagedError(
            f"Checkpoint {path} is corrupt: its contents do not match the SHA-256 recorded when it was written.", remedy
        )
    return state
