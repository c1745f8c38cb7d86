"""Options and input checks at the public boundary of the solvers.

Everything a user passes to :func:`~neuralode.solvers.api.solve` is checked here, once, before
the loop starts: the state, the output times, tolerances and the method's options. Errors are
``TypeError``/``ValueError`` naming the argument, the value received and how to fix it.

Options by concern
------------------
torchdiffeq takes a solve's options as one flat dict. Read by what they decide, its keys fall into
five groups, and a solve carries one frozen record per group (:class:`Options`):

* ``control``: how long each step is. :class:`StepControl` for adaptive methods (``first_step``,
  ``min_step``, ``max_step``, ``max_num_steps``, ``safety``, ``ifactor``, ``dfactor``, ``controller``,
  ``norm``, ``at_min_step``), :class:`FixedGrid` for fixed-step ones (``step_size``,
  ``grid_constructor``, ``max_num_steps``). They are alternatives, not layers: a method has one or the
  other, and each has its own step budget, so they are two records rather than one with fields that
  half the methods refuse.
* ``stops``: :class:`Stops`, where steps must end and which side of a discontinuity ``func`` is
  evaluated on (``step_t``, ``jump_t``, ``perturb``). All three are about the times at which ``func``
  may change character; on a fixed grid every grid point is such a time, which is what ``perturb``
  acts on there.
* ``output``: :class:`Output`, what the solve keeps besides the states at ``t`` (``dense``,
  ``interp``).
* ``execution``: :class:`Execution`, how the same mathematics is run (``checkpoint``, ``compile``,
  ``compile_steps``, ``per_sample``, ``dtype``, ``stiffness``): none of them changes the steps an
  ordinary solve takes.
* ``method``: what one family of methods alone reads: :class:`AdamsSettings` (``max_order``,
  ``max_iters``), the implicit methods' ``ImplicitSettings`` and ``RadauSettings``
  (:mod:`~neuralode.solvers.methods.implicit_options`), or ``None``.

The grouping follows who reads what: the step-size controller and the first step read ``control``
alone, the list of stop times ``stops``, the dense output ``output``, the choice of driver (compiled,
checkpointed, per sample) ``execution``, and a method's stepper its ``method`` record. Every field keeps
torchdiffeq's key as its name, so the dict and the records name each option the same way, and the
dict stays the one form the parser checks: an :class:`Options` a user passes is flattened to the
dict of its non-default fields (:meth:`Options.as_dict`) at the public boundary. The parsed options
are an instance of the method's ``options_type`` (:class:`AdaptiveOptions`, :class:`FixedOptions`,
...), whose flat attributes (``opts.max_step``) read through to the records.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from .control.controller import CONTROLLERS
from .methods.adams import MAX_ITERS as ADAMS_MAX_ITERS
from .methods.adams import MAX_ORDER as ADAMS_MAX_ORDER
from .methods.adams import MIN_ORDER as ADAMS_MIN_ORDER

# What a step that fails the error test at min_step does (AdaptiveOptions.at_min_step).
AT_MIN_STEP = ("error", "accept")
BACKENDS = ("inductor", "aot_eager", "eager")  # torch.compile backends options["compile"] may name


# --------------------------------------------------------------------------------------------
# Option records, one per concern (the grouping is explained in the module docstring).


@dataclass(frozen=True)
class StepControl:
    """How an adaptive method chooses its steps (``Options.control`` of adaptive methods).

    Each field is named as torchdiffeq's ``options`` key and defaults to the value a solve without
    that key uses.

    Attributes:
        first_step: the first step tried (``first_step``). Default ``None``: chosen by Hairer's
            heuristic from ``f(t0, y0)`` and the tolerances.
        min_step: steps are never smaller (``min_step``, default 0.0); a step that lands on an output
            time or a ``step_t`` may be. What a step that fails the error test at ``min_step`` does is
            ``at_min_step``'s choice.
        max_step: steps are never larger (``max_step``, default ``inf``).
        max_num_steps: the most steps, accepted and rejected, of the whole solve (``max_num_steps``,
            default ``2**31 - 1``).
        safety, ifactor, dfactor: the controller's safety factor (default 0.9) and the most a step may
            grow (default 10.0) or shrink (default 0.2) from one step to the next (torchdiffeq's keys
            of the same names; the formulas are in ``controller.py``).
        controller: ``"pi"``, ``"i"``, ``"gustafsson"`` (Gustafsson's predictive control, as in
            RADAU5) or ``"pi_gustafsson"`` (PI with the predictive cap). Default ``None``: the
            method's own, ``"pi"`` for the explicit methods and ``auto``, ``"pi_gustafsson"`` for the
            stiff methods (see ``ImplicitOptions``). A neuralode option.
        norm: ``norm(scaled_error) -> scalar`` replacing the RMS norm of the error estimate
            (``norm``); receives a tensor shaped like ``y0``, or a tuple for tuple states. Default
            ``None``: the RMS norm.
        at_min_step: what a step that fails the error test at ``min_step`` does. ``"error"``
            (default): the solve stops with ``SolverError`` (t, dt, the error ratio), since no
            smaller step is allowed that could meet ``rtol``/``atol``. ``"accept"``: the step is
            accepted whatever its error, as torchdiffeq 0.2.5 always does with ``min_step``, and
            the solve warns (``RuntimeWarning``, once per solve) that its result is outside the
            tolerances there. Implicit methods whose Newton iteration fails at ``min_step`` still
            raise: an unconverged stage is not a solution of any step. Not available with
            ``per_sample``. A neuralode option.
    """

    first_step: float | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = 2**31 - 1
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    controller: str | None = None
    norm: Callable[[Any], Any] | None = None
    at_min_step: str = "error"


@dataclass(frozen=True)
class FixedGrid:
    """The grid of a fixed-step method (``Options.control`` of fixed-step methods).

    Without ``step_size`` and ``grid_constructor`` the grid is ``t`` itself.

    Attributes:
        step_size: the step (``step_size``); the grid runs from ``t[0]`` in steps of ``step_size``
            and its last step is shortened to end on ``t[-1]``. Default ``None``.
        grid_constructor: ``grid_constructor(func, y0, t) -> grid`` (``grid_constructor``), a 1-D
            tensor of times from ``t[0]`` to ``t[-1]``. Default ``None``. Exclusive with ``step_size``.
        max_num_steps: the most steps of the solve (``max_num_steps``, default 1,000,000). A grid is
            counted before it is built and a longer one refused with its count (a grid is a list of
            its times: 10^9 steps would be 32 GB); an event search on a grid (no last time) stops
            after this many steps.
    """

    step_size: float | None = None
    grid_constructor: Callable[..., torch.Tensor] | None = None
    max_num_steps: int = 10**6


@dataclass(frozen=True)
class Stops:
    """Where steps must end, and the side of a discontinuity ``func`` is evaluated on (``Options.stops``).

    Attributes:
        step_t: times to step exactly onto, e.g. where the dynamics change character (``step_t``,
            adaptive methods). Default ``()``.
        jump_t: discontinuities of ``func`` in time (``jump_t``, adaptive methods): stepped onto, and
            ``func`` is evaluated afresh just after them instead of reusing the last stage (FSAL).
            Default ``()``.
        perturb: torchdiffeq's ``perturb`` (default ``False``). Adaptive methods: call
            ``func(t, y, perturb=neuralode.Perturb...)`` when ``func`` takes a ``perturb`` keyword (at
            ``jump_t`` the stages are evaluated on the side they belong to, with or without it). Fixed
            grids: every step evaluates its first stage one unit of the time dtype after its start and
            its stages at the end one unit before it, so a ``func`` with a discontinuity at a grid
            point sees each side from its own step; a ``func`` taking a ``perturb`` keyword is told
            which. The implicit methods' Jacobians and Newton iterations, and ``interp="cubic"``'s
            ``f(t1, y1)``, are evaluated on the step's side too.
    """

    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    perturb: bool = False


@dataclass(frozen=True)
class Output:
    """What a solve keeps besides the states at ``t`` (``Options.output``).

    Attributes:
        dense: keep every accepted step's interpolant, so that :meth:`Solution.evaluate` gives the
            solution at any time of the solved span afterwards (memory ~ the stages of every step).
            Default ``False``. A neuralode option.
        interp: how a fixed-step method fills in output times between grid points (``interp``):
            ``"linear"`` (default, as in torchdiffeq) or ``"cubic"`` (Hermite, one more evaluation of
            ``func`` per step). Adaptive methods always use their own interpolant.
    """

    dense: bool = False
    interp: str = "linear"


@dataclass(frozen=True)
class Execution:
    """How a solve is run; none of these changes the steps an ordinary solve takes (``Options.execution``).

    Attributes:
        checkpoint: backpropagate with gradient checkpointing: keep only each step's input state for
            backward and recompute its stages then (memory ~ one state per step instead of every
            stage's activations, for about one extra forward pass). Default ``False``. A neuralode
            option.
        checkpoints: ``K`` (an int >= 2): backpropagate storing at most ``K`` states, whatever the
            number of steps, and recompute the rest in the backward pass (Griewank and Walther's
            revolve; the name is diffrax's ``RecursiveCheckpointAdjoint(checkpoints=K)``). ``"auto"``:
            the budget follows the number of steps ``n`` as the solve takes them, ``K = 2 + ⌈log₂ n⌉``.
            Gradients are those of backpropagation through the same solve, to rounding. Default ``None`` (off).
            Explicit Runge-Kutta methods only, ``func`` a ``torch.nn.Module``; not with ``checkpoint``,
            ``compile``, ``per_sample``, ``dense``, events or forward-mode derivatives (see
            :mod:`neuralode.solvers.adjoint.recursive`). A neuralode option.
        compile: ``True`` (or a ``torch.compile`` backend name: ``"inductor"``, the default when
            ``True``, ``"aot_eager"``, ``"eager"``) runs each Runge-Kutta step, stages and error
            estimate, as one ``torch.compile(fullgraph=True)`` graph (see
            :mod:`neuralode.solvers.methods.compiled` for when that pays), or several steps as one graph where
            ``compile_steps`` says so; the Rosenbrock methods' (``rodas5p``, ``rosenbrock23``) whole run of steps without
            autograd (see
            :mod:`neuralode.solvers.fast.device_run`; the other implicit and multistep methods refuse it).
            Default ``False``.
        compile_steps: with ``compile``, at most how many step attempts one compiled call takes (default 32;
            ``1``: one step per call). On a fixed grid on the CPU, any value above 1 selects the grid run, one
            step as the body of a compiled ``while_loop`` whose calls take as many steps as its output buffer
            allows (a fixed grid decides nothing between steps), backpropagation through a module's parameters
            included (see :mod:`neuralode.solvers.fast.grid_run`); on a fixed grid the run does not take (off the
            CPU, a plain function under autograd), consecutive grid steps unrolled into one graph (see :mod:`neuralode.solvers.fast.compiled_chunks`;
            the chunk size is chosen to keep ``ceil(n / compile_steps)`` calls for ``n`` steps and pad the last
            chunk least). For an adaptive
            first-same-as-last method (``dopri5``, ``tsit5``, ``bosh3``),
            a ``while_loop`` of attempts whose clock is on the device, returning to Python once per call (see
            :mod:`neuralode.solvers.fast.device_run`), and under autograd, for a ``torch.nn.Module`` ``func``, a
            compiled reverse run over its accepted steps as the backward pass (:mod:`neuralode.solvers.fast.backprop`);
            with ``per_sample`` too, each sample's clock on the device. Solves these cannot take (events, step
            callbacks, ``perturb``, ``dense``, ``interp="cubic"``, ``jump_t``, autograd recording through a plain
            function or a tensor outside the module's parameters) take one compiled step per call; with
            ``per_sample``, which has no compiled step, they are refused (and so is ``per_sample="compact"``).
        per_sample: ``True``: the first dimension of the state is a batch of independent samples,
            each with its own time, step size and error control; ``t`` may be ``(B, T)`` and ``func``
            receives ``t`` of shape ``(B,)`` (see :mod:`neuralode.solvers.per_sample`). ``"compact"``:
            the same, and finished samples are dropped from the batch passed to ``func`` when fewer
            than half are active (``func`` must then accept any batch size). ``False`` (default): one
            clock. Explicit adaptive methods only. With ``compile`` (``dopri5``, ``tsit5``, ``bosh3``; under
            autograd, ``func`` a ``torch.nn.Module``), the per-sample clock's run of steps is compiled (see
            ``compile_steps``).
        dtype: the dtype time is carried in (torchdiffeq's ``dtype``; ``torch.float32`` for devices
            without float64, such as Apple's MPS). neuralode carries time as Python floats on the
            host, so no float64 tensor reaches the device either way; the option is checked and
            accepted for compatibility. Default ``None``. Adaptive methods only.
        stiffness: ``"error"`` (default): methods with two stages at ``c = 1`` (dopri5, tsit5, dopri8)
            watch for stiffness at no cost in evaluations and raise ``SolverError`` naming the stiff
            methods when the step is held at the stability limit (Hairer's test, see
            ``stiffness.py``) and the solve has taken 500 steps; ``"off"``: run on regardless.
            Adaptive methods only.
    """

    checkpoint: bool = False
    checkpoints: int | Literal["auto"] | None = None
    compile: bool | str = False
    compile_steps: int = 32
    per_sample: bool | str = False
    dtype: torch.dtype | None = None
    stiffness: str = "error"


@dataclass(frozen=True)
class MethodSettings:
    """Base of the records of options only one family of methods reads (``Options.method``)."""


@dataclass(frozen=True)
class AdamsSettings(MethodSettings):
    """Options of the Adams methods (``explicit_adams``, ``implicit_adams``, ``fixed_adams``).

    Attributes:
        max_order: the history holds at most ``max_order - 1`` derivatives, so Adams–Bashforth
            reaches order ``max_order - 1`` (torchdiffeq's ``max_order``; default 12, the most
            torchdiffeq allows).
        max_iters: corrector iterations per step of ``implicit_adams`` (torchdiffeq's ``max_iters``;
            default 4).
    """

    max_order: int = ADAMS_MAX_ORDER
    max_iters: int = ADAMS_MAX_ITERS


RECORDS: dict[str, tuple[type, ...]] = {
    "control": (StepControl, FixedGrid),
    "stops": (Stops,),
    "output": (Output,),
    "execution": (Execution,),
    "method": (MethodSettings,),
}


@dataclass(frozen=True)
class Options:
    """A solve's options, one record per concern: the typed form of torchdiffeq's ``options`` dict.

    ``solve(f, y0, t, options=Options(control=StepControl(max_step=0.1), stops=Stops(jump_t=(1.0,))))``
    solves exactly as ``options={"max_step": 0.1, "jump_t": (1.0,)}`` does. A record left ``None``,
    and a field left at its default, is as if not given: the method's own defaults apply. Each field
    is checked by the same rules as the dict's key of the same name, and refused the same way by a
    method that does not take it.

    The options a solve carries once parsed are an instance of the method's ``options_type`` (a
    subclass: :class:`AdaptiveOptions`, :class:`FixedOptions`, :class:`ImplicitOptions`, ...) with
    every record filled in. Every torchdiffeq key is also a read-only attribute of it
    (``opts.max_step`` is ``opts.control.max_step``), read once per solve.

    Attributes:
        control: :class:`StepControl` (adaptive methods) or :class:`FixedGrid` (fixed-step methods).
        stops: :class:`Stops`.
        output: :class:`Output`.
        execution: :class:`Execution`.
        method: the options of one family of methods: :class:`AdamsSettings`,
            :class:`~neuralode.solvers.methods.implicit_options.ImplicitSettings`,
            :class:`~neuralode.solvers.methods.implicit_options.RadauSettings`; ``None`` for the others.
    """

    control: StepControl | FixedGrid | None = None
    stops: Stops | None = None
    output: Output | None = None
    execution: Execution | None = None
    method: MethodSettings | None = None

    # The torchdiffeq keys a method with these options takes, in the order its errors list them.
    KEYS: ClassVar[tuple[str, ...]] = ()
    # The controller a StepControl without one gets in the parsed options of a method (StepControl.controller);
    # None here: an Options a user writes leaves it to the method.
    default_controller: ClassVar[str | None] = None
    # The shared instance defaults() hands out, set on each options type the first time it is asked
    # (read through the class's own __dict__, so a subclass never gets its base's).
    _defaults: ClassVar[Options]

    if TYPE_CHECKING:
        # The torchdiffeq keys, read-only attributes set on the class below (one property per entry of
        # CONCERN_OF) and so invisible to a static checker; declared here with their records' types.
        @property
        def first_step(self) -> float | None: ...

        @property
        def min_step(self) -> float: ...

        @property
        def max_step(self) -> float: ...

        @property
        def max_num_steps(self) -> int: ...

        @property
        def safety(self) -> float: ...

        @property
        def ifactor(self) -> float: ...

        @property
        def dfactor(self) -> float: ...

        @property
        def controller(self) -> str | None: ...

        @property
        def norm(self) -> Callable[[Any], Any] | None: ...

        @property
        def at_min_step(self) -> str: ...

        @property
        def step_size(self) -> float | None: ...

        @property
        def grid_constructor(self) -> Callable[..., torch.Tensor] | None: ...

        @property
        def step_t(self) -> tuple[float, ...]: ...

        @property
        def jump_t(self) -> tuple[float, ...]: ...

        @property
        def perturb(self) -> bool: ...

        @property
        def dense(self) -> bool: ...

        @property
        def interp(self) -> str: ...

        @property
        def checkpoint(self) -> bool: ...

        @property
        def checkpoints(self) -> int | Literal["auto"] | None: ...

        @property
        def compile(self) -> bool | str: ...

        @property
        def compile_steps(self) -> int: ...

        @property
        def per_sample(self) -> bool | str: ...

        @property
        def dtype(self) -> torch.dtype | None: ...

        @property
        def stiffness(self) -> str: ...

        @property
        def max_order(self) -> int: ...

        @property
        def max_iters(self) -> int: ...

        @property
        def jacobian(self) -> str | Callable[..., Any]: ...

        @property
        def batch_dims(self) -> int | None: ...

        @property
        def dense_error(self) -> bool | None: ...

    def __post_init__(self) -> None:
        for name, types in RECORDS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, types):
                raise TypeError(
                    f"Options({name}=...) must be {' or '.join(_a(t.__name__) for t in types)} (or None); "
                    f"got {_type_name(value)}."
                    + (f" It belongs in Options({_slot_of(value)}=...)." if _slot_of(value) else "")
                )
        control = self.control
        if isinstance(control, StepControl) and control.controller is None and self.default_controller is not None:
            object.__setattr__(self, "control", replace(control, controller=self.default_controller))

    @classmethod
    def defaults(cls) -> Options:
        """The options of a solve given none: one shared instance per options type (records are frozen)."""
        made = cls.__dict__.get("_defaults")
        if made is None:
            made = cls()
            cls._defaults = made
        return made

    @classmethod
    def from_keys(cls, values: dict[str, Any]) -> Options:
        """The method's options with torchdiffeq's keys ``values`` (already checked) set in their records."""
        return cls.defaults().replace_keys(values) if values else cls.defaults()

    def replace_keys(self, values: dict[str, Any]) -> Options:
        """A copy with torchdiffeq's keys ``values`` set in the records that hold them.

        Built from the records' ``vars`` rather than ``dataclasses.replace``: parsing runs once per solve,
        and for small systems the solve itself takes tens of microseconds, so its set-up should not.
        """
        groups: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            groups.setdefault(CONCERN_OF[key], {})[key] = value
        records = dict(vars(self))
        for name, kv in groups.items():
            record = records[name]
            records[name] = type(record)(**{**vars(record), **kv})
        return type(self)(**records)

    def as_dict(self, method: Any, argument: str = "options") -> dict[str, Any]:
        """torchdiffeq's dict form of these options for ``method`` (a
        :class:`~neuralode.solvers.methods.base.Method`): the fields set to other than their defaults,
        under their keys. A record of the wrong kind for the method (a :class:`FixedGrid` for an adaptive
        method, another family's method record) is refused naming it."""
        kind = method.options_type
        expected = kind.defaults() if isinstance(kind, type) and issubclass(kind, Options) else None
        out: dict[str, Any] = {}
        for name in RECORDS:
            record = getattr(self, name)
            if record is None:
                continue
            if expected is not None:
                want = getattr(expected, name)
                if want is None or not isinstance(want, type(record)):
                    takes = f"takes {_a(type(want).__name__)}" if want is not None else "takes none"
                    raise TypeError(
                        f"{argument}.{name} is {_a(_type_name(record))}, but method={method.name!r} {takes}; "
                        + _RECORD_HINT.get(type(record), "leave it out.")
                    )
            for f in fields(record):
                value = getattr(record, f.name)
                default = f.default
                if not (value is default or (type(value) is type(default) and value == default)):
                    out[f.name] = value
        return out


_RECORD_HINT = {
    StepControl: "StepControl sets the steps of adaptive methods; give a FixedGrid to a fixed-step method.",
    FixedGrid: "FixedGrid sets the grid of fixed-step methods; give a StepControl to an adaptive method.",
}


def _a(name: str) -> str:
    """``name`` with its indefinite article: "a StepControl", "an Output"."""
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


def _slot_of(record: Any) -> str | None:
    """The field of :class:`Options` a concern record belongs in, or ``None``."""
    return next((name for name, types in RECORDS.items() if isinstance(record, types)), None)


def refuse_records(options: Any, argument: str = "options") -> None:
    """Refuse a concern record given where a dict or :class:`Options` belongs, saying where it goes."""
    slot = _slot_of(options)
    if slot is not None:
        kind = _type_name(options)
        raise TypeError(
            f"{argument} must be a dict, a neuralode.Options or None; got a bare {kind}. Give it inside "
            f"Options: {argument}=neuralode.Options({slot}={kind}(...))."
        )


# Which record of Options holds each torchdiffeq key.
CONCERN_OF: dict[str, str] = {
    **{f.name: "control" for f in fields(StepControl)},
    **{f.name: "control" for f in fields(FixedGrid)},
    **{f.name: "stops" for f in fields(Stops)},
    **{f.name: "output" for f in fields(Output)},
    **{f.name: "execution" for f in fields(Execution)},
    **{f.name: "method" for f in fields(AdamsSettings)},
    # the implicit methods' keys (methods/implicit_options.py), named here so that options.py imports no method
    "jacobian": "method",
    "batch_dims": "method",
    "dense_error": "method",
}


def _flat(key: str, concern: str) -> property:
    # attrgetter reads both attributes in C: about as fast as the field of a flat record.
    return property(
        attrgetter(f"{concern}.{key}"), doc=f"``{concern}.{key}`` (torchdiffeq's ``options[{key!r}]``), read-only."
    )


# Every torchdiffeq key is a read-only attribute of parsed options, delegating to its record: the
# loops read ``opts.max_step`` as they did when the options were one flat record. A key whose record
# lacks it (``min_step`` of a fixed grid) raises AttributeError, as a missing field did.
for _key, _concern in CONCERN_OF.items():
    setattr(Options, _key, _flat(_key, _concern))
del _key, _concern


@dataclass(frozen=True)
class AdaptiveOptions(Options):
    """Parsed options of the explicit adaptive methods (``dopri5``, ``tsit5``, ...): an :class:`Options`
    with a :class:`StepControl` and no method record. Keys: ``first_step``, ``min_step``, ``max_step``,
    ``max_num_steps``, ``step_t``, ``jump_t``, ``norm``, ``safety``, ``ifactor``, ``dfactor``,
    ``controller``, ``checkpoint``, ``checkpoints``, ``dense``, ``perturb``, ``dtype``, ``compile``,
    ``compile_steps``, ``stiffness``, ``per_sample``, ``at_min_step``; each is documented on the record that holds
    it."""

    control: StepControl = field(default_factory=StepControl)
    stops: Stops = field(default_factory=Stops)
    output: Output = field(default_factory=Output)
    execution: Execution = field(default_factory=Execution)

    default_controller = "pi"
    KEYS: ClassVar[tuple[str, ...]] = (
        "first_step", "min_step", "max_step", "max_num_steps", "step_t", "jump_t", "norm", "safety", "ifactor",
        "dfactor", "controller", "checkpoint", "checkpoints", "dense", "perturb", "dtype", "compile", "compile_steps",
        "stiffness", "per_sample", "at_min_step",
    )  # fmt: skip


@dataclass(frozen=True)
class FixedOptions(Options):
    """Parsed options of the fixed-step methods (``euler``, ``rk4``, ...): an :class:`Options` with a
    :class:`FixedGrid`. Keys: ``step_size``, ``grid_constructor``, ``interp``, ``checkpoint``, ``checkpoints``,
    ``dense``, ``perturb``, ``compile``, ``compile_steps``, ``max_num_steps``; each is documented on the
    record that holds it."""

    control: FixedGrid = field(default_factory=FixedGrid)
    stops: Stops = field(default_factory=Stops)
    output: Output = field(default_factory=Output)
    execution: Execution = field(default_factory=Execution)

    KEYS: ClassVar[tuple[str, ...]] = (
        "step_size", "grid_constructor", "interp", "checkpoint", "checkpoints", "dense", "perturb", "compile",
        "compile_steps", "max_num_steps",
    )  # fmt: skip


@dataclass(frozen=True)
class AdamsOptions(FixedOptions):
    """Parsed options of the Adams methods: :class:`FixedOptions` with :class:`AdamsSettings`
    (``max_order``, ``max_iters``)."""

    method: AdamsSettings = field(default_factory=AdamsSettings)

    KEYS = FixedOptions.KEYS + ("max_order", "max_iters")


# The parsed options of a method that steps in the solvers' loop: every options type derives from one of
# these two, so every record is filled in (the implicit methods' types extend AdaptiveOptions and FixedOptions).
ParsedOptions = AdaptiveOptions | FixedOptions


# --------------------------------------------------------------------------------------------
# Checking input at the public boundary.


_HALF = (torch.float16, torch.bfloat16)


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the time tensor ``func`` receives for a state of ``dtype``: the state's own
    real dtype (as torchdiffeq), so that ``t * y`` stays in the state's dtype."""
    return {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}.get(
        dtype, dtype
    )


def error_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype error estimates and tolerances are computed in for a state of ``dtype``.

    float16 and bfloat16 states are integrated in their own dtype, but their error ratio is
    formed in float32: in float16, ``atol + rtol |y|`` underflows to 0 for the default
    ``atol = 1e-9`` (the ratio becomes inf/NaN and the step size NaN), and bfloat16's 8 bits of
    mantissa would turn the scaled error into noise, which then drives the step size. Complex
    states use their real dtype: errors are measured on magnitudes.
    """
    if dtype in _HALF:
        return torch.float32
    return time_dtype(dtype)


def check_half_tolerance(rtol: Any, dtype: torch.dtype) -> None:
    """A half-precision state cannot be solved to a relative accuracy finer than its dtype
    resolves: refuse such an ``rtol`` and say which one works."""
    if dtype not in _HALF:
        return
    loosest = 4.0 * torch.finfo(dtype).eps
    smallest = float(rtol.min()) if isinstance(rtol, torch.Tensor) else float(rtol)
    if smallest < loosest:
        raise ValueError(
            f"rtol={smallest:g} is finer than a {dtype} state can resolve (its machine epsilon is "
            f"{torch.finfo(dtype).eps:g}); use rtol >= {loosest:.3g} for {dtype}, or solve in float32."
        )


# A tolerance this many times below the machine epsilon of the state's dtype, in rtol and in atol
# alike, is refused: each step's rounding error (about eps |y|) then exceeds the error it is asked
# to keep, the controller shrinks the step without end, and the solve ends after thousands of steps
# in a misleading stiffness or step-count error (measured on dy/dt = -y, float32: rtol = atol =
# eps/100 takes 19 steps, eps/1e5 3,528, eps/1e6 over 20,000; float64 the same pattern).
RESOLUTION_FACTOR = 100.0


def check_tolerance_resolution(rtol: Any, atol: Any, dtype: torch.dtype) -> None:
    """Refuse tolerances finer than a state of ``dtype`` can resolve, naming the finest that works.

    Half-precision states: ``rtol`` below ``4 eps`` (their 11 or 8 bits leave no room below that).
    Other floating states: ``rtol`` and ``atol`` both below ``eps / 100``; ``atol`` is compared on the
    scale of 1, and a larger ``atol`` keeps the solve resolvable wherever ``|y|`` is below
    ``atol / rtol``. float32's default ``rtol = 1e-7`` lies below its epsilon (1.2e-7) and is kept,
    as torchdiffeq keeps it.
    """
    if dtype in _HALF:
        check_half_tolerance(rtol, dtype)
        return
    real = time_dtype(dtype)
    if not real.is_floating_point:
        return
    eps = torch.finfo(real).eps
    finest = eps / RESOLUTION_FACTOR

    def smallest(v: Any) -> float:
        return float(v.min()) if isinstance(v, torch.Tensor) else float(v)

    r, a = smallest(rtol), smallest(atol)
    if r < finest and a < finest:
        raise ValueError(
            f"rtol={r:g} and atol={a:g} are finer than a {dtype} state can resolve (its machine epsilon is {eps:.3g}): "
            f"every step's rounding error would exceed the tolerance and the step size would collapse. Use "
            f"rtol >= {finest:.3g} (or atol >= {finest:.3g}) for {dtype}"
            + (", or solve in float64." if real != torch.float64 else ".")
        )


def check_method_dtype(method: Any, dtype: torch.dtype) -> None:
    """Refuse a float16 or bfloat16 state for a method without ``capabilities.half``, naming the fix: the
    implicit methods solve linear systems, which torch does not do in half precision (its LU factorisation
    has no half kernels)."""
    if dtype in _HALF and not method.capabilities.half:
        raise TypeError(
            f"method={method.name!r} solves linear systems (LU factorisation), which torch does not provide for "
            f"{dtype} states; solve in float32 (y0.float()) or use an explicit method (e.g. 'dopri5')."
        )


def suggest(name: str, valid: Any) -> str:
    """`` Did you mean 'x'?`` for the closest valid name (case-insensitive), or an empty string."""
    import difflib

    valid = list(valid)
    lowered = {v.lower(): v for v in valid}
    if isinstance(name, str) and name.lower() in lowered:
        return f" Did you mean {lowered[name.lower()]!r}?"
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean {lowered[close[0]]!r}?" if close else ""


def _type_name(x: Any) -> str:
    return type(x).__name__


def _accepts(fn: Callable, n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments (True when it cannot be told)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def _accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``name`` (or ``**kwargs``)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind != p.VAR_POSITIONAL or p.kind == p.VAR_KEYWORD for p in params)


def _check_func(func: Any) -> None:
    """``func`` must be callable as ``func(t, y)``."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_type_name(func)}.")
    if not _accepts(func, 2):
        raise TypeError(
            f"func must be callable as func(t, y) with the time first and the state second; got {_describe(func)}. "
            "Wrap a function of the state alone as lambda t, y: f(y)."
        )


def _check_tolerance_pair(rtol: Any, atol: Any) -> None:
    """Refuse tolerances that bound no error: rtol = atol = 0 (for some element) makes the
    error scale zero wherever the solution is zero, and the step size collapses."""

    if not isinstance(rtol, torch.Tensor) and not isinstance(atol, torch.Tensor):
        both, any_both = None, rtol == 0 and atol == 0
    else:

        def zero(v):
            return (v == 0) if isinstance(v, torch.Tensor) else torch.tensor(v == 0)

        both = zero(rtol) & zero(atol)
        any_both = bool(both.any())
    if any_both:
        raise ValueError(
            "rtol and atol are both 0"
            + ("" if both is None or both.dim() == 0 else " for some elements of the state")
            + ", so no error can be bounded where the solution is 0 and the step size would collapse; "
            "give a positive atol (e.g. atol=1e-9) or rtol."
        )


def _describe(fn: Callable) -> str:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        return f"{getattr(target, '__qualname__', _type_name(fn))}{inspect.signature(target)}"
    except (TypeError, ValueError):
        return _type_name(fn)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of ``x`` is finite, by one reduction in the common case.

    A sum of finite numbers is finite unless it overflows, and a NaN or an infinity in ``x`` makes
    the sum NaN or infinite, so a finite sum proves every element finite; only a non-finite sum
    (a NaN or inf in ``x``, or an overflow) takes the elementwise test. ``torch.isfinite(x).all()``
    alone is several elementwise operations and a boolean reduction, a few times the price of one
    sum on the states the solvers see (it runs on every solve's ``y0`` and every fixed-grid
    solution). One host synchronisation either way.
    """
    if x.requires_grad:
        x = x.detach()
    if not x.is_complex():
        if math.isfinite(float(x.sum())):
            return True
    return bool(torch.isfinite(x).all())


def _check_state(y0: Any, batch: bool = False) -> tuple[torch.Tensor, ...]:
    """Components of ``y0`` as a tuple, each checked to be a finite floating tensor.

    With ``batch`` (``options["per_sample"]``) every component must also have a first (batch)
    dimension, the same non-zero size ``B`` in all of them.
    """
    if isinstance(y0, torch.Tensor):
        parts = (y0,)
    elif isinstance(y0, tuple) and len(y0) > 0 and all(isinstance(p, torch.Tensor) for p in y0):
        parts = y0
    elif isinstance(y0, tuple) and any(isinstance(p, (tuple, list)) for p in y0):
        i = next(i for i, p in enumerate(y0) if isinstance(p, (tuple, list)))
        raise TypeError(
            f"y0 must be a tensor or a flat tuple of tensors; y0[{i}] is a nested {_type_name(y0[i])}. "
            "Flatten the state (e.g. y0 = (a, b, c) instead of (a, (b, c))) and have func return the same flat tuple."
        )
    else:
        raise TypeError(f"y0 must be a floating-point torch.Tensor or a non-empty tuple of them; got {_type_name(y0)}.")
    for i, p in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(
                f"{name} must have a floating-point or complex dtype (e.g. torch.float32 or torch.float64); got {p.dtype}. "
                f"Convert it with {name}.float() or {name}.double()."
            )
        if p.device.type == "meta":
            raise ValueError(
                f"{name} is on the meta device, which holds no values; give the initial state as a real tensor "
                f"(e.g. {name}.to_empty(device='cpu') filled with values, or a tensor on the CPU or a GPU)."
            )
        if not all_finite(p):
            raise ValueError(f"{name} contains NaN or infinite values; the initial state must be finite.")
    if len(parts) > 1:
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            if p.dtype != first.dtype or p.device != first.device:
                raise TypeError(
                    f"All tensors of a tuple y0 must share dtype and device; y0[0] is {first.dtype} on {first.device} "
                    f"but y0[{i}] is {p.dtype} on {p.device}."
                )
    if batch:
        _check_batch_dim(parts, not isinstance(y0, torch.Tensor))
    return parts


def _check_batch_dim(parts: tuple[torch.Tensor, ...], is_tuple: bool) -> None:
    """Every tensor of a per-sample state has a first (batch) dimension of one non-zero size ``B``."""
    for i, p in enumerate(parts):
        name = f"y0[{i}]" if is_tuple else "y0"
        if p.dim() == 0:
            raise ValueError(
                f"options['per_sample'] needs a batch dimension: {name} must have at least one dimension "
                "(the first is the batch); got a 0-dim tensor. Use y0.reshape(1) for a single sample, or "
                "drop per_sample."
            )
    sizes = [p.shape[0] for p in parts]
    if len(set(sizes)) != 1:
        raise ValueError(
            "options['per_sample']: every tensor of a tuple y0 must share its first (batch) dimension; "
            f"got first dimensions {sizes}."
        )
    if sizes[0] == 0:
        raise ValueError("options['per_sample']: y0 has an empty batch (first dimension 0).")


def _check_times(t: Any, batch: int | None = None):
    """Output times as Python floats, checked to be 1-D, finite and strictly monotonic.

    With ``batch = B`` (``options["per_sample"]``) ``t`` may also be ``(B, T)``, row ``i`` the times of
    sample ``i``; every row strictly monotonic and all in one direction. Returns then the times as a
    float64 ``(B, T)`` tensor on ``t``'s device and the direction (+1.0 or -1.0).
    """
    shapes = "1-D" if batch is None else "(T,) or (B, T)"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a {shapes} floating-point torch.Tensor of output times; got {_type_name(t)}.")
    if not t.is_floating_point():
        raise TypeError(
            f"t must have a floating-point dtype; got {t.dtype}. Use torch.tensor([...], dtype=torch.float64)."
        )
    if t.device.type == "meta":
        raise ValueError(
            "t is on the meta device, which holds no values; give the output times as a real tensor "
            "(e.g. torch.linspace(0, 1, 10), on the CPU or the state's device)."
        )
    if batch is not None:
        return _check_batch_times(t, batch)
    if t.dim() == 2:
        raise ValueError(
            f"t must be a non-empty 1-D tensor of output times; got shape {tuple(t.shape)}. For times per sample "
            "(row i the times of sample i, a batch in y0's first dimension) pass options={'per_sample': True}."
        )
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times; got shape {tuple(t.shape)}.")
    times = t.detach().to("cpu", torch.float64).tolist()
    for i, ti in enumerate(times):
        if not math.isfinite(ti):
            raise ValueError(f"t must be finite; got t[{i}] = {ti}.")
    if len(times) > 1:
        increasing = times[1] > times[0]
        for i in range(1, len(times)):
            if (times[i] > times[i - 1]) != increasing or times[i] == times[i - 1]:
                raise ValueError(
                    "t must be strictly increasing or strictly decreasing; "
                    f"got t[{i - 1}] = {times[i - 1]!r} followed by t[{i}] = {times[i]!r}."
                )
    return times


def _check_batch_times(t: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """:func:`_check_times` for ``options["per_sample"]``: the same rules, tested on the whole ``(B, T)``
    tensor at once (a row's index is named where ``t`` is ``(B, T)``)."""
    if t.requires_grad:
        raise ValueError(
            "options['per_sample'] does not differentiate with respect to the output times t; pass t.detach() "
            "(gradients with respect to y0 and func's parameters are unaffected)."
        )
    if t.dim() not in (1, 2) or t.numel() == 0 or t.shape[-1] == 0:
        raise ValueError(
            f"t must be a non-empty tensor of shape (T,) or (B, T) with options['per_sample']; got shape {tuple(t.shape)}."
        )
    if t.dim() == 2 and t.shape[0] != batch:
        raise ValueError(
            f"t of shape {tuple(t.shape)} gives times for {t.shape[0]} samples but y0 has a batch of {batch}; "
            f"t must be (T,) (shared) or ({batch}, T)."
        )
    times = t.detach().to(torch.float64).reshape(-1, t.shape[-1])

    def where(b: int, j: int) -> str:
        return f"t[{b}, {j}]" if t.dim() == 2 else f"t[{j}]"

    if not bool(torch.isfinite(times).all()):
        b, j = (~torch.isfinite(times)).nonzero()[0].tolist()
        raise ValueError(f"t must be finite; got {where(b, j)} = {times[b, j].item()}.")
    direction = 1.0
    if times.shape[1] > 1:
        d = times[:, 1:] - times[:, :-1]
        sign = torch.sign(d[:, :1])
        if bool((sign == 0).any()) or not bool((sign == sign[0]).all()):
            rows = torch.sign(d[:, 0]).tolist()
            raise ValueError(
                "With options['per_sample'] every row of t must run in the same direction (all increasing or "
                f"all decreasing); got directions {rows[:8]}{' ...' if len(rows) > 8 else ''} (+1 increasing, "
                "-1 decreasing, 0 repeated time). Solve forward and backward samples separately."
            )
        bad = (d * sign) <= 0
        if bool(bad.any()):
            b, j = bad.nonzero()[0].tolist()
            raise ValueError(
                "Every row of t must be strictly increasing or strictly decreasing; got "
                f"{where(b, j)} = {times[b, j].item()!r} followed by {where(b, j + 1)} = {times[b, j + 1].item()!r}."
            )
        direction = float(sign[0, 0])
    return times.expand(batch, -1).to(t.device), direction


def _check_tolerance(name: str, tol: Any, parts: tuple[torch.Tensor, ...], is_tuple: bool, batch: bool = False):
    """A tolerance as a float, or a flat tensor matching the flattened state.

    With ``batch`` (``options["per_sample"]``, the state's first dimension the batch ``B``) the tensor
    is ``(B, N)``: each component's tolerance flattened per sample and the components side by side,
    the per-sample clock's layout of the state.
    """

    def one(value: Any, part: torch.Tensor, label: str):
        if _is_number(value):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a non-negative finite number; got {value!r}.")
            return float(value)
        if isinstance(value, torch.Tensor):
            if not (bool(torch.isfinite(value).all()) and bool((value >= 0).all())):
                raise ValueError(
                    f"{label} must be non-negative and finite; got a tensor containing {value.min().item()!r}."
                )
            try:
                return torch.broadcast_to(value.to(error_dtype(part.dtype)), part.shape).to(part.device)
            except RuntimeError:
                raise ValueError(
                    f"{label} of shape {tuple(value.shape)} cannot be broadcast to the state's shape {tuple(part.shape)}."
                ) from None
        raise TypeError(f"{label} must be a float or a tensor; got {_type_name(value)}.")

    if is_tuple and isinstance(tol, (tuple, list)):
        if len(tol) != len(parts):
            raise ValueError(
                f"{name} given per tensor must have one entry per tensor of y0 ({len(parts)}); got {len(tol)}."
            )
        values = [one(v, p, f"{name}[{i}]") for i, (v, p) in enumerate(zip(tol, parts))]
    else:
        values = [one(tol, p, name) for p in parts]
    if all(isinstance(v, float) for v in values) and len(set(values)) == 1:
        return values[0]
    if not is_tuple and not batch:
        return values[0]  # already broadcast to the state's shape
    lead = (parts[0].shape[0], -1) if batch else (-1,)
    return torch.cat(
        [
            (
                v.reshape(lead)
                if isinstance(v, torch.Tensor)
                else torch.full(p.shape, v, dtype=error_dtype(p.dtype), device=p.device).reshape(lead)
            )
            for v, p in zip(values, parts)
        ],
        dim=-1,
    )


def _positive(name: str, value: Any, allow_inf: bool = False, allow_zero: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    ok = _is_number(value) and (math.isfinite(value) or (allow_inf and value == math.inf))
    ok = ok and (value > 0 or (allow_zero and value == 0))
    if not ok:
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"options['{name}'] must be a {what} finite number; got {value!r}.")
    return float(value)


def _times_option(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(-1).to("cpu", torch.float64).tolist()
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) and math.isfinite(v) for v in value):
        raise TypeError(f"options['{name}'] must be a 1-D tensor or sequence of finite times; got {value!r}.")
    return tuple(float(v) for v in value)


def _parse_options(options: Any, method: Any) -> ParsedOptions | Any:
    """``options`` (a dict, an :class:`Options` or ``None``) checked and parsed into ``method.options_type``, the record of the
    :class:`~neuralode.solvers.methods.base.Method` ``method``: :class:`AdaptiveOptions` or :class:`FixedOptions`
    for the explicit Runge-Kutta methods, :class:`AdamsOptions`, the implicit methods' types (which add the
    Jacobian's options). An option the method's capabilities exclude (``compile``, ``per_sample``) is refused
    naming it. A method with its own driver parses its own options, into a record of its own (hence the
    ``Any``: only the method's ``run`` reads it)."""
    if isinstance(options, Options):
        options = options.as_dict(method)
    elif options is not None and not isinstance(options, dict):
        refuse_records(options)
    if method.capabilities.own_driver:
        return method.parse_options(options)
    kind = method.options_type
    if options is None:
        return kind.defaults()
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None; got {_type_name(options)}.")
    valid = kind.KEYS
    for key in options:
        if key not in valid:
            if isinstance(options[key], (Options, *(t for types in RECORDS.values() for t in types))):
                raise TypeError(
                    f"options[{key!r}] is a {_type_name(options[key])} record inside a dict of torchdiffeq's keys; "
                    "give either the dict (options={'max_step': 0.1}) or the records "
                    "(options=neuralode.Options(control=StepControl(max_step=0.1))), not one inside the other."
                )
            if key == "per_sample" and issubclass(kind, FixedOptions):
                raise ValueError(
                    f"options['per_sample'] works with the explicit adaptive methods (dopri5, tsit5, dopri8, bosh3, ...); "
                    f"{method.name!r} is a fixed-step method. Pick an adaptive method, or solve with one clock "
                    "(drop per_sample)."
                )
            if key == "step_size" and not issubclass(kind, FixedOptions):
                hint = (
                    " step_size fixes the step of fixed-step methods: pick one (e.g. method='rk4'), or give "
                    "first_step, the first step an adaptive method tries."
                )
            else:
                hint = suggest(key, valid)
            raise ValueError(
                f"Unknown option {key!r} for method {method.name!r}.{hint} Valid options: {', '.join(valid)}."
            )
    o = dict(options)
    for flag in ("checkpoint", "dense", "perturb"):
        if not isinstance(o.get(flag, False), bool):
            raise TypeError(f"options['{flag}'] must be True or False; got {o[flag]!r}.")
    if o.get("checkpoints") is not None:
        _check_checkpoints(o, method)
    if "compile" in o:
        comp = o["compile"]
        if not (isinstance(comp, bool) or comp in BACKENDS):
            raise ValueError(
                f"options['compile'] must be True, False or a torch.compile backend ({', '.join(BACKENDS)}); got {comp!r}."
            )
        if comp and not method.capabilities.compile:
            raise ValueError(
                f"options['compile'] compiles explicit Runge-Kutta and Rosenbrock methods' steps; {method.name!r} "
                "is not one of them (a multistep or implicit method)."
            )
        if comp and o.get("checkpoint"):
            raise ValueError("options['compile'] and options['checkpoint'] cannot be combined; choose one.")
    if "max_num_steps" in o:
        m = o["max_num_steps"]
        if not (isinstance(m, int) and not isinstance(m, bool) and m > 0):
            raise ValueError(f"options['max_num_steps'] must be a positive integer; got {m!r}.")
    if "compile_steps" in o:
        m = o["compile_steps"]
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(
                f"options['compile_steps'] must be a positive integer (steps per compiled call); got {m!r}."
            )
    if issubclass(kind, FixedOptions):
        if o.get("step_size") is not None:
            o["step_size"] = _positive("step_size", o["step_size"])
        if o.get("grid_constructor") is not None:
            if not callable(o["grid_constructor"]):
                raise TypeError(
                    f"options['grid_constructor'] must be callable; got {_type_name(o['grid_constructor'])}."
                )
            if o.get("step_size") is not None:
                raise ValueError("options 'step_size' and 'grid_constructor' are mutually exclusive; give one of them.")
        interp = o.get("interp", "linear")
        if interp not in ("linear", "cubic"):
            raise ValueError(f"options['interp'] must be 'linear' or 'cubic'; got {interp!r}.")
        if kind is AdamsOptions:
            m = o.get("max_order", ADAMS_MAX_ORDER)
            if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= ADAMS_MAX_ORDER:
                raise ValueError(f"options['max_order'] must be an integer from 1 to {ADAMS_MAX_ORDER}; got {m!r}.")
            if m < ADAMS_MIN_ORDER:
                warnings.warn(
                    f"options['max_order'] = {m} is below {ADAMS_MIN_ORDER}, so {method.name} reduces to rk4_38 "
                    "(torchdiffeq's rk4), as in torchdiffeq.",
                    UserWarning,
                    stacklevel=4,
                )
            it = o.get("max_iters", ADAMS_MAX_ITERS)
            if isinstance(it, bool) or not isinstance(it, int) or it < 1:
                raise ValueError(f"options['max_iters'] must be a positive integer; got {it!r}.")
        return kind.from_keys(o)
    if o.get("first_step") is not None:
        o["first_step"] = _positive("first_step", o["first_step"])
    if "min_step" in o:
        o["min_step"] = _positive("min_step", o["min_step"], allow_zero=True)
    if "max_step" in o:
        o["max_step"] = _positive("max_step", o["max_step"], allow_inf=True)
    if o.get("at_min_step", "error") not in AT_MIN_STEP:
        raise ValueError(
            f"options['at_min_step'] must be 'error' (stop with SolverError when a step fails at min_step) or "
            f"'accept' (accept it whatever its error, as torchdiffeq does); got {o['at_min_step']!r}."
        )
    if o.get("min_step", 0.0) > o.get("max_step", math.inf):
        raise ValueError(
            f"options['min_step'] ({o['min_step']!r}) must not exceed options['max_step'] ({o['max_step']!r})."
        )
    for name in ("step_t", "jump_t"):
        if o.get(name) is not None:
            o[name] = _times_option(name, o[name])
        else:
            o.pop(name, None)
    if o.get("norm") is not None and not callable(o["norm"]):
        raise TypeError(f"options['norm'] must be callable (tensor -> scalar); got {_type_name(o['norm'])}.")
    if "safety" in o and not (_is_number(o["safety"]) and 0 < o["safety"] <= 1):
        raise ValueError(f"options['safety'] must be in (0, 1]; got {o['safety']!r}.")
    if "ifactor" in o and not (_is_number(o["ifactor"]) and o["ifactor"] >= 1):
        raise ValueError(f"options['ifactor'] must be a number >= 1; got {o['ifactor']!r}.")
    if "dfactor" in o and not (_is_number(o["dfactor"]) and 0 < o["dfactor"] <= 1):
        raise ValueError(f"options['dfactor'] must be in (0, 1]; got {o['dfactor']!r}.")
    if o.get("dtype") is not None and not (isinstance(o["dtype"], torch.dtype) and o["dtype"].is_floating_point):
        raise TypeError(f"options['dtype'] must be a floating torch.dtype such as torch.float32; got {o['dtype']!r}.")
    if o.get("stiffness", "error") not in ("error", "off"):
        raise ValueError(f"options['stiffness'] must be 'error' or 'off'; got {o['stiffness']!r}.")
    if not (isinstance(o.get("per_sample", False), bool) or o.get("per_sample") == "compact"):
        raise ValueError(f"options['per_sample'] must be False, True or 'compact'; got {o['per_sample']!r}.")
    if o.get("per_sample", False) is not False:
        if not method.capabilities.per_sample:
            raise ValueError(
                f"options['per_sample'] works with the explicit adaptive methods (dopri5, tsit5, dopri8, bosh3, ...); "
                f"{method.name!r} is not one. Solve with one clock, or pick an explicit method."
            )
        if o.get("at_min_step", "error") == "accept":
            raise ValueError(
                "options['at_min_step']='accept' is not available with options['per_sample']; lower min_step or "
                "loosen rtol/atol, or solve with one clock."
            )
    if o.get("controller", "pi") not in CONTROLLERS:
        raise ValueError(f"options['controller'] must be one of {', '.join(CONTROLLERS)}; got {o['controller']!r}.")
    return kind.from_keys(o)


def _check_checkpoints(o: dict, method: Any) -> None:
    """``options['checkpoints']``: an int >= 2 or ``"auto"``, with an explicit Runge-Kutta method and none of
    the options it does not combine with (events and forward mode are refused where the solve starts)."""
    k = o["checkpoints"]
    if k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 2):
        raise ValueError(
            "options['checkpoints'] must be an integer >= 2 (the most states stored for backpropagation) or "
            f"'auto' (2 + ceil(log2 n) for a solve of n steps); got {k!r}."
        )
    if method.explicit_tableau is None:
        raise ValueError(
            f"options['checkpoints'] works with the explicit Runge-Kutta methods (dopri5, tsit5, rk4, ...); "
            f"{method.name!r} is not one. Use options={{'checkpoint': True}} or odeint_adjoint with it."
        )
    for other in ("checkpoint", "compile", "per_sample", "dense"):
        if o.get(other):
            raise ValueError(
                f"options['checkpoints'] and options['{other}'] cannot be combined; choose one "
                "(options['checkpoints'] supports neither compile, per_sample nor dense, and replaces checkpoint)."
            )


def _fixed_grid(opts: FixedOptions, times: list[float], func, y0, t) -> list[float]:
    """The grid of a fixed-step solve as floats, from ``opts.control`` (a :class:`FixedGrid`) and the output times."""
    spec = opts.control
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    if spec.step_size is not None:
        ratio = abs(t_end - t0) / spec.step_size
        n = round(ratio)
        # A span that is a whole number of steps up to rounding gets exactly that many steps,
        # rather than one extra step of length ~1e-16.
        n = n if n >= 1 and abs(ratio - n) <= 1e-9 * max(ratio, 1.0) else math.ceil(ratio)
        # Counted before it is built: a list of 10^9 times is 32 GB of Python floats.
        if n > spec.max_num_steps:
            raise ValueError(
                f"options['step_size']={spec.step_size!r} over the span {t0!r} to {t_end!r} makes a grid of {n} steps, "
                f"more than options['max_num_steps']={spec.max_num_steps}; use a larger step_size, a shorter span, an "
                "adaptive method (e.g. 'dopri5'), or raise options['max_num_steps'] if that many steps are meant."
            )
        h = spec.step_size
        return [t0 + direction * i * h for i in range(n)] + [t_end]
    if spec.grid_constructor is not None:
        if not _accepts(spec.grid_constructor, 3):
            raise TypeError(
                "options['grid_constructor'] must be callable as grid_constructor(func, y0, t) -> grid "
                f"(three arguments, as in torchdiffeq); got {_describe(spec.grid_constructor)}."
            )
        grid = spec.grid_constructor(func, y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
            raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least two times.")
        if grid.numel() - 1 > spec.max_num_steps:
            raise ValueError(
                f"options['grid_constructor'] returned a grid of {grid.numel() - 1} steps, more than "
                f"options['max_num_steps']={spec.max_num_steps}; return a coarser grid or raise options['max_num_steps']."
            )
        g = grid.detach().to("cpu", torch.float64).tolist()
        tol = 1e-12 * max(1.0, abs(t0), abs(t_end))
        if abs(g[0] - t0) > tol or abs(g[-1] - t_end) > tol:
            raise ValueError(
                f"options['grid_constructor'] must return a grid from t[0] = {t0!r} to t[-1] = {t_end!r}; "
                f"got one from {g[0]!r} to {g[-1]!r}."
            )
        g[0], g[-1] = t0, t_end
        if any((b - a) * direction <= 0 for a, b in zip(g, g[1:])):
            raise ValueError("options['grid_constructor'] must return a strictly monotonic grid in the direction of t.")
        return g
    return list(times)
