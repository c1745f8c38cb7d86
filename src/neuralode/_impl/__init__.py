"""torchdiffeq's private import paths (``torchdiffeq._impl...``), for programs that reach into them.

Programs written for torchdiffeq import a handful of names from its private package: ``SOLVERS``
(most often to list the method names, e.g. as ``argparse`` choices; sometimes to register a method),
``odeint`` and friends, ``Perturb``, and the explicit Runge-Kutta pieces ``_ButcherTableau`` and
``RKAdaptiveStepsizeODESolver`` to declare a new method. The names that map onto neuralode's
design are here, at torchdiffeq 0.2.5's paths::

    _impl              odeint, odeint_adjoint, odeint_event, odeint_dense
    _impl.odeint       SOLVERS, odeint, odeint_event, odeint_dense
    _impl.adjoint      odeint_adjoint
    _impl.misc         Perturb
    _impl.rk_common    _ButcherTableau, RKAdaptiveStepsizeODESolver
    _impl.solvers      RKAdaptiveStepsizeODESolver (where older torchdiffeq kept it)

``import neuralode as torchdiffeq`` reaches them as attributes (``torchdiffeq._impl.rk_common``; as in
torchdiffeq, the attribute ``_impl.odeint`` is the function, and the module is reached by an import
statement). Import statements that name ``torchdiffeq`` (``from torchdiffeq._impl.odeint import
SOLVERS``) need ``torchdiffeq`` in ``sys.modules``: :func:`install_torchdiffeq_alias` puts neuralode
and every module here there under torchdiffeq's names. A program that aliases by hand
(``sys.modules["torchdiffeq"] = neuralode``) gets the same modules too: Python then finds this
package on neuralode's path under the name ``torchdiffeq._impl``, and the copy it starts to load
hands the import over to the modules already loaded (below), so there is one ``SOLVERS`` whichever
name a program uses.

Not here (an import of them fails): torchdiffeq's solver classes and their bases other than
``RKAdaptiveStepsizeODESolver`` (``FixedGridODESolver``, ``AdaptiveStepsizeODESolver``, ... ;
importing those from ``_impl.solvers`` raises an ``ImportError`` that says what to do instead), its
internal helpers (``_check_inputs``, ``_flat_to_shape``, ``_interp_evaluate``, ``_rms_norm``, ...)
and its per-method modules (``_impl.dopri5``, ``_impl.fixed_grid``, ...): neuralode's methods are
data run by the library's solver loops, not classes with their own integrate methods. The list, with what to use
instead, is in ``docs/how-to/migrate-from-torchdiffeq.md``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

if __name__ != "neuralode._impl":
    # This file is being run a second time under another name: a program set
    # sys.modules["torchdiffeq"] = neuralode and imported torchdiffeq._impl, which Python found on
    # neuralode's path. Register the modules already loaded under that name; the import system then
    # returns them (it reads the module back from sys.modules), and the relative imports below
    # resolve to them too, so no second copy of SOLVERS exists.
    importlib.import_module("neuralode._impl")._alias_impl(__name__.rpartition(".")[0])

from . import adjoint as adjoint
from . import misc as misc
from . import rk_common as rk_common
from . import solvers as solvers
from .adjoint import odeint_adjoint

# In torchdiffeq 0.2.5 the package attribute ``_impl.odeint`` is the function (its ``__init__``
# imports it over the submodule's name), while ``import torchdiffeq._impl.odeint`` finds the module
# in sys.modules. The same here.
from .odeint import odeint as odeint
from .odeint import odeint_dense, odeint_event

__all__ = ["install_torchdiffeq_alias", "odeint", "odeint_adjoint", "odeint_dense", "odeint_event"]

# The modules of this package, by their name after ``_impl.``.
SUBMODULES = ("adjoint", "misc", "odeint", "rk_common", "solvers")


def _alias_impl(prefix: str) -> None:
    """Register this package and its modules in ``sys.modules`` as ``{prefix}._impl[.name]``."""
    sys.modules[f"{prefix}._impl"] = sys.modules[__name__]
    for sub in SUBMODULES:
        sys.modules[f"{prefix}._impl.{sub}"] = sys.modules[f"{__name__}.{sub}"]


def install_torchdiffeq_alias(name: str = "torchdiffeq") -> None:
    """Make ``import torchdiffeq`` and ``torchdiffeq._impl...`` imports give neuralode, from now on.

    Registers neuralode as ``sys.modules[name]``, and ``neuralode._impl`` and its modules as
    ``{name}._impl``, ``{name}._impl.odeint``, ... (see :mod:`neuralode._impl` for what they hold), so
    that a program written for torchdiffeq runs on neuralode unchanged, including its
    ``from torchdiffeq._impl.odeint import SOLVERS``::

        import neuralode
        neuralode.install_torchdiffeq_alias()
        import torchdiffeq                              # neuralode
        from torchdiffeq._impl.odeint import SOLVERS    # neuralode._impl.odeint.SOLVERS

    Call it before the code that imports torchdiffeq. Modules that imported the real torchdiffeq
    earlier keep it (a ``RuntimeWarning`` says so); its ``torchdiffeq.*`` entries are dropped from
    ``sys.modules``, so an import of a torchdiffeq module neuralode has no counterpart for fails
    instead of silently mixing the two libraries.

    Args:
        name: the module name to alias (default ``"torchdiffeq"``).

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if ``name`` is not a dotted Python module name, or names neuralode itself.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a module name such as 'torchdiffeq'; got {type(name).__name__}.")
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"name must be a Python module name such as 'torchdiffeq'; got {name!r}.")
    if name == "neuralode" or name.startswith("neuralode."):
        raise ValueError(f"name must not be neuralode's own; got {name!r}.")
    neuralode = importlib.import_module("neuralode")
    existing = sys.modules.get(name)
    if existing is not None and existing is not neuralode:
        warnings.warn(
            f"{name!r} was already imported (from {getattr(existing, '__file__', None)}); modules that imported it "
            f"keep it, imports of {name!r} from now on give neuralode. Call install_torchdiffeq_alias() first.",
            RuntimeWarning,
            stacklevel=2,
        )
    for key in [k for k in sys.modules if k.startswith(name + ".")]:
        if not sys.modules[key].__name__.startswith("neuralode"):
            del sys.modules[key]
    sys.modules[name] = neuralode
    _alias_impl(name)
