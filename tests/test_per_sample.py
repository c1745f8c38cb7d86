"""Per-sample step control (``options={"per_sample": True}``): every sample on its own clock.

The reference for every property is the same: solving each sample alone with the joint loop.
A per-sample solve must reproduce it (states within the tolerance, accepted steps within a few
percent; with the same arithmetic they are usually identical), for shared ``(T,)`` and per-sample
``(B, T)`` output times, tuple states, float32 and float64, and gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import METHODS, solve
from neuralode.solvers.control.controller import BatchStepSizeController, ControllerState, StepSizeController
from neuralode.solvers.methods.interpolants import ContinuousExtension, Hermite
from neuralode.solvers.per_sample import PerSampleStats
from tests.registry import clock_tolerance, interpolant, methods, order, per_sample_methods_matching_the_joint_loop

F64 = torch.float64
B = 6


def vdp_batch(mu: torch.Tensor):
    """Van der Pol ``x'' = mu (1 - x^2) x' - x`` with one ``mu`` per row, forced by ``sin t``."""

    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x + 0.1 * torch.sin(t)], -1)

    return f


def mus(dtype=F64):
    return torch.logspace(math.log10(0.5), math.log10(8.0), B, dtype=dtype)


def y0s(dtype=F64):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(B, 2, generator=g, dtype=F64) * 2 - 1).to(dtype)


# Every method with a per-sample clock, from the registry: a method registered with ``per_sample`` is tested here.
PER_SAMPLE = methods("per_sample")


def order_tol(name: str) -> float:
    """A tolerance each per-sample method meets in a fraction of a second on these problems: a second-order pair
    at 1e-7 would take ~10^4 steps per sample."""
    return {2: 1e-3, 3: 1e-5}.get(order(name), 1e-7)


def solo(mu, y0, t, **kw):
    """Each sample alone, by the joint loop: (states (T, B, ...), accepted steps per sample)."""
    ys, steps = [], []
    for i in range(y0.shape[0]):
        ti = t if t.dim() == 1 else t[i]
        sol = solve(vdp_batch(mu[i : i + 1]), y0[i : i + 1], ti, **kw)
        ys.append(sol.ys[:, 0])
        steps.append(sol.stats.n_accepted)
    return torch.stack(ys, 1), torch.tensor(steps)


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_equals_each_sample_alone(method):
    # Every interpolant kind: dense (dopri5, tsit5), dense with extra stages (dopri8), Hermite (bosh3: FSAL;
    # adaptive_heun: not).
    tol = order_tol(method)
    mu, y0 = mus(), y0s()
    t = torch.linspace(0, 6, 13, dtype=F64)
    kw = dict(rtol=tol, atol=0.1 * tol, method=method)
    sol = solve(vdp_batch(mu), y0, t, options={"per_sample": True}, **kw)
    ref, steps = solo(mu, y0, t, **kw)
    assert sol.ys.shape == (13, B, 2) and sol.ts is t
    assert isinstance(sol.stats, PerSampleStats) and sol.stats.n_accepted.shape == (B,)
    assert float((sol.ys - ref).abs().max()) < 10 * tol
    assert torch.all((sol.stats.n_accepted - steps).abs() <= (0.03 * steps).ceil())
    # Stiffer samples need more steps: per-sample control gives each what it needs.
    assert int(sol.stats.n_accepted[-1]) > int(sol.stats.n_accepted[0])
    assert torch.all(sol.stats.nfe > sol.stats.n_accepted)


@pytest.mark.parametrize("method", ["adaptive_heun", "dopri8_13m"])
def test_without_fsal_the_next_first_stage_is_the_interpolants_end_derivative(method):
    # A method without FSAL evaluates its first stage afresh each step, but where outputs inside a step made its
    # interpolant evaluate f(t + h, y1) (Hermite's end derivative; dopri8_13m's extra stage), that is the next
    # step's first stage, as on the host clock. Before, the per-sample clock evaluated it again: adaptive_heun
    # here made 1.0-1.4 % more evaluations than each sample's solo solve, dopri8_13m 7-10 % more.
    mu, y0 = mus(), y0s()
    t = torch.linspace(0, 6, 61, dtype=F64)
    # adaptive_heun (second order) at 1e-5: a quarter of the steps it takes at 1e-6.
    kw = dict(rtol=1e-5 if method == "adaptive_heun" else 1e-6, atol=1e-6 if method == "adaptive_heun" else 1e-8)
    kw["method"] = method
    sol = solve(vdp_batch(mu), y0, t, options={"per_sample": True}, **kw)
    solo_stats = [solve(vdp_batch(mu[i : i + 1]), y0[i : i + 1], t, **kw).stats for i in range(B)]
    for i, st in enumerate(solo_stats):
        assert (int(sol.stats.n_accepted[i]), int(sol.stats.n_rejected[i])) == (st.n_accepted, st.n_rejected)
        if method == "adaptive_heun":  # Hermite: the solo solve's evaluations (+1 at most for each rejected step,
            # where the batched call the other rows needed evaluated the rejected row too), against 1.0-1.4 % more before
            assert st.nfe <= int(sol.stats.nfe[i]) <= st.nfe + st.n_rejected
        else:  # a batched step evaluates the extra stages for every row where any row has an output inside it
            assert st.nfe <= int(sol.stats.nfe[i]) <= 1.03 * st.nfe
    ref, _ = solo(mu, y0, t, **kw)
    assert float((sol.ys - ref).abs().max()) < 1e-5


def test_fewer_evaluations_than_joint_and_per_sample_error_control():
    mu, y0 = mus(), y0s()
    t = torch.linspace(0, 6, 13, dtype=F64)
    per = solve(vdp_batch(mu), y0, t, rtol=1e-6, atol=1e-6, options={"per_sample": True})
    joint = solve(vdp_batch(mu), y0, t, rtol=1e-6, atol=1e-6)
    # The joint loop steps every sample as often as the hardest one needs.
    assert int(per.stats.n_accepted.max()) <= joint.stats.n_accepted
    assert float(per.stats.nfe.sum()) < 0.8 * joint.stats.nfe * B
    assert 0.0 < per.stats.wasted_fraction < 1.0
    assert per.stats.rows_evaluated == per.stats.calls * B


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_per_sample_times_with_different_spans(direction):
    mu, y0 = mus(), y0s()
    rows = [torch.linspace(0.2 * i, 2.0 + 0.7 * i, 5 + 0, dtype=F64) for i in range(B)]
    t = direction * torch.stack(rows)
    kw = dict(rtol=1e-8, atol=1e-9)
    sol = solve(vdp_batch(mu), y0, t, options={"per_sample": True}, **kw)
    ref, steps = solo(mu, y0, t, **kw)
    assert sol.ys.shape == (5, B, 2)
    assert torch.equal(sol.ys[0], y0)
    assert float((sol.ys - ref).abs().max()) < 1e-7
    assert torch.all((sol.stats.n_accepted - steps).abs() <= (0.03 * steps).ceil())
    assert torch.all(torch.sign(sol.stats.last_step) == direction)


def test_float32():
    mu, y0 = mus(torch.float32), y0s(torch.float32)
    t = torch.linspace(0, 4, 9)
    seen = []

    def f(tt, y):
        seen.append((tt.shape, tt.dtype))
        return vdp_batch(mu)(tt, y)

    sol = solve(f, y0, t, rtol=1e-5, atol=1e-6, options={"per_sample": True})
    alone, _ = solo(mu, y0, t, rtol=1e-5, atol=1e-6)
    ref, _ = solo(mu.double(), y0.double(), t.double(), rtol=1e-10, atol=1e-10)
    assert sol.ys.dtype == torch.float32
    assert set(seen) == {(torch.Size([B]), torch.float32)}  # t is (B,), the state's dtype
    assert float((sol.ys - alone).abs().max()) < 1e-4  # float32: the sums round in another order
    assert float((sol.ys.double() - ref).abs().max()) < 1e-3


def test_tuple_state_batch_along_first_dims():
    # y = (x: (B,), v: (B, 1)): batch along each tensor's first dimension.
    mu, y0 = mus(), y0s()

    def f(t, y):
        x, v = y
        return v[:, 0], (mu * (1 - x * x) * v[:, 0] - x + 0.1 * torch.sin(t))[:, None]

    t = torch.linspace(0, 5, 6, dtype=F64)
    kw = dict(rtol=1e-8, atol=1e-9)
    sol = solve(f, (y0[:, 0], y0[:, 1:]), t, options={"per_sample": True}, **kw)
    x, v = sol.ys
    assert x.shape == (6, B) and v.shape == (6, B, 1)
    for i in range(B):  # alone, with the same tuple structure (so the same max-of-RMS norm)

        def fi(tt, y, m=mu[i : i + 1]):
            return y[1][:, 0], (m * (1 - y[0] ** 2) * y[1][:, 0] - y[0] + 0.1 * torch.sin(tt))[:, None]

        xi, vi = solve(fi, (y0[i : i + 1, 0], y0[i : i + 1, 1:]), t, **kw).ys
        assert float((x[:, i] - xi[:, 0]).abs().max()) < 1e-9 and float((v[:, i] - vi[:, 0]).abs().max()) < 1e-9


def test_compact_batch_matches_and_evaluates_fewer_rows():
    mu, y0 = mus(), y0s()
    y0m = torch.cat([y0, mu[:, None]], 1)  # mu in the state, so func works on any sub-batch

    def f(t, y):
        return torch.cat([vdp_batch(y[:, 2])(t, y[:, :2]), torch.zeros_like(y[:, 2:])], 1)

    t = torch.linspace(0, 6, 7, dtype=F64)
    full = solve(f, y0m, t, rtol=1e-7, atol=1e-8, options={"per_sample": True})
    compact = solve(f, y0m, t, rtol=1e-7, atol=1e-8, options={"per_sample": "compact"})
    assert float((full.ys - compact.ys).abs().max()) < 1e-12
    assert torch.equal(full.stats.n_accepted, compact.stats.n_accepted)
    assert torch.equal(full.stats.nfe, compact.stats.nfe)
    assert compact.stats.rows_evaluated < full.stats.rows_evaluated
    assert compact.stats.wasted_fraction < full.stats.wasted_fraction


# Every per-sample method with a continuous extension of its own stages: the only interpolant with a window.
@pytest.mark.parametrize("method", [n for n in PER_SAMPLE if interpolant(n) is ContinuousExtension])
def test_output_window_and_gathered_interpolation_agree(method, monkeypatch):
    # A step's outputs are interpolated on a (B, m) window per sample, or (when the window would
    # be mostly empty) on the gathered rows; both evaluate the same continuous extension. With
    # (B, T) times of very different densities the samples have 0 to many outputs per step, and
    # some outputs coincide with a step's end (the last time).
    from neuralode.solvers import per_sample

    mu, y0 = mus(), y0s()
    t = torch.stack([torch.linspace(0, 0.3 + 1.2 * i, 15, dtype=F64) for i in range(B)])
    kw = dict(rtol=1e-7, atol=1e-8, method=method, options={"per_sample": True})
    window = solve(vdp_batch(mu), y0, t, **kw)
    monkeypatch.setattr(per_sample, "DENSE_WINDOW", 0)
    monkeypatch.setattr(per_sample, "DENSE_ELEMENTS", 0)
    gathered = solve(vdp_batch(mu), y0, t, **kw)
    assert torch.equal(window.stats.n_accepted, gathered.stats.n_accepted)
    assert float((window.ys - gathered.ys).abs().max()) < 1e-12
    assert torch.equal(window.ys[-1], gathered.ys[-1])  # the last time is a step's end: y1 exactly
    ref, _ = solo(mu, y0, t, rtol=1e-7, atol=1e-8, method=method)
    assert float((window.ys - ref).abs().max()) < 1e-6


def test_backprop_gradients_match_solo_solves():
    mu, y0 = mus(), y0s()
    t = torch.linspace(0, 3, 4, dtype=F64)
    w = torch.randn(4, B, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    kw = dict(rtol=1e-9, atol=1e-10)
    y0a, mua = y0.clone().requires_grad_(), mu.clone().requires_grad_()
    (solve(vdp_batch(mua), y0a, t, options={"per_sample": True}, **kw).ys * w).sum().backward()
    g_y0, g_mu = [], []
    for i in range(B):
        yi, mi = y0[i : i + 1].clone().requires_grad_(), mu[i : i + 1].clone().requires_grad_()
        (solve(vdp_batch(mi), yi, t, **kw).ys[:, 0] * w[:, i]).sum().backward()
        g_y0.append(yi.grad[0]), g_mu.append(mi.grad[0])
    assert torch.allclose(y0a.grad, torch.stack(g_y0), rtol=1e-6, atol=1e-8)
    assert torch.allclose(mua.grad, torch.stack(g_mu), rtol=1e-6, atol=1e-8)


def test_vector_controller_is_the_scalar_one_elementwise():
    scalar = StepSizeController("pi", 0.9, 10.0, 0.2, 5)
    vec = BatchStepSizeController("pi", 0.9, 10.0, 0.2, 5)
    cases = [
        (0.1, 0.5, 0.8, False),
        (-0.1, 2.0, 0.5, False),
        (0.1, 0.0, 1.0, False),
        (0.1, math.inf, 1.0, False),
        (0.1, math.nan, 1.0, True),
        (0.3, 1e-9, 1e-6, True),
        (0.3, 0.9, 1e-6, True),
        (0.2, 1.0, 3.0, False),
    ]
    dt, r, pr, ar = (torch.tensor(c, dtype=F64) for c in zip(*cases))
    memory = ControllerState(pr, torch.tensor([c[3] for c in cases]), torch.full_like(dt, math.nan))
    accept, nxt, _ = vec.adapt(memory, dt, r)
    for i, c in enumerate(cases):
        a, n, _ = scalar.adapt(ControllerState(c[2], c[3], math.nan), c[0], c[1])
        assert bool(accept[i]) == a and math.isclose(float(nxt[i]), n, rel_tol=1e-12), c


def test_bad_input_names_the_argument():
    f = vdp_batch(mus())
    y0, t = y0s(), torch.linspace(0, 1, 3, dtype=F64)
    ps = {"per_sample": True}
    with pytest.raises(ValueError, match=r"y0 must have at least one dimension .* got a 0-dim tensor"):
        solve(lambda t, y: -y, torch.tensor(1.0, dtype=F64), t, options=ps)
    with pytest.raises(ValueError, match=r"t of shape \(4, 3\) gives times for 4 samples but y0 has a batch of 6"):
        solve(f, y0, torch.stack([t] * 4), options=ps)
    mixed = torch.stack([t] * 5 + [-t])
    with pytest.raises(ValueError, match="every row of t must run in the same direction"):
        solve(f, y0, mixed, options=ps)
    bad = torch.stack([t] * B).clone()
    bad[2, 2] = 0.5 * bad[2, 1]
    with pytest.raises(
        ValueError,
        match=r"strictly increasing or strictly decreasing; got t\[2, 1\] = 0.5 followed by t\[2, 2\] = 0.25",
    ):
        solve(f, y0, bad, options=ps)
    with pytest.raises(ValueError, match=r"options\['per_sample'\] must be False, True or 'compact'; got 'yes'"):
        solve(f, y0, t, options={"per_sample": "yes"})
    with pytest.raises(ValueError, match="first dimensions"):
        solve(lambda t, y: y, (torch.zeros(2, dtype=F64), torch.zeros(3, dtype=F64)), t, options=ps)
    from neuralode import Event

    with pytest.raises(
        ValueError, match=r"events\[0\].fn\(t, y\) must return a tensor whose first dimension is the batch \(6\)"
    ):
        solve(f, y0, t, options=ps, events=Event(lambda t, y: y[0]))
    with pytest.raises(
        ValueError,
        match=r"options\['per_sample'\] works with the explicit adaptive methods .*'rk4' is a fixed-step method",
    ):
        solve(f, y0, t, method="rk4", options=ps)
    with pytest.raises(ValueError, match=r"does not differentiate with respect to the output times t"):
        solve(f, y0, t.clone().requires_grad_(), options=ps)


class _Field(torch.nn.Module):
    """Van der Pol with a learned correction; ``t`` enters as an input, one row per sample."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = torch.nn.Parameter(0.5 * torch.randn(3, 8, generator=g, dtype=F64))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(8, 2, generator=g, dtype=F64))
        self.mu = torch.nn.Parameter(torch.tensor(1.5, dtype=F64))

    def forward(self, t, y):
        x, v = y[:, 0], y[:, 1]
        tt = t.reshape(-1, 1).expand(y.shape[0], 1)
        return (
            torch.stack([v, self.mu * (1 - x * x) * v - x], -1) + torch.tanh(torch.cat([y, tt], 1) @ self.w1) @ self.w2
        )


def _grads(field, y0, loss):
    field.zero_grad()
    y = y0.clone().requires_grad_()
    loss(y).backward()
    return [y.grad.clone()] + [p.grad.clone() for p in field.parameters()]


def test_adjoint_on_per_sample_clocks_matches_backprop_and_solo_solves():
    from neuralode import solve_adjoint

    field, y0 = _Field(), y0s()[:4]
    t = torch.stack([torch.linspace(0.3 * i, 1.5 + 0.5 * i, 4, dtype=F64) for i in range(4)])
    w = torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    kw = dict(rtol=1e-8, atol=1e-9)
    sol = {}

    def adjoint_loss(y):
        sol["adjoint"] = solve_adjoint(field, y, t, options={"per_sample": True}, **kw)
        return (sol["adjoint"].ys * w).sum()

    g_adj = _grads(field, y0, adjoint_loss)
    g_bp = _grads(field, y0, lambda y: (solve(field, y, t, options={"per_sample": True}, **kw).ys * w).sum())
    g_solo = [torch.zeros_like(g) for g in g_adj]
    for i in range(4):
        gi = _grads(field, y0, lambda y: (solve(field, y[i : i + 1], t[i], **kw).ys[:, 0] * w[:, i]).sum())
        g_solo = [a + b for a, b in zip(g_solo, gi)]
    for a, b, c in zip(g_adj, g_bp, g_solo):
        assert a.shape == c.shape  # one gradient of each parameter's size, not B copies
        assert torch.allclose(b, c, rtol=1e-9, atol=1e-11)
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-7)
    stats = sol["adjoint"].adjoint_stats
    assert stats.n_accepted.shape == (4,) and bool((stats.n_accepted > 0).all())
    # Finished samples dropped from the backward batch: the same gradients from fewer rows.
    g_compact = _grads(
        field, y0, lambda y: (solve_adjoint(field, y, t, options={"per_sample": "compact"}, **kw).ys * w).sum()
    )
    for a, c in zip(g_compact, g_adj):
        assert torch.allclose(a, c, rtol=1e-12, atol=1e-14)


def test_adjoint_tuple_state_and_float32():
    from neuralode import odeint_adjoint

    mu = torch.nn.Parameter(torch.tensor(2.0))

    def f(t, y):
        x, v = y
        return v, mu * (1 - x * x) * v - x

    y0 = y0s(torch.float32)
    t = torch.linspace(0, 2, 3)
    x0, v0 = y0[:, 0].clone().requires_grad_(), y0[:, 1].clone().requires_grad_()
    x, v = odeint_adjoint(f, (x0, v0), t, rtol=1e-6, atol=1e-7, options={"per_sample": True}, adjoint_params=(mu,))
    assert x.shape == (3, B) and x.dtype == torch.float32
    (x.sum() + v.sum()).backward()
    g = (x0.grad.clone(), v0.grad.clone(), mu.grad.clone())
    mu.grad = None
    x0b, v0b = y0[:, 0].clone().requires_grad_(), y0[:, 1].clone().requires_grad_()
    xb, vb = solve(f, (x0b, v0b), t, rtol=1e-6, atol=1e-7, options={"per_sample": True}).ys
    (xb.sum() + vb.sum()).backward()
    assert torch.allclose(g[0], x0b.grad, rtol=1e-3, atol=1e-4)
    assert torch.allclose(g[1], v0b.grad, rtol=1e-3, atol=1e-4)
    assert torch.allclose(g[2], mu.grad, rtol=1e-3, atol=1e-4)


G = 9.81


def _balls():
    """Four balls dropped from their own heights with their own restitution (no Zeno point before t = 3)."""
    e = torch.tensor([0.9, 0.85, 0.9, 0.95], dtype=F64)
    h0 = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=F64)

    def fall(t, y):
        return torch.stack([y[:, 1], -G * torch.ones_like(y[:, 1])], -1)

    def bounce_times(i, t_max):
        v1 = math.sqrt(2 * G * float(h0[i]))
        out = [v1 / G]
        while out[-1] + 2 * float(e[i]) ** len(out) * v1 / G <= t_max:
            out.append(out[-1] + 2 * float(e[i]) ** len(out) * v1 / G)
        return out

    return e, torch.stack([h0, torch.zeros_like(h0)], -1), fall, bounce_times


def test_events_per_sample_with_resets_match_the_closed_form():
    from neuralode import Event

    e, y0, fall, bounce_times = _balls()
    floor = Event(
        lambda t, y: y[:, 0], direction=-1, terminal=False, reset=lambda t, y: torch.stack([y[:, 0], -e * y[:, 1]], -1)
    )
    t = torch.linspace(0, 3, 31, dtype=F64)
    sol = solve(fall, y0, t, rtol=1e-9, atol=1e-9, events=[floor], options={"per_sample": True})
    assert torch.equal(sol.stats.n_events, torch.tensor([4, 3, 6, 3]))
    # Each step with a crossing in any sample locates all of them in one batched bisection (60 calls).
    assert int(sol.stats.n_event_evals[0]) >= 60 * 6 + int(sol.stats.n_accepted.max())
    for i in range(4):
        mine = [r for r in sol.events if r.sample == i]
        ref = bounce_times(i, 3.0)
        assert len(mine) == len(ref)
        assert max(abs(float(r.t) - tr) for r, tr in zip(mine, ref)) < 1e-12
        assert all(r.index == 0 and r.element == () and not r.terminal and r.y.shape == (2,) for r in mine)
        assert all(abs(float(r.y[0])) < 1e-9 for r in mine)  # on the floor
    # Between bounces the height is the closed-form parabola: check every output time.
    for i in range(4):
        ref = bounce_times(i, 3.0)
        v1 = math.sqrt(2 * G * float(y0[i, 0]))
        for j, tj in enumerate(t.tolist()):
            k = sum(1 for tb in ref if tb < tj)
            if k == 0:
                h = float(y0[i, 0]) - 0.5 * G * tj**2
            else:
                s = tj - ref[k - 1]
                h = float(e[i]) ** k * v1 * s - 0.5 * G * s * s
            assert abs(float(sol.ys[j, i, 0]) - h) < 1e-9


def test_terminal_event_ends_its_sample_only():
    from neuralode import Event

    _, y0, fall, bounce_times = _balls()
    t = torch.linspace(0, 1, 11, dtype=F64)
    sol = solve(
        fall,
        y0,
        t,
        rtol=1e-9,
        atol=1e-9,
        events=Event(lambda t, y: y[:, 0], direction=-1),
        options={"per_sample": True},
    )
    assert [r.sample for r in sol.events] == [0, 1, 2, 3] and all(r.terminal for r in sol.events)
    free = solve(fall, y0, t, rtol=1e-9, atol=1e-9, options={"per_sample": True})
    for i, r in enumerate(sol.events):
        assert abs(float(r.t) - bounce_times(i, 1.0)[0]) < 1e-12
        before = t <= float(r.t)
        assert torch.allclose(sol.ys[before, i], free.ys[before, i], rtol=0, atol=1e-12)
        assert bool(torch.isnan(sol.ys[~before, i]).all())  # after its terminal event: NaN


def test_torchdiffeq_entry_points_and_their_refusals():
    from neuralode import odeint, odeint_adjoint

    mu, y0 = mus(), y0s()
    t = torch.linspace(0, 1, 3, dtype=F64)
    ys = odeint(vdp_batch(mu), y0, t, rtol=1e-8, atol=1e-9, options={"per_sample": True})
    ref = solve(vdp_batch(mu), y0, t, rtol=1e-8, atol=1e-9, options={"per_sample": True}).ys
    assert torch.equal(ys, ref)
    f = _Field()
    assert odeint_adjoint(f, y0, t, options={"per_sample": True}).shape == (3, B, 2)
    with pytest.raises(ValueError, match="does not support torchdiffeq's event_fn interface"):
        odeint(vdp_batch(mu), y0, t[:2], event_fn=lambda t, y: y[:, 0], options={"per_sample": True})
    bad = torch.stack([t] * B).clone()
    bad[3, 1] = math.inf
    with pytest.raises(ValueError, match=r"t must be finite; got t\[3, 1\] = inf"):
        solve(vdp_batch(mu), y0, bad, options={"per_sample": True})
    with pytest.raises(ValueError, match=r"options\['checkpoint'\] is not supported with options\['per_sample'\]"):
        solve(vdp_batch(mu), y0, t, options={"per_sample": True, "checkpoint": True})
    one = solve(vdp_batch(mu), y0, t[:1], options={"per_sample": True})
    assert torch.equal(one.ys, y0[None])


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_batch_equals_each_sample_alone_on_its_own_clock(method):
    # Every row's arithmetic is its own (stage sums, norm, controller, interpolant weights), so a
    # batch gives each sample the bits of a per-sample solve of that sample alone (B = 1). The
    # evaluations made for another sample's outputs (dopri8's extra dense stages, adaptive_heun's
    # f(t1, y1) for Hermite) run on the whole batch and count for every unfinished sample.
    mu, y0 = mus(), y0s()
    t = torch.linspace(0, 4, 9, dtype=F64)
    # A step's own evaluations are the same for every row unless its outputs need more: the extra stages
    # of a dense_extra tableau, or f(t1, y1) of a Hermite interpolant that FSAL does not give.
    kind = interpolant(method)
    own_nfe = kind is ContinuousExtension or (kind is Hermite and METHODS[method].tableau.fsal)
    # A second-order pair at rtol 1e-6 takes ~10^4 steps per sample here.
    rtol, atol = (1e-3, 1e-5) if order(method) < 3 else (1e-6, 1e-8)
    kw = dict(rtol=rtol, atol=atol, method=method, options={"per_sample": True})
    sol = solve(vdp_batch(mu), y0, t, **kw)
    for i in range(B):
        one = solve(vdp_batch(mu[i : i + 1]), y0[i : i + 1], t, **kw)
        assert torch.equal(one.ys[:, 0], sol.ys[:, i])
        assert int(one.stats.n_accepted[0]) == int(sol.stats.n_accepted[i])
        assert int(one.stats.n_rejected[0]) == int(sol.stats.n_rejected[i])
        if own_nfe:
            assert int(one.stats.nfe[0]) == int(sol.stats.nfe[i])
        else:
            assert int(one.stats.nfe[0]) <= int(sol.stats.nfe[i])


@pytest.mark.parametrize("method", per_sample_methods_matching_the_joint_loop())
def test_one_sample_on_its_own_clock_takes_the_joint_loops_steps(method):
    # A batch of one on the per-sample clock and the joint loop share the tableau's stage order, the
    # controller's formulas and the interpolants' weights; only the grouping of the per-row stage
    # sums (y0 + dt * sum_j a_ij k_j, not sum_j (a_ij dt) k_j) and of the controller's formulas
    # (exp/log, not powers) differs, by rounding. Outputs between step ends follow that rounding as
    # far as the method lets them (clock_tolerance: dopri8_13m's by 1e-5 of its interpolant's error).
    mu, y0 = mus()[3:4], y0s()[3:4]
    t = torch.linspace(0, 4, 9, dtype=F64)
    kw = dict(rtol=1e-6, atol=1e-8, method=method) if order(method) >= 3 else dict(rtol=1e-3, atol=1e-5, method=method)
    ps = solve(vdp_batch(mu), y0, t, options={"per_sample": True}, **kw)
    joint = solve(vdp_batch(mu), y0, t, **kw)
    assert int(ps.stats.n_accepted[0]) == int(joint.stats.n_accepted)
    assert int(ps.stats.n_rejected[0]) == int(joint.stats.n_rejected)
    scale = float(joint.ys.abs().max())
    # The last time is a step end on both clocks: equal to rounding whatever the method.
    assert float((ps.ys[-1] - joint.ys[-1]).abs().max()) <= 1e-12 * scale

    def error() -> float:  # the joint loop's own, mostly its interpolant's
        reference = solve(vdp_batch(mu), y0, t, rtol=1e-13, atol=1e-13, method="dopri8")
        return float((joint.ys - reference.ys).abs().max())

    assert float((ps.ys - joint.ys).abs().max()) <= clock_tolerance(method, scale, error)


def test_bad_times_on_the_meta_device_are_refused_by_name():
    # The per-sample clock checks t with the joint solve's validator (options._check_times), so a
    # tensor without values is refused there too, before any arithmetic on it.
    t = torch.linspace(0, 1, 3, dtype=F64, device="meta")
    with pytest.raises(ValueError, match="t is on the meta device"):
        solve(vdp_batch(mus()), y0s(), t, options={"per_sample": True})


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_per_row_interpolant_equals_the_host_clocks_on_the_same_step(method):
    # One step of the host clock, read between its ends by the Method's interpolant on the host clock (float t, h,
    # θ) and per row (``at_rows``: (1,) float64 t, h and θ) from the same stages: equal to rounding, for every
    # interpolant kind (dopri5's continuous extension, dopri8_13m's with its extra stage f(t1, y1), Hermite). So
    # the per-row weights, extra stages, θ and polynomial basis are the host clock's.
    from neuralode.solvers.methods.stepper import rk_step

    mu = mus()[3:4]
    field = vdp_batch(mu)

    def problem(t, y, side=0):
        return field(torch.as_tensor(t, dtype=F64), y)

    tableau, kind = METHODS[method].tableau, interpolant(method)
    y0, t0, h = y0s()[3:4], 0.3, 0.2345678901234567  # h and t0 + h not floats of float32
    f0 = problem(t0, y0)
    step = rk_step(problem, t0, y0, f0, h, tableau)
    f1 = step.k[-1] if tableau.fsal else None
    host = kind(problem, tableau, t0, y0, f0, h, step, f1, t0 + h, 0, None)
    t_row, h_row = torch.tensor([t0], dtype=F64), torch.tensor([h], dtype=F64)
    rows = kind(problem, tableau, t_row, y0, f0, h_row, step, f1, t_row + h_row, 0, None)
    scale = float(step.y1.abs().max())
    for theta in (0.1, 0.37, 0.5, 0.93, 1.0):
        a = host([theta])[0]
        b = rows.at_rows(torch.tensor([0]), torch.tensor([theta], dtype=F64))
        assert float((a - b).abs().max()) <= 1e-15 * scale, (theta, a, b)


def test_dopri8_13m_outputs_inside_a_step_follow_its_step_grid():
    # Why dopri8_13m's per-sample outputs inside a step agree with the joint loop's only to a fraction of its
    # interpolant's error (tests.registry.GRID_SENSITIVE), shown on the host clock alone: first steps changed by a
    # relative 1e-12 .. 3e-12 change no step count and no step end beyond rounding, but the outputs between step
    # ends by up to ~3e-10 relative, because its error estimate turns an ulp into a ~1e-7 change of the next step
    # and its order-4 interpolant errs by ~1e-4 at these steps. dopri8 (DOP853: a better-conditioned estimate and
    # an order-7 interpolant) moves its outputs by ~1e-12 at most under the same changes.
    mu, y0 = mus()[3:4], y0s()[3:4]
    t = torch.linspace(0, 4, 9, dtype=F64)
    moved = {}
    for method in ("dopri8_13m", "dopri8"):
        kw = dict(rtol=1e-6, atol=1e-8, method=method)
        a = solve(vdp_batch(mu), y0, t, options={"first_step": 0.125}, **kw)
        scale = float(a.ys.abs().max())
        moved[method] = 0.0
        for j in range(1, 4):
            b = solve(vdp_batch(mu), y0, t, options={"first_step": 0.125 * (1 + j * 1e-12)}, **kw)
            assert int(a.stats.n_accepted) == int(b.stats.n_accepted)
            assert float((a.ys[-1] - b.ys[-1]).abs().max()) <= 1e-12 * scale  # the last time is a step end
            moved[method] = max(moved[method], float((a.ys - b.ys).abs().max()) / scale)
    assert moved["dopri8_13m"] > 3e-11, moved
    assert moved["dopri8"] < 1e-11, moved
