"""Runs that survive losing a file, for every task: a deleted or damaged metrics file or config, a
damaged latest checkpoint (the previous one takes over), ``--out ""``, a folder of another task,
runtime errors printed without the usage block, timed checkpoints, the plan and the time estimate.

Each task trains once, tiny (``STRAIGHT``); each case copies that folder, damages the copy, resumes
it and compares its metrics with the undamaged run's, line for line: nothing may be lost silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from neuralode.cli import main
from neuralode.cli.train import TASKS
from neuralode.training.config import ConfigError
from neuralode.training.rundir import RunDir, read_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mnist"
HAVE_MNIST = (DATA / "train-images-idx3-ubyte.gz").is_file()

# Every task's tiny run: 6 or 8 steps, a checkpoint every 3 (mnist: 2) steps, so that the folder
# holds a latest and a previous checkpoint. A task missing here fails test_every_task_is_covered.
TINY = {
    "mnist": [
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--train-subset",
        "256",
        "--test-subset",
        "64",
        "--batch-size",
        "64",
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--data-dir",
        str(DATA),
        "--no-progress",
        "--no-plot",
    ],
    "cnf": [
        "--iterations",
        "6",
        "--batch-size",
        "32",
        "--hidden-dims",
        "8",
        "--tol",
        "1e-3",
        "--test-samples",
        "100",
        "--log-every",
        "2",
        "--checkpoint-every",
        "3",
        "--no-progress",
        "--no-plot",
    ],
    "spirals": [
        "--iterations",
        "6",
        "--observations",
        "30",
        "--batch-size",
        "8",
        "--n-spirals",
        "16",
        "--n-test",
        "4",
        "--tol",
        "1e-2",
        "--eval-every",
        "0",
        "--log-every",
        "2",
        "--checkpoint-every",
        "3",
        "--no-progress",
        "--no-plot",
    ],
    "flow": [
        "--mle-finetune",
        "0",
        "--iterations",
        "6",
        "--batch-size",
        "32",
        "--hidden-dims",
        "16",
        "16",
        "--tol",
        "1e-3",
        "--test-samples",
        "100",
        "--table-samples",
        "64",
        "--table-steps",
        "1",
        "--table-tolerances",
        "1e-2",
        "--log-every",
        "2",
        "--checkpoint-every",
        "3",
        "--no-progress",
        "--no-plot",
    ],
}
STEPS = {"mnist": 8, "cnf": 6, "spirals": 6, "flow": 6}
#: The step of the checkpoint before the last (the previous one).
PREVIOUS_STEP = {"mnist": 6, "cnf": 3, "spirals": 3, "flow": 3}
TIMING = {"seconds", "eval_seconds", "samples_per_second", "wall_seconds"}


def _task_params():
    return [
        pytest.param(
            name, marks=pytest.mark.skipif(name == "mnist" and not HAVE_MNIST, reason=f"real MNIST not in {DATA}")
        )
        for name in TINY
    ]


def _without_timing(records):
    """The records less their wall-clock fields, at any depth (a flow run's sampling table times each row)."""
    if isinstance(records, dict):
        return {k: _without_timing(v) for k, v in records.items() if k not in TIMING}
    if isinstance(records, list):
        return [_without_timing(r) for r in records]
    return records


def _exit_error(argv, capfd) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capfd.readouterr().err
    return err


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``straight(task)``: the folder of the task's tiny run, trained once for the module."""
    runs: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in runs:
            out = tmp_path_factory.mktemp(task) / "run"
            assert main(["train", task, *TINY[task], "--out", str(out)]) == 0
            runs[task] = out
        return runs[task]

    return get


def _copy(straight, task, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(straight(task), out)
    return out


def test_every_task_is_covered():
    assert set(TINY) == {t.name for t in TASKS}


@pytest.mark.parametrize("task", _task_params())
def test_lost_metrics_and_config_are_rebuilt_from_the_checkpoint(task, straight, tmp_path, capfd):
    out = _copy(straight, task, tmp_path)
    config_before = json.loads((out / "config.json").read_text())["config"]
    (out / "metrics.jsonl").unlink()
    (out / "config.json").unlink()
    capfd.readouterr()
    assert main(["train", task, "--out", str(out), "--resume", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert (
        f"{out / 'config.json'} is missing: the run's settings were recovered from {out / 'checkpoint.pt'}; "
        f"config.json is written again when training starts." in err
    )
    kept = sum(
        not r.get("final") for r in read_jsonl(straight(task) / "metrics.jsonl")
    )  # all but CNF's and spirals' final line
    assert (
        f"{out / 'metrics.jsonl'} was missing: rewrote its {kept} lines up to step {STEPS[task]} from the checkpoint."
        in err
    )
    # Nothing lost: the same lines as the run that lost nothing, the final summary included.
    assert _without_timing(read_jsonl(out / "metrics.jsonl")) == _without_timing(
        read_jsonl(straight(task) / "metrics.jsonl")
    )
    config_after = json.loads((out / "config.json").read_text())["config"]
    assert {**config_before, "out": str(out), "resume": True} == config_after


@pytest.mark.parametrize("task", _task_params())
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(task, straight, tmp_path, capfd):
    out = _copy(straight, task, tmp_path)
    latest = out / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    lines = (out / "metrics.jsonl").read_bytes().split(b"\n")
    lines[1] = b"\xd5\x07 random bytes \x00\xff"  # and a damaged metrics line
    (out / "metrics.jsonl").write_bytes(b"\n".join(lines))
    capfd.readouterr()
    assert main(["train", task, "--out", str(out), "--resume", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert f"Checkpoint {latest} is corrupt or truncated and cannot be read (" in err
    assert (
        f"): using the previous checkpoint, {out / 'checkpoint.prev.pt'}, instead (the damaged file is kept as "
        f"checkpoint.pt.damaged)."
    ) in err
    assert f"{out / 'metrics.jsonl'}, line 2: not valid JSON (damaged); rewrote the file's " in err
    assert f"lines up to step {PREVIOUS_STEP[task]} from the checkpoint." in err
    assert (out / "checkpoint.pt.damaged").is_file()
    # The steps after the previous checkpoint are trained again, to the same lines.
    assert _without_timing(read_jsonl(out / "metrics.jsonl")) == _without_timing(
        read_jsonl(straight(task) / "metrics.jsonl")
    )
    # Both damaged: an error naming both, printed alone (no usage block), exit status 2.
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (out / "checkpoint.prev.pt").write_bytes(b"")
    err = _exit_error(["train", task, "--out", str(out), "--resume", "--no-progress"], capfd)
    assert "usage:" not in err
    assert err.splitlines()[-1].startswith(
        f"neuralode train {task}: error: argument --resume: Checkpoint {out / 'checkpoint.pt'} is corrupt or truncated"
    )
    assert (
        f"The previous checkpoint is no better: Checkpoint {out / 'checkpoint.prev.pt'} is corrupt or truncated" in err
    )


@pytest.mark.parametrize("task", _task_params())
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(task, straight, tmp_path, capfd):
    out = _copy(straight, task, tmp_path)
    n = len((out / "metrics.jsonl").read_text().splitlines())
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"iteration": 99, "lo')  # a kill in the middle of an append
    capfd.readouterr()
    assert main(["train", task, "--out", str(out), "--resume", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert (
        f"{out / 'metrics.jsonl'}, line {n + 1}: cut short (the process was stopped while writing it); dropped." in err
    )
    assert "rewrote" not in err  # the other lines were intact
    assert _without_timing(read_jsonl(out / "metrics.jsonl")) == _without_timing(
        read_jsonl(straight(task) / "metrics.jsonl")
    )


@pytest.mark.parametrize("task", _task_params())
def test_empty_out_another_tasks_folder_and_a_locked_one_are_refused_alone(task, straight, tmp_path, capfd):
    err = _exit_error(["train", task, *TINY[task], "--out", ""], capfd)
    assert "argument --out: expected a path, got an empty string '' (write '.' for the current folder)" in err
    config_cls = next(t for t in TASKS if t.name == task).load()[0]
    with pytest.raises(
        ConfigError, match=re.escape(f"{config_cls.__name__}.out must be a folder path; got '' (write '.' for")
    ):
        config_cls(out="")  # the library refuses it too
    other = "cnf" if task != "cnf" else "spirals"
    folder = straight(other)
    what = {"cnf": "CNF training", "spirals": "latent-ODE spirals training"}[other]
    for argv in (["--resume"], TINY[task]):  # resuming it, or starting a new run in it
        err = _exit_error(["train", task, "--out", str(folder), *argv], capfd)
        assert "usage:" not in err
        assert f"{folder} holds a {other} run ({what}), not a {task} run (" in err
        assert f"Resume it with 'neuralode train {other} --out {folder} --resume', or choose another --out." in err
    # A runtime error is printed alone: a folder locked by another writer, a resume mismatch.
    out = _copy(straight, task, tmp_path)
    saved = json.loads((out / "config.json").read_text())["config"]
    with RunDir(out, config_cls.KIND) as holder:
        holder.open(config_cls.from_dict(saved, out=out, resume=True))
        err = _exit_error(["train", task, "--out", str(out), "--resume"], capfd)
    assert (
        "usage:" not in err
        and f"neuralode train {task}: error: argument --out: {out} is in use: process {os.getpid()}" in err
    )
    err = _exit_error(["train", task, "--out", str(out), "--resume", "--seed", "5"], capfd)
    assert "usage:" not in err and "argument --resume: Cannot resume" in err and "seed: saved 0, now 5" in err


@pytest.mark.parametrize("task", _task_params())
def test_plan_estimate_and_timed_checkpoints(task, tmp_path, capfd, monkeypatch):
    saves = []
    real_save = RunDir.save
    monkeypatch.setattr(RunDir, "save", lambda self, *a, **k: (saves.append(1), real_save(self, *a, **k)))
    monkeypatch.setattr(RunDir, "ESTIMATE_AFTER_SECONDS", 0.0)
    out = tmp_path / "run"
    # A checkpoint every 1e-6 s and none by steps: one after every step.
    argv = [
        "train",
        task,
        *TINY[task],
        "--checkpoint-every",
        "0",
        "--checkpoint-seconds",
        "1e-6",
        "--progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    err = capfd.readouterr().err
    what = {
        "mnist": "mlp on MNIST, 2 epochs of 4 steps (batch 64)",
        "cnf": "a CNF on 8gaussians, batch 32",
        "spirals": "a latent ODE and an RNN on 16 spirals, batch 8",
        "flow": "flow matching on 8gaussians (ot coupling, linear path), batch 32",
    }[task]
    assert (
        f"Plan: {STEPS[task]} steps of {what}, into {out}; a checkpoint every 1e-06 s and on Ctrl-C. "
        f"A time estimate follows after the first steps."
    ) in err
    assert (
        "Estimate: " in err
        and "s per step (steps 2-2), so about " in err
        and f"for the {STEPS[task] - 2} steps left" in err
    )
    assert len(saves) == STEPS[task]  # every step (mnist's epoch ends save once, not twice)
    assert (out / "checkpoint.prev.pt").is_file()
    # --checkpoint-seconds is checked like every setting.
    err = _exit_error(["train", task, "--checkpoint-seconds", "-1", "--out", str(tmp_path / "r")], capfd)
    assert (
        "argument --checkpoint-seconds: " in err
        and ".checkpoint_seconds must be a non-negative finite number; got -1.0." in err
    )


def test_demo_checks_its_out_before_running(tmp_path, capfd, monkeypatch):
    import neuralode.cli.demo_study

    monkeypatch.setattr(neuralode.cli.demo_study, "run_demo", lambda config: pytest.fail("the demo ran"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = _exit_error(["demo", "--quick", "--out", str(a_file / "figures")], capfd)
    assert (
        f"neuralode demo: error: argument --out: cannot create the figure folder {str(a_file / 'figures')!r}: "
        f"{str(a_file)!r} is a file, not a folder." in err
    )
    err = _exit_error(["demo", "--quick", "--out", "/proc/neuralode-demo"], capfd)
    assert "argument --out: cannot " in err and "'/proc/neuralode-demo'" in err and "usage:" not in err
    err = _exit_error(["demo", "--out", ""], capfd)
    assert "argument --out: expected a path, got an empty string ''" in err


def test_plot_output_errors_name_output_not_a_temporary_file(straight, capfd):
    run = straight("cnf")
    err = _exit_error(["plot", str(run), "--output", "/proc/curves.png"], capfd)
    assert (
        err.strip()
        == "neuralode plot: error: argument --output: cannot write '/proc/curves.png': No such file or directory"
    )
    err = _exit_error(["plot", str(run), "--output", str(run / "curves")], capfd)
    assert "argument --output: " in err and "has no suffix" in err


def test_eval_needs_no_config_and_falls_back_to_the_previous_checkpoint(straight, tmp_path, capfd):
    out = _copy(straight, "cnf", tmp_path)
    (out / "config.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 64)
    assert main(["eval", str(out), "--json"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["iteration"] == PREVIOUS_STEP["cnf"]
    assert f"using the previous checkpoint, {out / 'checkpoint.prev.pt'}, instead." in captured.err
    assert (out / "checkpoint.pt").is_file()  # eval reads; it moves nothing aside


def test_a_run_killed_between_the_two_renames_resumes_from_the_previous_checkpoint(straight, tmp_path, capfd):
    out = _copy(straight, "cnf", tmp_path)
    (out / "checkpoint.pt").unlink()  # what a kill after "latest -> previous" and before "new -> latest" leaves
    capfd.readouterr()
    assert main(["train", "cnf", "--out", str(out), "--resume", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert (
        f"There is no {out / 'checkpoint.pt'} (the run stopped while replacing it): using the previous checkpoint, "
        f"{out / 'checkpoint.prev.pt'}, instead."
    ) in err
    assert _without_timing(read_jsonl(out / "metrics.jsonl")) == _without_timing(
        read_jsonl(straight("cnf") / "metrics.jsonl")
    )


def test_a_checkpoint_without_the_history_refuses_to_lose_it_silently(straight, tmp_path, capfd):
    """A checkpoint from before checkpoints carried the metrics lines: a lost metrics file cannot be
    rebuilt, so resuming stops and says how to accept the loss."""
    from neuralode.training.checkpoints import load_checkpoint, save_checkpoint

    out = _copy(straight, "cnf", tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        state = load_checkpoint(out / name, kind="cnf")
        save_checkpoint(
            out / name,
            {k: v for k, v in state.items() if k not in ("metrics", "format", "version", "sha256")},
            kind="cnf",
        )
    (out / "metrics.jsonl").unlink()
    err = _exit_error(["train", "cnf", "--out", str(out), "--resume", "--no-progress"], capfd)
    assert "usage:" not in err
    assert (
        f"argument --resume: {out / 'metrics.jsonl'} is missing and the checkpoint holds no copy of the run's history: "
        f"restore it, or (accepting the loss) write an empty metrics.jsonl to continue without it"
    ) in err
    (out / "metrics.jsonl").write_text("")
    capfd.readouterr()
    assert main(["train", "cnf", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert [r.get("final", False) for r in read_jsonl(out / "metrics.jsonl")] == [True]  # only what came after
    assert "NFE per training iteration (mean, as in metrics.jsonl) not known (no lines)" in capfd.readouterr().out
