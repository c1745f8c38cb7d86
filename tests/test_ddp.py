"""Data parallel for the CNF, flow and spirals tasks: two gloo processes under torchrun against one
process (the MNIST task's test is in test_training.py). Each rank trains on its rows of the global
batch and the gradients are averaged, so fixed-step parts match a single process up to summation
order; the adaptive solver picks its steps per shard, so the ODE parts match only approximately."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralode.cli import main
from neuralode.training.checkpoints import load_checkpoint
from neuralode.training.cnf import CNFTrainConfig, build_model
from neuralode.training.rundir import read_jsonl

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "neuralode",
        *argv,
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder") == 1  # only rank 0 reports
    return proc


def _both(tmp_path: Path, argv: list[str]) -> tuple[Path, Path]:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _torchrun([*argv, "--device", "cpu", "--out", str(ddp)])
    assert main([*argv, "--device", "cpu", "--out", str(single)]) == 0
    assert not (ddp / ".lock").exists()
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    return ddp, single


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_process_cnf_matches_one_process(tmp_path):
    argv = [
        "train",
        "cnf",
        "--iterations",
        "4",
        "--batch-size",
        "32",
        "--hidden-dims",
        "8",
        "--tol",
        "1e-6",
        "--test-samples",
        "200",
        "--log-every",
        "2",
        "--no-progress",
        "--no-plot",
    ]
    ddp, single = _both(tmp_path, argv)
    a, b = load_checkpoint(ddp / "checkpoint.pt", kind="cnf"), load_checkpoint(single / "checkpoint.pt", kind="cnf")
    assert a["config"]["batch_size"] == 32 and a["iteration"] == b["iteration"] == 4
    assert _max_difference(a["model"], b["model"]) < 1e-4  # tight tolerance: per-shard steps barely matter
    torch.manual_seed(0)  # the weights moved: the comparison is not between two initialisations
    init = build_model(CNFTrainConfig(hidden_dims=(8,), tol=1e-6)).state_dict()
    assert _max_difference(b["model"], init) > 1e-3
    ddp_lines, single_lines = read_jsonl(ddp / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    assert [r["iteration"] for r in ddp_lines] == [r["iteration"] for r in single_lines] == [2, 4, 4]
    for x, y in zip(ddp_lines[:-1], single_lines[:-1]):
        assert x["nll"] == pytest.approx(y["nll"], rel=1e-4)
    assert ddp_lines[-1]["test_nll"] == pytest.approx(single_lines[-1]["test_nll"], rel=1e-4)
    # Resuming under torchrun: rank 0 reads the checkpoint's settings and sums like a single process.
    proc = _torchrun(["train", "cnf", "--out", str(ddp), "--resume", "--iterations", "6"])
    assert proc.stderr.count(f"Resuming {ddp} with its saved settings, except iterations: 4 -> 6.") == 1
    lines = read_jsonl(ddp / "metrics.jsonl")
    assert [r["iteration"] for r in lines] == [2, 4, 6, 6] and [bool(r.get("final")) for r in lines] == [
        False,
        False,
        False,
        True,
    ]
    assert load_checkpoint(ddp / "checkpoint.pt", kind="cnf")["iteration"] == 6


def test_two_process_spirals_match_one_process(tmp_path):
    argv = [
        "train",
        "spirals",
        "--iterations",
        "3",
        "--observations",
        "30",
        "--batch-size",
        "8",
        "--n-spirals",
        "16",
        "--n-test",
        "4",
        "--tol",
        "1e-5",
        "--eval-every",
        "0",
        "--log-every",
        "1",
        "--no-progress",
        "--no-plot",
    ]
    ddp, single = _both(tmp_path, argv)
    a, b = (
        load_checkpoint(ddp / "checkpoint.pt", kind="latent"),
        load_checkpoint(single / "checkpoint.pt", kind="latent"),
    )
    assert _max_difference(a["rnn"], b["rnn"]) < 1e-5  # no adaptive solver in the RNN: equal up to rounding
    assert _max_difference(a["model"], b["model"]) < 1e-4
    ddp_lines, single_lines = read_jsonl(ddp / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    for x, y in zip(ddp_lines, single_lines):
        assert x["iteration"] == y["iteration"]
        for key in ("elbo", "rnn_loss") if "elbo" in x else ("extrapolation_rmse", "rnn_extrapolation_rmse"):
            assert x[key] == pytest.approx(y[key], rel=1e-4), key


def test_two_process_flow_matches_one_process(tmp_path):
    # Independent coupling: every draw is over the global batch, so two ranks reproduce one process
    # up to summation order (the OT coupling pairs each rank's own rows and so differs slightly).
    argv = [
        "train",
        "flow",
        "--coupling",
        "independent",
        "--mle-finetune",
        "0",
        "--iterations",
        "4",
        "--batch-size",
        "32",
        "--hidden-dims",
        "8",
        "--tol",
        "1e-3",
        "--test-samples",
        "100",
        "--table-samples",
        "32",
        "--table-steps",
        "2",
        "--table-tolerances",
        "1e-2",
        "--log-every",
        "2",
        "--no-progress",
        "--no-plot",
    ]
    ddp, single = _both(tmp_path, argv)
    a, b = load_checkpoint(ddp / "checkpoint.pt", kind="flow"), load_checkpoint(single / "checkpoint.pt", kind="flow")
    assert a["iteration"] == b["iteration"] == 4
    assert _max_difference(a["model"], b["model"]) < 1e-6
    ddp_lines, single_lines = read_jsonl(ddp / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
    assert [r["iteration"] for r in ddp_lines] == [2, 4, 4]
    for x, y in zip(ddp_lines[:-1], single_lines[:-1]):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    assert ddp_lines[-1]["test_nll"] == pytest.approx(single_lines[-1]["test_nll"], rel=1e-5)
