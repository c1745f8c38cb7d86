"""The run folder every task writes: config, metrics, checkpoint and a lock, with the resume rules.

::

    RUN_DIR/config.json      the run's settings (``{"config": ..., "run": ...}``), rewritten on resume
    RUN_DIR/metrics.jsonl    one JSON object per line, each with the ``iteration`` (optimisation
                             steps done) it was written at; appended with flush + fsync
    RUN_DIR/checkpoint.pt    the latest checkpoint (atomic, digest-checked: neuralode.training.checkpoints)
    RUN_DIR/checkpoint.prev.pt  the one before it, kept when the latest is written
    RUN_DIR/.lock            held (``flock``) by the process writing the run; names its PID

**Resuming** continues from the checkpoint at step ``k``: metrics lines written after step ``k``
(the process died after logging them and before its next checkpoint) are dropped, and the task
writes them again as it redoes those steps, so a run killed anywhere (at a checkpoint or between
two) ends with each line exactly once.

**Nothing lost silently.** Each checkpoint carries the metrics lines up to its step and the
config, so the run folder's other files can be rebuilt from it, and are, with a message:
a missing or damaged ``metrics.jsonl`` is rewritten from the checkpoint's copy (a torn last line
from a kill is dropped with a warning), a missing ``config.json`` is recovered from the checkpoint's
config. A checkpoint that cannot be read (truncated, corrupt, or absent because the process died
between the two renames of a rotation) gives way to the previous one, with a message; the damaged
file is kept beside it as ``checkpoint.pt.damaged``. A folder holding another task's run is refused,
naming that task.

**When checkpoints are written**: every ``checkpoint_every`` steps and every ``checkpoint_seconds``
of wall time, whichever comes first (:meth:`RunDir.after_step`), besides the task's own boundaries
and a signal; a kill loses at most that much work. :meth:`RunDir.plan` states the run's size up
front, and :meth:`RunDir.after_step` adds a time estimate once the first steps are timed.

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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .checkpoints import (
    CHECKPOINT_KINDS,
    CheckpointDamagedError,
    CheckpointError,
    checkpoint_kind,
    load_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, RunConfig, resume_differences

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
DAMAGED_SUFFIX = ".damaged"
LOCK_NAME = ".lock"

# Task names of the command line that differ from their checkpoint kind (config.json files written
# before the kind was recorded name only the task).
_LEGACY_TASK_KINDS = {"spirals": "latent"}


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


class WrongTaskError(ValueError):
    """The run folder holds a run of another task."""


def check_out(path: Path, *, field: str = "out", what: str = "run folder") -> None:
    """Raise :class:`ConfigError` (``field``) unless ``path`` is, or can be made, a writable folder.

    Args:
        path: the folder.
        field: the setting the error names.
        what: how messages call the folder.
    """
    if isinstance(path, str) and not path.strip():  # Path("") would be the current folder
        raise ConfigError(field, f"the {what} is an empty path {path!r}; name a folder ('.' for the current one).")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(field, f"the {what} {str(path)!r} exists and is not a folder; choose another path.")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(field, f"cannot create the {what} {str(path)!r}: {str(ancestor)!r} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(field, f"cannot write the {what} {str(path)!r}: no write permission in {str(ancestor)!r}.")


def scan_jsonl(path: Path) -> tuple[list[dict[str, Any]], int | None, list[int]]:
    """Read a metrics file as it is, damage included.

    Returns:
        ``(records, torn, damaged)``: the records of the good lines; the number (1-based) of the last
        line if it is cut short (no final newline and not a JSON object: a write killed midway), else
        ``None``; the numbers of the other lines that are not UTF-8 JSON objects.
    """
    records: list[dict[str, Any]] = []
    damaged: list[int] = []
    torn = None
    data = path.read_bytes()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == len(lines) - 1:  # the last line has no newline after it: an append cut short
                torn = i + 1
            else:
                damaged.append(i + 1)
            continue
        records.append(record)
    return records, torn, damaged


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a last line cut short (killed mid-append) is skipped.

    Raises:
        ValueError: a line other than the last is not a UTF-8 JSON object (the file is damaged); the
            message names the file and the line.
    """
    if not path.is_file():
        return []
    records, _, damaged = scan_jsonl(path)
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise ValueError(
            f"{path}, line {damaged[0]}{more}: not valid JSON; the file is damaged. Resuming the run "
            f"(neuralode train TASK --out RUN_DIR --resume) rewrites it from the checkpoint's copy."
        )
    return records


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config`` saved in ``RUN_DIR/config.json`` (a plain dict).

    Raises:
        FileNotFoundError: no ``config.json``; ValueError: it is not a JSON object.
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?"
        )
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config", saved), dict):
        raise ValueError(f"{path} is not valid JSON (not an object of settings).")
    return saved.get("config", saved)


def saved_run_task(run_dir: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """``(kind, task)`` of the run in ``run_dir``: its checkpoint kind (a key of
    :data:`~neuralode.training.checkpoints.CHECKPOINT_KINDS`) and the command-line task that wrote it, from
    ``config.json``, else from the checkpoint (kind only); ``(None, None)`` when neither says."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / CONFIG_NAME).read_bytes().decode("utf-8")).get("run", {})
        task = run.get("task")
        kind = run.get("kind") or _LEGACY_TASK_KINDS.get(task, task)
    except (OSError, ValueError, AttributeError):
        kind = task = None
    if kind is not None:
        return kind, task
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        if (run_dir / name).is_file():
            kind = checkpoint_kind(run_dir / name)
            if kind is not None:
                return kind, None
    return None, None


def check_run_task(run_dir: str | os.PathLike[str], kind: str, task: str | None = None) -> None:
    """Raise :class:`WrongTaskError` if ``run_dir`` holds a run of another kind than ``kind``.

    Args:
        run_dir: the run folder.
        kind: the checkpoint kind of the task about to use it.
        task: that task's command-line name, for the message (default: ``kind``).
    """
    found, found_task = saved_run_task(run_dir)
    if found is None or found == kind:
        return
    name = found_task or found
    what = CHECKPOINT_KINDS.get(found, "unknown")
    raise WrongTaskError(
        f"{run_dir} holds a {name} run ({what}), not a {task or kind} run ({CHECKPOINT_KINDS[kind]}). "
        f"Resume it with 'neuralode train {name} --out {run_dir} --resume', or choose another --out."
    )


def load_run_checkpoint(
    run_dir: str | os.PathLike[str], kind: str, *, set_aside: bool = False
) -> tuple[dict[str, Any], Path, str | None]:
    """Load a run's checkpoint, falling back to the previous one when the latest is damaged or missing.

    Args:
        run_dir: the run folder.
        kind: the checkpoint kind expected.
        set_aside: rename a damaged latest checkpoint to ``checkpoint.pt.damaged`` (the writer of a
            resumed run does, so that its next checkpoint does not rotate the damaged file into the
            place of the good previous one).

    Returns:
        ``(state, path, note)``: the checkpoint, the file it came from, and ``None`` or a message
        saying why the previous checkpoint was used.

    Raises:
        FileNotFoundError: the folder holds neither checkpoint.
        CheckpointDamagedError: both are damaged (or the latest is and there is no previous).
        CheckpointError: a checkpoint of another kind or version.
    """
    run_dir = Path(run_dir)
    latest, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_CHECKPOINT_NAME
    try:
        return load_checkpoint(latest, kind=kind), latest, None
    except FileNotFoundError:
        if not previous.is_file():
            raise FileNotFoundError(
                f"No {CHECKPOINT_NAME} in {run_dir}: is it a training run folder (neuralode train ... --out DIR)?"
            ) from None
        problem, damaged = f"There is no {latest} (the run stopped while replacing it).", None
    except CheckpointDamagedError as exc:
        if not previous.is_file():
            raise CheckpointDamagedError(
                exc.problem,
                f"There is no previous checkpoint ({PREVIOUS_CHECKPOINT_NAME}) to fall back to. {exc.remedy}",
            ) from None
        problem, damaged = exc.problem, exc
    try:
        state = load_checkpoint(previous, kind=kind)
    except CheckpointDamagedError as exc:
        raise CheckpointDamagedError(
            f"{problem} The previous checkpoint is no better: {exc.problem}", exc.remedy
        ) from None
    kept = ""
    if damaged is not None and set_aside:
        os.replace(latest, latest.with_name(latest.name + DAMAGED_SUFFIX))
        kept = f" (the damaged file is kept as {latest.name}{DAMAGED_SUFFIX})"
    return state, previous, f"{problem.rstrip('.')}: using the previous checkpoint, {previous}, instead{kept}."


def recover_run_config(run_dir: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], str]:
    """The run's settings when ``config.json`` is missing or damaged: the config its checkpoint holds.

    Returns:
        ``(config, message)``: the saved ``config`` dict and a line saying where it came from.

    Raises:
        FileNotFoundError / CheckpointError: as :func:`load_run_checkpoint`.
    """
    state, path, note = load_run_checkpoint(run_dir, kind)
    config_path = Path(run_dir) / CONFIG_NAME
    what = "is damaged" if config_path.exists() else "is missing"
    message = f"{config_path} {what}: the run's settings were recovered from {path}"
    if note:
        message += f" ({note})"
    return dict(state["config"]), message + "; config.json is written again when training starts."


def _duration(seconds: float) -> str:
    """``"0.5 s"``, ``"40 s"``, ``"12 min"``, ``"3 h 20 min"``, ``"2 d 4 h"``."""
    if seconds < 10:
        return f"{seconds:.3g} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


class RunDir:
    """One run folder, opened by one task run; see the module docstring.

    Args:
        path: the folder.
        kind: the checkpoint kind (``"mnist"``, ``"cnf"``, ``"latent"``).
        writer: whether this process writes (rank 0 under data parallel); the others only read.
        ctx: the process group (:class:`~neuralode.training.distributed.Dist`); with several
            processes, :meth:`after_step` makes them agree on when a timed checkpoint is due.
    """

    #: The time estimate is printed once this many seconds have passed since the first step ended
    #: (the first step, with its start-up costs, is not counted).
    ESTIMATE_AFTER_SECONDS = 15.0

    def __init__(self, path: str | os.PathLike[str], kind: str, *, writer: bool = True, ctx: Any = None) -> None:
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"RunDir kind must be one of {', '.join(CHECKPOINT_KINDS)}; got {kind!r}.")
        self.path, self.kind, self.writer, self.ctx = Path(path), kind, writer, ctx
        self.config_path = self.path / CONFIG_NAME
        self.metrics_path = self.path / METRICS_NAME
        self.checkpoint_path = self.path / CHECKPOINT_NAME
        self.previous_checkpoint_path = self.path / PREVIOUS_CHECKPOINT_NAME
        self.lock_path = self.path / LOCK_NAME
        self._lock_fd: int | None = None
        self._config: RunConfig | None = None
        self._saved_records: list[dict[str, Any]] | None = None  # the metrics lines the checkpoint carries
        self._records: list[dict[str, Any]] = []  # the lines of this run up to now, for the next checkpoint
        self._last_save = time.monotonic()
        self._first_step: tuple[int, float] | None = None
        self._plan: tuple[int, str] | None = None  # total steps, what they are; None once estimated

    # Opening and closing.

    def open(self, config: RunConfig) -> dict[str, Any] | None:
        """Check the folder against ``config.resume``, lock it, and return the checkpoint to resume.

        Returns:
            The loaded checkpoint when resuming, ``None`` for a new run.

        Raises:
            ConfigError: ``out`` cannot be a writable folder (field ``out``).
            WrongTaskError: the folder holds another task's run.
            FileExistsError: it holds a run and ``resume`` is off.
            FileNotFoundError: ``resume`` is on and there is no checkpoint.
            CheckpointError: the checkpoint (and the previous one) is damaged, of another task, or
                from a run whose weight-shaping settings (:attr:`RunConfig.RESUME_KEEP`) differ.
            RunLockedError: another live process is writing the folder.
        """
        check_out(self.path)
        has_checkpoint = self.checkpoint_path.exists() or self.previous_checkpoint_path.exists()
        if config.resume or has_checkpoint:
            check_run_task(self.path, self.kind)
        if not config.resume and has_checkpoint:
            raise FileExistsError(
                f"{self.path} already holds a training run ({CHECKPOINT_NAME}). Pass --resume (resume=True) to "
                f"continue it, or choose another output folder."
            )
        if config.resume and not has_checkpoint:
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
        self._config, self._last_save = config, time.monotonic()
        if not config.resume:
            return None
        try:
            state, path, note = load_run_checkpoint(self.path, self.kind, set_aside=self.writer)
            if note:
                self.note(note)
            diffs = resume_differences(state["config"], config)
            if diffs:
                raise CheckpointError(
                    f"Cannot resume {path}: these settings differ from the saved run's ({'; '.join(diffs)}). "
                    f"Resume with the saved settings, or start a new run in another folder."
                )
        except BaseException:
            self.close()
            raise
        self._saved_records = state.get("metrics")
        return state

    def close(self) -> None:
        """Release the lock (the folder's files stay)."""
        if self._lock_fd is not None:
            try:
                self.lock_path.unlink(missing_ok=True)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # a folder that exists but takes no files: /proc, a read-only mount
                raise ConfigError("out", f"cannot write the run folder {str(self.path)!r}: {exc.strerror}.") from None
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
            print(
                f"{self.path}: taking over the stale lock of process {previous[0]}, which is no longer running.",
                file=sys.stderr,
            )
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
        self.note(
            f"Stopped by {signal_name or 'a signal to another process'} at {where}; checkpoint saved to "
            f"{self.checkpoint_path}.\nResume with: {resume_hint}"
        )

    # The plan, the time estimate and when to checkpoint.

    def plan(self, total: int, done: int, what: str) -> None:
        """Say up front what the run will do (with ``config.progress``), and time the first steps.

        Args:
            total: optimisation steps of the whole run.
            done: steps already done (a resumed run's checkpoint).
            what: the steps in the task's words, e.g. ``"160 epochs of 468 steps of odenet"``.
        """
        config = self._config
        if config is None:
            raise RuntimeError("RunDir.plan() before RunDir.open()")
        every = []
        if config.checkpoint_every:
            every.append(f"every {config.checkpoint_every:,} steps")
        if config.checkpoint_seconds:
            every.append(f"every {_duration(config.checkpoint_seconds)}")
        saves = f"a checkpoint {' and '.join(every)} and on Ctrl-C" if every else "checkpoints at the end and on Ctrl-C"
        left = f", {total - done:,} to go" if done else ""
        if config.progress:
            self.note(
                f"Plan: {total:,} steps of {what}{left}, into {self.path}; {saves}. "
                f"A time estimate follows after the first steps."
            )
        self._plan = (total, what) if done < total else None

    def after_step(self, step: int) -> bool:
        """Call after each optimisation step; whether a checkpoint is due now.

        Due every ``checkpoint_every`` steps and whenever ``checkpoint_seconds`` have passed since
        the last checkpoint (all processes agree: the slowest clock decides). Also prints, once,
        the time the remaining steps will take at the rate measured since the first step.

        Args:
            step: steps done so far over the whole run (1 after the first).
        """
        config = self._config
        if config is None:
            raise RuntimeError("RunDir.after_step() before RunDir.open()")
        now = time.monotonic()
        if self._plan is not None:
            if self._first_step is None:
                self._first_step = (step, now)
            elif now - self._first_step[1] >= self.ESTIMATE_AFTER_SECONDS and step > self._first_step[0]:
                total, _ = self._plan
                rate = (now - self._first_step[1]) / (step - self._first_step[0])
                if config.progress and total > step:
                    self.note(
                        f"Estimate: {rate:.3g} s per step (steps {self._first_step[0] + 1}-{step}), so about "
                        f"{_duration(rate * (total - step))} for the {total - step:,} steps left "
                        f"(evaluations and checkpoints add to it)."
                    )
                self._plan = None
        due = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
        if config.checkpoint_seconds:
            timed = now - self._last_save >= config.checkpoint_seconds
            if self.ctx is not None and getattr(self.ctx, "enabled", False):
                import torch

                flag = torch.tensor([float(timed)], dtype=torch.float64)
                timed = bool(self.ctx.all_reduce(flag, op="max").item())
            due = due or timed
        return due

    # Files.

    def write_config(self, config: RunConfig, **run: Any) -> None:
        """``config.json``: the settings and facts about this session (``run``; its ``kind`` is added)."""
        if self.writer:
            run = {**run, "kind": self.kind}
            atomic_write_text(self.config_path, json.dumps({"config": config.to_dict(), "run": run}, indent=2) + "\n")

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one metrics line, flushed and fsynced: a line reported is a line on disk."""
        self._records.append(dict(record))
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
        """Keep the lines of steps up to ``iteration`` (the checkpoint's), drop the rest; return the kept.

        A resumed run takes the lines from the checkpoint's copy and rewrites ``metrics.jsonl`` with
        them, saying so when the file was missing, damaged or different; a torn last line (a kill
        mid-write) is dropped with a warning.

        Raises:
            FileNotFoundError: the file is missing and the checkpoint (from an earlier neuralode)
                holds no copy of the lines.
            ValueError: the same, for a damaged file.
        """
        path = self.metrics_path
        exists = path.is_file()
        records, torn, damaged = scan_jsonl(path) if exists else ([], None, [])
        on_disk = [r for r in records if r.get("iteration", 0) <= iteration and not r.get("final")]
        saved = self._saved_records
        if saved is None and iteration > 0:  # a checkpoint without the lines: the file is all there is
            remedy = (
                "restore it, or (accepting the loss) write an empty metrics.jsonl to continue without it, or start "
                "a new run in another folder."
            )
            if not exists:
                raise FileNotFoundError(
                    f"{path} is missing and the checkpoint holds no copy of the run's history: {remedy}"
                )
            if damaged:
                raise ValueError(
                    f"{path}, line {damaged[0]}: not valid JSON; the checkpoint holds no copy of the run's "
                    f"history to rewrite it from: {remedy}"
                )
        kept = [dict(r) for r in saved] if saved is not None else on_disk
        if saved is not None:
            if not exists:
                self.note(
                    f"{path} was missing: rewrote its {len(kept)} lines up to step {iteration} from the checkpoint."
                )
            elif damaged:
                more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
                self.note(
                    f"{path}, line {damaged[0]}{more}: not valid JSON (damaged); rewrote the file's {len(kept)} "
                    f"lines up to step {iteration} from the checkpoint."
                )
            elif json.dumps(on_disk) != json.dumps(kept):
                self.note(
                    f"{path} did not hold the lines the checkpoint holds for steps up to {iteration}: rewrote "
                    f"those {len(kept)} lines from the checkpoint."
                )
        if torn is not None and not damaged and self._config is not None and self._config.resume:
            self.note(f"{path}, line {torn}: cut short (the process was stopped while writing it); dropped.")
        self._records = kept
        if self.writer:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return [dict(r) for r in kept]

    def save(self, config: RunConfig, state: Mapping[str, Any]) -> None:
        """Write the checkpoint atomically, keeping the one it replaces as ``checkpoint.prev.pt``:
        ``state`` plus the config it was trained with and the metrics lines up to now."""
        self._last_save = time.monotonic()
        if self.writer:
            body = {"config": config.to_dict(), "metrics": self._records, **state}
            save_checkpoint(self.checkpoint_path, body, kind=self.kind, keep_previous=self.previous_checkpoint_path)
            self._last_save = time.monotonic()


def iteration_state(iteration: int, seconds: float, model, optimizer, window, ctx) -> dict[str, Any]:
    """The checkpoint state of a task counted in iterations with one model and one optimizer (cnf, flow):
    the position, the training seconds so far, the weights, the optimizer, the RNG streams and the logging
    window's running sums (``window``: a :class:`~neuralode.training.distributed.Sums`, all-reduced over
    ``ctx``'s ranks). :func:`restore_iteration_state` reads it back."""
    from .seeding import rng_state

    return {
        "iteration": iteration,
        "seconds": seconds,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(ctx.device),
        "window_sums": window.state(ctx),
    }


def restore_iteration_state(checkpoint: Mapping[str, Any] | None, model, optimizer, window, ctx) -> tuple[int, float]:
    """Load :func:`iteration_state`'s ``checkpoint`` into ``model``, ``optimizer``, the RNG streams and ``window``;
    returns ``(iteration, seconds)`` to continue from, ``(0, 0.0)`` when there is no checkpoint."""
    if checkpoint is None:
        return 0, 0.0
    from .seeding import set_rng_state

    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    set_rng_state(checkpoint["rng"], ctx.device)
    window.load(checkpoint["window_sums"], ctx)
    return int(checkpoint["iteration"]), float(checkpoint["seconds"])


def run_task(config: RunConfig, kind: str, train, *args: Any):
    """Run a task's training loop ``train(config, ctx, run, stop, *args)`` inside the shared machinery:
    the process group (``torchrun`` or one process), the run folder of checkpoint ``kind`` (written by
    rank 0 only, locked against a second writer) and the SIGINT/SIGTERM stop flag, all released on exit."""
    from .distributed import init_distributed
    from .signals import StopFlag

    ctx = init_distributed(config.device)
    try:
        with RunDir(config.out, kind, writer=ctx.is_main, ctx=ctx) as run, StopFlag() as stop:
            return train(config, ctx, run, stop, *args)
    finally:
        ctx.close()
