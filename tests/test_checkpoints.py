"""neuralode._atomic (atomic writes) and neuralode.training.checkpoints (checkpoints tagged by program,
shared by all trainers)."""

from __future__ import annotations

import os
import re
import stat

import pytest
import torch

from neuralode._atomic import atomic_write, atomic_write_text
from neuralode.training.checkpoints import (
    CHECKPOINT_KINDS,
    CheckpointError,
    checkpoint_format,
    load_checkpoint,
    save_checkpoint,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_text(path, "intact")

    def half_then_fail(fh):
        fh.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_atomic_files_get_the_mode_open_would_give(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "config.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_KINDS))
def test_each_kind_round_trips_and_is_refused_by_the_others(tmp_path, kind):
    state = {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "iteration": 7,
        "rng": torch.get_rng_state(),
        "config": {"lr": 1e-3, "dims": (64, 64), "name": kind, "flag": None},
    }
    path = save_checkpoint(tmp_path / "checkpoint.pt", state, kind=kind)
    loaded = load_checkpoint(path, kind=kind)
    assert loaded["format"] == checkpoint_format(kind) == f"neuralode.{kind}-training-checkpoint"
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["iteration"] == 7
    for other in set(CHECKPOINT_KINDS) - {kind}:
        expected = (
            f"{path} is not a neuralode {CHECKPOINT_KINDS[other]} checkpoint "
            f"(it is a neuralode {CHECKPOINT_KINDS[kind]} checkpoint). Delete it"
        )
        with pytest.raises(CheckpointError, match=re.escape(expected)):
            load_checkpoint(path, kind=other)


def test_an_unknown_kind_is_refused_with_the_valid_ones(tmp_path):
    with pytest.raises(
        ValueError, match=re.escape("Unknown checkpoint kind 'gan'. Valid kinds: mnist, cnf, latent, flow.")
    ):
        save_checkpoint(tmp_path / "c.pt", {}, kind="gan")
    assert not (tmp_path / "c.pt").exists()


def test_unsupported_contents_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot digest a object in a checkpoint"):
        save_checkpoint(tmp_path / "c.pt", {"thing": object()})
    assert list(tmp_path.iterdir()) == []


def test_keep_previous_rotates_the_replaced_checkpoint(tmp_path):
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    for step in (1, 2, 3):
        save_checkpoint(latest, {"step": step}, kind="cnf", keep_previous=previous)
    assert load_checkpoint(latest, kind="cnf")["step"] == 3
    assert load_checkpoint(previous, kind="cnf")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_a_failed_rotation_leaves_a_good_checkpoint(tmp_path, monkeypatch):
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_checkpoint(latest, {"step": 1}, kind="cnf", keep_previous=previous)
    real_replace = os.replace

    def die_before_the_second_rename(src, dst):
        real_replace(src, dst)
        if str(dst) == str(previous):  # old -> previous done, new -> latest not yet: a kill here
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", die_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(latest, {"step": 2}, kind="cnf", keep_previous=previous)
    assert not latest.exists() and load_checkpoint(previous, kind="cnf")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt"]  # no temporary left


def test_a_folder_that_takes_no_file_is_named_not_the_temporary(tmp_path):
    with pytest.raises(OSError) as info:
        atomic_write_text("/proc/neuralode-test.json", "{}")
    assert info.value.filename == "/proc/neuralode-test.json" and ".tmp" not in str(info.value)
