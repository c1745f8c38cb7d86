"""The counting of benchmarks/torchdiffeq_suite.py on a synthetic unittest file (no torchdiffeq files needed)."""

from __future__ import annotations

import textwrap

from benchmarks.torchdiffeq_suite import group_failures, mask_numbers, run_file, span, tally

SYNTHETIC = textwrap.dedent(
    """
    import unittest


    class TestSubtests(unittest.TestCase):
        def test_loop(self):
            for method in ("a", "b", "c", "d"):
                for dtype in ("f32", "f64"):
                    with self.subTest(method=method, dtype=dtype):
                        if method == "b":
                            self.assertLess(1.5 if dtype == "f32" else 2.5, 1.0)
                        if method == "c":
                            raise RuntimeError("solver gave up at t=0.25\\nsecond line")

        def test_error_after_subtests(self):
            with self.subTest(k=1):
                pass
            raise KeyError("boom")


    class TestPlain(unittest.TestCase):
        def test_passes(self):
            pass

        def test_fails(self):
            self.assertEqual(1, 2)

        @unittest.skip("not here")
        def test_skipped(self):
            pass
    """
)


def test_runner_counts_subtests_methods_and_groups(tmp_path):
    path = tmp_path / "synthetic_tests.py"
    path.write_text(SYNTHETIC)
    out = run_file(path, impl=None)
    assert out["import_error"] is None
    cases = out["cases"]
    # test_loop: 8 subtests, a and d pass (4), b fails (2), c errs (2); test_error_after_subtests: one
    # passing subtest and an error outside it; TestPlain: one pass, one failure, one skip.
    assert tally(cases) == {"passed": 4 + 1 + 1, "failed": 2 + 1, "errors": 2 + 1, "skipped": 1}
    loop = [c for c in cases if c["test"] == "TestSubtests.test_loop"]
    assert len(loop) == 8 and {c["params"] for c in loop} >= {"method=a, dtype=f32", "method=d, dtype=f64"}

    groups = {(g.test, g.error): g for g in group_failures(cases)}
    assert len(groups) == 4
    b = groups[("TestSubtests.test_loop", "AssertionError")]
    # 1.5 and 2.5 differ only in the number: one group of two cases.
    assert (b.count, b.status, b.message) == (2, "failed", "# not less than #")
    assert span(b.params) == "method = b; dtype ∈ {f32, f64}"
    c = groups[("TestSubtests.test_loop", "RuntimeError")]
    assert (c.count, c.status, c.example) == (2, "errors", "solver gave up at t=0.25")
    outside = groups[("TestSubtests.test_error_after_subtests", "KeyError")]
    assert outside.params == ["(outside subTest)"] and span(outside.params) == "outside the subtests"
    assert groups[("TestPlain.test_fails", "AssertionError")].params == [""]


def test_runner_reports_a_file_that_does_not_import(tmp_path):
    path = tmp_path / "broken_tests.py"
    path.write_text("from problems_of_another_suite import construct_problem\n")
    out = run_file(path, impl=None)
    assert out["cases"] == [] and out["import_error"].startswith(
        "ModuleNotFoundError: No module named 'problems_of_another_suite'"
    )


def test_mask_numbers():
    assert (
        mask_numbers("tensor(0.0031) not less than 1e-3 at t=-2.5, step 12")
        == "tensor(#) not less than # at t=#, step #"
    )
