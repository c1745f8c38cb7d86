"""Small matrix products in neuralode's inductor graphs (neuralode.solvers.methods.small_matmul): decomposed into
a broadcast product and a sum up to MAX_WORK multiply-adds, in float32 and float64, with ATen's values to rounding
(and its gradients); left to inductor above that, for other dtypes and for addmm with beta or alpha != 1; taken by
the graphs compiled_fn builds (no external GEMM call) only while SMALL_MATMUL."""

from __future__ import annotations

import shutil

import pytest
import torch

from neuralode.solvers.methods import compiled
from neuralode.solvers.methods.small_matmul import MAX_WORK, _addmm, _mm, decompositions

needs_cxx = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="inductor's CPU code needs a C++ compiler"
)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-13)])
def test_values_of_small_products(dtype, tol):
    torch.manual_seed(0)
    a, b, bias = torch.randn(8, 16, dtype=dtype), torch.randn(16, 2, dtype=dtype), torch.randn(2, dtype=dtype)
    torch.testing.assert_close(_mm(a, b), a @ b, rtol=tol, atol=tol)
    torch.testing.assert_close(_addmm(bias, a, b), torch.addmm(bias, a, b), rtol=tol, atol=tol)
    assert set(decompositions()) == {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}


def test_declined_where_a_gemm_does_better_or_the_call_is_not_plain():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    assert 64**3 > MAX_WORK and _mm(a, b) is NotImplemented
    small_a, small_b, bias = torch.randn(4, 4), torch.randn(4, 4), torch.randn(4)
    assert _addmm(bias, small_a, small_b, beta=0.5) is NotImplemented
    assert _addmm(bias, small_a, small_b, alpha=2) is NotImplemented
    assert _mm(small_a.half(), small_b.half()) is NotImplemented
    assert _mm(small_a.to(torch.complex64), small_b.to(torch.complex64)) is NotImplemented


def _extern_gemms(fn, *args) -> int:
    from torch._inductor.utils import run_and_get_code

    _, code = run_and_get_code(fn, *args)
    text = "\n".join(code)
    return text.count("extern_kernels.addmm(") + text.count("extern_kernels.mm(")


@needs_cxx
def test_inductor_graphs_take_it_below_the_bound_only(monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 2)
    with torch.no_grad():
        small, large = torch.randn(8, 16), torch.randn(512, 16)  # 256 and 16,384 multiply-adds
        assert _extern_gemms(compiled.compiled_fn(lambda v: lin(v) * 2.0, "inductor"), small) == 0
        assert _extern_gemms(compiled.compiled_fn(lambda v: lin(v) * 3.0, "inductor"), large) == 1
        monkeypatch.setattr(compiled, "SMALL_MATMUL", False)
        assert _extern_gemms(compiled.compiled_fn(lambda v: lin(v) * 4.0, "inductor"), small) == 1


@needs_cxx
def test_gradients_through_a_compiled_small_product():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 2)
    x = torch.randn(8, 16, requires_grad=True)

    def loss(v):
        return torch.tanh(lin(v)).square().sum()

    eager = torch.autograd.grad(loss(x), (x, *lin.parameters()))
    ours = torch.autograd.grad(compiled.compiled_fn(loss, "inductor")(x), (x, *lin.parameters()))
    for g, r in zip(ours, eager):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
