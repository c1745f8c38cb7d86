"""The step-size controllers without an ODE: sequences of error ratios in, decisions, steps and memory out.

Each kind against values worked out by hand from the formulas of ``controller.py``; the scalar clock
(Python floats) against the per-sample clock (``(B,)`` tensors) element by element; ``refuse`` (no growth
on the next proposal); the constant controller; and the predictive kinds on per-sample clocks, which the
shared formulas make available there.
"""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import solve
from neuralode.solvers.control.controller import (
    BatchStepSizeController,
    ConstantController,
    ControllerState,
    StepSizeController,
    initial_step,
)

F64 = torch.float64
SAFETY, IFACTOR, DFACTOR, K = 0.9, 10.0, 0.2, 5
KINDS = ("pi", "i", "gustafsson", "pi_gustafsson")


def _scalar(kind: str) -> StepSizeController:
    return StepSizeController(kind, SAFETY, IFACTOR, DFACTOR, K)


def _batch(kind: str) -> BatchStepSizeController:
    return BatchStepSizeController(kind, SAFETY, IFACTOR, DFACTOR, K)


def _run(controller, state, dt, ratios):
    """Feed ``ratios`` to ``controller.adapt``, each attempt at the step the last one proposed."""
    out = []
    for r in ratios:
        accept, dt_next, state = controller.adapt(state, dt, r)
        out.append((accept, dt_next, state))
        dt = dt_next
    return out


# ---------------------------------------------------------------------------------------------------------------
# Each kind by hand: accept 0.5, reject 2.0, accept 0.01 right after the rejection, accept 0.0, reject inf, nan.

RATIOS = [0.5, 2.0, 0.01, 0.0, math.inf, math.nan]


def _expected(kind: str) -> list[tuple[bool, float, tuple]]:
    """The sequence worked out step by step from the formulas (k = 5: I exponent 1/5, PI 0.17 and 0.04,
    predictive h_n / h_{n-1} (max(r_{n-1}, 1e-2) / r_n^2)^(1/5))."""
    pi = kind in ("pi", "pi_gustafsson")
    h0 = 0.1
    # 1. r = 0.5 accepted, first step (r_prev = 1, no h_{n-1}): PI or I, no prediction.
    f1 = 0.9 * 0.5**-0.17 * 1.0**0.04 if pi else 0.9 * 0.5**-0.2
    h1 = h0 * f1
    # 2. r = 2 rejected: I control, never growing; the memory keeps the accepted step's r and h.
    h2 = h1 * min(0.9 * 2.0**-0.2, 1.0)
    # 3. r = 0.01 accepted right after the rejection: no growth (every proposal here is above 1).
    h3 = h2 * 1.0
    # 4. r = 0 accepted: the largest growth.
    h4 = h3 * IFACTOR
    # 5, 6. non-finite ratios: rejected with the largest shrink; the memory is kept.
    h5 = h4 * DFACTOR
    h6 = h5 * DFACTOR
    return [
        (True, h1, (0.5, False, h0)),
        (False, h2, (0.5, True, h0)),
        (True, h3, (0.01, False, h2)),
        (True, h4, (0.0, False, h3)),
        (False, h5, (0.0, True, h3)),
        (False, h6, (0.0, True, h3)),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_scalar_clock_by_hand(kind):
    got = _run(_scalar(kind), _scalar(kind).init(), 0.1, RATIOS)
    for (accept, dt, state), (e_accept, e_dt, e_state) in zip(got, _expected(kind), strict=True):
        assert accept is e_accept and isinstance(dt, float)
        assert dt == pytest.approx(e_dt, rel=1e-15)
        assert state == e_state


def test_hand_values_are_the_numbers():
    # The first proposals as numbers, not formulas: 0.9 * 0.5^(-1/5) and 0.9 * 0.5^(-0.17).
    assert _run(_scalar("i"), _scalar("i").init(), 0.1, [0.5])[0][1] == pytest.approx(0.1033829, rel=1e-6)
    assert _run(_scalar("pi"), _scalar("pi").init(), 0.1, [0.5])[0][1] == pytest.approx(0.1012552, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_memory_terms_after_two_accepted_steps(kind):
    """Accept r = 0.5 at h = 0.1, then r = 0.8 at the proposed h: the second proposal reads the first step's
    ratio (PI) and its size (the predictive cap)."""
    c = _scalar(kind)
    (_, h1, s1), (accept, h2, s2) = _run(c, c.init(), 0.1, [0.5, 0.8])
    i_factor = 0.9 * 0.8**-0.2
    pi_factor = 0.9 * 0.8**-0.17 * 0.5**0.04
    pred_factor = 0.9 * (h1 / 0.1) * 0.5**0.2 * 0.8**-0.4
    factor = pi_factor if kind in ("pi", "pi_gustafsson") else i_factor
    if kind in ("gustafsson", "pi_gustafsson"):
        factor = min(factor, pred_factor)
    assert accept and s2 == (0.8, False, h1)
    assert h2 == pytest.approx(h1 * factor, rel=1e-15)
    # The case is one where the prediction decides (the error constant grew: r_n / h_n^5 > r_{n-1} / h_{n-1}^5).
    assert pred_factor < min(i_factor, pi_factor)


# ---------------------------------------------------------------------------------------------------------------
# The two clocks, element by element.


def _random_memory(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: torch.empty(n, dtype=F64).uniform_(lo, hi, generator=g)  # noqa: E731
    ratio = u(-12, 5).exp()
    ratio[:8] = torch.tensor([0.0, math.inf, math.nan, 1.0, 1e-300, 1e300, 0.999999, 1.000001], dtype=F64)
    prev_ratio = u(-12, 2).exp()
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).to(F64)
    prev_dt = u(0.01, 1.0) * sign
    prev_dt[torch.rand(n, generator=g) < 0.1] = math.nan  # no accepted step yet
    dt = u(0.01, 1.0) * sign
    after_reject = torch.rand(n, generator=g) < 0.3
    return dt, ratio, ControllerState(prev_ratio, after_reject, prev_dt)


@pytest.mark.parametrize("kind", KINDS)
def test_the_clocks_agree_element_by_element(kind):
    """The same decision and memory exactly; the same step to rounding. The per-sample clock forms the factor as
    ``exp(-alpha log r + beta log r_prev)`` (one ``exp`` for every branch) where the scalar clock takes powers,
    which may differ in the last bits; wherever the clipping decides the two are the same number."""
    n = 400
    dt, ratio, memory = _random_memory(n, seed=KINDS.index(kind))
    accept, dt_next, state = _batch(kind).adapt(memory, dt, ratio)
    assert accept.shape == dt_next.shape == state.prev_ratio.shape == (n,)
    scalar = _scalar(kind)
    for i in range(n):
        m = ControllerState(float(memory.prev_ratio[i]), bool(memory.after_reject[i]), float(memory.prev_dt[i]))
        a, h, s = scalar.adapt(m, float(dt[i]), float(ratio[i]))
        assert bool(accept[i]) is a
        assert float(state.prev_ratio[i]) == s.prev_ratio
        assert bool(state.after_reject[i]) is s.after_reject
        if kind in ("gustafsson", "pi_gustafsson"):  # the others never read h_{n-1}, so need not keep it
            assert float(state.prev_dt[i]) == s.prev_dt or (math.isnan(s.prev_dt) and math.isnan(state.prev_dt[i]))
        factor = h / float(dt[i])
        if factor in (IFACTOR, DFACTOR, 1.0):
            assert float(dt_next[i]) == h
        else:
            assert float(dt_next[i]) == pytest.approx(h, rel=4e-15, abs=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_the_clocks_agree_along_a_sequence(kind):
    """Rows of a per-sample controller fed ratio sequences take the scalar controller's decisions."""
    g = torch.Generator().manual_seed(7)
    ratios = torch.empty(6, 30, dtype=F64).uniform_(-6, 1.5, generator=g).exp()  # (B, steps)
    batch = _batch(kind)
    state, dt = batch.init(ratios[:, 0]), torch.full((6,), 0.1, dtype=F64)
    seq = []
    for j in range(ratios.shape[1]):
        accept, dt, state = batch.adapt(state, dt, ratios[:, j])
        seq.append((accept, dt))
    for b in range(6):
        got = _run(_scalar(kind), _scalar(kind).init(), 0.1, ratios[b].tolist())
        for (accept, dt), (a, h, _) in zip(seq, got, strict=True):
            assert bool(accept[b]) is a and float(dt[b]) == pytest.approx(h, rel=1e-13)


# ---------------------------------------------------------------------------------------------------------------
# refuse, accepted, the constant controller.


@pytest.mark.parametrize("kind", KINDS)
def test_refuse_rejects_and_the_next_proposal_does_not_grow(kind):
    c = _scalar(kind)
    _, h1, s1 = c.adapt(c.init(), 0.1, 0.5)
    h2, s2 = c.refuse(s1, h1, 0.3)
    assert h2 == h1 * 0.3 and s2 == (s1.prev_ratio, True, s1.prev_dt)
    accept, h3, s3 = c.adapt(s2, h2, 1e-6)  # a tiny error would grow the step tenfold
    assert accept and h3 == h2 and s3 == (1e-6, False, h2)
    assert c.adapt(s3, h3, 1e-6)[1] > h3  # and grows it once the rejection is one step back

    b = _batch(kind)
    memory = b.init(torch.zeros(3))
    _, h1, s1 = b.adapt(memory, torch.full((3,), 0.1, dtype=F64), torch.tensor([0.5, 0.2, 0.9], dtype=F64))
    h2, s2 = b.refuse(s1, h1, 0.3)
    assert torch.equal(h2, h1 * 0.3) and bool(s2.after_reject.all()) and torch.equal(s2.prev_ratio, s1.prev_ratio)
    accept, h3, _ = b.adapt(s2, h2, torch.full((3,), 1e-6, dtype=F64))
    assert bool(accept.all()) and torch.equal(h3, h2)


def test_accepted_overrules_a_rejection():
    """``accepted``: the memory when the loop accepts a step the controller rejected (torchdiffeq's acceptance
    at min_step): the next proposal then reads that step as accepted."""
    c = _scalar("pi")
    accept, _, rejected = c.adapt(c.init(), 0.1, 3.0)
    assert not accept and rejected.after_reject
    assert c.accepted(rejected, 0.1, 3.0) == (3.0, False, 0.1)


def test_constant_controller_accepts_everything_and_keeps_no_memory():
    c = ConstantController()
    state = c.init()
    assert c.adapt(state, 0.1, 0.0) == (True, math.inf, state)
    assert c.adapt(state, 0.1, 5.0)[:2] == (True, math.inf)
    assert c.refuse(state, 0.1, 0.5) == (0.05, state)
    assert c.accepted(state, 0.1, 5.0) is state


def test_select_keeps_the_rows_of_a_compacted_batch():
    state = ControllerState(torch.arange(4.0), torch.tensor([True, False, True, False]), torch.arange(4.0) + 10)
    kept = state.select(torch.tensor([1, 3]))
    assert kept.prev_ratio.tolist() == [1.0, 3.0] and kept.after_reject.tolist() == [False, False]
    assert kept.prev_dt.tolist() == [11.0, 13.0]


# ---------------------------------------------------------------------------------------------------------------
# The initial step: one function, the norm decides the clock.


def test_initial_step_serves_both_clocks():
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(5, 3, generator=g, dtype=F64)
    A = torch.randn(3, 3, generator=g, dtype=F64)
    rtol, atol = 1e-6, 1e-8

    def f(t, y):
        return y @ A.T * (1 + 0.1 * (t if isinstance(t, float) else t[:, None]))

    def rms_scaled(x, y):  # one row of the batch: the scalar clock's float
        return float(torch.linalg.vector_norm(x / (atol + rtol * y.abs()))) / math.sqrt(x.numel())

    def rows_scaled(x, y):  # every row: the per-sample clock's (B,) norms
        return torch.linalg.vector_norm(x / (atol + rtol * y.abs()), dim=1) / math.sqrt(x.shape[1])

    t0 = torch.full((5,), 0.5, dtype=F64)
    batch = initial_step(f, t0, y0, f(t0, y0), -1.0, 5, rows_scaled)
    assert batch.shape == (5,) and batch.dtype == F64
    for i in range(5):
        yi = y0[i : i + 1]
        h = initial_step(f, 0.5, yi, f(0.5, yi), -1.0, 5, rms_scaled)
        assert isinstance(h, float) and float(batch[i]) == pytest.approx(h, rel=1e-13)
    # The degenerate branches on both clocks: a zero state (h0 = 1e-6) with a zero field (h1 = max(1e-6, 1e-3 h0)).
    zero = torch.zeros(2, 3, dtype=F64)
    assert initial_step(lambda t, y: 0 * y, 0.0, zero[:1], zero[:1], 1.0, 4, rms_scaled) == 1e-6
    assert initial_step(lambda t, y: 0 * y, t0[:2], zero, zero, 1.0, 4, rows_scaled).tolist() == [1e-6, 1e-6]


# ---------------------------------------------------------------------------------------------------------------
# The predictive controllers on per-sample clocks.


def _vdp_batch(mu):
    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], -1)

    return f


@pytest.mark.parametrize("kind", ["gustafsson", "pi_gustafsson"])
def test_predictive_controllers_on_per_sample_clocks_match_each_sample_alone(kind):
    mu = torch.tensor([0.5, 2.0, 5.0, 10.0], dtype=F64)
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.5], [-1.0, 0.3], [2.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 4, 5, dtype=F64)
    kw = dict(rtol=1e-6, atol=1e-8)
    per = solve(_vdp_batch(mu), y0, t, options={"per_sample": True, "controller": kind}, **kw)
    i_ctrl = solve(_vdp_batch(mu), y0, t, options={"per_sample": True, "controller": "i"}, **kw)
    for b in range(4):
        alone = solve(_vdp_batch(mu[b : b + 1]), y0[b : b + 1], t, options={"controller": kind}, **kw)
        assert float((per.ys[:, b] - alone.ys[:, 0]).abs().max()) < 1e-5
        # The same decisions as the scalar clock's controller (up to rounding of the step sizes).
        assert abs(int(per.stats.n_accepted[b]) - alone.stats.n_accepted) <= 1
        assert abs(int(per.stats.n_rejected[b]) - alone.stats.n_rejected) <= 1
    # The predictive cap acts (it is not I control under another name).
    assert not torch.equal(per.stats.n_accepted, i_ctrl.stats.n_accepted)
