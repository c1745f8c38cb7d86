"""benchmarks/bench_gradients.py runs end to end with ``--quick``: every mode on every workload gives a row
with numbers (no mode fails), and the modes that differentiate the discretised solve give backprop's gradient."""

from __future__ import annotations

import re

from benchmarks import bench_gradients, common

WORKLOADS = ("MLP", "ODE-Net block", "CNF")


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _rows(section: str, key: int = 0) -> dict[str, list[str]]:
    """The table's body rows, by the cell in column ``key``."""
    lines = [line for line in section.splitlines() if line.startswith("| ")][2:]  # past header and rule
    return {cells[key]: cells for cells in ([c.strip() for c in line.strip("| ").split(" | ")] for line in lines)}


def test_quick_run_writes_every_mode_and_exact_checkpointed_gradients(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "machine_markdown", lambda: "Machine: (not read in this test).")
    path = bench_gradients.main(["--quick", "--out", str(tmp_path)])
    text = path.read_text()
    assert "fails:" not in text, text
    assert list(_rows(_section(text, "Which to use"))) == list(WORKLOADS)
    for workload in WORKLOADS:
        assert workload in text and "fastest: **" in _section(text, workload)
        rows = _rows(_section(text, workload))
        assert list(rows) == list(bench_gradients.MODES)
        for name, cells in rows.items():
            assert re.fullmatch(r"\d+ \+ \d+", cells[3]), cells  # NFE forward + backward
            assert cells[4] != "—" and cells[5] != "—", cells  # both memory columns measured
            error64 = float(cells[6])
            # Checkpointing re-runs the very steps backprop differentiates: the same gradient to rounding.
            # The adjoints give the continuous gradient: near it, not equal (the ODE-Net block has ReLUs).
            assert error64 < (1e-10 if "checkpoint" in name else 0.1), (workload, cells)
        assert rows["backsolve adjoint"][3].split(" + ")[1] != "0"
    big = _rows(_section(text, "The Gauss adjoint at over a million parameters"), key=1)
    assert {"backprop", "backsolve adjoint", "interpolating adjoint", "Gauss adjoint"} <= set(big)
    assert "Gauss ÷ backsolve" in text
