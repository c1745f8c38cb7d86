"""examples/stiff_robertson.py runs on a CI budget: it trains a stiff Neural ODE through rodas5p, the fit
improves, and it writes its figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stiff_robertson.py"


@pytest.mark.parametrize(
    ("method", "gradient"), [("rodas5p", []), ("radau5", []), ("radau9", []), ("rodas5p", ["--gauss"])]
)
def test_stiff_robertson_quick(tmp_path, capsys, method, gradient):
    spec = importlib.util.spec_from_file_location("stiff_robertson", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--iters", "2", "--method", method, *gradient, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = [s for s in out.splitlines() if s.startswith("fit error")][-1]
    before, after = (float(x.split()[0]) for x in line.split(": ", 1)[1].split(" before, "))
    assert after < before  # two Adam steps through the stiff method already improve the fit
    png = tmp_path / "stiff_robertson.png"
    assert png.exists() and png.stat().st_size > 10_000
