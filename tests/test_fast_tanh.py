"""The float32 tanh of neuralode's inductor graphs (neuralode.solvers.methods.fast_tanh): a rational function within
7 units in the last place of the correctly rounded tanh over every float32 magnitude, odd, exact at the special
values, declined for other dtypes; taken by the graphs compiled_fn builds with inductor (float32 only, and only
while FAST_TANH), and kept apart from a plain torch.compile of the same code in inductor's on-disk caches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from neuralode.solvers.methods import compiled
from neuralode.solvers.methods.fast_tanh import _tanh, decompositions, rational_tanh

needs_cxx = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="inductor's CPU code needs a C++ compiler"
)


def _ulps(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|value - tanh(x)| in units in the last place of the float32 tanh (the reference in float64)."""
    ref = torch.tanh(x.double())
    ulp = torch.from_numpy(np.spacing(ref.abs().float().numpy()).astype(np.float64))
    return (value.double() - ref).abs() / ulp


def _float32_magnitudes() -> torch.Tensor:
    """Every binade of float32 from the subnormals up (64 points each), a fine grid of [0, 12], and beyond."""
    binades = torch.cat([torch.linspace(1.0, 2.0, 65)[:-1] * 2.0**e for e in range(-149, 8)])
    return torch.cat([binades, torch.linspace(0.0, 12.0, 1_200_001), torch.tensor([20.0, 1e4, 3.4e38])]).float()


def test_within_seven_ulps_of_tanh_and_odd():
    x = _float32_magnitudes()
    assert _ulps(rational_tanh(x), x).max() < 7.0
    assert torch.equal(rational_tanh(-x), -rational_tanh(x))
    assert rational_tanh(x).abs().max() <= 1.0


def test_special_values():
    x = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 1e-30])
    y = rational_tanh(x)
    assert torch.equal(torch.signbit(y[:2]), torch.tensor([False, True])) and (y[:2] == 0).all()
    assert y[2].item() == 1.0 and y[3].item() == -1.0 and torch.isnan(y[4])
    assert torch.equal(y[5:], x[5:])  # tanh(x) = x below float32's resolution of x³/3


def test_the_decomposition_declines_other_dtypes():
    table = decompositions()
    assert table[torch.ops.aten.tanh.default] is _tanh
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.complex64):
        assert _tanh(torch.ones(2, dtype=dtype)) is NotImplemented
    x = torch.linspace(-3.0, 3.0, 11)
    assert torch.equal(_tanh(x), rational_tanh(x))


@needs_cxx
def test_inductor_graphs_take_it_for_float32_only(monkeypatch):
    x = torch.linspace(-10.0, 10.0, 200_001)
    differ = _ulps(rational_tanh(x), x) >= 2  # points where the two tanh are told apart
    assert differ.sum() > 100
    y = compiled.compiled_fn(lambda v: torch.tanh(v) * 1.0, "inductor")(x)
    assert torch.equal(y, rational_tanh(x))
    x64 = x.double()
    y64 = compiled.compiled_fn(lambda v: torch.tanh(v) * 1.0, "inductor")(x64)
    assert (y64 - torch.tanh(x64)).abs().max() <= 2e-16
    monkeypatch.setattr(compiled, "FAST_TANH", False)
    y_aten = compiled.compiled_fn(lambda v: torch.tanh(v) * 2.0, "inductor")(x) / 2.0
    assert _ulps(y_aten, x)[differ].max() < 1.0


@needs_cxx
def test_on_disk_caches_keep_the_two_tanh_apart(tmp_path):
    """AOT autograd's on-disk cache keys a graph without its decompositions: a plain ``torch.compile`` of the same
    code in an earlier process must not hand its graph to compiled_fn (nor take compiled_fn's)."""
    script = textwrap.dedent(
        """
        import sys, torch
        from neuralode.solvers.methods.compiled import compiled_fn
        from neuralode.solvers.methods.fast_tanh import rational_tanh

        def f(v):
            return torch.tanh(v) * 3.0

        x = torch.linspace(-10.0, 10.0, 20_001)
        plain = torch.compile(f, fullgraph=True)(x)
        ours = compiled_fn(f, "inductor")(x)
        aten, rational = torch.tanh(x) * 3.0, rational_tanh(x) * 3.0
        print((plain - aten).abs().max().item(), (plain - rational).abs().max().item(), torch.equal(ours, rational))
        """
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for _ in range(2):  # the second process finds the first one's caches
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        plain_from_aten, plain_from_rational, ours_is_rational = out.stdout.split()[-3:]
        assert float(plain_from_aten) < float(plain_from_rational) / 2 and ours_is_rational == "True", out.stdout
