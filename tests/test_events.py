"""Events: closed-form event times and their gradients, directions, resets, terminal and
non-terminal events, backwards time, tuple states, dtypes, torchdiffeq's event interface, dense
output, step callbacks, and the error messages for bad event input."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import neuralode
from neuralode import METHODS, Event, odeint, odeint_adjoint, odeint_dense, odeint_event, solve, solve_adjoint
from neuralode.solvers.methods.interpolants import ContinuousExtension, ExtendedContinuousExtension, Hermite
from tests.registry import interpolant, methods, order

F64 = torch.float64
G = 9.81
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


class Gravity(torch.nn.Module):
    """A falling ball, state (height, velocity); ``g`` is a parameter."""

    def __init__(self, g: float = G, dtype=F64):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g, dtype=dtype))

    def forward(self, t, y):
        return torch.stack([y[..., 1], -self.g * torch.ones_like(y[..., 1])], dim=-1)


def height(t, y):
    return y[..., 0]


def bounce(e):
    """The reset of a bounce with restitution ``e``: the velocity reverses and shrinks."""
    return lambda t, y: torch.stack([y[..., 0], -e * y[..., 1]], dim=-1)


def bounce_times(h0: float, e: float, n: int, g: float = G) -> list[float]:
    """t_1 = sqrt(2 h0 / g), t_{k+1} = t_k + 2 e^k v_1 / g with v_1 = sqrt(2 g h0)."""
    v1 = math.sqrt(2 * g * h0)
    out = [v1 / g]
    for k in range(1, n):
        out.append(out[-1] + 2 * e**k * v1 / g)
    return out


# ------------------------------------------------------------------------------------------------
# torchdiffeq's interface: odeint(..., event_fn=...) and odeint_event.


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint])
def test_free_fall_time_and_its_derivatives(interface):
    f = Gravity()
    h0 = torch.tensor(2.0, dtype=F64, requires_grad=True)
    y0 = torch.stack([h0, torch.zeros((), dtype=F64)])
    t_star, sol = interface(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=height, **TIGHT)
    assert sol.shape == (2, 2)
    assert torch.equal(sol[0], y0.detach())
    assert abs(t_star.item() - math.sqrt(2 * 2.0 / G)) < 1e-12
    assert abs(sol[1, 0].item()) < 1e-12
    dh, dg = torch.autograd.grad(t_star, (h0, f.g))
    # t* = sqrt(2 h0 / g): dt*/dh0 = 1 / sqrt(2 g h0), dt*/dg = -t* / (2 g)
    assert abs(dh.item() - 1 / math.sqrt(2 * G * 2.0)) < 1e-10
    assert abs(dg.item() + math.sqrt(2 * 2.0 / G) / (2 * G)) < 1e-10
    # The state at the event moves with the event time: v* = -sqrt(2 g h0).
    t_star, sol = interface(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=height, **TIGHT)
    (dv,) = torch.autograd.grad(sol[1, 1], h0)
    assert abs(dv.item() + math.sqrt(G / (2 * 2.0))) < 1e-9


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint])
def test_odeint_event_with_t0_gradient_and_reverse_time(interface):
    f = Gravity()
    kw = {"adjoint_params": tuple(f.parameters())} if interface is odeint_adjoint else {}
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t_star, sol = odeint_event(f, y0, t0, event_fn=height, odeint_interface=interface, **TIGHT, **kw)
    assert abs(t_star.item() - (0.5 + math.sqrt(2 / G))) < 1e-12
    (dt0,) = torch.autograd.grad(t_star, t0)
    assert abs(dt0.item() - 1.0) < 1e-9  # an autonomous system: the event shifts with t0
    # Backwards from the ground: y(t0) = (0, -v) reached from h = 1 at t0 - sqrt(2/G).
    y_ground = torch.tensor([0.0, -math.sqrt(2 * G)], dtype=F64)
    t_top, sol = odeint_event(
        f,
        y_ground,
        torch.tensor(3.0, dtype=F64),
        event_fn=lambda t, y: y[1],
        reverse_time=True,
        odeint_interface=interface,
        **TIGHT,
        **kw,
    )
    assert abs(t_top.item() - (3.0 - math.sqrt(2 / G))) < 1e-10
    assert abs(sol[-1, 0].item() - 1.0) < 1e-9


def test_matches_torchdiffeq_odeint_event():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    def func(t, y):
        return net(y) + torch.stack([torch.zeros_like(y[0]), -torch.ones_like(y[1])])

    y0 = torch.tensor([1.0, 0.3], dtype=F64)
    t0 = torch.tensor(0.0, dtype=F64)
    results = []
    for lib in (neuralode, torchdiffeq):
        net.zero_grad()
        t_star, sol = lib.odeint_event(func, y0, t0, event_fn=height, rtol=1e-10, atol=1e-12)
        (t_star + sol[-1].sum()).backward()
        results.append((t_star.item(), sol[-1].detach(), [p.grad.clone() for p in net.parameters()]))
    (ta, ya, ga), (tb, yb, gb) = results
    assert abs(ta - tb) < 1e-8
    assert torch.allclose(ya, yb, atol=1e-8)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


def test_event_fn_tuple_state():
    def func(t, y):
        x, v = y
        return v, -G * torch.ones_like(v)

    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    t_star, (x, v) = odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=lambda t, y: y[0], **TIGHT)
    assert x.shape == (2, 1) and v.shape == (2, 1)
    assert abs(t_star.item() - math.sqrt(2 / G)) < 1e-12


def test_fixed_step_event_needs_step_size_and_then_works():
    f = Gravity()
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"fixed-step method 'rk4' needs options\['step_size'\]"):
        odeint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=height, method="rk4")
    t_star, _ = odeint(
        f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=height, method="rk4", options={"step_size": 0.01}
    )
    # rk4 is exact on a quadratic, and the cubic Hermite/linear interpolant is what the root is
    # located on: linear interpolation of a parabola over one step of 0.01.
    assert abs(t_star.item() - math.sqrt(2 / G)) < 2e-4


# ------------------------------------------------------------------------------------------------
# neuralode's events: directions, resets, terminal and non-terminal.


@pytest.mark.parametrize(
    "method,options",
    [
        ("dopri5", None),
        ("tsit5", None),
        ("dopri8", None),
        ("rk4", {"step_size": 0.01, "interp": "cubic"}),
        ("bosh3", None),
    ],
)
def test_bounce_times_match_closed_form(method, options):
    e = 0.8
    ev = Event(height, direction=-1, terminal=False, reset=bounce(e))
    sol = solve(
        Gravity(),
        torch.tensor([1.0, 0.0], dtype=F64),
        torch.linspace(0, 3, 31, dtype=F64),
        events=[ev],
        method=method,
        options=options,
        **TIGHT,
    )
    expected = bounce_times(1.0, e, len(sol.events))
    assert len(sol.events) == len(bounce_times(1.0, e, 50)[: sum(t < 3 for t in bounce_times(1.0, e, 50))])
    # rk4 integrates the parabola exactly, and cubic Hermite interpolation reproduces it.
    tol = 1e-11 if options is None else 1e-10
    assert max(abs(r.t.item() - x) for r, x in zip(sol.events, expected)) < tol
    assert all(r.index == 0 and r.element == () and not r.terminal for r in sol.events)
    # The ball never goes below the floor, and the outputs after each bounce show the reset state.
    assert sol.ys[:, 0].min().item() > -1e-9
    assert len(sol.ts) == 31


def test_terminal_event_shortens_the_outputs():
    t = torch.linspace(0, 1, 11, dtype=F64)
    sol = solve(Gravity(), torch.tensor([1.0, 0.0], dtype=F64), t, events=[Event(height)], **TIGHT)
    t_star = math.sqrt(2 / G)
    assert sol.terminated and len(sol.events) == 1
    assert len(sol.ts) == sum(1 for x in t.tolist() if x <= t_star) == sol.ys.shape[0]
    assert torch.equal(sol.ts, t[: len(sol.ts)])
    assert sol.events[0].y[0].abs().item() < 1e-12


def test_direction_selects_rising_falling_or_both():
    def func(t, y):
        return torch.cos(t) * torch.ones_like(y)  # y = sin(t): zeros at k pi

    y0 = torch.tensor([0.0], dtype=F64)  # zero at t0: must not fire there
    t = torch.tensor([0.0, 10.0], dtype=F64)
    roots = {
        d: [
            r.t.item()
            for r in solve(func, y0, t, events=[Event(lambda t, y: y, direction=d, terminal=False)], **TIGHT).events
        ]
        for d in (-1, 0, 1)
    }
    k_pi = [k * math.pi for k in range(1, 4)]
    assert roots[0] == pytest.approx(k_pi, abs=1e-9)
    assert roots[-1] == pytest.approx([math.pi, 3 * math.pi], abs=1e-9)  # sin falls through pi, 3pi
    assert roots[1] == pytest.approx([2 * math.pi], abs=1e-9)


def test_non_terminal_event_without_reset_does_not_change_the_solve():
    f = Gravity()
    y0 = torch.tensor([3.0, 2.0], dtype=F64)
    t = torch.linspace(0, 1, 7, dtype=F64)
    plain = solve(f, y0, t, **TIGHT)
    ev = Event(lambda t, y: y[..., 0] - torch.tensor([3.1, 3.0], dtype=F64), terminal=False)
    watched = solve(f, y0, t, events=[ev], **TIGHT)
    assert torch.equal(plain.ys, watched.ys)
    assert plain.stats.n_accepted == watched.stats.n_accepted
    # Locating costs no evaluation of func; only the event-time gradient does, one per event.
    assert watched.stats.nfe == plain.stats.nfe + len(watched.events)
    with torch.no_grad():
        assert solve(f, y0, t, events=[ev], **TIGHT).stats.nfe == plain.stats.nfe
    # h(t) = 3 + 2t - G t^2 / 2 crosses 3.1 twice (up, down) and 3.0 once on the way down.
    v, a = 2.0, G / 2

    def roots(c):
        d = math.sqrt(v * v - 4 * a * (c - 3.0))
        return sorted(x for x in ((v - d) / (2 * a), (v + d) / (2 * a)) if 1e-12 < x <= 1)

    expected = sorted([(x, (0,)) for x in roots(3.1)] + [(x, (1,)) for x in roots(3.0)])
    got = [(r.t.item(), r.element) for r in watched.events]
    assert [e for _, e in got] == [e for _, e in expected]
    assert [x for x, _ in got] == pytest.approx([x for x, _ in expected], abs=1e-11)


def test_several_events_in_time_order_and_the_first_terminal_wins():
    f = Gravity()
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    half = Event(lambda t, y: y[0] - 0.5, terminal=False)
    ground = Event(height)
    late = Event(lambda t, y: t - 5.0)  # would fire after the ground: never reached
    sol = solve(f, y0, torch.tensor([0.0, 10.0], dtype=F64), events=[late, ground, half], **TIGHT)
    assert [r.index for r in sol.events] == [2, 1]
    assert sol.events[0].t.item() == pytest.approx(math.sqrt(1.0 / G), abs=1e-11)
    assert sol.events[1].terminal and len(sol.ts) == 1


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (F64, 1e-11)])
def test_backwards_in_time_and_dtypes(dtype, tol):
    f = Gravity(dtype=dtype)
    # At t = 2 the ball is on the ground moving down at sqrt(2 G); integrating backwards, the
    # height is zero again at t = 2 - 2 sqrt(2/G) (the launch), and the apex is half way.
    v = math.sqrt(2 * G)
    y_end = torch.tensor([0.0, -v], dtype=dtype)
    t = torch.tensor([2.0, 0.0], dtype=dtype)
    kw = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else TIGHT
    sol = solve(f, y_end, t, events=[Event(height, direction=-1), Event(lambda t, y: y[1], terminal=False)], **kw)
    apex, launch = sol.events
    assert apex.index == 1 and launch.index == 0 and launch.terminal
    assert apex.t.item() == pytest.approx(2.0 - math.sqrt(2 / G), abs=tol * 10)
    assert launch.t.item() == pytest.approx(2.0 - 2 * math.sqrt(2 / G), abs=tol * 10)
    assert apex.t.dtype == dtype


def test_tuple_state_with_reset_and_per_element_crossings():
    """Two balls in one batch: each element of the event function is watched on its own."""

    def func(t, y):
        x, v = y
        return v, -G * torch.ones_like(v)

    def reset(t, y):
        x, v = y
        return x, torch.where(x.abs() < 1e-6, -0.5 * v, v)

    y0 = (torch.tensor([1.0, 2.0], dtype=F64), torch.zeros(2, dtype=F64))
    ev = Event(lambda t, y: y[0], direction=-1, terminal=False, reset=reset)
    sol = solve(func, y0, torch.tensor([0.0, 1.2], dtype=F64), events=[ev], **TIGHT)
    got = [(round(r.t.item(), 9), r.element) for r in sol.events]
    first = [(round(x, 9), (0,)) for x in bounce_times(1.0, 0.5, 10) if x < 1.2]
    second = [(round(x, 9), (1,)) for x in bounce_times(2.0, 0.5, 10) if x < 1.2]
    assert len(first) == 3 and len(second) == 1
    assert got == sorted(first + second)
    assert isinstance(sol.events[0].y, tuple) and sol.events[0].y[0].shape == (2,)


# ------------------------------------------------------------------------------------------------
# Gradients through event times and resets: backprop, adjoint and finite differences agree.


def _third_bounce(e: torch.Tensor, h0: torch.Tensor, solver=solve):
    ev = Event(height, direction=-1, terminal=False, reset=bounce(e))
    y0 = torch.stack([h0, torch.zeros((), dtype=F64)])
    kw = {"adjoint_params": ()} if solver is solve_adjoint else {}
    sol = solver(Gravity(), y0, torch.tensor([0.0, 2.5], dtype=F64), events=[ev], **TIGHT, **kw)
    return sol.events[2].t, sol.ys[-1, 0]


def test_bounce_time_gradients_backprop_adjoint_and_finite_differences():
    e0, h00 = 0.7, 1.3
    grads = {}
    for solver in (solve, solve_adjoint):
        e = torch.tensor(e0, dtype=F64, requires_grad=True)
        h0 = torch.tensor(h00, dtype=F64, requires_grad=True)
        t3, y_end = _third_bounce(e, h0, solver)
        grads[solver.__name__] = [torch.autograd.grad(q, (e, h0), retain_graph=True) for q in (t3, y_end)]
    # Closed form: t3 = (v1 / g)(1 + 2e + 2e^2), v1 = sqrt(2 g h0).
    v1 = math.sqrt(2 * G * h00)
    assert grads["solve"][0][0].item() == pytest.approx(v1 / G * (2 + 4 * e0), rel=1e-9)
    assert grads["solve"][0][1].item() == pytest.approx(
        math.sqrt(2 * G) / (2 * math.sqrt(h00)) / G * (1 + 2 * e0 + 2 * e0**2), rel=1e-9
    )
    eps = 1e-6
    with torch.no_grad():
        fd = []
        for k in range(2):
            for i in range(2):
                args_p = [torch.tensor(e0, dtype=F64), torch.tensor(h00, dtype=F64)]
                args_m = [a.clone() for a in args_p]
                args_p[i] += eps
                args_m[i] -= eps
                fd.append((_third_bounce(*args_p)[k].item() - _third_bounce(*args_m)[k].item()) / (2 * eps))
    for name, g in grads.items():
        got = [g[k][i].item() for k in range(2) for i in range(2)]
        assert got == pytest.approx(fd, rel=1e-5, abs=1e-7), name
    assert [x.item() for pair in grads["solve"] for x in pair] == pytest.approx(
        [x.item() for pair in grads["solve_adjoint"] for x in pair], rel=1e-7
    )


def test_event_function_parameters_get_gradients():
    level = torch.tensor(0.25, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t_star, _ = odeint(Gravity(), y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=lambda t, y: y[0] - level, **TIGHT)
    (d,) = torch.autograd.grad(t_star, level)
    # t* = sqrt(2 (1 - level) / g)
    assert d.item() == pytest.approx(-1.0 / math.sqrt(2 * G * (1 - 0.25)), rel=1e-9)


# ------------------------------------------------------------------------------------------------
# Dense output: odeint_dense and Solution.evaluate.


# A sample of the interpolant kinds for odeint_dense's interface; every method's dense output is checked against
# the closed form in test_method_conformance.
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3", "rk4"])
def test_odeint_dense_matches_solve_at_the_same_times(method):
    def func(t, y):
        return torch.stack([y[1], -y[0]])

    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    opts = {"step_size": 0.05, "interp": "cubic"} if method == "rk4" else None
    dense = odeint_dense(func, y0, 0.0, 3.0, method=method, options=opts, **TIGHT)
    t = torch.linspace(0, 3, 17, dtype=F64)
    direct = solve(func, y0, t, method=method, options=opts, **TIGHT)
    if method != "rk4":  # rk4's fixed grid does not contain the output times of the direct solve
        assert torch.allclose(dense(t), direct.ys, atol=1e-12, rtol=0)
    exact = torch.stack([torch.cos(t), -torch.sin(t)], 1)
    tol = 1e-4 if method == "rk4" else 1e-8
    assert (dense.evaluate(t) - exact).abs().max().item() < tol
    assert dense(t[5]).shape == (2,)
    assert dense.ys.shape == (2, 2)


def test_evaluate_errors():
    def func(t, y):
        return -y

    sol = solve(func, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match=r"options=\{'dense': True\}"):
        sol.evaluate(torch.tensor(0.5))
    dense = odeint_dense(func, torch.ones(2, dtype=F64), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"t = 1.5 lies outside the solved span \[0.0, 1.0\]"):
        dense(torch.tensor([0.5, 1.5], dtype=F64))
    with pytest.raises(ValueError, match=r"takes t of shape \(\) or \(K,\); got \(2, 2\)"):
        dense(torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"needs at least one time; got t of shape \(0,\)"):
        dense(torch.zeros(0, dtype=F64))  # was a RuntimeError from torch.stack
    with pytest.raises(TypeError, match=r"floating-point tensor of times, of shape \(\) or \(K,\); got list"):
        dense([0.5])


@pytest.mark.parametrize("per_sample", [False, True])
def test_dense_lookup_rule_is_the_same_on_both_clocks(per_sample):
    # One rule (dense.PieceTable) for both clocks: a time within rounding of the span's end is served
    # (as the per-sample clock always did), a time at an event with a reset reads the state before the
    # reset, a time at a step's end reads that step's end state exactly.
    def func(t, y):
        return torch.stack([y[..., 1], -9.81 * torch.ones_like(y[..., 0])], -1)

    bounce = Event(
        lambda t, y: y[..., 0],
        direction=-1,
        terminal=False,
        reset=lambda t, y: y * torch.tensor([1.0, -0.8], dtype=F64),
    )
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    options = {"dense": True, "per_sample": per_sample}
    sol = solve(func, y0 if per_sample else y0[0], t, rtol=1e-9, atol=1e-9, events=[bounce], options=options)
    end = torch.tensor(math.nextafter(1.0, 2.0), dtype=F64)
    assert torch.equal(sol.evaluate(end), sol.ys[-1])
    t_e = sol.events[0].t.to(F64)
    before = sol.evaluate(t_e)
    assert (
        abs(float(before[..., 0].abs().max())) < 1e-9 and float(before[..., 1].max()) < -4.0
    )  # falling: before the reset
    after = sol.evaluate(torch.tensor(float(t_e) + 1e-9, dtype=F64))
    assert float(after[..., 1].min()) > 3.0  # rising: after the reset
    with pytest.raises(ValueError, match=r"lies outside the solved span"):
        sol.evaluate(torch.tensor(1.0 + 1e-9, dtype=F64))


# ------------------------------------------------------------------------------------------------
# Step callbacks, as torchdiffeq calls them.


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = {
            name: 0 for name in ("step", "accept", "reject", "step_adjoint", "accept_adjoint", "reject_adjoint")
        }
        self.w = torch.nn.Parameter(torch.tensor(-1.0, dtype=F64))

    def forward(self, t, y):
        return self.w * y + torch.sin(10 * t)

    def callback_step(self, t0, y0, dt):
        assert isinstance(t0, torch.Tensor) and isinstance(dt, torch.Tensor) and dt.item() > 0
        self.calls["step"] += 1

    def callback_accept_step(self, t0, y0, dt):
        self.calls["accept"] += 1

    def callback_reject_step(self, t0, y0, dt):
        self.calls["reject"] += 1

    def callback_step_adjoint(self, t0, y0, dt):
        self.calls["step_adjoint"] += 1

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.calls["accept_adjoint"] += 1

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self.calls["reject_adjoint"] += 1


def test_step_callbacks_adaptive_fixed_and_adjoint():
    f = Counting()
    y0 = torch.ones(3, dtype=F64)
    t = torch.linspace(0, 2, 5, dtype=F64)
    sol = solve(f, y0, t, rtol=1e-3, atol=1e-3, options={"first_step": 1.0})
    assert sol.stats.n_rejected > 0
    assert f.calls["step"] == sol.stats.n_steps
    assert (f.calls["accept"], f.calls["reject"]) == (sol.stats.n_accepted, sol.stats.n_rejected)

    f = Counting()
    sol = solve(f, y0, t, method="rk4", options={"step_size": 0.1})
    assert f.calls["step"] == sol.stats.n_accepted == 20
    assert f.calls["accept"] == f.calls["reject"] == 0  # torchdiffeq's fixed grids call only callback_step

    f = Counting()
    sol = solve_adjoint(f, y0, t, rtol=1e-6, atol=1e-6)
    assert f.calls["step_adjoint"] == 0
    sol.ys.sum().backward()
    assert f.calls["step_adjoint"] == sol.adjoint_stats.n_steps > 0
    assert f.calls["accept_adjoint"] == sol.adjoint_stats.n_accepted
    assert f.calls["step"] == sol.stats.n_steps


# ------------------------------------------------------------------------------------------------
# Bad input.


def _ball_solve(events, t=None):
    return solve(
        Gravity(),
        torch.tensor([1.0, 0.0], dtype=F64),
        torch.tensor([0.0, 1.0], dtype=F64) if t is None else t,
        events=events,
    )


@pytest.mark.parametrize(
    "make,exc,message",
    [
        (lambda: Event(3.0), TypeError, "Event fn must be callable as fn(t, y) -> tensor; got float."),
        (
            lambda: Event(height, direction=2),
            ValueError,
            "Event direction must be -1 (falling), 0 (either) or +1 (rising); got 2.",
        ),
        (lambda: Event(height, terminal="yes"), TypeError, "Event terminal must be True or False; got 'yes'."),
        (
            lambda: Event(height, reset=1),
            TypeError,
            "Event reset must be callable as reset(t, y) -> y_new, or None; got int.",
        ),
    ],
)
def test_event_construction_errors(make, exc, message):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "events,exc,message",
    [
        ([height], TypeError, "events[0] must be a neuralode.Event (e.g. Event(fn, direction=-1)); got function."),
        ("ground", TypeError, "events must be a list of neuralode.Event; got str."),
        ([Event(lambda t, y: 1.0)], TypeError, "events[0].fn(t, y) must return a torch.Tensor; got float."),
        (
            [Event(lambda t, y: y[0] / 0.0 * 0.0)],
            ValueError,
            "events[0].fn(t, y) returned a non-finite value at t=0; an event function must be finite wherever the solution goes.",
        ),
        (
            [Event(height, terminal=False, reset=lambda t, y: y[:1])],
            ValueError,
            "events[0].reset(t, y) returned shape (1,) but the state has shape (2,); the new state must have the same shape as y.",
        ),
        (
            [Event(height, terminal=False, reset=lambda t, y: y.float())],
            TypeError,
            "events[0].reset(t, y) returned dtype torch.float32 but the state has dtype torch.float64; "
            "the new state must have the state's dtype.",
        ),
    ],
)
def test_bad_event_input(events, exc, message):
    with pytest.raises(exc) as info:
        _ball_solve(events)
    assert str(info.value) == message


def test_event_fn_with_more_than_two_times_is_refused():
    with pytest.raises(ValueError, match=r"With event_fn, t must hold exactly two times \[t0, t_dir\].*got 3 times"):
        odeint(
            Gravity(), torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 2.0], dtype=F64), event_fn=height
        )
    with pytest.raises(TypeError, match="event_fn must be callable"):
        odeint(Gravity(), torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), event_fn=0)


# ------------------------------------------------------------------------------------------------
# A program written for torchdiffeq's event interface: one odeint_event per bounce, tuple states,
# every initial condition an nn.Parameter (t0 included), restarts from the reset state.


class TorchdiffeqStyleBall(torch.nn.Module):
    def __init__(self, lib, adjoint: bool):
        super().__init__()
        self.lib = lib
        self.gravity = torch.nn.Parameter(torch.tensor([9.8], dtype=F64))
        self.log_radius = torch.nn.Parameter(torch.log(torch.tensor([0.2], dtype=F64)))
        self.t0 = torch.nn.Parameter(torch.tensor([0.0], dtype=F64))
        self.init_pos = torch.nn.Parameter(torch.tensor([10.0], dtype=F64))
        self.init_vel = torch.nn.Parameter(torch.tensor([0.0], dtype=F64))
        self.absorption = torch.nn.Parameter(torch.tensor([0.2], dtype=F64))
        self.interface = lib.odeint_adjoint if adjoint else lib.odeint

    def forward(self, t, state):
        pos, vel, log_radius = state
        return vel, -self.gravity, torch.zeros_like(log_radius)

    def event_fn(self, t, state):
        pos, _, log_radius = state
        return pos - torch.exp(log_radius)

    def collision_times(self, n: int):
        t0, state = self.t0, (self.init_pos, self.init_vel, self.log_radius)
        times = []
        for _ in range(n):
            t0, solution = self.lib.odeint_event(
                self,
                state,
                t0,
                event_fn=self.event_fn,
                reverse_time=False,
                atol=1e-8,
                rtol=1e-8,
                odeint_interface=self.interface,
            )
            times.append(t0)
            pos, vel, log_radius = (s[-1] for s in solution)
            state = (pos + 1e-7, -vel * (1 - self.absorption), log_radius)
        return times


@pytest.mark.parametrize("adjoint", [False, True])
def test_torchdiffeq_bouncing_ball_program_runs_unchanged(adjoint):
    results = {}
    for lib in (neuralode, torchdiffeq):
        ball = TorchdiffeqStyleBall(lib, adjoint)
        times = ball.collision_times(4)
        times[-1].sum().backward()
        results[lib.__name__] = ([x.item() for x in times], {n: p.grad.item() for n, p in ball.named_parameters()})
    (ours_t, ours_g), (peer_t, peer_g) = results["neuralode"], results["torchdiffeq"]
    assert ours_t == pytest.approx(peer_t, abs=1e-6)
    for name in ours_g:
        assert ours_g[name] == pytest.approx(peer_g[name], rel=1e-4, abs=1e-6), name


# Every adaptive method whose outputs inside a step are one contraction over the stages, from the registry.
@pytest.mark.parametrize(
    "method",
    [
        n
        for n in methods("adaptive", unwanted=("own_driver",))
        if interpolant(n) in (ContinuousExtension, ExtendedContinuousExtension, Hermite)
    ],
)
def test_many_outputs_in_a_step_equal_one_at_a_time(method):
    """Output times inside one step are evaluated in one contraction; Solution.evaluate takes
    them one by one: the two agree to rounding."""

    def vdp(t, y):
        return torch.stack([y[1], 2 * (1 - y[0] ** 2) * y[1] - y[0]])

    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    t = torch.linspace(0, 10, 1001, dtype=F64)
    # Low orders: still fewer steps than outputs; an implicit method's Newton iterations cost most at 1e-8.
    tol = {2: 1e-3, 3: 1e-5}.get(order(method), 1e-6 if METHODS[method].capabilities.implicit else 1e-8)
    many = solve(vdp, y0, t, method=method, rtol=tol, atol=tol)
    assert many.stats.n_accepted < 400  # so most steps hold several output times
    single = solve(vdp, y0, t[[0, -1]], method=method, rtol=tol, atol=tol, options={"dense": True})
    assert (many.ys - single.evaluate(t)).abs().max().item() < 1e-13


# Every fixed-grid method of order >= 2 (which integrates a parabola exactly), from the registry.
@pytest.mark.parametrize("method", [n for n in methods("events", unwanted=("adaptive",)) if order(n) >= 2])
def test_fixed_grid_events_are_located_on_a_cubic_interpolant(method):
    """A fixed grid's outputs interpolate linearly by default (torchdiffeq's ``interp``), but roots are located on
    the step's cubic Hermite interpolant: on a free fall (a parabola, which these methods integrate exactly) the
    event time and its gradient are exact to rounding (on the linear interpolant: 1.4e-5 and 7e-6 at h = 0.01),
    with one evaluation more than the solve without the event up to it (f(t1, y1) of the step the event cuts;
    elsewhere it is the next step's first stage) besides the event gradient's own."""
    h0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.stack([h0, torch.zeros((), dtype=F64)])
    calls = []

    def fall(t, y):
        calls.append(1)
        return torch.stack([y[1], torch.full_like(y[0], -9.81)])

    opts = {"step_size": 0.01}
    sol = solve(
        fall, y0, torch.tensor([0.0, 3.0], dtype=F64), events=[Event(lambda t, y: y[0])], method=method, options=opts
    )
    t_star = sol.events[0].t
    assert abs(float(t_star) - math.sqrt(2 / 9.81)) < 1e-12
    (grad,) = torch.autograd.grad(t_star, h0)
    assert abs(float(grad) - 1 / math.sqrt(2 * 9.81)) < 1e-12
    with_event = len(calls)
    calls.clear()
    steps = math.ceil(float(t_star) / 0.01)
    solve(fall, y0.detach(), torch.tensor([0.0, steps * 0.01], dtype=F64), method=method, options=opts)
    assert with_event <= len(calls) + 2


@pytest.mark.parametrize(
    "method, options",
    [
        ("dopri8", None),
        ("dopri8_13m", None),
        ("fehlberg2", None),
        ("adaptive_heun", None),
        ("dopri5", None),
        ("rk4", {"step_size": 0.25}),
    ],
)
def test_event_time_gradients_when_the_root_finder_first_builds_the_interpolant(method, options):
    # A free fall from h0 at speed v0 is a quadratic, which every method here integrates and
    # interpolates exactly: the time at height level is t = (v0 + sqrt(v0^2 + 2 g (h0 - level))) / g.
    # The root finder is the first to read a step's interpolant, under no_grad; what that first read
    # evaluates (dopri8's extra dense stages, f(t1, y1) for Hermite) must still carry gradients, to
    # the state at the event and, past a record-only event, to the next step.
    h00, v00, g0 = 1.3, 0.5, G
    h0 = torch.tensor(h00, dtype=F64, requires_grad=True)
    v0 = torch.tensor(v00, dtype=F64, requires_grad=True)
    func = Gravity(g0)
    events = [Event(lambda t, y: y[0] - 0.5, terminal=False), Event(height, terminal=True)]
    # The second-order pairs' embedded first-order solution errs by g h^2 / 2 on the fall, so TIGHT would take
    # adaptive_heun 156k steps (minutes) to show what a looser tolerance shows as exactly: the quadratic is
    # integrated and interpolated without error at any step size.
    tol = {"rtol": 1e-6, "atol": 1e-8} if method in ("adaptive_heun", "fehlberg2") else TIGHT
    sol = solve(
        func,
        torch.stack([h0, v0]),
        torch.tensor([0.0, 2.0], dtype=F64),
        method=method,
        options=options,
        events=events,
        **tol,
    )
    assert [r.index for r in sol.events] == [0, 1]
    for record, level in zip(sol.events, (0.5, 0.0)):
        root = math.sqrt(v00**2 + 2 * g0 * (h00 - level))
        t_star = (v00 + root) / g0
        expected = [1 / root, (1 + v00 / root) / g0, (h00 - level) / (g0 * root) - t_star / g0]
        got = torch.autograd.grad(record.t, (h0, v0, func.g), retain_graph=True)
        assert record.t.item() == pytest.approx(t_star, rel=1e-12)
        assert [x.item() for x in got] == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------
# Event functions that are exactly zero on a stretch of time (torchdiffeq's learn_physics example
# returns zeros after the last data time to stop there). The event is where g first reaches zero
# from its sign, or changes sign, whichever comes first; a stretch of zeros at a step's start has no
# sign, so g is watched from where it leaves zero.
#
# The problem y' = -k, y(0) = y0 (written 0 * y - k, so the implicit methods' autograd Jacobian
# exists) is integrated and interpolated exactly by every method, and one
# step of 8 covers every time of interest: without the event, y = y0 - k t reaches C at (y0 - C) / k.

EVENT_METHODS = [name for name, m in neuralode.METHODS.items() if m.capabilities.events]
C, K = 0.5, 0.1


def _one_step(method: str) -> dict:
    """Options that make ``method`` cover [0, 8] in one step."""
    adaptive = getattr(neuralode.solvers.api._method(method), "adaptive", False)
    return {"first_step": 8.0} if adaptive else {"step_size": 8.0}


def _piecewise(zero_before=None, zero_after=None, zero_on=None):
    """``g = y - C``, but exactly 0 before ``zero_before``, after ``zero_after`` and on ``zero_on``."""

    def g(t, y):
        s = t.detach().item()
        if (
            (zero_before is not None and s < zero_before)
            or (zero_after is not None and s > zero_after)
            or (zero_on is not None and zero_on[0] <= s <= zero_on[1])
        ):
            return torch.zeros_like(t)
        return y[0] - C

    return g


# (event function, y0, event time, state there, d(t*)/d(y0, k), d(y*)/d(y0, k))
CROSSING = (1 / K, -(1.0 - C) / K**2)  # t* = (y0 - C) / k
ZERO_CASES = {
    # learn_physics' idiom, the crossing first: found inside the step that ends among the zeros.
    "zero after the crossing": (_piecewise(zero_after=6.0), 1.0, 5.0, C, CROSSING, (0.0, 0.0)),
    # ... and the zeros first: the event is where they begin, a time no parameter moves.
    "zero before the crossing": (_piecewise(zero_after=3.0), 1.0, 3.0, 1.0 - 3 * K, (0.0, 0.0), (1.0, -3.0)),
    # g > 0, then 0 on [3, 7], then < 0: the event is where g reaches zero, not where it leaves.
    "zero on an interval": (_piecewise(zero_on=(3.0, 7.0)), 1.0, 3.0, 1.0 - 3 * K, (0.0, 0.0), (1.0, -3.0)),
    # Zero until t = 2 (no sign at the step's start), then positive, crossing at 5.
    "zero until a time": (_piecewise(zero_before=2.0), 1.0, 5.0, C, CROSSING, (0.0, 0.0)),
    # An isolated zero at the step's start (y0 = C: negative a moment later) and zeros at its end:
    # g rises from below to 0 at t = 3.
    "zero at both ends of a step": (_piecewise(zero_after=3.0), C, 3.0, C - 3 * K, (0.0, 0.0), (1.0, -3.0)),
}


def _grads(x: torch.Tensor, params) -> list[float]:
    if not x.requires_grad:
        return [0.0] * len(params)
    return [
        0.0 if d is None else d.item() for d in torch.autograd.grad(x, params, retain_graph=True, allow_unused=True)
    ]


@pytest.mark.parametrize("case", list(ZERO_CASES))
@pytest.mark.parametrize("method", EVENT_METHODS)
def test_event_function_zero_on_a_stretch_of_time(method, case):
    g, y00, t_exp, y_exp, dt_exp, dy_exp = ZERO_CASES[case]
    y0 = torch.tensor([y00], dtype=F64, requires_grad=True)
    k = torch.tensor(K, dtype=F64, requires_grad=True)
    span = torch.tensor([0.0, 1.0], dtype=F64)
    t_star, sol = odeint(lambda t, y: 0 * y - k, y0, span, event_fn=g, method=method, options=_one_step(method))
    assert t_star.item() == pytest.approx(t_exp, abs=1e-12)
    assert sol[-1, 0].item() == pytest.approx(y_exp, abs=1e-12)
    assert _grads(t_star, (y0, k)) == pytest.approx(dt_exp, abs=1e-9)
    assert _grads(sol[-1, 0], (y0, k)) == pytest.approx(dy_exp, abs=1e-9)
    # Without a graph: the same time.
    with torch.no_grad():
        t_plain, _ = odeint(lambda t, y: 0 * y - K, y0, span, event_fn=g, method=method, options=_one_step(method))
    assert t_plain.item() == pytest.approx(t_exp, abs=1e-12)


@pytest.mark.parametrize("method", EVENT_METHODS)
def test_zero_at_a_step_end_is_the_event_only_when_nothing_comes_before_it(method):
    # Steps land on t = 4: [0, 4], then [4, 8] (adaptive methods try 8, clipped by step_t).
    adaptive = "first_step" in _one_step(method)
    opts = {"first_step": 8.0, "step_t": [4.0]} if adaptive else {"step_size": 4.0}
    y0, span = torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 8.0], dtype=F64)

    def run(fn, **kw):
        sol = solve(lambda t, y: 0 * y - K, y0, span, method=method, options=opts, events=[Event(fn, **kw)])
        return [r.t.item() for r in sol.events]

    # A sign change at t = 2 comes before the zero that ends the step at t = 4.
    assert run(lambda t, y: (t - 2) * (t - 4)) == [pytest.approx(2.0, abs=1e-12)]
    # A touch at the step's end, left upwards: reaching zero is the event (torchdiffeq's sign
    # comparison sees it too), once, at the touch; a rising-only event ignores it.
    touch = lambda t, y: (t - 4) ** 2 + 0 * y[0]  # noqa: E731
    assert run(touch, terminal=False) == [4.0]
    assert run(touch, direction=1, terminal=False) == []
    # A touch inside a step is not seen: the sign is the same at both ends, as in torchdiffeq.
    assert run(lambda t, y: (y[0] - C) ** 2, terminal=False) == []


# One method of each family's interpolant (explicit dense, fixed grid, Adams, Radau) for the root finder's
# handling of an event function that is zero on a stretch; every method's events: test_method_conformance.
@pytest.mark.parametrize("method", ["dopri5", "rk4", "implicit_adams", "radau5"])
@pytest.mark.parametrize(
    "case, direction, expected",
    [
        ("zero before the crossing", -1, [3.0]),  # falls to zero at t = 3
        ("zero before the crossing", 1, []),
        ("zero at both ends of a step", 1, [3.0]),  # rises to zero at t = 3
        ("zero at both ends of a step", -1, []),
        ("zero after the crossing", 0, [5.0]),  # recorded once, not again where the zeros begin
        ("zero until a time", 0, [5.0]),
    ],
)
def test_zero_stretches_with_directions_and_record_only_events(method, case, direction, expected):
    g, y00, *_ = ZERO_CASES[case]
    sol = solve(
        lambda t, y: 0 * y - K,
        torch.tensor([y00], dtype=F64),
        torch.linspace(0.0, 16.0, 5, dtype=F64),
        method=method,
        options=_one_step(method),
        events=[Event(g, direction=direction, terminal=False)],
    )
    assert [r.t.item() for r in sol.events] == pytest.approx(expected, abs=1e-12)
    # The solve goes on to its last time, through the events it only records.
    assert sol.ys[:, 0].tolist() == pytest.approx([y00 - K * s for s in (0.0, 4.0, 8.0, 12.0, 16.0)], abs=1e-12)


@pytest.mark.parametrize("case", ["zero after the crossing", "zero before the crossing", "zero until a time"])
def test_zero_stretches_through_the_adjoint(case):
    g, y00, t_exp, y_exp, dt_exp, dy_exp = ZERO_CASES[case]
    y0 = torch.tensor([y00], dtype=F64, requires_grad=True)
    k = torch.tensor(K, dtype=F64, requires_grad=True)
    t_star, sol = odeint_adjoint(
        lambda t, y: 0 * y - k,
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        event_fn=g,
        options={"first_step": 8.0},
        adjoint_params=(k,),
    )
    assert t_star.item() == pytest.approx(t_exp, abs=1e-12)
    assert sol[-1, 0].item() == pytest.approx(y_exp, abs=1e-12)
    assert _grads(t_star, (y0, k)) == pytest.approx(dt_exp, abs=1e-9)
    assert _grads(sol[-1, 0], (y0, k)) == pytest.approx(dy_exp, abs=1e-9)


# Per-sample solves: each sample's event function zero on a stretch of time, located on that
# sample's own steps (the first step tries all of [0, 16]). Samples start at y0 = 1 and 1.2, whose
# crossings of C come at t = 5 and 7.

PS_CASES = {
    "zero after the crossing": (dict(zero_after=6.0), [5.0, 6.0]),
    "zero on an interval": (dict(zero_on=(5.5, 6.5)), [5.0, 5.5]),
    "zero until a time": (dict(zero_before=2.0), [5.0, 7.0]),
    "zero until after the crossing": (dict(zero_before=6.0), [None, 7.0]),
}


def _per_sample_piecewise(zero_before=None, zero_after=None, zero_on=None):
    def g(t, y):  # t: (B,), y: (B, 1)
        zero = torch.zeros_like(t, dtype=torch.bool)
        if zero_before is not None:
            zero = zero | (t < zero_before)
        if zero_after is not None:
            zero = zero | (t > zero_after)
        if zero_on is not None:
            zero = zero | ((t >= zero_on[0]) & (t <= zero_on[1]))
        return torch.where(zero, torch.zeros_like(t), y[:, 0] - C)

    return g


@pytest.mark.parametrize("case", list(PS_CASES))
# A sample (dense and Hermite interpolants) of the per-sample root finder on a function zero on a stretch.
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_per_sample_event_function_zero_on_a_stretch_of_time(method, case):
    kw, expected = PS_CASES[case]
    crossings_only = all(x is None or x in (5.0, 7.0) for x in expected)
    y0 = torch.tensor([[1.0], [1.2]], dtype=F64, requires_grad=crossings_only)
    sol = solve(
        lambda t, y: 0 * y - K,
        y0,
        torch.tensor([0.0, 16.0], dtype=F64),
        method=method,
        events=[Event(_per_sample_piecewise(**kw))],
        options={"per_sample": True, "first_step": 16.0},
    )
    got = {r.sample: r.t for r in sol.events}
    assert [got[i].item() if i in got else None for i in range(2)] == pytest.approx(expected, abs=1e-12)
    if crossings_only:  # dt*_i/dy0_i = 1 / k at a crossing of y - C
        for i in got:
            (d,) = torch.autograd.grad(got[i], y0, retain_graph=True)
            assert d[:, 0].tolist() == pytest.approx([1 / K if j == i else 0.0 for j in range(2)], abs=1e-9)


def test_per_sample_event_where_zeros_begin_has_no_derivative():
    # torch.where(t > T, 0, y - C) carries a graph, flat where the zeros begin: the event time there
    # has no implicit-function derivative, and the error says so rather than dividing by zero.
    y0 = torch.tensor([[1.0], [1.2]], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"sample 1 at t=6 is tangential.*zero on a stretch of time"):
        solve(
            lambda t, y: 0 * y - K,
            y0,
            torch.tensor([0.0, 16.0], dtype=F64),
            events=[Event(_per_sample_piecewise(zero_after=6.0))],
            options={"per_sample": True, "first_step": 16.0},
        )


def test_event_where_zeros_begin_with_a_graph_says_how_to_write_it():
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"t=3 is tangential.*return a tensor without a graph there"):
        odeint(
            lambda t, y: 0 * y - K,
            y0,
            torch.tensor([0.0, 1.0], dtype=F64),
            event_fn=lambda t, y: torch.where(t > 3.0, 0.0, y[0] - C),
            options={"first_step": 8.0},
        )


def test_per_sample_start_on_a_root_takes_the_sign_a_moment_later():
    # Balls thrown up from the floor (h = 0 at t = 0) land at 2 v0 / g inside the first step, which the
    # parabola lets span everything: found per sample as in the joint loop, whose start rule is this.
    v0 = [1.0, 2.0]
    y0 = torch.tensor([[0.0, v] for v in v0], dtype=F64)
    span = torch.tensor([0.0, 1.0], dtype=F64)
    kw = dict(events=[Event(height, direction=-1)], **TIGHT)
    per_sample = solve(Gravity(), y0, span, options={"per_sample": True, "first_step": 1.0}, **kw)
    assert [(r.sample, r.t.item()) for r in per_sample.events] == [
        (0, pytest.approx(2 * v0[0] / G, abs=1e-12)),
        (1, pytest.approx(2 * v0[1] / G, abs=1e-12)),
    ]
    joint = solve(Gravity(), y0[1], span, options={"first_step": 1.0}, **kw)
    assert joint.events[0].t.item() == pytest.approx(2 * v0[1] / G, abs=1e-12)
