"""`neuralode train cnf` and `neuralode train spirals` from the command line, end to end (tiny runs)."""

from __future__ import annotations

import json

import pytest

from neuralode.cli import main


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_cnf_writes_run_and_resumes(tmp_path, capsys):
    out = tmp_path / "cnf"
    assert main(["train", "cnf", "--iterations", "3", "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    assert "test NLL" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "density.png", "flow.png"):
        assert (out / name).is_file(), name
    lines = _lines(out / "metrics.jsonl")
    assert {"iteration", "loss", "nfe_forward", "nfe_backward"} <= set(lines[0])
    assert "test_nll" in lines[-1]
    assert main(["train", "cnf", "--iterations", "5", "--batch-size", "64", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert _lines(out / "metrics.jsonl")[-1]["iteration"] == 5


def test_train_spirals_writes_the_rmse_line(tmp_path, capsys):
    out = tmp_path / "spirals"
    assert main(["train", "spirals", "--iterations", "3", "--observations", "30", "--out", str(out), "--no-progress"]) == 0
    assert "extrapolation RMSE" in capsys.readouterr().out
    final = _lines(out / "metrics.jsonl")[-1]
    assert {"extrapolation_rmse", "reconstruction_rmse", "rnn_extrapolation_rmse"} <= set(final)
    assert (out / "checkpoint.pt").is_file() and (out / "spirals.png").is_file()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "cnf", "--iterations", "0"], "--iterations"),
        (["train", "cnf", "--dataset", "nope"], "--dataset"),
        (["train", "spirals", "--observations", "40"], "--observations"),
        (["train", "spirals", "--lr", "-1"], "--lr"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert flag in capsys.readouterr().err
