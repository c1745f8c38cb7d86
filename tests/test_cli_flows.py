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
    assert (
        main(
            ["train", "cnf", "--iterations", "5", "--batch-size", "64", "--out", str(out), "--resume", "--no-progress"]
        )
        == 0
    )
    final = _lines(out / "metrics.jsonl")[-1]
    assert final["iteration"] == 5
    capsys.readouterr()
    # `neuralode eval` recognises a CNF run and measures the same NLL on the same fresh samples.
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "8gaussians" and result["iteration"] == 5
    assert result["test_nll"] == pytest.approx(final["test_nll"], rel=1e-5)
    assert main(["eval", str(out), "--test-subset", "500"]) == 0
    assert "CNF on 8gaussians after 5 iterations: test NLL " in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["eval", str(out), "--full"])
    assert info.value.code == 2
    assert f"argument --full: applies to MNIST runs; {out} is a cnf run" in capsys.readouterr().err


def test_train_spirals_writes_the_rmse_line(tmp_path, capsys):
    out = tmp_path / "spirals"
    assert (
        main(["train", "spirals", "--iterations", "3", "--observations", "30", "--out", str(out), "--no-progress"]) == 0
    )
    assert "extrapolation RMSE" in capsys.readouterr().out
    final = _lines(out / "metrics.jsonl")[-1]
    assert {"extrapolation_rmse", "reconstruction_rmse", "rnn_extrapolation_rmse"} <= set(final)
    assert (out / "checkpoint.pt").is_file() and (out / "spirals.png").is_file()
    # `neuralode eval` recognises a latent-ODE run and reproduces the final line's RMSEs.
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("extrapolation_rmse", "reconstruction_rmse", "rnn_extrapolation_rmse"):
        assert result[key] == pytest.approx(final[key], rel=1e-5), key
    assert result["iteration"] == 3 and result["observations"] == 30
    assert main(["eval", str(out)]) == 0
    assert capsys.readouterr().out.startswith("latent ODE, 30 observations, after 3 iterations (")


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
