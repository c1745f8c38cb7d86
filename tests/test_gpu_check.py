"""benchmarks/gpu_check.py stays ready for a CUDA machine: its correctness section (the check of
tests/device_agreement.py, which test_method_conformance runs for every method) renders its table here on the
CPU, and without CUDA the script says so and writes nothing."""

from __future__ import annotations

import torch

from benchmarks import gpu_check
from tests import device_agreement


def test_correctness_section_lists_every_case_and_passes_on_the_cpu():
    labels = [c.label for c in device_agreement.cases()]
    assert "dopri5" in labels and "dopri5, per_sample" in labels and "scipy_solver" not in labels
    # Two cases for speed: every case is checked by test_method_conformance.
    text, ok = gpu_check.correctness(torch.device("cpu"), batch=4, names=["rk4", "dopri5, per_sample"])
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["rk4", "dopri5, per_sample"]
    assert "| dopri5 backprop |" in text and "| dopri5 adjoint |" in text
    assert "**FAIL**" not in text, text
    assert ok


def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert not out.exists()
    assert "no CUDA device" in capsys.readouterr().out
