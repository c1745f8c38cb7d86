"""``neuralode train flow``, ``eval`` and ``plot`` end to end on tiny budgets, flag errors, and an
exact resume of a run stopped by a real SIGINT."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuralode.cli import main
from neuralode.training.flow import load_flow_checkpoint

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = [
    "--mle-finetune",  # flow matching alone: the fine-tune has tests of its own
    "0",
    "--hidden-dims",
    "16",
    "16",
    "--batch-size",
    "32",
    "--test-samples",
    "200",
    "--table-samples",
    "64",
    "--table-steps",
    "1",
    "4",
    "--table-tolerances",
    "1e-2",
    "1e-4",
    "--tol",
    "1e-3",
    "--no-progress",
]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def exit_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_train_eval_plot_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "flow"
    assert (
        main(
            [
                "train",
                "flow",
                "--dataset",
                "moons",
                "--coupling",
                "ot",
                "--iterations",
                "20",
                "--log-every",
                "10",
                *TINY,
                "--no-plot",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert (
        report.startswith("flow on moons (ot coupling, linear path): 20 iterations in ")
        and "W2 @ NFE: euler " in report
    )
    lines = _lines(out / "metrics.jsonl")
    assert [r["iteration"] for r in lines[:-1]] == [10, 20] and all(r["loss"] > 0 for r in lines[:-1])
    final = lines[-1]
    assert final["final"] and final["test_samples"] == 200 and final["divergence"] == "exact"
    rows = final["sampling"]
    assert [(r["method"], r["steps"], r["nfe"]) for r in rows[:6]] == [
        ("euler", 1, 1),
        ("euler", 4, 4),
        ("midpoint", 1, 2),
        ("midpoint", 4, 8),
        ("rk4", 1, 4),
        ("rk4", 4, 16),
    ]
    assert [r["rtol"] for r in rows[6:]] == [1e-2, 1e-4] and all(r["w2"] > 0 for r in rows)
    # `neuralode eval` reproduces the held-out NLL and the table.
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_nll"] == pytest.approx(final["test_nll"], rel=1e-6)
    assert [r["w2"] for r in result["sampling"]] == pytest.approx([r["w2"] for r in rows], rel=1e-6)
    assert main(["eval", str(out), "--test-subset", "50"]) == 0
    text = capsys.readouterr().out
    assert (
        text.startswith("flow on moons (ot coupling) after 20 iterations: test NLL ")
        and " on 50 held-out samples" in text
        and "  rk4           4" in text
    )
    # One reflow from this run: it starts from the run's weights and trains on its noise-sample pairs.
    reflow = tmp_path / "reflow"
    assert (
        main(
            [
                "train",
                "flow",
                "--dataset",
                "moons",
                "--reflow-from",
                str(out),
                "--coupling",
                "independent",
                "--reflow-pairs",
                "256",
                "--iterations",
                "2",
                *TINY,
                "--no-plot",
                "--out",
                str(reflow),
            ]
        )
        == 0
    )
    assert "flow on moons (independent coupling, linear path): 2 iterations" in capsys.readouterr().out
    err = exit_error(
        ["train", "flow", "--reflow-from", str(out), "--coupling", "independent", "--out", str(tmp_path / "r2")], capsys
    )
    assert (
        f"argument --reflow-from: the flow in {str(out)!r} differs from this run (dataset: 'moons' there, '8gaussians' here; "
        f"hidden_dims: (16, 16) there, (64, 64, 64) here)"
    ) in err
    err = exit_error(
        ["train", "flow", "--reflow-from", str(tmp_path), "--coupling", "independent", "--out", str(tmp_path / "r2")],
        capsys,
    )
    assert f"argument --reflow-from: no checkpoint.pt in {str(tmp_path)!r}: name a trained flow run folder." in err
    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == [
        "learning_curves.png",
        "samples.png",
        "trajectories.png",
        "quality_vs_nfe.png",
    ]
    for p in printed:
        assert Path(p).read_bytes()[:8] == PNG_SIGNATURE and Path(p).stat().st_size > 5_000


def test_mle_finetune_flag_trains_after_flow_matching_and_plots_its_nll(tmp_path, capsys):
    out = tmp_path / "flow"
    argv = ["train", "flow", "--iterations", "4", "--mle-finetune", "3", "--mle-tol", "1e-2", "--log-every", "2"]
    assert main([*argv, *TINY, "--mle-finetune", "3", "--test-samples", "50", "--no-plot", "--out", str(out)]) == 0
    assert "7 iterations in " in capsys.readouterr().out
    lines = _lines(out / "metrics.jsonl")
    assert [(r["iteration"], r.get("phase")) for r in lines[:-1]] == [(2, None), (4, None), (6, "mle"), (7, "mle")]
    assert json.loads((out / "config.json").read_text())["config"]["mle_finetune"] == 3
    # The learning curves show the fine-tune's NLL in a panel of its own.
    from neuralode.training.figures import draw_run

    labels = [ax.get_ylabel() for ax in draw_run(out).axes]
    assert labels[:2] == ["flow-matching loss (mean squared velocity error)", "fine-tune NLL (nats per sample)"]


def test_conditional_digits_on_the_vp_path_report_bits_per_dim(tmp_path, capsys):
    out = tmp_path / "digits"
    assert (
        main(
            [
                "train",
                "flow",
                "--dataset",
                "digits",
                "--conditional",
                "--guidance",
                "2",
                "--channels",
                "8",
                "--path",
                "vp",
                "--sigma",
                "0.05",
                "--iterations",
                "3",
                "--batch-size",
                "16",
                "--test-samples",
                "8",
                "--table-samples",
                "16",
                "--table-steps",
                "2",
                "--table-tolerances",
                "1e-2",
                "--tol",
                "1e-2",
                "--no-plot",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    final = _lines(out / "metrics.jsonl")[-1]
    assert final["divergence"] == "hutchinson"
    assert final["test_bpd"] == pytest.approx((final["test_nll"] / 64 - math.log(2) + math.log(17)) / math.log(2))
    assert "bits/dim" in capsys.readouterr().out


def _without_times(records: list[dict]) -> list[dict]:
    drop = ("seconds", "eval_seconds")
    return [
        {k: ([{**r, "seconds": None} for r in v] if k == "sampling" else v) for k, v in rec.items() if k not in drop}
        for rec in records
    ]


def test_sigint_then_resume_retraces_the_uninterrupted_run(tmp_path):
    """A real SIGINT to a training subprocess once its first lines are on disk, then --resume: the
    weights and every metrics line equal those of a run never stopped."""
    iterations = 300
    settings = [
        "--iterations",
        str(iterations),
        "--log-every",
        "5",
        "--checkpoint-every",
        "0",
        "--seed",
        "3",
        *TINY,
        "--no-plot",
    ]
    out = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuralode", "train", "flow", *settings, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no line logged in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert f"Resume with: neuralode train flow --out {out} --resume" in stderr
    stopped_at = load_flow_checkpoint(out / "checkpoint.pt")["iteration"]
    assert 5 <= stopped_at < iterations
    assert main(["train", "flow", "--out", str(out), "--resume", "--no-progress"]) == 0
    ref = tmp_path / "reference"
    assert main(["train", "flow", *settings, "--out", str(ref)]) == 0
    a, b = load_flow_checkpoint(out / "checkpoint.pt"), load_flow_checkpoint(ref / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == iterations
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert _without_times(_lines(out / "metrics.jsonl")) == _without_times(_lines(ref / "metrics.jsonl"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--coupling", "sinkhorn"], "argument --coupling: invalid choice: 'sinkhorn'"),
        (["--path", "cosine"], "argument --path: invalid choice: 'cosine'"),
        (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (
            ["--batch-size", "1"],
            "argument --batch-size: FlowTrainConfig.batch_size must be at least 2 for coupling='ot'",
        ),
        (
            ["--conditional"],
            "argument --conditional: FlowTrainConfig.conditional needs labelled data (digits, mnist); "
            "dataset '8gaussians' has no labels.",
        ),
        (
            ["--reflow-from", "runs/x"],
            "argument --coupling: FlowTrainConfig.coupling must be 'independent' with reflow_from",
        ),
        (
            ["--mle-finetune", "10", "--ema", "0.999"],
            "argument --ema: FlowTrainConfig.ema must be 0 with a maximum-likelihood fine-tune (mle_finetune=10)",
        ),
        (
            ["--mle-tol", "2"],
            "argument --mle-tol: FlowTrainConfig.mle_tol must be a tolerance in (0, 1); got 2.0.",
        ),
        (
            ["--mle-steps", "0"],
            "argument --mle-steps: FlowTrainConfig.mle_steps must be a positive integer; got 0.",
        ),
        (
            ["--label-dropout", "1.5"],
            "argument --label-dropout: FlowTrainConfig.label_dropout must be a non-negative finite "
            "number of at most 1.0; got 1.5.",
        ),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, expected, tmp_path, capsys):
    err = exit_error(["train", "flow", "--out", str(tmp_path / "r"), *argv], capsys)
    assert f"neuralode train flow: error: {expected}" in err
    assert not (tmp_path / "r").exists()


def test_digits_without_scikit_learn_names_the_install_command(tmp_path, capsys, monkeypatch):
    from neuralode.datasets.digits import _all_digits

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    _all_digits.cache_clear()
    try:
        with pytest.raises(SystemExit) as info:  # a runtime error: printed alone, exit status 1
            main(["train", "flow", "--dataset", "digits", "--no-progress", "--out", str(tmp_path / "d")])
        assert info.value.code == 1
    finally:
        _all_digits.cache_clear()
    err = capsys.readouterr().err
    assert (
        "neuralode train flow: error: the digits dataset is scikit-learn's bundled 8x8 digits, and scikit-learn is not "
        "installed; install it with: pip install 'neuralode[digits]'" in err
    )
    assert not (tmp_path / "d").exists()  # nothing written: the data is read before the run folder is made
