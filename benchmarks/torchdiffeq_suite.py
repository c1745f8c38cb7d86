"""Run torchdiffeq's own test files against neuralode (and against torchdiffeq, to tell its own failures apart).

    python benchmarks/torchdiffeq_suite.py --tests /tmp/torchdiffeq-tests/63bfb13 --tests /tmp/torchdiffeq-tests/newer
    python benchmarks/torchdiffeq_suite.py --tests DIR --label NAME --against neuralode --files odeint_tests.py

Each ``--tests DIR`` is a copy of torchdiffeq's ``tests/`` folder (``problems.py`` and the
``*_tests.py`` files; they are torchdiffeq's code and are not part of this repository: fetch them
for a run). Every test file runs in a fresh interpreter, once per implementation:

* ``neuralode``: ``neuralode.install_torchdiffeq_alias()`` first, so the file's ``import
  torchdiffeq`` (and any ``torchdiffeq._impl`` import) gives neuralode; nothing in the file is
  changed;
* ``torchdiffeq``: the real torchdiffeq installed alongside, to show which failures are the test
  files' own (a file written for another torchdiffeq version, a test that fails there too).

The unittest cases are counted at the finest grain the files have: every ``self.subTest(...)``
block is one case (torchdiffeq's tests loop over methods, dtypes and problems inside one test
method), and a test method without subtests is one case. A case passes, fails (an assertion) or
errs (any other exception). Failing cases are grouped by test method, exception type and the first
line of the message with its numbers masked (``tensor(0.0031) not less than 0.001`` and
``tensor(0.0042) not less than 0.001`` are one group), listing the subtest parameters each group
spans, how many of its cases fail under torchdiffeq too, and, where a rule below knows it, why.

The markdown report goes to ``benchmarks/results/torchdiffeq_suite.md`` (``--out``); a file
``SOURCE.md`` in a tests folder (which torchdiffeq commit the files are from) is copied into it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import unittest
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "torchdiffeq_suite.md"
IMPLS = ("neuralode", "torchdiffeq")
MARK = "@@torchdiffeq_suite@@"  # prefixes the worker's JSON line on stdout
OUTSIDE = "(outside subTest)"

# --------------------------------------------------------------------------------------------
# Counting: a unittest result that records every subtest.


@dataclass
class Case:
    """One subtest (or one test method without subtests) and how it ended."""

    test: str  # "Class.method"
    params: str  # the subtest's parameters ("" for a method without subtests)
    status: str  # "passed" | "failed" | "errors" | "skipped"
    error: str = ""  # exception type name
    message: str = ""  # first line of the exception message


class CaseResult(unittest.TestResult):
    """Records a :class:`Case` per subtest (``addSubTest``) and per test method without subtests.

    unittest calls ``addSubTest(test, subtest, None)`` for a subtest that passed and with the
    exception otherwise; ``addSuccess`` follows only when the method raised nothing outside its
    subtests and none of them failed, so a method that had subtests adds no case of its own then.
    An exception outside every subtest (in the method's own code, or in ``setUp``) is one more
    case, marked ``(outside subTest)`` when the method had subtests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cases: list[Case] = []
        self._had_subtests: set[str] = set()

    @staticmethod
    def _name(test: unittest.TestCase) -> str:
        return f"{type(test).__name__}.{getattr(test, '_testMethodName', str(test))}"

    @staticmethod
    def _describe(exc: BaseException) -> tuple[str, str]:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return type(exc).__name__, (lines[0].strip() if lines else "")[:500]

    def addSubTest(self, test, subtest, err) -> None:  # noqa: N802 - unittest's name
        name = self._name(test)
        self._had_subtests.add(name)
        params = ", ".join(f"{k}={v}" for k, v in subtest.params.items()) if subtest.params else ""
        if err is None:
            self.cases.append(Case(name, params, "passed"))
            return
        kind, message = self._describe(err[1])
        status = "failed" if issubclass(err[0], test.failureException) else "errors"
        self.cases.append(Case(name, params, status, kind, message))

    def _outside(self, test, err, status: str) -> None:
        name = self._name(test)
        kind, message = self._describe(err[1])
        params = OUTSIDE if name in self._had_subtests else ""
        self.cases.append(Case(name, params, status, kind, message))

    def addSuccess(self, test) -> None:  # noqa: N802
        name = self._name(test)
        if name not in self._had_subtests:
            self.cases.append(Case(name, "", "passed"))

    def addFailure(self, test, err) -> None:  # noqa: N802
        self._outside(test, err, "failed")

    def addError(self, test, err) -> None:  # noqa: N802
        # An error in setUpClass / a module fixture arrives with a _ErrorHolder, not a TestCase.
        self._outside(test, err, "errors")

    def addSkip(self, test, reason) -> None:  # noqa: N802
        self.cases.append(Case(self._name(test), "", "skipped", "SkipTest", str(reason)[:200]))

    def addExpectedFailure(self, test, err) -> None:  # noqa: N802
        self.cases.append(Case(self._name(test), "", "passed"))

    def addUnexpectedSuccess(self, test) -> None:  # noqa: N802
        self.cases.append(Case(self._name(test), "", "failed", "UnexpectedSuccess", "expected to fail, passed"))


def run_file(path: Path, impl: str | None) -> dict[str, Any]:
    """Run one test file's unittest cases in this process and return its cases (as dicts).

    ``impl``: ``"neuralode"`` installs the torchdiffeq alias first; ``"torchdiffeq"`` or ``None``
    import whatever ``torchdiffeq`` is. The file's folder goes first on ``sys.path`` (for its
    ``from problems import ...``).
    """
    path = Path(path).resolve()
    if impl == "neuralode":
        import neuralode

        neuralode.install_torchdiffeq_alias()
    sys.path.insert(0, str(path.parent))
    start = time.perf_counter()
    out: dict[str, Any] = {"file": path.name, "impl": impl, "import_error": None, "cases": []}
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # a file that does not even import is one error for the whole file
            out["import_error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
            return out
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
        result = CaseResult()
        with warnings.catch_warnings():
            # The files' own assertWarns blocks set their filters; the rest would flood the output.
            warnings.simplefilter("ignore")
            suite.run(result)
        out["cases"] = [vars(c) for c in result.cases]
        return out
    finally:
        out["seconds"] = time.perf_counter() - start
        sys.modules.pop(path.stem, None)
        sys.path.remove(str(path.parent))


# --------------------------------------------------------------------------------------------
# Grouping failures, and what is known about them.

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def mask_numbers(message: str) -> str:
    """The message with every number replaced by ``#``, so failures that differ only in the
    measured values group together."""
    return _NUMBER.sub("#", message)


@dataclass
class Group:
    """Failing cases of one test method with the same exception type and masked message."""

    test: str
    status: str
    error: str
    message: str  # masked
    example: str  # one unmasked message
    params: list[str] = field(default_factory=list)
    peer_fails: int | None = None  # of these cases, how many fail under the other implementation

    @property
    def count(self) -> int:
        return len(self.params)


def group_failures(cases: list[dict[str, Any]]) -> list[Group]:
    """Failing and erring cases grouped by (test, status, exception type, masked message), in order
    of first appearance."""
    groups: dict[tuple[str, str, str, str], Group] = {}
    for c in cases:
        if c["status"] not in ("failed", "errors"):
            continue
        # Masked, then cut: a long message cut first would end at a different place for each number.
        key = (c["test"], c["status"], c["error"], mask_numbers(c["message"])[:150])
        if key not in groups:
            groups[key] = Group(c["test"], c["status"], c["error"], key[3], c["message"])
        groups[key].params.append(c["params"])
    return list(groups.values())


def span(params: list[str]) -> str:
    """The values each subtest parameter takes across ``params`` ("k=v, k2=v2" strings), e.g.
    ``method ∈ {dopri5, bosh3}; dtype = torch.float32``."""
    values: dict[str, list[str]] = defaultdict(list)
    for p in params:
        for item in re.split(r", (?=\w+=)", p) if p and p != OUTSIDE else []:
            k, _, v = item.partition("=")
            if v not in values[k]:
                values[k].append(v)
    parts = []
    for k, vs in values.items():
        parts.append(f"{k} = {vs[0]}" if len(vs) == 1 else f"{k} ∈ {{{', '.join(vs)}}}")
    return "; ".join(parts) if parts else ("outside the subtests" if OUTSIDE in params else "—")


# Why a group of failures under neuralode fails. A rule is (file, test, pattern, cases, why): it
# explains a group when the file and test match ("*": any), ``pattern`` is found in the group's
# "ErrorType: message", and ``cases`` in every one of its cases' parameters. Groups no rule explains
# are marked so in the report.
@dataclass(frozen=True)
class Rule:
    file: str
    test: str
    pattern: str
    why: str
    cases: str = ""


EXPLANATIONS: list[Rule] = [
    Rule(
        "event_tests.py",
        "TestEventHandling.test_odeint",
        r"^AssertionError",
        "explicit_adams at its default max_order 12 (Adams-Bashforth of order 11) is unstable at the test's step "
        "0.01 (on dy/dt = -y both libraries blow up by t = 2); in float32 the test measures amplified rounding: "
        "0.086 here, 0.062 in torchdiffeq, against a tolerance of 0.07. In float64 both have the same error "
        "(4.5e-4 at t = 2.56). Neither library is wrong; a lower max_order is stable.",
        cases=r"dtype=torch\.float32.*method=explicit_adams\b",
    ),
    Rule(
        "event_tests.py",
        "TestEventHandling.test_odeint",
        r"No event found.*max_num_steps=2000",
        "on purpose: an event search stops after options['max_num_steps'], 2,000 by default in that mode "
        "(torchdiffeq's runs without a bound when no event comes). adaptive_heun (order 2) at the test's default "
        "rtol = 1e-7 needs 5,852 steps to reach this event at t = 2.56; options={'max_num_steps': 10_000} finds it.",
        cases=r"method=adaptive_heun",
    ),
    Rule(
        "gradient_tests.py",
        "TestGradient.test_odeint",
        r"scipy_solver.*forward only",
        "on purpose, and the test fails under torchdiffeq too: scipy's solve_ivp cannot be differentiated. "
        "neuralode raises in backward naming the methods that give gradients; torchdiffeq's output carries no "
        "gradient, so gradcheck errs there.",
        cases=r"method=scipy_solver",
    ),
    Rule(
        "norm_tests.py",
        "TestNorms.test_adjoint_norm",
        r"has no attribute 'adjoint_options'",
        "the test reaches into torchdiffeq's autograd node (xs.grad_fn.adjoint_options) to wrap the norm its "
        "adjoint built; neuralode's adjoint is another autograd Function without that attribute. An "
        "implementation detail, not API: the user-passed adjoint norm the same test checks next is the API.",
    ),
    Rule(
        "norm_tests.py",
        "TestNorms.test_adjoint_norm",
        r"not enough values to unpack \(expected \d+, got \d+\)",
        "a user's adjoint_options['norm'] receives neuralode's augmented state (y, a, one tensor per parameter); "
        "torchdiffeq's tuple starts with t and splits a tuple state into its tensors (t, y1, y2, a1, a2, ...), "
        "and the test unpacks that.",
    ),
    Rule(
        "odeint_tests.py",
        "TestCallbacks.test_wrong_callback",
        r"Warning not triggered",
        "torchdiffeq warns when func defines a step callback the method never calls (callback_accept_step / "
        "callback_reject_step on a fixed grid, any callback with scipy_solver); neuralode, as run here, does not "
        "warn.",
    ),
    Rule(
        "odeint_tests.py",
        "TestMinMaxStep.test_min_max_step",
        r"'LinearODE' object has no attribute 'nfe'",
        "the set's problems.py is older than this odeint_tests.py (see the set's description), so the test "
        "errs under torchdiffeq too. With an evaluation counter on LinearODE, min_step = 2 makes neuralode "
        "raise SolverError (on purpose: the first step at min_step has an error ratio of 3.9e4), and "
        "options['at_min_step'] = 'accept' passes the test (36 evaluations, under its 50; torchdiffeq 26).",
    ),
]


def explain(file: str, group: Group) -> str | None:
    text = f"{group.error}: {group.example}"
    for rule in EXPLANATIONS:
        if rule.file not in ("*", file) or rule.test not in ("*", group.test):
            continue
        if re.search(rule.pattern, text) and all(re.search(rule.cases, p) for p in group.params):
            return rule.why
    return None


# --------------------------------------------------------------------------------------------
# Running the sets, and the report.


def _worker(argv: list[str]) -> int:
    path, impl = Path(argv[0]), argv[1]
    import torch

    torch.set_num_threads(1)  # the machine's other processes, and comparable times
    out = run_file(path, impl)
    out["versions"] = _versions(impl)
    print(MARK + json.dumps(out), flush=True)
    return 0


def _versions(impl: str) -> dict[str, str]:
    import torch

    v = {"torch": torch.__version__, "python": platform.python_version()}
    mod = sys.modules.get("torchdiffeq")
    if impl == "neuralode":
        import neuralode

        v["neuralode"] = neuralode.__version__
    elif mod is not None:
        v["torchdiffeq"] = getattr(mod, "__version__", "?")
    return v


def run_set(folder: Path, impl: str, files: list[str] | None, timeout: float) -> list[dict[str, Any]]:
    """Run every ``*_tests.py`` file of ``folder`` (or ``files``) under ``impl``, each in its own process."""
    names = files or sorted(p.name for p in folder.glob("*_tests.py"))
    results = []
    for name in names:
        path = folder / name
        if not path.exists():
            results.append({"file": name, "impl": impl, "import_error": "file not in this set", "cases": []})
            continue
        print(f"  {folder.name}/{name} under {impl} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), impl],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=folder,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith(MARK)), None)
            if line is None:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                res = {"file": name, "impl": impl, "import_error": f"worker exited {done.returncode}: {tail[0]}"}
                res["cases"] = []
            else:
                res = json.loads(line[len(MARK) :])
        except subprocess.TimeoutExpired:
            res = {"file": name, "impl": impl, "import_error": f"timed out after {timeout:.0f} s", "cases": []}
        res.setdefault("seconds", time.perf_counter() - start)
        counts = tally(res["cases"])
        print(
            f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors ({res['seconds']:.0f} s)"
        )
        results.append(res)
    return results


def tally(cases: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    for c in cases:
        counts[c["status"]] += 1
    return counts


def _key(c: dict[str, Any]) -> tuple[str, str]:
    return c["test"], c["params"]


def _cut(message: str, n: int = 220) -> str:
    return message if len(message) <= n else message[: n - 3] + "..."


def render(sets: list[tuple[str, Path, dict[str, list[dict[str, Any]]]]], command: str) -> str:
    """The markdown report of every set: totals per file, then neuralode's failure groups."""
    lines = ["# torchdiffeq's own tests, run against neuralode", ""]
    lines += [
        "Written by `benchmarks/torchdiffeq_suite.py` (its docstring says how cases are counted); the command was",
        "",
        f"    {command}",
        "",
    ]
    versions: dict[str, str] = {}
    for _, _, by_impl in sets:
        for results in by_impl.values():
            for r in results:
                versions.update(r.get("versions", {}))
    lines.append(
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f"; {platform.machine()} CPU, one torch thread. A case is one `subTest` (or a test method without subtests)."
    )
    lines.append("")
    for label, folder, by_impl in sets:
        lines += [f"## Set `{label}`", ""]
        source = folder / "SOURCE.md"
        if source.exists():
            lines += [source.read_text().strip(), ""]
        impls = [i for i in IMPLS if i in by_impl]
        head = "| file | " + " | ".join(f"{i} passed / failed / errors" for i in impls) + " |"
        lines += [head, "|---|" + "---|" * len(impls)]
        files = [r["file"] for r in by_impl[impls[0]]]
        totals = {i: dict.fromkeys(("passed", "failed", "errors"), 0) for i in impls}
        for name in files:
            row = [f"`{name}`"]
            for i in impls:
                r = next((x for x in by_impl[i] if x["file"] == name), None)
                if r is None:
                    row.append("not run")
                    continue
                if r.get("import_error"):
                    row.append(f"did not run: {r['import_error']}")
                    continue
                t = tally(r["cases"])
                for k in totals[i]:
                    totals[i][k] += t[k]
                row.append(f"{t['passed']} / {t['failed']} / {t['errors']}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append(
            "| **all** | "
            + " | ".join(f"**{totals[i]['passed']} / {totals[i]['failed']} / {totals[i]['errors']}**" for i in impls)
            + " |"
        )
        lines.append("")
        if "neuralode" not in by_impl:
            continue
        peer = {r["file"]: r for r in by_impl.get("torchdiffeq", [])}
        unexplained = 0
        for r in by_impl["neuralode"]:
            groups = group_failures(r["cases"])
            if not groups:
                continue
            lines += [f"### `{r['file']}`: failing cases under neuralode", ""]
            peer_status = {_key(c): c["status"] for c in peer.get(r["file"], {}).get("cases", [])}
            for g in groups:
                if peer_status:
                    g.peer_fails = sum(peer_status.get((g.test, p)) in ("failed", "errors") for p in g.params)
                theirs = "" if g.peer_fails is None else f"; under torchdiffeq {g.peer_fails} of them fail too"
                lines.append(
                    f"* `{g.test}`, {g.count} case{'s' if g.count != 1 else ''} {g.status}: "
                    f"`{g.error}: {_cut(g.example)}`{theirs}. Cases: {span(g.params)}."
                )
                why = explain(r["file"], g)
                if why is None:
                    unexplained += 1
                    why = "**not explained yet.**"
                lines.append(f"  Why: {why}")
            lines.append("")
        if unexplained:
            lines += [f"{unexplained} group(s) of failures in this set are not explained yet.", ""]
        ours = {r["file"]: {_key(c): c["status"] for c in r["cases"]} for r in by_impl["neuralode"]}
        for r in by_impl.get("torchdiffeq", []):
            groups = group_failures(r["cases"])
            if not groups:
                continue
            lines += [f"### `{r['file']}`: failing cases under torchdiffeq itself", ""]
            for g in groups:
                passing = sum(ours.get(r["file"], {}).get((g.test, p)) == "passed" for p in g.params)
                lines.append(
                    f"* `{g.test}`, {g.count} case{'s' if g.count != 1 else ''} {g.status}: "
                    f"`{g.error}: {_cut(g.example)}`; {passing} of them pass under neuralode. Cases: {span(g.params)}."
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, action="append", required=True, help="a copy of torchdiffeq's tests/")
    parser.add_argument("--label", action="append", help="a name per --tests (default: the folder's name)")
    parser.add_argument("--against", choices=(*IMPLS, "both"), default="both", help="implementation(s) to run")
    parser.add_argument("--files", nargs="+", help="only these test files (default: every *_tests.py)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per test file (default 1800)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown report (default {DEFAULT_OUT})")
    parser.add_argument("--json", type=Path, help="also write every case's result to this file")
    parser.add_argument("--from-json", type=Path, help="write the report from a --json file instead of running")
    args = parser.parse_args(argv)
    labels = args.label or []
    if len(labels) > len(args.tests):
        parser.error("more --label than --tests")
    impls = IMPLS if args.against == "both" else (args.against,)
    sets = []
    saved = json.loads(args.from_json.read_text()) if args.from_json else {}
    for i, folder in enumerate(args.tests):
        folder = folder.resolve()
        if not (folder / "problems.py").exists():
            parser.error(f"--tests {folder}: no problems.py there; give a copy of torchdiffeq's tests/ folder")
        label = labels[i] if i < len(labels) else folder.name
        if saved:
            sets.append((label, folder, saved[label]))
            continue
        print(f"set {label}: {folder}", flush=True)
        sets.append((label, folder, {impl: run_set(folder, impl, args.files, args.timeout) for impl in impls}))
    if args.json:
        args.json.write_text(json.dumps({label: by_impl for label, _, by_impl in sets}))
    command = "python benchmarks/torchdiffeq_suite.py " + " ".join(
        a for a in argv if not a.startswith("--from-json") and a != str(args.from_json)
    )
    report = render(sets, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
