"""Per-sample mode beyond the basic solve: gradients through each sample's event times.

References: closed forms (free fall ``t* = sqrt(2 h0 / g)``, a bouncing ball's later bounces),
float64 central finite differences of the per-sample solve itself, and each sample solved alone
by the joint loop (whose event-time gradients are tested in test_events.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import Event, solve
from tests.registry import clock_tolerance, order, per_sample_methods_matching_the_joint_loop

F64 = torch.float64
PS = {"per_sample": True}
KW = dict(rtol=1e-10, atol=1e-10)


def _fall(g):
    """Free fall with one gravity per sample: ``y = (height, velocity)``, ``(B, 2)``."""

    def f(t, y):
        return torch.stack([y[:, 1], -g * torch.ones_like(y[:, 1])], -1)

    return f


def _floor(e=None, direction=-1):
    """The floor ``height = 0``; with restitution ``e`` (per sample) a bouncing, non-terminal event."""
    if e is None:
        return Event(lambda t, y: y[:, 0], direction=direction)
    return Event(
        lambda t, y: y[:, 0],
        direction=direction,
        terminal=False,
        reset=lambda t, y: torch.stack([y[:, 0], -e * y[:, 1]], -1),
    )


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-9), (torch.float32, 2e-3)])
@pytest.mark.parametrize("mode", [True, "compact"])
def test_free_fall_event_time_gradients_match_the_closed_form(dtype, tol, mode):
    h0 = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=dtype, requires_grad=True)
    g = torch.tensor([9.81, 3.0, 20.0, 1.62], dtype=dtype, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    t = torch.linspace(0, 3, 4, dtype=dtype)
    if mode == "compact":  # func must then take any sub-batch: gravity in the state
        y0 = torch.cat([y0, g[:, None]], 1)

        def f(t, y):
            return torch.stack([y[:, 1], -y[:, 2], torch.zeros_like(y[:, 2])], -1)
    else:
        f = _fall(g)
    rtol = 1e-10 if dtype == F64 else 1e-6
    sol = solve(f, y0, t, rtol=rtol, atol=rtol, events=_floor(), options={"per_sample": mode})
    assert [r.sample for r in sol.events] == [0, 1, 2, 3]
    t_star = torch.stack([r.t for r in sol.events])
    assert t_star.dtype == dtype
    ref = torch.sqrt(2 * h0 / g).detach()
    assert float((t_star.detach() - ref).abs().max()) < tol
    (w * t_star).sum().backward()
    # t* = sqrt(2 h0 / g): dt*/dh0 = t* / (2 h0), dt*/dg = -t* / (2 g).
    assert torch.allclose(h0.grad, w * ref / (2 * h0.detach()), rtol=tol, atol=tol)
    assert torch.allclose(g.grad, -w * ref / (2 * g.detach()), rtol=tol, atol=tol)


def test_state_at_the_event_and_a_parameter_of_the_event_function():
    # Hitting the level c (a parameter of the event function): t* = sqrt(2 (h0 - c) / g), and at
    # t* the velocity is -g t*, so d v*/dc = -g dt*/dc = 1 / t*.
    h0 = torch.tensor([1.0, 2.0, 0.5], dtype=F64, requires_grad=True)
    c = torch.tensor([0.2, 0.5, -0.3], dtype=F64, requires_grad=True)
    g = torch.tensor([9.81, 3.0, 20.0], dtype=F64)
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    level = Event(lambda t, y: y[:, 0] - c, direction=-1)
    sol = solve(_fall(g), y0, torch.tensor([0.0, 5.0], dtype=F64), events=level, options=PS, **KW)
    t_star = torch.stack([r.t for r in sol.events])
    v_star = torch.stack([r.y[1] for r in sol.events])
    ref = torch.sqrt(2 * (h0 - c) / g).detach()
    assert float((t_star.detach() - ref).abs().max()) < 1e-9
    dh0, dc = torch.autograd.grad(t_star.sum(), (h0, c), retain_graph=True)
    assert torch.allclose(dh0, 1 / (g * ref), rtol=1e-8)
    assert torch.allclose(dc, -1 / (g * ref), rtol=1e-8)
    (dc_v,) = torch.autograd.grad(v_star.sum(), c)
    assert torch.allclose(dc_v, 1 / ref, rtol=1e-7)


def _ball_loss(h0, e, g, t):
    """A loss of the second bounce time and of the heights at the output times (after bounces)."""
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    sol = solve(_fall(g), y0, t, events=_floor(e), options=PS, **KW)
    second = torch.stack([[r.t for r in sol.events if r.sample == i][1] for i in range(len(h0))])
    return sol, second * torch.arange(1, len(h0) + 1) + (sol.ys[:, :, 0] ** 2).sum(0)  # (B,): sample i's own


def test_bouncing_balls_gradients_closed_form_finite_differences_and_solo_solves():
    h0 = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    e = torch.tensor([0.9, 0.7, 0.9], dtype=F64)  # no Zeno point before t = 3 (t1 (1 + e) / (1 - e) > 4.8)
    g = torch.tensor([9.81, 5.0, 15.0], dtype=F64)
    t = torch.linspace(0, 3.0, 7, dtype=F64)
    args = [x.clone().requires_grad_() for x in (h0, e, g)]
    sol, loss = _ball_loss(*args, t)
    grads = torch.autograd.grad(loss.sum(), args, retain_graph=True)

    # Closed form of the second bounce: t2 = t1 + 2 e v1 / g with t1 = sqrt(2 h0 / g), v1 = g t1.
    t1 = torch.sqrt(2 * h0 / g)
    second = torch.stack([[r.t for r in sol.events if r.sample == i][1] for i in range(3)]).detach()
    assert float((second - (t1 + 2 * e * t1)).abs().max()) < 1e-9
    hh0, ee, gg = (x.clone().requires_grad_() for x in (h0, e, g))
    tt1 = torch.sqrt(2 * hh0 / gg)
    ref = torch.autograd.grad(((tt1 + 2 * ee * tt1) * torch.arange(1, 4)).sum(), (hh0, ee, gg))
    bounce_term = (
        torch.stack([[r.t for r in sol.events if r.sample == i][1] for i in range(3)]) * torch.arange(1, 4)
    ).sum()
    for got, want in zip(torch.autograd.grad(bounce_term, args, retain_graph=True), ref):
        assert torch.allclose(got, want, rtol=1e-8)

    # Float64 central differences of the same per-sample solve, every input of every sample: sample
    # i's loss depends on its own inputs only, so one pair of solves perturbs one input of all samples.
    eps = 1e-6
    for k, x in enumerate((h0, e, g)):
        vals = []
        for sign in (1.0, -1.0):
            inputs = [h0, e, g]
            inputs[k] = x + sign * eps
            with torch.no_grad():
                vals.append(_ball_loss(*inputs, t)[1])
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert torch.allclose(grads[k], fd, rtol=1e-5, atol=1e-5), (k, grads[k], fd)

    # Each sample alone by the joint loop (event-time gradients by the implicit function theorem there).
    for i in range(3):
        hi, ei, gi = (x[i : i + 1].clone().requires_grad_() for x in (h0, e, g))
        solo = solve(_fall(gi), torch.stack([hi, torch.zeros_like(hi)], -1), t, events=_floor(ei), **KW)
        loss_i = (i + 1) * solo.events[1].t + (solo.ys[:, 0, 0] ** 2).sum()
        for gr, xi in zip(grads, torch.autograd.grad(loss_i, (hi, ei, gi))):
            assert abs(float(gr[i]) - float(xi[0])) < 1e-7 * max(1.0, abs(float(xi[0])))


def test_tuple_state_event_gradients():
    h0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    g = torch.tensor([9.81, 4.0], dtype=F64, requires_grad=True)

    def f(t, y):
        x, v = y
        return v, -g * torch.ones_like(v)

    sol = solve(
        f,
        (h0, torch.zeros_like(h0)),
        torch.tensor([0.0, 3.0], dtype=F64),
        options=PS,
        events=Event(lambda t, y: y[0], direction=-1),
        **KW,
    )
    t_star = torch.stack([r.t for r in sol.events])
    v_star = torch.stack([r.y[1] for r in sol.events])
    ref = torch.sqrt(2 * h0 / g).detach()
    dh0, dg = torch.autograd.grad(t_star.sum() + v_star.sum(), (h0, g))
    # v* = -g t* = -sqrt(2 h0 g): dv*/dh0 = -g t* / (2 h0), dv*/dg = -t* / 2.
    gd = g.detach()
    assert torch.allclose(dh0, ref / (2 * h0.detach()) - gd * ref / (2 * h0.detach()), rtol=1e-8)
    assert torch.allclose(dg, -ref / (2 * gd) - ref / 2, rtol=1e-8)


def test_no_graph_no_extra_work():
    # Without autograd the event times are plain constants and no extra evaluations are made.
    h0 = torch.tensor([1.0, 2.0], dtype=F64)
    g = torch.tensor([9.81, 4.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    with torch.no_grad():
        a = solve(_fall(g), torch.stack([h0, 0 * h0], -1), t, events=_floor(), options=PS, **KW)
    b = solve(_fall(g), torch.stack([h0, 0 * h0], -1), t, events=_floor(), options=PS, **KW)
    assert not a.events[0].t.requires_grad and b.events[0].t.requires_grad
    assert torch.equal(torch.stack([r.t for r in a.events]), torch.stack([r.t for r in b.events]).detach())
    # One more call of func on the batch per step with an event (f there, for d/dt g(t, y(t))); the
    # two balls land in different steps.
    assert b.stats.calls - a.stats.calls == 2


def test_record_only_event_leaves_later_states_alone():
    # A record-only event (no reset) has a differentiable time, but the states after it are the
    # plain solution: y(τ) = h0 - g τ² / 2, so d y(τ) / d h0 = 1 and d y(τ) / d g = -τ² / 2.
    h0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    g = torch.tensor([9.81, 4.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.8], dtype=F64)
    half = Event(lambda t, y: y[:, 0] - 0.5 * h0, direction=-1, terminal=False)
    sol = solve(_fall(g), torch.stack([h0, 0 * h0], -1), t, events=half, options=PS, **KW)
    assert [r.sample for r in sol.events] == [0, 1]
    dh0, dg = torch.autograd.grad(sol.ys[-1, :, 0].sum(), (h0, g), retain_graph=True)
    assert torch.allclose(dh0, torch.ones(2, dtype=F64), rtol=1e-9)
    assert torch.allclose(dg, torch.full((2,), -0.32, dtype=F64), rtol=1e-9)
    # Its time t* = sqrt(h0 / g) moves with both (the level moves with h0).
    t_star = torch.stack([r.t for r in sol.events])
    ref = torch.sqrt(h0 / g).detach()
    dh0, dg = torch.autograd.grad(t_star.sum(), (h0, g))
    assert torch.allclose(dh0, ref / (2 * h0.detach()), rtol=1e-8)
    assert torch.allclose(dg, -ref / (2 * g.detach()), rtol=1e-8)


# --------------------------------------------------------------------------------------------
# A custom norm, applied per sample: (B, ...) in, (B,) out.


def _vdp(mu):
    def f(t, y):
        return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], -1)

    return f


def _vdp_setup(dtype=F64):
    mu = torch.tensor([0.5, 1.5, 4.0, 8.0], dtype=dtype)
    y0 = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [2.0, -1.0], [0.3, 0.3]], dtype=dtype)
    return mu, y0, torch.linspace(0, 4, 5, dtype=dtype)


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-6), (torch.float32, 1e-4)])
def test_custom_norm_per_sample_equals_solo_solves(dtype, tol):
    mu, y0, t = _vdp_setup(dtype)
    seen = []

    def max_norm(x):  # the infinity norm of each sample's scaled error
        seen.append(tuple(x.shape))
        return x.abs().amax(1)

    kw = dict(rtol=tol, atol=tol)
    sol = solve(_vdp(mu), y0, t, options={"per_sample": True, "norm": max_norm}, **kw)
    rms = solve(_vdp(mu), y0, t, options=PS, **kw)
    assert set(seen) == {(4, 2)}
    assert sol.ys.dtype == dtype
    # The max norm is never below the RMS one, so it takes at least as many steps, sample by sample.
    assert bool((sol.stats.n_accepted >= rms.stats.n_accepted).all())
    assert bool((sol.stats.n_accepted > rms.stats.n_accepted).any())
    for i in range(4):
        alone = solve(_vdp(mu[i : i + 1]), y0[i : i + 1], t, options={"norm": lambda x: x.abs().max()}, **kw)
        assert float((sol.ys[:, i] - alone.ys[:, 0]).abs().max()) < 10 * tol
        assert abs(int(sol.stats.n_accepted[i]) - alone.stats.n_accepted) <= math.ceil(0.03 * alone.stats.n_accepted)


def test_custom_norm_tuple_state_and_compact_batch():
    mu, y0, t = _vdp_setup()
    y0m = (y0[:, 0], torch.stack([y0[:, 1], mu], 1))  # mu in the state: func takes any sub-batch

    def f(t, y):
        x, (v, m) = y[0], y[1].unbind(1)
        return v, torch.stack([m * (1 - x * x) * v - x, torch.zeros_like(m)], 1)

    def norm(x):  # (B',) and (B', 2): the largest scaled error of each sample
        return torch.maximum(x[0].abs(), x[1].abs().amax(1))

    kw = dict(rtol=1e-7, atol=1e-7)
    full = solve(f, y0m, t, options={"per_sample": True, "norm": norm}, **kw)
    compact = solve(f, y0m, t, options={"per_sample": "compact", "norm": norm}, **kw)
    assert torch.equal(full.stats.n_accepted, compact.stats.n_accepted)
    assert float((full.ys[0] - compact.ys[0]).abs().max()) < 1e-12
    for i in range(4):
        alone = solve(f, tuple(p[i : i + 1] for p in y0m), t, options={"norm": lambda x: norm(x).max()}, **kw)
        assert float((full.ys[0][:, i] - alone.ys[0][:, 0]).abs().max()) < 1e-6
        assert abs(int(full.stats.n_accepted[i]) - alone.stats.n_accepted) <= math.ceil(0.03 * alone.stats.n_accepted)


def test_custom_norm_with_the_adjoint_and_bad_norms():
    from neuralode import solve_adjoint

    mu, y0, t = _vdp_setup()
    m = mu.clone().requires_grad_()
    opts = {"per_sample": True, "norm": lambda x: x.abs().amax(1)}
    kw = dict(rtol=1e-8, atol=1e-8)
    t = t[:3]
    adj = solve_adjoint(_vdp(m), y0, t, options=opts, adjoint_params=(m,), **kw)
    (g_adj,) = torch.autograd.grad(adj.ys.sum(), m)
    (g_bp,) = torch.autograd.grad(solve(_vdp(m), y0, t, options=opts, **kw).ys.sum(), m)
    assert torch.allclose(g_adj, g_bp, rtol=1e-5, atol=1e-7)
    for bad, got in (
        (lambda x: x.abs().max(), r"a tensor of shape \(\)"),
        (lambda x: x.abs(), r"a tensor of shape \(4, 2\)"),
        (lambda x: 1.0, "float"),
    ):
        with pytest.raises(
            ValueError,
            match=r"options\['norm'\] with options\['per_sample'\] must return a real "
            r"tensor of shape \(4,\), one norm per sample .* got " + got,
        ):
            solve(_vdp(mu), y0, t, options={"per_sample": True, "norm": bad})


# --------------------------------------------------------------------------------------------
# step_t: every sample's steps land on the step_t inside its own span.


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_step_t_per_sample_equals_solo_solves_and_lands_on_the_stops(direction):
    mu, y0, _ = _vdp_setup()
    if direction < 0:  # backwards in time Van der Pol's limit cycle repels: start well inside it
        mu, y0 = mu / 4, 0.3 * y0
    t = direction * torch.stack([torch.linspace(0.1 * i, 3 + 0.3 * i, 4, dtype=F64) for i in range(4)])
    stops = tuple(direction * s for s in (0.05, 0.7, 1.234, 2.0, 3.1, 5.0))  # 0.05 and 3.1 outside some spans
    calls = []

    def f(tt, y):
        calls.append(tt.detach().clone())
        return _vdp(mu)(tt, y)

    kw = dict(rtol=1e-7, atol=1e-7)
    sol = solve(f, y0, t, options={"per_sample": True, "step_t": stops}, **kw)
    seen = torch.stack(calls)  # (calls, B)
    plain = solve(_vdp(mu), y0, t, options=PS, **kw)
    for i in range(4):
        alone = solve(_vdp(mu[i : i + 1]), y0[i : i + 1], t[i], options={"step_t": stops}, **kw)
        assert float((sol.ys[:, i] - alone.ys[:, 0]).abs().max()) < 1e-10
        assert int(sol.stats.n_accepted[i]) == alone.stats.n_accepted
        lo, hi = sorted((float(t[i, 0]), float(t[i, -1])))
        for s in stops:
            # A stage at the stop itself (the first stage of the step that starts there), for
            # the stops inside the sample's span only.
            hit = bool(((seen[:, i] - s).abs() <= 1e-15 * max(1.0, abs(s))).any())
            assert hit == (lo < s < hi), (i, s)
    assert not torch.equal(sol.stats.n_accepted, plain.stats.n_accepted)


def test_step_t_with_the_adjoint_matches_backprop_and_lands_backwards_too():
    from neuralode import solve_adjoint
    from neuralode.solvers.adjoint.common import in_adjoint_backward

    mu, y0, _ = _vdp_setup()
    m = mu.clone().requires_grad_()
    t = torch.stack([torch.linspace(0.1 * i, 2 + 0.3 * i, 3, dtype=F64) for i in range(4)])
    w = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    stops = (0.7, 1.234, 2.2)
    back = []

    def f(tt, y):
        if in_adjoint_backward():
            back.append(tt.detach().clone())
        return _vdp(m)(tt, y)

    opts = {"per_sample": True, "step_t": stops}
    kw = dict(rtol=1e-9, atol=1e-9)
    y0a = y0.clone().requires_grad_()
    ga = torch.autograd.grad((solve_adjoint(f, y0a, t, options=opts, adjoint_params=(m,), **kw).ys * w).sum(), (y0a, m))
    y0b = y0.clone().requires_grad_()
    gb = torch.autograd.grad((solve(f, y0b, t, options=opts, **kw).ys * w).sum(), (y0b, m))
    for a, b in zip(ga, gb):  # measured 1.2e-6 apart (1.7e-6 without step_t), 4e-8 at tolerance 1e-11
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    seen = torch.stack(back)
    for i in range(4):
        for s in stops:
            hit = bool(((seen[:, i] - s).abs() <= 1e-15).any())
            assert hit == (float(t[i, 0]) < s < float(t[i, -1])), (i, s)


def test_jump_t_refused():
    mu, y0, t = _vdp_setup()
    with pytest.raises(ValueError, match=r"options\['jump_t'\] is not supported with options\['per_sample'\]"):
        solve(_vdp(mu), y0, t, options={"per_sample": True, "jump_t": (1.0,)})


def test_step_t_float32_tuple_state():
    mu, y0, t = _vdp_setup(torch.float32)

    def f(tt, y):
        x, v = y
        return v, mu * (1 - x * x) * v - x

    opts = {"per_sample": True, "step_t": (0.5, 1.5, 2.5)}
    x, v = solve(f, (y0[:, 0], y0[:, 1]), t, rtol=1e-5, atol=1e-5, options=opts).ys
    assert x.dtype == torch.float32 and x.shape == (5, 4)
    for i in range(4):

        def fi(tt, y, m=mu[i : i + 1]):
            return y[1], m * (1 - y[0] ** 2) * y[1] - y[0]

        xi, vi = solve(
            fi, (y0[i : i + 1, 0], y0[i : i + 1, 1]), t, rtol=1e-5, atol=1e-5, options={"step_t": opts["step_t"]}
        ).ys
        # float32: the batched and the solo solve round differently, and over the oscillation the
        # accepted steps drift apart by rounding; 5e-4 is a few tens of tolerance units on |v| <= 2.
        assert float((x[:, i] - xi[:, 0]).abs().max()) < 5e-4 and float((v[:, i] - vi[:, 0]).abs().max()) < 5e-4


# --------------------------------------------------------------------------------------------
# Events with the per-sample adjoint: each sample's backward solve starts from its own end (its
# terminal event or last time) and passes each of its events by the event map's VJP.


def _adjoint_ball(adjoint, terminal, mode=True, dtype=F64, tuple_state=False):
    h0 = torch.tensor([1.0, 2.0, 0.5], dtype=dtype, requires_grad=True)
    g = torch.tensor([9.81, 5.0, 15.0], dtype=dtype, requires_grad=True)
    e = torch.tensor([0.9, 0.7, 0.9], dtype=dtype, requires_grad=True)
    t = torch.linspace(0, 3, 7, dtype=dtype)
    tol = 1e-10 if dtype == F64 else 1e-6
    if tuple_state:

        def f(tt, y):
            return y[1], -g * torch.ones_like(y[1])

        y0 = (h0, torch.zeros_like(h0))
        ev = Event(
            lambda tt, y: y[0],
            direction=-1,
            terminal=terminal,
            reset=None if terminal else (lambda tt, y: (y[0], -e * y[1])),
        )
    elif mode == "compact":  # func on any sub-batch: gravity and restitution in the state

        def f(tt, y):
            z = torch.zeros_like(y[:, 0])
            return torch.stack([y[:, 1], -y[:, 2], z, z], -1)

        y0 = torch.stack([h0, torch.zeros_like(h0), g, e], -1)
        ev = Event(
            lambda tt, y: y[:, 0],
            direction=-1,
            terminal=terminal,
            reset=lambda tt, y: torch.stack([y[:, 0], -y[:, 3] * y[:, 1], y[:, 2], y[:, 3]], -1),
        )
    else:
        f = _fall(g)
        y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
        ev = _floor() if terminal else _floor(e)
    kw = dict(rtol=tol, atol=tol, events=ev, options={"per_sample": mode})
    if adjoint:
        from neuralode import solve_adjoint

        sol = solve_adjoint(f, y0, t, adjoint_params=(g, e), **kw)
    else:
        sol = solve(f, y0, t, **kw)
    ys = sol.ys[0] if tuple_state else sol.ys[:, :, 0]
    v_at = [r.y[1] if tuple_state else r.y[1] for r in sol.events]
    loss = (
        (torch.nan_to_num(ys, nan=0.0) ** 2).sum()
        + sum((k % 3 + 1) * r.t for k, r in enumerate(sol.events))
        + 0.3 * sum(v_at)
    )
    grads = torch.autograd.grad(loss, (h0, g, e), allow_unused=True)
    return sol, [torch.zeros_like(h0) if x is None else x for x in grads]


@pytest.mark.parametrize("terminal", [True, False])
def test_adjoint_with_events_matches_backprop(terminal):
    sol_a, g_adj = _adjoint_ball(True, terminal)
    sol_b, g_bp = _adjoint_ball(False, terminal)
    assert [r.sample for r in sol_a.events] == [r.sample for r in sol_b.events]
    assert len(sol_a.events) == (3 if terminal else 15)
    assert all(float((ra.t - rb.t).detach().abs()) < 1e-12 for ra, rb in zip(sol_a.events, sol_b.events))
    for a, b in zip(g_adj, g_bp):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a, b)
    assert sol_a.adjoint_stats.n_accepted.shape == (3,) and bool((sol_a.adjoint_stats.n_accepted > 0).all())
    if terminal:  # closed form: t* = sqrt(2 h0 / g), d(Σ_k (k+1) t*_k)/dh0 = (k+1) t* / (2 h0) (+ the rest of the loss)
        h0 = torch.tensor([1.0, 2.0, 0.5], dtype=F64, requires_grad=True)
        g = torch.tensor([9.81, 5.0, 15.0], dtype=F64, requires_grad=True)
        ts = torch.sqrt(2 * h0 / g)
        # Heights at the outputs before t*: (h0 - g τ² / 2)²; v* = -g t*.
        t = torch.linspace(0, 3, 7, dtype=F64)
        hs = torch.where(t[:, None] <= ts.detach(), h0 - 0.5 * g * t[:, None] ** 2, torch.zeros(()))
        loss = (hs**2).sum() + (torch.arange(1, 4) * ts).sum() + 0.3 * (-g * ts).sum()
        ref = torch.autograd.grad(loss, (h0, g))
        assert torch.allclose(g_adj[0], ref[0], rtol=1e-6) and torch.allclose(g_adj[1], ref[1], rtol=1e-6)


def test_adjoint_with_events_solo_compact_tuple_float32():
    _, g_adj = _adjoint_ball(True, False)
    _, g_compact = _adjoint_ball(True, False, mode="compact")
    _, g_tuple = _adjoint_ball(True, False, tuple_state=True)
    for a, b, c in zip(g_adj, g_compact, g_tuple):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-8) and torch.allclose(a, c, rtol=1e-7, atol=1e-8)
    _, g32 = _adjoint_ball(True, False, dtype=torch.float32)
    for a, b in zip(g32, g_adj):
        assert a.dtype == torch.float32 and torch.allclose(a.double(), b, rtol=2e-3, atol=2e-3)
    # Each sample alone by the joint adjoint (stretch by stretch, events.py's gradients).
    from neuralode import solve_adjoint

    h0s, gs, es = (torch.tensor(v, dtype=F64) for v in ([1.0, 2.0, 0.5], [9.81, 5.0, 15.0], [0.9, 0.7, 0.9]))
    t = torch.linspace(0, 3, 7, dtype=F64)
    n = 0
    for i in range(3):
        h0, g, e = (x[i : i + 1].clone().requires_grad_() for x in (h0s, gs, es))
        sol = solve_adjoint(
            _fall(g), torch.stack([h0, 0 * h0], -1), t, rtol=1e-10, atol=1e-10, events=_floor(e), adjoint_params=(g, e)
        )
        loss = (
            (sol.ys[:, 0, 0] ** 2).sum()
            + sum(((n + k) % 3 + 1) * r.t for k, r in enumerate(sol.events))
            + 0.3 * sum(r.y[0, 1] for r in sol.events)
        )
        n += len(sol.events)
        for gr, xi in zip(g_adj, torch.autograd.grad(loss, (h0, g, e))):
            assert abs(float(gr[i]) - float(xi[0])) < 1e-6 * max(1.0, abs(float(xi[0])))


def test_adjoint_with_events_some_samples_without_any():
    from neuralode import solve_adjoint

    def run(adjoint):
        h0 = torch.tensor([3.0, 0.2, 5.0, 0.1], dtype=F64, requires_grad=True)  # samples 1 and 3 land before t = 0.5
        g = torch.tensor([9.81, 9.81, 2.0, 4.0], dtype=F64, requires_grad=True)
        y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
        t = torch.tensor([[0.0, 0.25, 0.5]] * 2 + [[0.1, 0.3, 0.6]] * 2, dtype=F64)
        kw = dict(rtol=1e-10, atol=1e-10, events=_floor(), options=PS)
        sol = solve_adjoint(_fall(g), y0, t, adjoint_params=(g,), **kw) if adjoint else solve(_fall(g), y0, t, **kw)
        loss = (torch.nan_to_num(sol.ys, nan=0.0) ** 2).sum() + sum(r.t for r in sol.events)
        return [r.sample for r in sol.events], torch.autograd.grad(loss, (h0, g))

    (sa, ga), (sb, gb) = run(True), run(False)
    assert sa == sb == [1, 3]
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), (a, b)


# --------------------------------------------------------------------------------------------
# Dense output per sample: each sample's interpolant over its own steps.


@pytest.mark.parametrize("method", per_sample_methods_matching_the_joint_loop())
def test_dense_output_per_sample_equals_solo_dense_outputs(method):
    # Every per-sample method, so every interpolant kind: dense (dopri5), dense with extra stages (dopri8),
    # Hermite (bosh3: FSAL; adaptive_heun: not).
    mu, y0, _ = _vdp_setup()
    t = torch.stack([torch.linspace(0.1 * i, 3 + 0.3 * i, 2, dtype=F64) for i in range(4)])
    tol = 1e-4 if order(method) < 3 else 1e-7  # second order: keep its step count small
    kw = dict(rtol=tol, atol=tol, method=method)
    sol = solve(_vdp(mu), y0, t, options={"per_sample": True, "dense": True}, **kw)
    q = torch.stack([torch.linspace(float(t[i, 0]), float(t[i, 1]), 9, dtype=F64) for i in range(4)])
    ys = sol.evaluate(q)
    assert ys.shape == (9, 4, 2) and torch.equal(ys[-1], sol.ys[-1]) and torch.equal(ys[0], y0)
    shared = sol(torch.tensor([0.5, 1.7, 2.9], dtype=F64))  # (K,): the same times for every sample
    one = sol.evaluate(torch.tensor(2.0, dtype=F64))
    for i in range(4):
        alone = solve(_vdp(mu[i : i + 1]), y0[i : i + 1], t[i], options={"dense": True}, **kw)

        def error(i=i, alone=alone) -> float:  # the joint loop's own at q[i], mostly its interpolant's
            reference = solve(_vdp(mu[i : i + 1]), y0[i : i + 1], q[i], rtol=1e-13, atol=1e-13, method="dopri8")
            return float((alone.evaluate(q[i])[:, 0] - reference.ys[:, 0]).abs().max())

        tol = clock_tolerance(method, 1.0, error)  # rounding of the solution's size (1), or see clock_tolerance
        assert float((alone.evaluate(q[i])[:, 0] - ys[:, i]).abs().max()) < tol
        assert float((alone.evaluate(torch.tensor([0.5, 1.7, 2.9], dtype=F64))[:, 0] - shared[:, i]).abs().max()) < tol
        assert float((alone.evaluate(torch.tensor(2.0, dtype=F64))[0] - one[i]).abs().max()) < tol
    with pytest.raises(ValueError, match=r"t = 0.05 lies outside the solved span of sample 1, \[0.1, 3.3"):
        sol.evaluate(torch.tensor([0.05, 1.0], dtype=F64))
    with pytest.raises(ValueError, match=r"takes t of shape \(\), \(K,\) or \(4, K\); got \(3, 2\)"):
        sol.evaluate(torch.zeros(3, 2, dtype=F64))


def test_odeint_dense_tuple_float32_compact_and_gradients():
    from neuralode import odeint_dense

    mu, y0, _ = _vdp_setup(torch.float32)
    y0m = (y0[:, 0], torch.stack([y0[:, 1], mu], 1))

    def f(t, y):
        x, (v, m) = y[0], y[1].unbind(1)
        return v, torch.stack([m * (1 - x * x) * v - x, torch.zeros_like(m)], 1)

    q = torch.linspace(0, 2, 5)
    a = odeint_dense(f, y0m, 0.0, 2.0, rtol=1e-6, atol=1e-6, options={"per_sample": True})
    b = odeint_dense(f, y0m, 0.0, 2.0, rtol=1e-6, atol=1e-6, options={"per_sample": "compact"})
    xa, va = a(q)
    xb, vb = b(q)
    assert xa.shape == (5, 4) and va.shape == (5, 4, 2) and xa.dtype == torch.float32
    assert float((xa - xb).abs().max()) < 1e-6 and float((va - vb).abs().max()) < 1e-6
    for i in range(4):
        xi, vi = odeint_dense(f, tuple(p[i : i + 1] for p in y0m), 0.0, 2.0, rtol=1e-6, atol=1e-6)(q)
        assert float((xa[:, i] - xi[:, 0]).abs().max()) < 1e-4 and float((va[:, i] - vi[:, 0]).abs().max()) < 1e-4
    # Backprop through the dense output, against each sample alone.
    mu64, y064, _ = _vdp_setup()
    y0g = y064.clone().requires_grad_()
    sol = solve(
        _vdp(mu64),
        y0g,
        torch.tensor([0.0, 2.0], dtype=F64),
        rtol=1e-9,
        atol=1e-9,
        options={"per_sample": True, "dense": True},
    )
    (g,) = torch.autograd.grad(sol.evaluate(torch.tensor([0.7, 1.3], dtype=F64)).sum(), y0g)
    for i in range(4):
        yi = y064[i : i + 1].clone().requires_grad_()
        si = solve(
            _vdp(mu64[i : i + 1]),
            yi,
            torch.tensor([0.0, 2.0], dtype=F64),
            rtol=1e-9,
            atol=1e-9,
            options={"dense": True},
        )
        (gi,) = torch.autograd.grad(si.evaluate(torch.tensor([0.7, 1.3], dtype=F64)).sum(), yi)
        assert torch.allclose(g[i], gi[0], rtol=1e-7, atol=1e-9)


def test_dense_output_with_per_sample_events():
    from neuralode import solve_adjoint

    e = torch.tensor([0.9, 0.8], dtype=F64)
    g = torch.tensor([9.81, 9.81], dtype=F64)
    h0 = torch.tensor([1.0, 0.5], dtype=F64)
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    t = torch.tensor([0.0, 1.5], dtype=F64)
    sol = solve(_fall(g), y0, t, events=_floor(e), options={"per_sample": True, "dense": True}, **KW)
    q = torch.linspace(0, 1.5, 31, dtype=F64)
    h = sol.evaluate(q)[:, :, 0]
    for i in range(2):  # the closed-form height between bounces
        bounces = [float(r.t) for r in sol.events if r.sample == i]
        v1 = math.sqrt(2 * 9.81 * float(h0[i]))
        for j, tj in enumerate(q.tolist()):
            k = sum(1 for tb in bounces if tb < tj)
            s = tj - (bounces[k - 1] if k else 0.0)
            ref = float(h0[i]) - 4.905 * tj**2 if k == 0 else float(e[i]) ** k * v1 * s - 4.905 * s * s
            assert abs(float(h[j, i]) - ref) < 1e-8
    # At an event time exactly: the state before the reset (falling onto the floor), as the joint loop reads it.
    r = [r for r in sol.events if r.sample == 1][0]
    at = sol.evaluate(r.t.detach().reshape(1))  # (1,) shared: sample 1 at its bounce
    assert float(at[0, 1, 1]) < 0 and abs(float(at[0, 1, 1]) - float(r.y[1])) < 1e-9
    # A terminal event ends the sample's span.
    term = solve(_fall(g), y0, t, events=_floor(), options={"per_sample": True, "dense": True}, **KW)
    with pytest.raises(ValueError, match=r"outside the solved span of sample 1, \[0.0, 0.319"):
        term.evaluate(torch.tensor([0.4], dtype=F64))
    with pytest.raises(
        ValueError, match=r"options\['dense'\] with options\['per_sample'\] is not supported by the adjoint"
    ):
        solve_adjoint(_fall(g), y0, t, options={"per_sample": True, "dense": True}, adjoint_params=())


# Zeno behaviour and coincident resets: the joint loop's refusals (solvers/loop.py), per sample.
_T1 = math.sqrt(2 / 9.81)  # first impact of a ball dropped from 1 m


def _drop(e, t, **kw):
    """Balls dropped from 1 m with restitution ``e`` (per sample), solved per sample."""
    e = torch.as_tensor(e, dtype=F64)
    y0 = torch.stack([torch.ones_like(e), torch.zeros_like(e)], -1)
    return solve(_fall(9.81), y0, t, events=[_floor(e)], options={**PS, "max_num_steps": 100000}, **KW, **kw)


@pytest.mark.parametrize(
    "e, sample, point",
    [
        ([0.9, 0.5, 0.9], 1, 3 * _T1),  # impacts accumulate at t1 (1 + 2 e / (1 - e))
        ([0.2, 0.9], 0, 1.5 * _T1),
    ],
)
def test_zeno_sample_is_refused_naming_sample_event_and_accumulation_point(e, sample, point):
    # Before the rule the Zeno sample fell through the floor (height -13 m at t = 3 for e = 0.5), silently.
    from neuralode import SolverError

    with pytest.raises(SolverError, match=rf"accumulate \(Zeno behaviour\): events\[0\] of sample {sample} ") as info:
        _drop(e, torch.tensor([0.0, 3.0], dtype=F64))
    msg = str(info.value)
    assert "end the solve before it" in msg
    told = float(msg.split("towards t=")[1].split()[0])
    assert abs(told - point) < 1e-6, (told, point)


def test_balls_ending_before_their_accumulation_match_each_sample_solved_alone():
    e = [0.9, 0.5, 0.2]
    t = torch.stack([torch.linspace(0, end, 5, dtype=F64) for end in (3.0, 1.2, 0.6)])  # before 8.6, 1.35, 0.68 s
    sol = _drop(e, t)
    for i in range(3):
        alone = _drop(e[i : i + 1], t[i : i + 1])
        # Batched arithmetic rounds differently from a batch of one: equal to rounding.
        assert torch.allclose(sol.ys[:, i], alone.ys[:, 0], rtol=0, atol=1e-13)
        mine = [float(r.t) for r in sol.events if r.sample == i]
        assert len(mine) == len(alone.events) == [4, 3, 1][i]
        assert max(abs(a - float(r.t)) for a, r in zip(mine, alone.events)) < 1e-13
        for name in ("n_accepted", "n_rejected", "nfe", "n_events"):
            assert int(getattr(sol.stats, name)[i]) == int(getattr(alone.stats, name)[0]), name
        joint = solve(
            lambda s, y: torch.stack([y[1], torch.full_like(y[1], -9.81)]),
            torch.tensor([1.0, 0.0], dtype=F64),
            t[i],
            events=[
                Event(
                    lambda s, y: y[0],
                    direction=-1,
                    terminal=False,
                    reset=lambda s, y, e=e[i]: torch.stack([y[0], -e * y[1]]),
                )
            ],
            **KW,
        )
        assert torch.allclose(sol.ys[:, i], joint.ys, atol=1e-8)


def _two_balls(heights, record_only_first=False):
    """Two balls per sample, ``y = (x1, v1, x2, v2)``, dropped from ``heights (B, 2)``, restitution
    0.8, to t = 1.5 s: one reset event per ball (or a record-only event on ball 1 and one reset)."""

    def field(t, y):
        g = torch.full_like(y[:, 1], -9.81)
        return torch.stack([y[:, 1], g, y[:, 3], g], -1)

    def bounce(j):
        return lambda t, y: torch.cat([y[:, :j], -0.8 * y[:, j : j + 1], y[:, j + 1 :]], 1)

    if record_only_first:
        events = [
            Event(lambda t, y: y[:, 0], direction=-1, terminal=False),
            Event(lambda t, y: y[:, 0], direction=-1, terminal=False, reset=bounce(1)),
        ]
    else:
        events = [
            Event(lambda t, y: y[:, 0], direction=-1, terminal=False, reset=bounce(1)),
            Event(lambda t, y: y[:, 2], direction=-1, terminal=False, reset=bounce(3)),
        ]
    h = torch.tensor(heights, dtype=F64)
    y0 = torch.stack([h[:, 0], torch.zeros_like(h[:, 0]), h[:, 1], torch.zeros_like(h[:, 0])], -1)
    return solve(field, y0, torch.tensor([0.0, 1.5], dtype=F64), events=events, options=PS, **KW)


@pytest.mark.parametrize("heights, sample", [([[1.0, 1.0], [1.0, 0.5]], 0), ([[1.0, 0.5], [0.7, 0.7]], 1)])
def test_two_resets_at_the_same_time_in_one_sample_are_refused(heights, sample):
    # Before the rule the second ball's reset was dropped: it fell through the floor (x2 = -10 m at t = 1.5).
    from neuralode import SolverError

    with pytest.raises(
        SolverError,
        match=rf"events\[0\] and events\[1\] change the state at the same time "
        rf"\(sample {sample}\).*one Event",
    ):
        _two_balls(heights)


def test_separate_resets_at_different_times_match_the_joint_loop():
    heights = [[1.0, 0.5], [0.7, 0.3]]
    sol = _two_balls(heights)
    for i, (a, b) in enumerate(heights):
        for j, h0 in enumerate((a, b)):
            one = solve(
                _fall(9.81),
                torch.tensor([[h0, 0.0]], dtype=F64),
                torch.tensor([0.0, 1.5], dtype=F64),
                events=[_floor(torch.tensor([0.8], dtype=F64))],
                options=PS,
                **KW,
            )
            assert torch.allclose(sol.ys[-1, i, 2 * j : 2 * j + 2], one.ys[-1, 0], atol=1e-8), (i, j)


def test_record_only_event_at_the_same_time_as_a_reset_keeps_the_reset():
    # The row acts on its first event that resets or ends; before, it took the record-only one (first
    # by index) and dropped the bounce, so the ball fell through the floor.
    sol = _two_balls([[1.0, 0.5]], record_only_first=True)
    one = solve(
        _fall(9.81),
        torch.tensor([[1.0, 0.0]], dtype=F64),
        torch.tensor([0.0, 1.5], dtype=F64),
        events=[_floor(torch.tensor([0.8], dtype=F64))],
        options=PS,
        **KW,
    )
    assert torch.allclose(sol.ys[-1, 0, :2], one.ys[-1, 0], atol=1e-8)
    assert [r.index for r in sol.events] == [1, 1]


def test_dense_output_per_sample_refuses_an_empty_set_of_times():
    # t of shape (B, 0) asks for no time at all: refused by name rather than failing inside the read.
    mu = torch.tensor([0.5, 1.5], dtype=F64)
    y0 = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=F64)
    sol = solve(_vdp(mu), y0, torch.tensor([0.0, 1.0], dtype=F64), options={"per_sample": True, "dense": True})
    with pytest.raises(ValueError, match=r"needs at least one time; got t of shape \(2, 0\)"):
        sol.evaluate(torch.zeros(2, 0, dtype=F64))
    with pytest.raises(ValueError, match=r"needs at least one time; got t of shape \(0,\)"):
        sol.evaluate(torch.zeros(0, dtype=F64))  # was a RuntimeError from a reshape


# The event-function checks both clocks share (events.core.check_event_value, non_finite_event).
def test_per_sample_event_function_returning_nan_in_one_sample_is_refused_naming_it():
    y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)

    def g(t, y):  # sample 1's value is NaN: its crossing is undefined, so it could never fire
        return torch.where(torch.arange(2)[:, None] == 1, float("nan"), y - 0.5)

    with pytest.raises(ValueError, match=r"events\[0\].*non-finite.*sample 1"):
        solve(lambda t, y: -y, y0, t, options={"per_sample": True}, events=[Event(g)])


def test_per_sample_event_function_returning_bool_is_refused_as_on_the_host_clock():
    y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    for options in ({"per_sample": True}, None):
        with pytest.raises(TypeError, match=r"events\[0\].*real-valued.*torch.bool"):
            solve(lambda t, y: -y, y0, t, options=options, events=[Event(lambda t, y: y > 0.5)])
