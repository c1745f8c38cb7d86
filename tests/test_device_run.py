"""options={"compile": ...} on an adaptive solve without autograd: the whole run of steps as one compiled
``while_loop`` with its clock on the device (neuralode.solvers.fast.device_run). It must give the host clock's
steps and, to rounding, its outputs; read the host once per ``compile_steps`` attempts; take a step holding more
output times than its window again; hand the solve to the host clock for its errors and its stiffness watch;
and fall back, with one warning, where the run cannot be captured. The "eager" backend traces the run with
dynamo (the while_loop, its aliasing rules) without generating code, and "aot_eager" adds AOT autograd's
functionalisation; inductor itself is timed in benchmarks/bench_device_run.py."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from neuralode import SolverError, solve
from neuralode.solvers.fast import device_run

F64 = torch.float64


def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 2.0 * (1 - x**2) * v - x], -1)


def _pair(func, y0, t, method="dopri5", backend="eager", **kw):
    options = kw.pop("options", {})
    with torch.no_grad():
        eager = solve(func, y0, t, method=method, options=options, **kw)
        run = solve(func, y0, t, method=method, options={**options, "compile": backend}, **kw)
    return eager, run


def _same_steps(a, b):
    assert (a.stats.nfe, a.stats.n_accepted, a.stats.n_rejected) == (
        b.stats.nfe,
        b.stats.n_accepted,
        b.stats.n_rejected,
    )


def _same_error(match, *options_pair, **kw):
    """The error each of the two ``options`` raises for ``solve(vdp, **kw)``, which must be the same: the message and
    the step count where it was raised."""
    raised = []
    for options in options_pair:
        with torch.no_grad(), pytest.raises(SolverError, match=match) as info:
            solve(vdp, **kw, options=options)
        raised.append((str(info.value), info.value.n_steps))
    assert raised[0] == raised[1]


class CountingVdp(torch.nn.Module):
    """Van der Pol with a call counter: a side effect inside the loop's body, which while_loop cannot capture."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return vdp(t, y)


@pytest.mark.parametrize("method,backend", [("dopri5", "aot_eager"), ("tsit5", "eager"), ("bosh3", "eager")])
def test_the_run_gives_the_host_clocks_steps_and_outputs(method, backend, handed):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    eager, run = _pair(vdp, y0, t, method, backend, rtol=1e-8, atol=1e-8)
    assert len(handed) == 1 and handed[0][0] is not None
    _same_steps(eager, run)
    assert run.stats.n_rejected > 0 or method != "dopri5"  # rejections are decided on the device too
    assert (run.ys - eager.ys).abs().max() < 1e-12
    # The controller evaluates its formulas in log space (the per-sample clock's arithmetic): the steps agree to
    # rounding, compounded over the solve.
    assert run.stats.last_step == pytest.approx(eager.stats.last_step, rel=1e-8)
    assert run.stats.next_step == pytest.approx(eager.stats.next_step, rel=1e-6)
    assert run.stats.n_compiles >= 1 and run.stats.compile_s > 0


def test_backwards_in_time_float32_and_a_tuple_state():
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t = torch.linspace(2, 0, 5)
    eager, run = _pair(vdp, y0, t, rtol=1e-5, atol=1e-5)
    _same_steps(eager, run)
    torch.testing.assert_close(run.ys, eager.ys, rtol=1e-5, atol=1e-5)

    def split(t, y):
        x, v = y
        return v, 2.0 * (1 - x**2) * v - x

    y0t = (torch.tensor([2.0, 1.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    eager, run = _pair(split, y0t, torch.linspace(0, 2, 4, dtype=F64), rtol=1e-9, atol=1e-9)
    _same_steps(eager, run)
    for a, b in zip(run.ys, eager.ys):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_tuple_states_of_other_shapes_compile_in_one_process(handed):
    # dynamo remembers a function's shapes by its code's place, which every run's graph shares: a second tuple
    # state of other shapes makes them dynamic, and the state's layout (torch.Size objects) then reached the
    # while_loop as an input it refuses, so the run fell back with a warning. The layout is plain ints now.
    class Split(torch.nn.Module):
        def forward(self, t, y):
            out = vdp(t, torch.cat(y, -1))
            return out[..., :1], out[..., 1:]

    t = torch.linspace(0, 2, 4, dtype=F64)
    for batch in (2, 3):
        y0 = (torch.linspace(0.5, 2.0, batch, dtype=F64)[:, None], torch.zeros(batch, 1, dtype=F64))
        eager, run = _pair(Split(), y0, t, rtol=1e-9, atol=1e-9)
        _same_steps(eager, run)
        for a, b in zip(run.ys, eager.ys):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert len(handed) == 2 and all(result is not None for result, _ in handed)


def test_a_step_holding_more_outputs_than_its_window_is_taken_again():
    # 41 output times in [0, 1] and steps of about 0.5: every step holds more than the window's 8, so the run
    # takes it again from the same state, with the same step, for the next 8.
    def decay(t, y):
        return -0.5 * y

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.linspace(0, 1, 41, dtype=F64)
    eager, run = _pair(decay, y0, t, rtol=1e-4, atol=1e-6)
    assert (eager.stats.n_accepted, eager.stats.n_rejected) == (run.stats.n_accepted, run.stats.n_rejected)
    assert run.stats.nfe > eager.stats.nfe  # the steps taken again are evaluated again, and counted
    torch.testing.assert_close(run.ys, eager.ys, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(run.ys, y0 * torch.exp(-0.5 * t)[:, None], rtol=1e-4, atol=1e-6)


def test_max_step_and_one_return_to_python_per_compile_steps_attempts(monkeypatch):
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    eager, run = _pair(vdp, y0, t, rtol=1e-6, atol=1e-6, options={"max_step": 0.05, "compile_steps": 16})
    _same_steps(eager, run)
    assert eager.stats.n_accepted >= 60
    torch.testing.assert_close(run.ys, eager.ys, rtol=1e-12, atol=1e-12)
    # Each call of the compiled run takes 16 attempts (the last fewer), then neuralode's code reads the status and
    # the output index: ceil(attempts / 16) calls.
    calls = []
    real = device_run.call
    monkeypatch.setattr(device_run, "call", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        sol = solve(
            vdp, y0, t, rtol=1e-6, atol=1e-6, options={"max_step": 0.05, "compile_steps": 16, "compile": "eager"}
        )
    attempts = sol.stats.n_accepted + sol.stats.n_rejected
    assert len(calls) == math.ceil(attempts / 16)


def test_errors_and_the_stiffness_watch_are_the_host_clocks():
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    for options in ({}, {"compile": "eager"}):
        with torch.no_grad(), pytest.raises(SolverError, match="max_num_steps=5"):
            solve(vdp, y0, t, rtol=1e-6, atol=1e-6, options={**options, "max_num_steps": 5})

    # Van der Pol at mu = 1e4 (test_stiffness.py): the run hands the solve to the host clock where its stiffness
    # watch starts, and the host clock stops it as stiff at the same step as without compile.
    def stiff(t, y):
        return torch.stack([y[1], 1e4 * (1 - y[0] ** 2) * y[1] - y[0]])

    messages = []
    for options in ({}, {"compile": "eager"}):
        with torch.no_grad(), pytest.raises(SolverError, match="The problem is stiff") as info:
            solve(
                stiff,
                torch.tensor([2.0, 0.0], dtype=F64),
                torch.tensor([0.0, 3e4], dtype=F64),
                rtol=1e-6,
                atol=1e-8,
                options=options,
            )
        messages.append((info.value.n_steps, str(info.value).split(" for ")[0]))
    assert messages[0] == messages[1]


def test_min_step_is_the_host_clocks_and_a_rejection_at_it_hands_over(handed):
    # min_step holds every step of the run (the shared rule, control.stepping.plan_step): the same steps as the
    # eager solve, which with this floor start longer than the tiny first step asked for.
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    free, _ = _pair(vdp, y0, t, rtol=1e-8, atol=1e-8, options={"first_step": 1e-6})
    handed.clear()
    eager, run = _pair(vdp, y0, t, rtol=1e-8, atol=1e-8, options={"first_step": 1e-6, "min_step": 1e-2})
    assert eager.stats.n_accepted < free.stats.n_accepted
    _same_steps(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
    assert len(handed) == 1 and handed[0][0] is not None  # the run took the whole solve
    # A step rejected at min_step: the run hands the attempt to the host clock, which raises its own error...
    floor = {"min_step": 0.1}
    _same_error(
        "rejected at the minimum step size", floor, {**floor, "compile": "eager"}, y0=y0, t=t, rtol=1e-10, atol=1e-10
    )
    assert handed[-1][0] is None and handed[-1][1] is not None  # a Handover
    # ... or, with at_min_step="accept", accepts it with its warning and goes on.
    with pytest.warns(RuntimeWarning, match="at_min_step"):
        eager, run = _pair(vdp, y0, t, rtol=1e-10, atol=1e-10, options={"min_step": 0.1, "at_min_step": "accept"})
    _same_steps(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12


def test_step_t_stops_are_landed_on_as_the_host_clock_lands_on_them(handed):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    # Stops between output times, on one (1.5), and one a hair after another stop (rounding: arrived at without
    # a step); more than one call's worth of attempts (compile_steps=8).
    step_t = [0.77, 1.5, 1.9, 1.9 + 1e-15, 2.31]
    options = {"step_t": step_t, "compile_steps": 8}
    free, _ = _pair(vdp, y0, t, rtol=1e-8, atol=1e-8)
    handed.clear()
    eager, run = _pair(vdp, y0, t, rtol=1e-8, atol=1e-8, options=options)
    assert eager.stats.n_accepted > free.stats.n_accepted  # the stops cut steps
    assert len(handed) == 1 and handed[0][0] is not None
    _same_steps(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
    # Backwards in time, and a handover after some stops (the step budget): the host clock goes on from the
    # stop the run reached and raises the same error.
    back = torch.linspace(3, 0, 7, dtype=F64)
    eager, run = _pair(vdp, y0, back, rtol=1e-8, atol=1e-8, options=options)
    _same_steps(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
    budget = {**options, "max_num_steps": 40}
    _same_error("max_num_steps=40", budget, {**budget, "compile": "eager"}, y0=y0, t=t, rtol=1e-8, atol=1e-8)
    assert handed[-1][0] is None and handed[-1][1].i_stop >= 1


def test_a_custom_norm_is_called_in_the_graph_on_both_runs(handed):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    rms, _ = _pair(vdp, y0, t, rtol=1e-8, atol=1e-8)
    handed.clear()
    eager, run = _pair(vdp, y0, t, rtol=1e-8, atol=1e-8, options={"norm": lambda x: x.abs().max()})
    assert len(handed) == 1 and handed[0][0] is not None  # the run took the solve
    assert eager.stats.n_accepted != rms.stats.n_accepted  # the max norm chooses other steps than the RMS
    _same_steps(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
    # Per sample: the norm returns one value per row (UserNorm's contract), in the graph as on the clock.
    row_max = {"norm": lambda x: x.abs().flatten(1).amax(1)}
    free, _ = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8)
    eager, run = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8, options=row_max)
    assert not torch.equal(eager.stats.n_accepted, free.stats.n_accepted)
    _same_steps_per_sample(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
    # A norm that gives more than one number: refused as without compile (the first step's norms find it).
    for options in ({}, {"compile": "eager"}):
        with torch.no_grad(), pytest.raises(ValueError, match=r"options\['norm'\]"):
            solve(vdp, y0, t, options={**options, "norm": lambda x: x.abs()})


def test_a_func_the_run_cannot_capture_warns_once_and_compiles_steps():
    func = CountingVdp()
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 2, 3, dtype=F64)
    with torch.no_grad():
        eager = solve(func, y0, t, rtol=1e-8, atol=1e-8)
        func.nfe = 0
        with pytest.warns(RuntimeWarning, match="run of steps as one graph"):
            run = solve(func, y0, t, rtol=1e-8, atol=1e-8, options={"compile": "eager"})
        assert func.nfe == run.stats.nfe
        _same_steps(eager, run)
        torch.testing.assert_close(run.ys, eager.ys, rtol=1e-12, atol=1e-12)
        func.nfe = 0
        again = solve(func, y0, t, rtol=1e-8, atol=1e-8, options={"compile": "eager"})  # no second warning
    assert func.nfe == again.stats.nfe


def test_which_solves_take_the_run(handed):
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    cases = [
        dict(method="dopri5", options={"compile": "eager", "compile_steps": 1}),  # one compiled step per call
        dict(method="fehlberg2", options={"compile": "eager"}),  # not first-same-as-last
        dict(method="dopri5", options={"compile": "eager", "jump_t": [0.5]}),  # f's side changes at a jump
    ]
    with torch.no_grad():
        for kw in cases:
            solve(vdp, y0, t, **kw)
    w = torch.tensor(1.0, dtype=F64, requires_grad=True)
    solve(lambda t, y: -w * y, y0, t, options={"compile": "eager"})  # autograd records: the compiled step
    assert handed == []


# The per-sample clock on the device: options={"per_sample": True, "compile": ...}.


def _pair_per_sample(func, y0, t, method="dopri5", backend="eager", **kw):
    options = kw.pop("options", {})
    with torch.no_grad():
        eager = solve(func, y0, t, method=method, options={**options, "per_sample": True}, **kw)
        run = solve(func, y0, t, method=method, options={**options, "per_sample": True, "compile": backend}, **kw)
    return eager, run


def _same_steps_per_sample(a, b):
    for name in ("nfe", "n_accepted", "n_rejected"):
        assert torch.equal(getattr(a.stats, name), getattr(b.stats, name)), name
    assert a.stats.calls == b.stats.calls


@pytest.mark.parametrize("method,backend", [("dopri5", "aot_eager"), ("tsit5", "eager"), ("bosh3", "eager")])
def test_per_sample_run_gives_each_samples_steps_and_outputs(method, backend):
    torch.manual_seed(0)
    y0 = torch.rand(12, 2, dtype=F64) * 4 - 2
    # Each sample its own output times (B, T), 41 of them: more than a call's 32 rows and steps holding more
    # than the window's 8 (retaken per sample).
    t = torch.linspace(0, 4, 41, dtype=F64)[None, :] * torch.linspace(0.5, 1.0, 12, dtype=F64)[:, None]
    eager, run = _pair_per_sample(vdp, y0, t, method, backend, rtol=1e-7, atol=1e-7)
    _same_steps_per_sample(eager, run)
    assert int(run.stats.n_rejected.sum()) > 0 or method != "dopri5"
    assert (run.ys - eager.ys).abs().max() < 1e-12
    torch.testing.assert_close(run.stats.last_step, eager.stats.last_step, rtol=1e-6, atol=0)
    torch.testing.assert_close(run.stats.next_step, eager.stats.next_step, rtol=1e-6, atol=0)


def test_per_sample_run_lands_each_sample_on_the_step_t_inside_its_span():
    # Each sample's own span (some stops lie outside it, one beyond every span); the next stop of each sample is
    # the shared rule's (control.stepping.next_step_t), in the graph as on the clock.
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.5, -1.0]], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)[None, :] * torch.tensor([1.0, 0.7, 1.2], dtype=F64)[:, None]
    options = {"step_t": [0.77, 1.5, 1.9, 2.31, 3.3], "compile_steps": 8}
    free, _ = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8)
    eager, run = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8, options=options)
    assert bool((eager.stats.n_accepted > free.stats.n_accepted).all())  # the stops cut every sample's steps
    _same_steps_per_sample(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
    back = torch.flip(t, [1])
    eager, run = _pair_per_sample(vdp, y0, back, rtol=1e-8, atol=1e-8, options=options)
    _same_steps_per_sample(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12


def test_per_sample_run_float32_tuple_state_and_backwards():
    def rotation(t, y):  # stable in both directions of time
        x, v = y
        return v, -x - 0.1 * v

    y0 = (torch.tensor([2.0, 1.0, -1.5]), torch.tensor([0.0, 1.0, 0.5]))
    eager, run = _pair_per_sample(rotation, y0, torch.linspace(3, 0, 7), rtol=1e-5, atol=1e-5)
    assert torch.equal(eager.stats.n_accepted, run.stats.n_accepted)
    for a, b in zip(run.ys, eager.ys):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_per_sample_run_refuses_what_it_cannot_compile_and_leaves_errors_to_the_clock():
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    compiled = {"per_sample": True, "compile": "eager"}
    with pytest.raises(ValueError, match="not with autograd recording through a func that is not a torch.nn.Module"):
        solve(
            vdp, y0, t, options=compiled
        )  # autograd on, a plain function: no compiled per-sample step to fall back on
    with torch.no_grad():
        for extra, what in (
            ({"dense": True}, "dense"),
            ({"per_sample": "compact"}, "compact"),
            ({"jump_t": [0.5]}, "jump_t"),
        ):
            with pytest.raises(ValueError, match=what):
                solve(vdp, y0, t, options={**compiled, **extra})
        with pytest.raises(ValueError, match="method='bosh3'|'fehlberg2'"):
            solve(vdp, y0, t, method="fehlberg2", options=compiled)
        with torch.autograd.forward_ad.dual_level(), pytest.raises(ValueError, match="forward-mode"):
            dual = torch.autograd.forward_ad.make_dual(y0, torch.ones_like(y0))
            solve(vdp, dual, t, options=compiled)
        # min_step: each sample's steps held by it as on the clock, and a rejection at it raised by the clock.
        floor = {"first_step": 1e-6, "min_step": 1e-2}
        free, _ = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8, options={"first_step": 1e-6})
        eager, run = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8, options=floor)
        assert bool((eager.stats.n_accepted < free.stats.n_accepted).all())
        _same_steps_per_sample(eager, run)
        assert (run.ys - eager.ys).abs().max() < 1e-12
        floor = {"per_sample": True, "min_step": 0.1}
        _same_error(
            "rejected at the minimum step size", floor, {**compiled, **floor}, y0=y0, t=t, rtol=1e-10, atol=1e-10
        )
        # The step budget: the run stops and the per-sample clock raises its own error, naming the sample.
        budget = {"per_sample": True, "max_num_steps": 4}
        _same_error("max_num_steps=4", budget, {**compiled, **budget}, y0=y0, t=t, rtol=1e-9, atol=1e-9)


def test_per_sample_run_of_a_func_it_cannot_capture_warns_and_runs_the_clock():
    func = CountingVdp()
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    t = torch.linspace(0, 2, 3, dtype=F64)
    with torch.no_grad():
        eager = solve(func, y0, t, options={"per_sample": True})
        func.nfe = 0
        with pytest.warns(RuntimeWarning, match="run of steps as one graph.*runs eagerly"):
            run = solve(func, y0, t, options={"per_sample": True, "compile": "eager"})
    assert func.nfe == run.stats.calls == eager.stats.calls
    _same_steps_per_sample(eager, run)
    assert torch.equal(run.ys, eager.ys)


def test_per_sample_run_of_one_sample_compiles():
    # A batch of one: the first column of the (1, T) times has stride T, which a plain clone keeps; the loop's
    # carried time must have the strides its body makes (while_loop compares them), or the run fell back to the
    # clock with a warning.
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        eager, run = _pair_per_sample(vdp, y0, t, rtol=1e-8, atol=1e-8)
    _same_steps_per_sample(eager, run)
    assert (run.ys - eager.ys).abs().max() < 1e-12
