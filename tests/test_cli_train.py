"""``neuralode train mnist``, ``eval`` and ``plot``: an end-to-end run on a subset, flag errors
(exit status 2, naming the flag), resumption from the command line and a real Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuralode.cli import main
from neuralode.training.mnist import epoch_records, load_checkpoint, read_metrics

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_data = pytest.mark.skipif(
    not (DATA / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST not found in {DATA} (the repository is expected beside shared/data/mnist)",
)
REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

QUICK = ["--train-subset", "256", "--test-subset", "128", "--data-dir", str(DATA), "--no-progress"]


# One torch thread for the module's training runs (see tests/conftest.py).


def exit_error(argv: list[str], capsys) -> str:
    """Run ``main(argv)``, expect exit status 2, return stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@needs_data
def test_train_eval_plot_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert (
        main(
            [
                "train",
                "mnist",
                "--model",
                "mlp",
                "--epochs",
                "1",
                "--train-subset",
                "256",
                "--test-subset",
                "128",
                "--data-dir",
                str(DATA),
                "--out",
                out,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out.startswith("mlp: 1 epoch(s), test error ")
    assert "on 128 samples, 238,510 parameters" in captured.out
    assert "epoch 1/1" in captured.err  # the progress bar and the epoch line go to stderr
    records = read_metrics(out)
    assert len(records) == 1 and records[0]["epoch"] == 1

    assert main(["eval", out]) == 0
    line = capsys.readouterr().out
    assert line.startswith("mlp after 1 epoch(s): test error ")
    assert f"{100 * records[0]['test_error']:.2f}%" in line and "/128 wrong" in line
    assert main(["eval", out, "--json", "--test-subset", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_samples"] == 64 and result["model"] == "mlp" and 0 <= result["test_error"] <= 1

    png = Path(out) / "learning_curves.png"
    png.unlink()
    assert main(["plot", out]) == 0
    assert capsys.readouterr().out.strip() == str(png)
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5_000


@needs_data
def test_resume_from_the_command_line_takes_the_saved_settings(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert (
        main(
            [
                "train",
                "mnist",
                "--model",
                "mlp",
                "--epochs",
                "1",
                "--seed",
                "7",
                "--batch-size",
                "64",
                "--tol",
                "1e-2",
                "--no-augment",
                *QUICK,
                "--out",
                out,
            ]
        )
        == 0
    )
    assert main(["train", "mnist", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    saved = json.loads((Path(out) / "config.json").read_text())["config"]
    assert (saved["model"], saved["seed"], saved["batch_size"], saved["epochs"], saved["resume"]) == (
        "mlp",
        7,
        64,
        2,
        True,
    )
    assert (saved["tol"], saved["augment"]) == (1e-2, False)
    assert json.loads((Path(out) / "config.json").read_text())["run"]["effective_lr"] == pytest.approx(0.05)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    err = exit_error(["train", "mnist", "--out", out, "--resume", "--seed", "8"], capsys)
    assert "argument --resume: Cannot resume" in err and "seed: saved 7, now 8" in err
    err = exit_error(["train", "mnist", "--model", "mlp", *QUICK, "--out", out], capsys)
    assert f"argument --out: {out} already holds a training run (checkpoint.pt). Pass --resume" in err
    path = Path(out) / "checkpoint.pt"
    for damaged in (
        path,
        Path(out) / "checkpoint.prev.pt",
    ):  # one damaged file gives way to the other (test_run_recovery)
        damaged.write_bytes(damaged.read_bytes()[:-100])
    err = exit_error(["train", "mnist", "--out", out, "--resume", "--epochs", "3"], capsys)
    assert (
        f"argument --resume: Checkpoint {path} is corrupt or truncated" in err
        and "The previous checkpoint is no better" in err
    )
    err = exit_error(["eval", out], capsys)
    assert f"argument RUN_DIR: Checkpoint {path} is corrupt or truncated" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--batch-size", "0"], "argument --batch-size: TrainConfig.batch_size must be a positive integer; got 0."),
        (["--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
        (["--lr", "-1"], "argument --lr: TrainConfig.lr must be a positive finite number; got -1.0."),
        (["--tol", "nan"], "argument --tol: expected a finite number, got nan"),
        (
            ["--lr-milestones", "2", "0.5"],
            "argument --lr-milestones: TrainConfig.lr_milestones must be increasing positive epoch counts "
            "(fractions allowed); got (2.0, 0.5).",
        ),
        (["--lr-decay", "0"], "argument --lr-decay: TrainConfig.lr_decay must be a positive finite number; got 0.0."),
        (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (
            ["--train-subset", "64"],
            "argument --train-subset: TrainConfig.train_subset=64 is smaller than batch_size=128",
        ),
        (["--data-dir", "/nonexistent/mnist"], "argument --data-dir: '/nonexistent/mnist' is not a directory"),
    ],
)
def test_bad_train_flags_exit_2_naming_the_flag(argv, expected, capsys, tmp_path):
    err = exit_error(["train", "mnist", "--out", str(tmp_path / "r"), *argv], capsys)
    assert f"neuralode train mnist: error: {expected}" in err
    assert not (tmp_path / "r").exists()


def test_other_command_errors(tmp_path, capsys):
    err = exit_error(["train", "mnist", "--out", str(tmp_path), "--resume"], capsys)
    assert f"argument --resume: nothing to resume in {str(tmp_path)!r}: No config.json in {tmp_path}" in err
    err = exit_error(["train"], capsys)
    assert "the following arguments are required: TASK" in err
    err = exit_error(["eval", str(tmp_path / "missing")], capsys)
    assert f"argument RUN_DIR: {str(tmp_path / 'missing')!r} is not a directory" in err
    err = exit_error(["eval", str(tmp_path)], capsys)
    assert f"argument RUN_DIR: No checkpoint.pt in {tmp_path}: is it a training run folder" in err
    err = exit_error(["plot", str(tmp_path)], capsys)
    assert f"argument RUN_DIR: No metrics.jsonl in {tmp_path}" in err


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "eval", "plot"):
        assert command in out


@needs_data
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    """A real SIGINT to a training subprocess, sent once its first epoch is on disk."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [
        sys.executable,
        "-m",
        "neuralode",
        "train",
        "mnist",
        "--model",
        "mlp",
        "--epochs",
        "100000",
        "--train-subset",
        "1024",
        "--test-subset",
        "128",
        "--data-dir",
        str(DATA),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "SIGINT received: saving a checkpoint after this step" in stderr
    assert f"Resume with: neuralode train mnist --out {out} --resume" in stderr
    state = load_checkpoint(out / "checkpoint.pt")
    done = len(epoch_records(read_metrics(out)))  # training lines (every log_every steps) may be there too
    assert done >= 1 and state["position"]["epoch"] == done  # stopped inside the epoch after the last full one
    # Resume and stop after one more epoch.
    target = state["position"]["epoch"] + 1
    assert main(["train", "mnist", "--out", str(out), "--resume", "--epochs", str(target), "--no-progress"]) == 0
    assert [r["epoch"] for r in epoch_records(read_metrics(out))] == list(range(1, target + 1))
