"""benchmarks/gpu_check.py stays ready for a CUDA machine: its correctness section (every method, float32
against float64 references, gradients) runs and passes here on the CPU, and without CUDA the script says so
and writes nothing."""

from __future__ import annotations

import warnings

import torch

from benchmarks import gpu_check
from neuralode.solvers.api import method_names


def test_correctness_section_covers_every_method_and_passes_on_the_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit_adams' corrector warns in float32 at its default tolerances
        text, ok = gpu_check.correctness(torch.device("cpu"), batch=4)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = {row.split("`")[1] for row in rows}
    assert set(method_names()) - {"scipy_solver"} <= names
    assert {"dopri5, per_sample", "tsit5, per_sample"} <= names
    assert "**FAIL**" not in text, text
    assert ok


def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert not out.exists()
    assert "no CUDA device" in capsys.readouterr().out
