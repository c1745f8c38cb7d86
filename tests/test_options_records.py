"""Options by concern: the typed records solve as the torchdiffeq dict does, bit for bit, and are checked."""

import dataclasses
import re

import pytest
import torch

import neuralode
from neuralode import (
    AdamsSettings,
    Execution,
    FixedGrid,
    ImplicitSettings,
    Options,
    Output,
    RadauSettings,
    StepControl,
    Stops,
    odeint,
    odeint_adjoint,
    solve,
)
from neuralode.solvers.methods.implicit_fixed import ImplicitFixedOptions
from neuralode.solvers.methods.implicit_options import AutoOptions, ImplicitOptions, RadauOptions
from neuralode.solvers.options import AdamsOptions, AdaptiveOptions, FixedOptions, MethodSettings

F64 = torch.float64
T = torch.linspace(0.0, 2.0, 5, dtype=F64)
Y0 = torch.tensor([1.0, 0.5], dtype=F64)
OPTION_TYPES = (
    AdaptiveOptions,
    FixedOptions,
    AdamsOptions,
    ImplicitOptions,
    RadauOptions,
    AutoOptions,
    ImplicitFixedOptions,
)
RECORD_TYPES = (
    MethodSettings,
    StepControl,
    FixedGrid,
    Stops,
    Output,
    Execution,
    AdamsSettings,
    ImplicitSettings,
    RadauSettings,
)


def kink(t, y):
    """A rotation whose speed jumps at t = 1 (a discontinuity for jump_t), damped to keep it stiff-free."""
    w = 1.0 if float(t) < 1.0 else 2.0
    return torch.stack([w * y[1] - 0.1 * y[0], -w * y[0]])


# (method, dict form, typed form) with every record kind among them.
PAIRS = [
    (
        "dopri5",
        {"max_step": 0.3, "jump_t": (1.0,), "step_t": (0.5,), "dense": True, "safety": 0.8},
        Options(
            control=StepControl(max_step=0.3, safety=0.8),
            stops=Stops(jump_t=(1.0,), step_t=(0.5,)),
            output=Output(dense=True),
        ),
    ),
    (
        "rk4",
        {"step_size": 0.1, "interp": "cubic", "perturb": True},
        Options(control=FixedGrid(step_size=0.1), output=Output(interp="cubic"), stops=Stops(perturb=True)),
    ),
    (
        "implicit_adams",
        {"step_size": 0.05, "max_order": 4, "max_iters": 3},
        Options(control=FixedGrid(step_size=0.05), method=AdamsSettings(max_order=4, max_iters=3)),
    ),
    (
        "radau5",
        {"jacobian": "dense", "controller": "gustafsson", "first_step": 0.01},
        Options(control=StepControl(controller="gustafsson", first_step=0.01), method=RadauSettings(jacobian="dense")),
    ),
    ("rodas5p", {"jump_t": [1.0]}, Options(stops=Stops(jump_t=[1.0]), method=ImplicitSettings())),
]


@pytest.mark.parametrize(("method", "as_dict", "typed"), PAIRS, ids=[p[0] for p in PAIRS])
def test_typed_options_solve_bit_for_bit_as_the_dict(method, as_dict, typed):
    a = solve(kink, Y0, T, rtol=1e-6, atol=1e-8, method=method, options=as_dict)
    b = solve(kink, Y0, T, rtol=1e-6, atol=1e-8, method=method, options=typed)
    assert torch.equal(a.ys, b.ys)
    assert dataclasses.asdict(a.stats) == dataclasses.asdict(b.stats)
    assert a.stats.nfe > 0


def test_typed_options_through_odeint_event_mode_and_adjoint():
    def event_fn(t, y):
        return y[0] - 0.2

    t = torch.tensor([0.0, 10.0], dtype=F64)
    te_a, ys_a = odeint(kink, Y0, t, event_fn=event_fn, options={"max_step": 0.2})
    te_b, ys_b = odeint(kink, Y0, t, event_fn=event_fn, options=Options(control=StepControl(max_step=0.2)))
    assert torch.equal(te_a, te_b) and torch.equal(ys_a, ys_b)

    def grads(options, adjoint_options):
        y0 = Y0.clone().requires_grad_()
        torch.manual_seed(0)
        f = torch.nn.Linear(2, 2).double()
        ys = odeint_adjoint(
            lambda t, y: f(y), y0, T, method="dopri5", options=options, adjoint_options=adjoint_options,
            adjoint_params=tuple(f.parameters()),
        )  # fmt: skip
        return torch.autograd.grad(ys.square().sum(), y0)[0]

    g_dict = grads({"max_step": 0.25}, {"max_step": 0.5})
    g_typed = grads(Options(control=StepControl(max_step=0.25)), Options(control=StepControl(max_step=0.5)))
    assert torch.equal(g_dict, g_typed)


def test_parsed_options_are_the_records_and_every_key_reads_through():
    method = neuralode.METHODS["radau5"]
    opts = solve_opts = neuralode.solvers.options._parse_options(
        Options(control=StepControl(max_step=0.5), method=RadauSettings(dense_error=True)), method
    )
    assert isinstance(solve_opts, RadauOptions)
    assert opts.control.max_step == opts.max_step == 0.5
    assert opts.control.controller == opts.controller == "pi_gustafsson"  # the stiff methods' default
    assert opts.method.dense_error is True and opts.dense_error is True
    with pytest.raises(AttributeError):
        opts.max_step = 1.0  # read-only
    for kind in OPTION_TYPES:
        d = kind.defaults()
        for key in kind.KEYS:  # every key the method takes is an attribute, read from its record
            record = next(getattr(d, name) for name in ("control", "stops", "output", "execution", "method")
                          if getattr(d, name) is not None and key in {f.name for f in dataclasses.fields(getattr(d, name))})  # fmt: skip
            assert getattr(d, key) is getattr(record, key), (kind.__name__, key)


def test_every_record_field_is_documented():
    for record in RECORD_TYPES:
        doc = record.__doc__
        own = vars(record).get("__annotations__", {})  # fields a subclass inherits are documented on its base
        for name in own:
            assert re.search(rf"\b{name}\b", doc), (record.__name__, name)
        assert own or record is MethodSettings


def test_a_field_left_at_its_default_is_the_method_default():
    # StepControl() leaves the controller to the method: PI for dopri5, PI with Gustafsson's cap for radau5.
    for method, controller in (("dopri5", "pi"), ("radau5", "pi_gustafsson"), ("auto", "pi")):
        opts = neuralode.solvers.options._parse_options(Options(control=StepControl()), neuralode.METHODS[method])
        assert opts.controller == controller


BAD = [
    ("control-wrong-record", lambda: Options(control=Stops()), TypeError, r"Options\(control=\.\.\.\) must be a StepControl or a FixedGrid.*got Stops.*Options\(stops=\.\.\.\)"),
    ("grid-for-adaptive", lambda: solve(kink, Y0, T, options=Options(control=FixedGrid(step_size=0.1))), TypeError, r"options\.control is a FixedGrid, but method='dopri5' takes a StepControl"),
    ("control-for-fixed", lambda: solve(kink, Y0, T, method="rk4", options=Options(control=StepControl(max_step=0.1))), TypeError, r"options\.control is a StepControl, but method='rk4' takes a FixedGrid"),
    ("adams-for-dopri5", lambda: solve(kink, Y0, T, options=Options(method=AdamsSettings())), TypeError, r"options\.method is an AdamsSettings, but method='dopri5' takes none"),
    ("radau-settings-for-rodas5p", lambda: solve(kink, Y0, T, method="rodas5p", options=Options(method=RadauSettings(dense_error=True))), TypeError, r"options\.method is a RadauSettings, but method='rodas5p' takes an ImplicitSettings"),
    ("bare-record", lambda: solve(kink, Y0, T, options=StepControl(max_step=0.1)), TypeError, r"options must be a dict, a neuralode\.Options or None; got a bare StepControl.*options=neuralode\.Options\(control=StepControl"),
    ("bare-record-dense", lambda: neuralode.odeint_dense(kink, Y0, 0.0, 1.0, options=Output(dense=True)), TypeError, r"options must be a dict, a neuralode\.Options or None; got a bare Output"),
    ("bare-adjoint-record", lambda: odeint_adjoint(torch.nn.Linear(2, 2).double().__call__, Y0, T, adjoint_options=StepControl(), adjoint_params=()), TypeError, r"adjoint_options must be a dict, a neuralode\.Options or None; got a bare StepControl"),
    ("record-in-dict", lambda: solve(kink, Y0, T, options={"control": StepControl(max_step=0.1)}), TypeError, r"options\['control'\] is a StepControl record inside a dict"),
    ("checked-as-the-dict", lambda: solve(kink, Y0, T, options=Options(control=StepControl(max_step=-1.0))), ValueError, r"options\['max_step'\] must be a positive finite number; got -1\.0\."),
    ("key-the-method-lacks", lambda: solve(kink, Y0, T, options=Options(output=Output(interp="cubic"))), ValueError, r"Unknown option 'interp' for method 'dopri5'"),
    ("implicit-settings-checked", lambda: ImplicitSettings(jacobian="sparse"), ValueError, r"options\['jacobian'\] must be 'batched', 'dense' or a callable"),
]  # fmt: skip


@pytest.mark.parametrize(("thunk", "kind", "pattern"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_typed_options_are_refused_naming_the_argument(thunk, kind, pattern):
    with pytest.raises(kind, match=pattern):
        thunk()


def test_flat_option_names_are_read_once_per_solve_not_per_step(monkeypatch):
    """The flat names are properties (two attribute reads); the scalar-clock solve reads them while it
    sets up, never per step or per grid point."""
    from neuralode.solvers import options as options_module

    reads = [0]
    for key in options_module.CONCERN_OF:
        get = getattr(Options, key).fget

        def counted(self, _get=get):
            reads[0] += 1
            return _get(self)

        monkeypatch.setattr(Options, key, property(counted))

    def count(**kw):
        reads[0] = 0
        sol = solve(kink, Y0, T, **kw)
        return reads[0], sol.stats.n_accepted

    for few, many in (
        (dict(rtol=1e-3, atol=1e-6), dict(rtol=1e-9, atol=1e-11)),
        (dict(method="rk4", options={"step_size": 0.5}), dict(method="rk4", options={"step_size": 0.01})),
        (dict(method="radau5", rtol=1e-3, atol=1e-6), dict(method="radau5", rtol=1e-7, atol=1e-9)),
        (dict(method="explicit_adams", options={"step_size": 0.5}), dict(method="explicit_adams", options={"step_size": 0.01})),
    ):  # fmt: skip
        (r_few, n_few), (r_many, n_many) = count(**few), count(**many)
        assert n_many > 5 * n_few
        assert r_many == r_few, (few, r_few, r_many)


def test_every_flat_key_is_declared_for_the_type_checker():
    # The flat torchdiffeq attributes are set on Options at import; the TYPE_CHECKING block of the class
    # declares them for mypy. A key added to CONCERN_OF without its declaration would type-check as missing.
    import ast
    import inspect

    from neuralode.solvers import options as options_module

    tree = ast.parse(inspect.getsource(options_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Options")
    block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    declared = {n.name for n in block.body if isinstance(n, ast.FunctionDef)}
    assert declared == set(options_module.CONCERN_OF)
