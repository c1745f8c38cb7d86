"""The exact text of every error raised at the public boundary, and the exception types.

Each message names the argument, the value received and, where there is one, the fix. These tests
pin the full text (``^...$``), so a reworded message is a deliberate change made here too. No
check may be a bare ``assert`` (which vanishes under ``python -O``): every case also checks that
the exception is exactly the documented type.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from neuralode import METHODS, AdaptiveOptions, FixedOptions, SolverError, get_tableau, odeint, solve

F64 = torch.float64
Y0 = torch.tensor([1.0, 2.0], dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)
# The valid keys are listed in the order of the option types' KEYS (the documented options).
ADAPTIVE_KEYS = ", ".join(AdaptiveOptions.KEYS)
FIXED_KEYS = ", ".join(FixedOptions.KEYS)


def decay(t, y):
    return -y


def decay_tuple(t, y):
    return tuple(-p for p in y)


def call(func=decay, y0=Y0, t=T, **kwargs):
    return lambda: solve(func, y0, t, **kwargs)


def grid(values):
    return {"grid_constructor": lambda f, y0, t: torch.tensor(values, dtype=F64)}


# (id, thunk, exception type, full message)
CASES = [
    # func
    ("func-not-callable", call(func=3), TypeError, "func must be callable as func(t, y); got int."),
    # y0
    (
        "y0-list",
        call(y0=[1.0, 2.0]),
        TypeError,
        "y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got list.",
    ),
    (
        "y0-empty-tuple",
        call(y0=()),
        TypeError,
        "y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got tuple.",
    ),
    (
        "y0-tuple-of-non-tensors",
        call(y0=(Y0, 1.0)),
        TypeError,
        "y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got tuple.",
    ),
    (
        "y0-int",
        call(y0=torch.tensor([1, 2])),
        TypeError,
        "y0 must have a floating-point or complex dtype (e.g. torch.float32 or torch.float64); got torch.int64. "
        "Convert it with y0.float() or y0.double().",
    ),
    (
        "y0-tuple-int",
        call(func=decay_tuple, y0=(Y0, torch.tensor([1]))),
        TypeError,
        "y0[1] must have a floating-point or complex dtype (e.g. torch.float32 or torch.float64); got torch.int64. "
        "Convert it with y0[1].float() or y0[1].double().",
    ),
    (
        "y0-nan",
        call(y0=torch.tensor([1.0, math.nan], dtype=F64)),
        ValueError,
        "y0 contains NaN or infinite values; the initial state must be finite.",
    ),
    (
        "y0-inf",
        call(y0=torch.tensor([math.inf], dtype=F64)),
        ValueError,
        "y0 contains NaN or infinite values; the initial state must be finite.",
    ),
    (
        "y0-tuple-nan",
        call(func=decay_tuple, y0=(Y0, torch.tensor([math.nan], dtype=F64))),
        ValueError,
        "y0[1] contains NaN or infinite values; the initial state must be finite.",
    ),
    (
        "y0-tuple-mixed-dtype",
        call(func=decay_tuple, y0=(Y0, torch.ones(2))),
        TypeError,
        "All tensors of a tuple y0 must share dtype and device; y0[0] is torch.float64 on cpu "
        "but y0[1] is torch.float32 on cpu.",
    ),
    # t
    ("t-list", call(t=[0.0, 1.0]), TypeError, "t must be a 1-D floating-point torch.Tensor of output times; got list."),
    (
        "t-int",
        call(t=torch.tensor([0, 1])),
        TypeError,
        "t must have a floating-point dtype; got torch.int64. Use torch.tensor([...], dtype=torch.float64).",
    ),
    (
        "t-2d",
        call(t=torch.zeros(2, 2, dtype=F64)),
        ValueError,
        "t must be a non-empty 1-D tensor of output times; got shape (2, 2). For times per sample (row i the times of "
        "sample i, a batch in y0's first dimension) pass options={'per_sample': True}.",
    ),
    (
        "t-0d",
        call(t=torch.tensor(1.0, dtype=F64)),
        ValueError,
        "t must be a non-empty 1-D tensor of output times; got shape ().",
    ),
    (
        "t-empty",
        call(t=torch.zeros(0, dtype=F64)),
        ValueError,
        "t must be a non-empty 1-D tensor of output times; got shape (0,).",
    ),
    ("t-nan", call(t=torch.tensor([0.0, math.nan], dtype=F64)), ValueError, "t must be finite; got t[1] = nan."),
    ("t-inf", call(t=torch.tensor([0.0, 1.0, math.inf], dtype=F64)), ValueError, "t must be finite; got t[2] = inf."),
    (
        "t-not-monotonic",
        call(t=torch.tensor([0.0, 1.0, 0.5], dtype=F64)),
        ValueError,
        "t must be strictly increasing or strictly decreasing; got t[1] = 1.0 followed by t[2] = 0.5.",
    ),
    (
        "t-repeated",
        call(t=torch.tensor([0.0, 0.0], dtype=F64)),
        ValueError,
        "t must be strictly increasing or strictly decreasing; got t[0] = 0.0 followed by t[1] = 0.0.",
    ),
    (
        "t-decreasing-then-up",
        call(t=torch.tensor([1.0, 0.5, 0.75], dtype=F64)),
        ValueError,
        "t must be strictly increasing or strictly decreasing; got t[1] = 0.5 followed by t[2] = 0.75.",
    ),
    # tolerances
    ("rtol-negative", call(rtol=-1e-6), ValueError, "rtol must be a non-negative finite number; got -1e-06."),
    ("atol-nan", call(atol=math.nan), ValueError, "atol must be a non-negative finite number; got nan."),
    ("atol-inf", call(atol=math.inf), ValueError, "atol must be a non-negative finite number; got inf."),
    ("rtol-string", call(rtol="1e-6"), TypeError, "rtol must be a float or a tensor; got str."),
    (
        "atol-tensor-negative",
        call(atol=torch.tensor([1e-9, -1.0], dtype=F64)),
        ValueError,
        "atol must be non-negative and finite; got a tensor containing -1.0.",
    ),
    (
        "atol-tensor-shape",
        call(atol=torch.ones(3, dtype=F64)),
        ValueError,
        "atol of shape (3,) cannot be broadcast to the state's shape (2,).",
    ),
    (
        "rtol-tuple-length",
        call(func=decay_tuple, y0=(Y0, Y0), rtol=(1e-6, 1e-6, 1e-6)),
        ValueError,
        "rtol given per tensor must have one entry per tensor of y0 (2); got 3.",
    ),
    (
        "atol-tuple-entry",
        call(func=decay_tuple, y0=(Y0, Y0), atol=(1e-9, -1.0)),
        ValueError,
        "atol[1] must be a non-negative finite number; got -1.0.",
    ),
    # options
    ("options-list", call(options=[("max_step", 1.0)]), TypeError, "options must be a dict or None; got list."),
    (
        "unknown-option-adaptive",
        call(options={"step_size": 0.1}),
        ValueError,
        "Unknown option 'step_size' for method 'dopri5'. step_size fixes the step of fixed-step methods: pick one "
        f"(e.g. method='rk4'), or give first_step, the first step an adaptive method tries. Valid options: {ADAPTIVE_KEYS}.",
    ),
    (
        "unknown-option-fixed",
        call(method="rk4", options={"first_step": 0.1}),
        ValueError,
        f"Unknown option 'first_step' for method 'rk4'. Valid options: {FIXED_KEYS}.",
    ),
    (
        "step-size-zero",
        call(method="rk4", options={"step_size": 0}),
        ValueError,
        "options['step_size'] must be a positive finite number; got 0.",
    ),
    (
        "step-size-negative",
        call(method="euler", options={"step_size": -0.1}),
        ValueError,
        "options['step_size'] must be a positive finite number; got -0.1.",
    ),
    (
        "step-size-inf",
        call(method="euler", options={"step_size": math.inf}),
        ValueError,
        "options['step_size'] must be a positive finite number; got inf.",
    ),
    (
        "step-size-string",
        call(method="euler", options={"step_size": "0.1"}),
        ValueError,
        "options['step_size'] must be a positive finite number; got '0.1'.",
    ),
    (
        "step-size-and-grid",
        call(method="rk4", options={"step_size": 0.1, **grid([0.0, 1.0])}),
        ValueError,
        "options 'step_size' and 'grid_constructor' are mutually exclusive; give one of them.",
    ),
    (
        "grid-not-callable",
        call(method="rk4", options={"grid_constructor": 3}),
        TypeError,
        "options['grid_constructor'] must be callable; got int.",
    ),
    (
        "grid-too-short",
        call(method="rk4", options=grid([0.0])),
        ValueError,
        "options['grid_constructor'] must return a 1-D tensor of at least two times.",
    ),
    (
        "grid-wrong-ends",
        call(method="rk4", options=grid([0.0, 0.5, 0.9])),
        ValueError,
        "options['grid_constructor'] must return a grid from t[0] = 0.0 to t[-1] = 1.0; got one from 0.0 to 0.9.",
    ),
    (
        "grid-not-monotonic",
        call(method="rk4", options=grid([0.0, 0.7, 0.5, 1.0])),
        ValueError,
        "options['grid_constructor'] must return a strictly monotonic grid in the direction of t.",
    ),
    (
        "interp",
        call(method="rk4", options={"interp": "quadratic"}),
        ValueError,
        "options['interp'] must be 'linear' or 'cubic'; got 'quadratic'.",
    ),
    (
        "first-step-zero",
        call(options={"first_step": 0.0}),
        ValueError,
        "options['first_step'] must be a positive finite number; got 0.0.",
    ),
    (
        "min-step-negative",
        call(options={"min_step": -1}),
        ValueError,
        "options['min_step'] must be a non-negative finite number; got -1.",
    ),
    (
        "max-step-zero",
        call(options={"max_step": 0}),
        ValueError,
        "options['max_step'] must be a positive finite number; got 0.",
    ),
    (
        "max-step-nan",
        call(options={"max_step": math.nan}),
        ValueError,
        "options['max_step'] must be a positive finite number; got nan.",
    ),
    (
        "min-above-max",
        call(options={"min_step": 1.0, "max_step": 0.5}),
        ValueError,
        "options['min_step'] (1.0) must not exceed options['max_step'] (0.5).",
    ),
    (
        "max-num-steps-zero",
        call(options={"max_num_steps": 0}),
        ValueError,
        "options['max_num_steps'] must be a positive integer; got 0.",
    ),
    (
        "max-num-steps-float",
        call(options={"max_num_steps": 10.0}),
        ValueError,
        "options['max_num_steps'] must be a positive integer; got 10.0.",
    ),
    (
        "step-t-scalar",
        call(options={"step_t": 0.5}),
        TypeError,
        "options['step_t'] must be a 1-D tensor or sequence of finite times; got 0.5.",
    ),
    (
        "jump-t-nan",
        call(options={"jump_t": [0.5, math.nan]}),
        TypeError,
        "options['jump_t'] must be a 1-D tensor or sequence of finite times; got [0.5, nan].",
    ),
    (
        "norm-not-callable",
        call(options={"norm": "rms"}),
        TypeError,
        "options['norm'] must be callable (tensor -> scalar); got str.",
    ),
    ("safety", call(options={"safety": 1.5}), ValueError, "options['safety'] must be in (0, 1]; got 1.5."),
    ("ifactor", call(options={"ifactor": 0.5}), ValueError, "options['ifactor'] must be a number >= 1; got 0.5."),
    ("dfactor", call(options={"dfactor": 0}), ValueError, "options['dfactor'] must be in (0, 1]; got 0."),
    (
        "controller",
        call(options={"controller": "pid"}),
        ValueError,
        "options['controller'] must be one of pi, i, gustafsson, pi_gustafsson; got 'pid'.",
    ),
    ("checkpoint", call(options={"checkpoint": 1}), TypeError, "options['checkpoint'] must be True or False; got 1."),
    # what func returns
    (
        "func-wrong-shape",
        call(func=lambda t, y: torch.zeros(3, dtype=F64)),
        ValueError,
        "func(t, y) returned shape (3,) but the state has shape (2,); dy/dt must have the same shape as y.",
    ),
    (
        "func-wrong-dtype",
        call(func=lambda t, y: (-y).float()),
        TypeError,
        "func(t, y) returned dtype torch.float32 but the state has dtype torch.float64; "
        "dy/dt must have the state's dtype.",
    ),
    (
        "func-not-tensor",
        call(func=lambda t, y: [0.0, 0.0]),
        TypeError,
        "func(t, y) must return a torch.Tensor; got list.",
    ),
    (
        "func-tuple-for-tensor",
        call(func=lambda t, y: (-y,)),
        TypeError,
        "func(t, y) must return a torch.Tensor; got tuple.",
    ),
    (
        "func-tensor-for-tuple",
        call(func=lambda t, y: -y[0], y0=(Y0, Y0)),
        TypeError,
        "func must return a tuple of 2 tensors for a tuple y0; got Tensor.",
    ),
    (
        "func-tuple-length",
        call(func=lambda t, y: (-y[0], -y[1], -y[1]), y0=(Y0, Y0)),
        ValueError,
        "func must return 2 tensors, one per tensor of y0; got 3.",
    ),
    (
        "func-tuple-shape",
        call(func=lambda t, y: (-y[0], torch.zeros(1, dtype=F64)), y0=(Y0, Y0)),
        ValueError,
        "func(t, y)[1] returned shape (1,) but the state has shape (2,); dy/dt must have the same shape as y.",
    ),
    (
        "func-wrong-shape-fixed",
        call(func=lambda t, y: y[:1], method="rk4"),
        ValueError,
        "func(t, y) returned shape (1,) but the state has shape (2,); dy/dt must have the same shape as y.",
    ),
]


@pytest.mark.parametrize("thunk, exc_type, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_boundary_error_message(thunk, exc_type, message):
    with pytest.raises(Exception, match="^" + re.escape(message) + "$") as info:
        thunk()
    assert type(info.value) is exc_type
    assert not isinstance(info.value, AssertionError)


def test_odeint_raises_the_same_errors():
    with pytest.raises(
        TypeError,
        match="^" + re.escape("y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got list.") + "$",
    ):
        odeint(decay, [1.0], T)
    with pytest.raises(ValueError, match=re.escape("Unknown option 'foo' for method 'euler'.")):
        odeint(decay, Y0, T, method="euler", options={"foo": 1})


def test_unknown_method_lists_the_methods():
    with pytest.raises(ValueError) as info:
        solve(decay, Y0, T, method="rk45")
    message = str(info.value)
    assert type(info.value) is ValueError
    assert "'rk45'" in message
    for name in METHODS:  # every name solve accepts
        assert name in message
    # get_tableau knows the Runge-Kutta tableaus only, and says so the same way.
    with pytest.raises(ValueError) as direct:
        get_tableau("rk45")
    assert str(direct.value).startswith("Unknown method 'rk45'. Valid methods: euler, ")


def test_solver_error_message_and_attributes():
    err = SolverError("Step size underflow", 1.5, -0.25, 7, "Try a looser tolerance.")
    assert isinstance(err, RuntimeError) and not isinstance(err, AssertionError)
    assert str(err) == "Step size underflow at t=1.5 with dt=-0.25 after 7 steps. Try a looser tolerance."
    assert (err.reason, err.t, err.dt, err.n_steps) == ("Step size underflow", 1.5, -0.25, 7)
    assert str(SolverError("Boom", 0.123456789012, 1e-20, 0)) == "Boom at t=0.12345679 with dt=1e-20 after 0 steps."


def test_solver_errors_from_a_solve_carry_t_dt_and_steps():
    def nan_func(t, y):
        return torch.full_like(y, math.nan)

    with pytest.raises(SolverError) as info:
        solve(nan_func, Y0, T, options={"first_step": 0.125})
    err = info.value
    assert str(err) == (
        "Non-finite derivative func(t, y) at t=0 with dt=0.125 after 0 steps. Check func for NaN or inf."
    )
    assert (err.t, err.dt, err.n_steps) == (0.0, 0.125, 0)

    with pytest.raises(SolverError) as info:
        solve(decay, Y0, T, rtol=1e-3, atol=1e-6, options={"max_num_steps": 3, "first_step": 0.01, "max_step": 0.01})
    err = info.value
    assert str(err) == (
        "Too many steps (max_num_steps=3) at t=0.03 with dt=0.01 after 3 steps. "
        "Raise options['max_num_steps'] or loosen rtol/atol."
    )
    assert err.n_steps == 3 and err.t == pytest.approx(0.03) and err.dt == pytest.approx(0.01)
