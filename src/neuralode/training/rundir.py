"""The run folder every task writes: config, metrics, checkpoint and a lock, with the resume rules.

::

    RUN_DIR/config.json      the run's settings (``{"config": ..., "run": ...}``), rewritten on resume
    RUN_DIR/metrics.jsonl    one JSON object per line, each with the ``iteration`` (optimisation
                             steps done) it was written at; appended with flush + fsync
    RUN_DIR/checkpoint.pt    the latest checkpoint (atomic, digest-checked: neuralode.checkpoints)
    RUN_DIR/.lock            held (``flock``) by the process writing the run; names its PID

**Resuming** continues from the checkpoint at step ``k``: metrics lines written after step ``k``
(the process died after logging them and before its next checkpoint) are dropped, and the task
writes them again as it redoes those steps, so a run killed anywhere (at a checkpoint or between
two) ends with each line exactly once. A torn last line (killed mid-write) is ignored by the reader.

**The lock.** A second process training into the same folder would interleave metrics and
overwrite checkpoints, so :meth:`RunDir.open` takes an exclusive ``flock`` on ``RUN_DIR/.lock``
and writes its PID into it. The kernel drops the lock when its holder dies, however it dies, so
a lock file left by a killed process is stale by construction: the next run takes it over (and
says so). Under data-parallel training only rank 0 writes and locks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Mapping

from ..checkpoints import CHECKPOINT_KINDS, CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, resume_differences

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def check_out(path: Path) -> None:
    """Raise :class:`ConfigError` (field ``out``) unless ``path`` is, or can be made, a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError("out", f"the run folder {str(path)!r} exists and is not a folder; choose another path.")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError("out", f"cannot create the run folder {str(path)!r}: {str(ancestor)!r} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError("out", f"cannot write the run folder {str(path)!r}: no write permission in {str(ancestor)!r}.")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a last line cut short (killed mid-append) is skipped.

    Raises:
        ValueError: a line other than the last is not JSON (the file is damaged).
    """
    if not path.is_file():
        return []
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


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config`` saved in ``RUN_DIR/config.json`` (a plain dict).

    Raises:
        FileNotFoundError: no ``config.json``; ValueError: it is not JSON.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}).") from None
    return saved.get("config", saved)


class RunDir:
    """One run folder, opened by one task run; see the module docstring.

    Args:
        path: the folder.
        kind: the checkpoint kind (``"mnist"``, ``"cnf"``, ``"latent"``).
        writer: whether this process writes (rank 0 under data parallel); the others only read.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, *, writer: bool = True) -> None:
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"RunDir kind must be one of {', '.join(CHECKPOINT_KINDS)}; got {kind!r}.")
        self.path, self.kind, self.writer = Path(path), kind, writer
        self.config_path = self.path / CONFIG_NAME
        self.metrics_path = self.path / METRICS_NAME
        self.checkpoint_path = self.path / CHECKPOINT_NAME
        self.lock_path = self.path / LOCK_NAME
        self._lock_fd: int | None = None

    # Opening and closing.

    def open(self, config: RunConfig) -> dict[str, Any] | None:
        """Check the folder against ``config.resume``, lock it, and return the checkpoint to resume.

        Returns:
            The loaded checkpoint when resuming, ``None`` for a new run.

        Raises:
            ConfigError: ``out`` cannot be a writable folder (field ``out``).
            FileExistsError: it holds a run and ``resume`` is off.
            FileNotFoundError: ``resume`` is on and there is no checkpoint.
            CheckpointError: the checkpoint is damaged, of another task, or from a run whose
                weight-shaping settings (:attr:`RunConfig.RESUME_KEEP`) differ.
            RunLockedError: another live process is writing the folder.
        """
        check_out(self.path)
        if not config.resume and self.checkpoint_path.exists():
            raise FileExistsError(
                f"{self.path} already holds a training run ({CHECKPOINT_NAME}). Pass --resume (resume=True) to "
                f"continue it, or choose another output folder."
            )
        if config.resume and not self.checkpoint_path.is_file():
            raise FileNotFoundError(
                f"Cannot resume: no {CHECKPOINT_NAME} in {self.path}. Start a new run without --resume "
                f"(a run stopped before its first checkpoint has nothing to resume)."
            )
        if self.writer:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # what check_out cannot foresee: /proc, a read-only mount, a full disk
                raise ConfigError("out", f"cannot create the run folder {str(self.path)!r}: {exc.strerror}.") from None
            self._lock()
        if not config.resume:
            return None
        try:
            state = load_checkpoint(self.checkpoint_path, kind=self.kind)
            diffs = resume_differences(state["config"], config)
            if diffs:
                raise CheckpointError(
                    f"Cannot resume {self.checkpoint_path}: these settings differ from the saved run's ({'; '.join(diffs)}). "
                    f"Resume with the saved settings, or start a new run in another folder."
                )
        except BaseException:
            self.close()
            raise
        return state

    def close(self) -> None:
        """Release the lock (the folder's files stay)."""
        if self._lock_fd is not None:
            try:
                self.lock_path.unlink(missing_ok=True)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split() or ["?"]
                os.close(fd)
                where = f" on {holder[1]}" if len(holder) > 1 else ""
                raise RunLockedError(
                    f"{self.path} is in use: process {holder[0]}{where} is training into it (lock file {self.lock_path}). "
                    f"Wait for it to finish or stop it, or choose another --out."
                ) from None
            # The holder we waited on may have unlinked the file as we opened it: lock the live file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.read(fd, 200).decode(errors="replace").split()
        if previous and previous[0] != str(os.getpid()):
            print(f"{self.path}: taking over the stale lock of process {previous[0]}, which is no longer running.", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def note(self, message: str) -> None:
        """A line on stderr from the writing process (resumed from where, stopped where).

        Written with ``tqdm.write``, which clears an open progress bar's line first, so a message
        never continues the bar's line.
        """
        if self.writer:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def note_stopped(self, signal_name: str | None, where: str, resume_hint: str) -> None:
        """What every task says when a signal stopped it."""
        self.note(f"Stopped by {signal_name or 'a signal to another process'} at {where}; checkpoint saved to "
                  f"{self.checkpoint_path}.\nResume with: {resume_hint}")

    # Files.

    def write_config(self, config: RunConfig, **run: Any) -> None:
        """``config.json``: the settings and facts about this session (``run``)."""
        if self.writer:
            atomic_write_text(self.config_path, json.dumps({"config": config.to_dict(), "run": run}, indent=2) + "\n")

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one metrics line, flushed and fsynced: a line reported is a line on disk."""
        if not self.writer:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics records (see :func:`read_jsonl`)."""
        return read_jsonl(self.metrics_path)

    def restart_metrics(self, iteration: int) -> list[dict[str, Any]]:
        """Keep the lines of steps up to ``iteration`` (the checkpoint's), drop the rest; return the kept."""
        kept = [r for r in self.read_metrics() if r.get("iteration", 0) <= iteration and not r.get("final")]
        if self.writer:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def save(self, config: RunConfig, state: Mapping[str, Any]) -> None:
        """Write the checkpoint atomically: ``state`` plus the config it was trained with."""
        if self.writer:
            save_checkpoint(self.checkpoint_path, {"config": config.to_dict(), **state}, kind=self.kind)


def run_task(config: RunConfig, kind: str, train, *args: Any):
    """Run a task's training loop ``train(config, ctx, run, stop, *args)`` inside the shared machinery:
    the process group (``torchrun`` or one process), the run folder of checkpoint ``kind`` (written by
    rank 0 only, locked against a second writer) and the SIGINT/SIGTERM stop flag, all released on exit."""
    from .distributed import init_distributed
    from .signals import StopFlag

    ctx = init_distributed(config.device)
    try:
        with RunDir(config.out, kind, writer=ctx.is_main) as run, StopFlag() as stop:
            return train(config, ctx, run, stop, *args)
    finally:
        ctx.close()
