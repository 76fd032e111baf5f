"""Unit tests for the VNN-LIB parser in :mod:`verirepair.spec`."""

from __future__ import annotations

import gzip
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verirepair.errors import InputFileError, SpecError
from verirepair.spec import MAX_DNF_TERMS, load_spec, parse_vnnlib_text
from verirepair.spec_types import Halfspaces, Spec


def decls(n_in: int, n_out: int) -> str:
    """Declarations of X_0..X_{n_in-1} and Y_0..Y_{n_out-1}."""
    xs = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    ys = [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    return "\n".join(xs + ys) + "\n"


def box_text(lower: list[float], upper: list[float]) -> str:
    """Bounds as a conjunction of atoms (no surrounding assert)."""
    atoms = [f"(>= X_{i} {lo!r}) (<= X_{i} {hi!r})" for i, (lo, hi) in
             enumerate(zip(lower, upper))]
    return "(and " + " ".join(atoms) + ")"


def unit_box(n: int) -> str:
    return f"(assert {box_text([0.0] * n, [1.0] * n)})\n"


def rows_of(h: Halfspaces) -> list[tuple[list[float], float]]:
    return [(list(r), float(d)) for r, d in zip(h.matrix.tolist(), h.rhs.tolist())]


def parse_error(text: str, source: str = "prop.vnnlib") -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_vnnlib_text(text, source)
    return info.value


# --------------------------------------------------------------------------- happy paths

def test_simple_box_and_one_output_constraint() -> None:
    text = decls(2, 3) + """
(assert (>= X_0 -1)) (assert (<= X_0 1))
(assert (>= X_1 0.25)) (assert (<= X_1 0.5))
(assert (>= Y_1 2.5))
"""
    spec = parse_vnnlib_text(text, "s.vnnlib")
    assert (spec.n_inputs, spec.n_outputs, spec.source) == (2, 3, "s.vnnlib")
    (case,) = spec.cases
    np.testing.assert_array_equal(case.box.lower, [-1.0, 0.25])
    np.testing.assert_array_equal(case.box.upper, [1.0, 0.5])
    (poly,) = case.unsafe
    assert poly.matrix.shape == (1, 3)
    assert rows_of(poly) == [([0.0, -1.0, 0.0], -2.5)]
    assert poly.satisfied_by([0, 3, 0]) and not poly.satisfied_by([0, 2, 0])


def test_phi6_style_two_boxes_times_four_disjuncts() -> None:
    text = decls(2, 5) + f"""
(assert (or {box_text([0, 0.1], [1, 0.5])}
            {box_text([0, -0.5], [1, -0.1])}))
(assert (or (and (<= Y_1 Y_0)) (and (<= Y_2 Y_0)) (and (<= Y_3 Y_0)) (and (<= Y_4 Y_0))))
"""
    spec = parse_vnnlib_text(text)
    assert len(spec.cases) == 2
    np.testing.assert_array_equal(spec.cases[0].box.lower, [0, 0.1])
    np.testing.assert_array_equal(spec.cases[1].box.upper, [1, -0.1])
    for case in spec.cases:
        assert len(case.unsafe) == 4
        for k, poly in enumerate(case.unsafe, start=1):
            expected = [0.0] * 5
            expected[0], expected[k] = -1.0, 1.0
            assert rows_of(poly) == [(expected, 0.0)]


def test_phi7_style_or_of_ands() -> None:
    text = decls(1, 5) + unit_box(1) + """
(assert (or
    (and (<= Y_3 Y_0) (<= Y_3 Y_1) (<= Y_3 Y_2))
    (and (<= Y_4 Y_0) (<= Y_4 Y_1) (<= Y_4 Y_2))))
"""
    (case,) = parse_vnnlib_text(text).cases
    assert [p.matrix.shape for p in case.unsafe] == [(3, 5), (3, 5)]
    np.testing.assert_array_equal(case.unsafe[1].matrix[2], [0, 0, -1, 0, 1])
    np.testing.assert_array_equal(case.unsafe[0].rhs, [0, 0, 0])


def test_several_or_asserts_form_the_cross_product() -> None:
    text = decls(1, 2) + unit_box(1) + """
(assert (or (<= Y_0 1) (<= Y_1 2)))
(assert (or (<= Y_0 Y_1) (>= Y_1 3)))
"""
    (case,) = parse_vnnlib_text(text).cases
    assert [rows_of(p) for p in case.unsafe] == [
        [([1.0, 0.0], 1.0), ([1.0, -1.0], 0.0)],
        [([1.0, 0.0], 1.0), ([0.0, -1.0], -3.0)],
        [([0.0, 1.0], 2.0), ([1.0, -1.0], 0.0)],
        [([0.0, 1.0], 2.0), ([0.0, -1.0], -3.0)],
    ]


def test_nested_or_inside_and_is_distributed() -> None:
    text = decls(1, 2) + """
(assert (and (>= X_0 0) (<= X_0 1) (or (<= Y_0 0) (and (<= Y_1 0) (or (<= Y_0 5) (<= Y_1 6))))))
"""
    (case,) = parse_vnnlib_text(text).cases
    assert [len(p.rhs) for p in case.unsafe] == [1, 2, 2]


@pytest.mark.parametrize("literal, value", [
    ("1.5e-3", 1.5e-3), ("-2E+2", -200.0), ("3e2", 300.0), (".5", 0.5), ("5.", 5.0),
    ("-0.5", -0.5), ("+7", 7.0), ("0", 0.0), ("12345678901234567890", 1.2345678901234567e19),
])
def test_number_literals(literal: str, value: float) -> None:
    text = decls(1, 1) + f"(assert (<= X_0 {literal})) (assert (>= X_0 -1e30))\n"
    (case,) = parse_vnnlib_text(text).cases
    assert case.box.upper[0] == value


def test_comments_are_ignored_everywhere() -> None:
    text = """; header (with parens ( and ) inside a comment
(declare-const X_0 Real) ; trailing comment
(declare-const Y_0 Real);no space
(assert (<= X_0 ; comment inside an expression
   1))
; (assert (<= X_0 -5))
(assert (>= X_0 0)) (assert (<= Y_0 0)) ; done"""
    (case,) = parse_vnnlib_text(text).cases
    assert (case.box.lower[0], case.box.upper[0]) == (0.0, 1.0)


def test_linear_terms_are_linearised() -> None:
    text = decls(2, 3) + """
(assert (<= (* 2 X_0) 1)) (assert (>= X_0 -10))
(assert (>= (* X_0 -4) 4))
(assert (<= (- X_1) 3))
(assert (<= X_1 (+ 1 2 (* 0.5 4))))
(assert (<= (- Y_0 Y_1) 3))
(assert (<= (+ Y_0 Y_1 Y_1 1) 0))
(assert (>= (- Y_2 Y_0 Y_1) (* 2 3 Y_2)))
(assert (<= (* 2 (+ Y_0 (- Y_1 1))) 0))
"""
    (case,) = parse_vnnlib_text(text).cases
    assert case.box.lower.tolist() == [-10.0, -3.0]
    assert case.box.upper.tolist() == [-1.0, 5.0]
    assert rows_of(case.unsafe[0]) == [
        ([1.0, -1.0, 0.0], 3.0),
        ([1.0, 2.0, 0.0], -1.0),
        ([1.0, 1.0, 5.0], 0.0),
        ([2.0, 2.0, 0.0], 2.0),
    ]


def test_box_bounds_from_scaled_and_negated_variables() -> None:
    text = decls(1, 1) + "(assert (>= (* X_0 -4) 4)) (assert (>= (- X_0) 0.5))\n" \
        "(assert (<= (* -2 X_0) 10)) (assert (<= Y_0 0))\n"
    (case,) = parse_vnnlib_text(text).cases
    assert (case.box.lower[0], case.box.upper[0]) == (-5.0, -1.0)


def test_strict_and_equality_and_chains() -> None:
    text = decls(3, 2) + """
(assert (< X_0 1)) (assert (> X_0 0))
(assert (= X_1 0.5))
(assert (<= -1 X_2 2))
(assert (= Y_0 Y_1))
(assert (< Y_0 3))
"""
    (case,) = parse_vnnlib_text(text).cases
    assert case.box.lower.tolist() == [0.0, 0.5, -1.0]
    assert case.box.upper.tolist() == [1.0, 0.5, 2.0]
    assert rows_of(case.unsafe[0]) == [([1.0, -1.0], 0.0), ([-1.0, 1.0], 0.0), ([1.0, 0.0], 3.0)]


def test_multiple_bounds_are_intersected() -> None:
    text = decls(1, 1) + """
(assert (>= X_0 -3)) (assert (<= X_0 3)) (assert (>= X_0 -1)) (assert (<= X_0 5))
(assert (<= X_0 2)) (assert (>= X_0 -2)) (assert (<= Y_0 0))
"""
    (case,) = parse_vnnlib_text(text).cases
    assert (case.box.lower[0], case.box.upper[0]) == (-1.0, 2.0)


def test_constant_atoms_are_evaluated() -> None:
    text = decls(1, 1) + unit_box(1) + """
(assert (<= 1 2))
(assert (or (and (<= 2 1) (<= Y_0 7)) (and (<= Y_0 Y_0) (>= Y_0 1)) false))
(assert true)
"""
    (case,) = parse_vnnlib_text(text).cases
    assert [rows_of(p) for p in case.unsafe] == [[([-1.0], -1.0)]]


def test_unsatisfiable_output_gives_no_cases() -> None:
    spec = parse_vnnlib_text(decls(1, 1) + unit_box(1) + "(assert (<= 1 0))\n")
    assert spec.cases == ()


def test_term_without_output_atoms_makes_whole_box_unsafe() -> None:
    text = decls(2, 3) + unit_box(2)
    (case,) = parse_vnnlib_text(text).cases
    (poly,) = case.unsafe
    assert poly.matrix.shape == (0, 3) and poly.rhs.shape == (0,)
    assert poly.satisfied_by(np.zeros(3))


def test_cases_grouped_by_box_in_first_seen_order_and_deduplicated() -> None:
    b1, b2 = box_text([0.0], [1.0]), box_text([2.0], [3.0])
    text = decls(1, 2) + f"""
(assert (or (and {b2} (<= Y_0 0)) (and {b1} (<= Y_1 0)) (and {b2} (<= Y_1 0))
            (and {b2} (<= Y_0 0)) (and {b2} (>= X_0 2.0) (<= Y_0 0))))
"""
    spec = parse_vnnlib_text(text)
    assert [c.box.lower[0] for c in spec.cases] == [2.0, 0.0]
    assert [rows_of(p) for p in spec.cases[0].unsafe] == [[([1.0, 0.0], 0.0)],
                                                          [([0.0, 1.0], 0.0)]]
    assert len(spec.cases[1].unsafe) == 1


def test_housekeeping_commands_are_ignored() -> None:
    text = "(set-logic QF_LRA)\n" + decls(1, 1) + unit_box(1) + "(check-sat)\n(get-model)\n"
    assert len(parse_vnnlib_text(text).cases) == 1


def test_crlf_and_tabs() -> None:
    text = decls(1, 1).replace("\n", "\r\n") + "(assert\t(<= X_0 1))\r\n(assert (>= X_0 0))"
    assert parse_vnnlib_text(text).cases[0].box.upper[0] == 1.0


# --------------------------------------------------------------------------- files

def test_load_plain_and_gzip(tmp_path: Path) -> None:
    text = decls(1, 1) + unit_box(1) + "(assert (<= Y_0 0))\n"
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = load_spec(plain), load_spec(str(packed))
    assert a.source == str(plain) and b.source == str(packed)
    assert rows_of(a.cases[0].unsafe[0]) == rows_of(b.cases[0].unsafe[0])


def test_errors_in_files_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.vnnlib.gz"
    path.write_bytes(gzip.compress(b"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                                   b"  (assert (foo))"))
    with pytest.raises(SpecError, match=re.escape(f"{path}:3:12: unknown operator 'foo'")):
        load_spec(path)


@pytest.mark.parametrize("name, content, word", [
    ("missing.vnnlib", None, "No such file"),
    ("notgz.vnnlib.gz", b"(declare-const X_0 Real)", "not a gzip file"),
    ("trunc.vnnlib.gz", gzip.compress(b"(declare-const X_0 Real)" * 50)[:30], "cannot read"),
    ("binary.vnnlib", b"\xff\xfe\x00garbage", "UTF-8"),
])
def test_unreadable_files(tmp_path: Path, name: str, content: bytes | None, word: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message and word in message and "\n" not in message


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot read property file"):
        load_spec(tmp_path)


# --------------------------------------------------------------------------- errors

D = decls(2, 2)  # 4 lines; user text starts on line 5
BOX = "(assert (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)))\n"  # line 5

ERROR_CASES = [
    # (text, line, column, words that must appear)
    (D + BOX + "(assert (<= Y_0 1)", 6, 1, ["expected ')'"]),
    (D + BOX + "(assert (<= Y_0 1)))", 6, 20, ["unexpected ')'"]),
    (D + BOX + "(assert (<= Y_0 foo))", 6, 17, ["unknown symbol", "'foo'"]),
    (D + BOX + "(assert (<= Y_0 X_7))", 6, 17, ["undeclared", "X_7"]),
    (D + BOX + "(assert (<= Y_5 0))", 6, 13, ["undeclared", "Y_5"]),
    (D + "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0))", 5, 1,
     ["X_1 has no upper bound"]),
    (D + "(assert (<= X_0 0)) (assert (<= X_0 1)) (assert (<= X_1 0) )", 5, 1,
     ["X_0 has no lower bound"]),
    (D + "(assert (>= X_0 0)) (assert (<= X_0 1))\n(assert (>= X_1 0.75))\n"
     "  (assert (<= X_1 0.25))", 7, 11, ["empty box", "X_1", "0.75", "0.25"]),
    (D + BOX + "(assert (<= Y_0 1e999))", 6, 17, ["non-finite", "1e999"]),
    (D + BOX + "(assert (<= Y_0 inf))", 6, 17, ["non-finite"]),
    (D + BOX + "(assert (<= Y_0 NaN))", 6, 17, ["non-finite"]),
    (D + BOX + "(assert (not (<= Y_0 1)))", 6, 10, ["unknown operator", "'not'"]),
    (D + BOX + "(assert (<= (/ Y_0 2) 1))", 6, 14, ["unknown operator", "'/'"]),
    (D + BOX + "(assert (<= Y_0 1)) garbage", 6, 21, ["unexpected token", "garbage"]),
    (D + BOX + "(assert (<= (* Y_0 Y_1) 1))", 6, 13, ["nonlinear"]),
    (D + BOX + "(assert (<= X_0 Y_1))", 6, 9, ["unsupported", "mixing"]),
    (D + BOX + "(assert (<= (+ X_0 X_1) 1))", 6, 9, ["unsupported", "several input"]),
    (D + BOX + "(assert (<= Y_0))", 6, 9, ["at least two"]),
    (D + BOX + "(assert (<= Y_0 1) (<= Y_1 1))", 6, 1, ["exactly one"]),
    (D + BOX + "(assert Y_0)", 6, 9, ["expected a formula"]),
    (D + BOX + "(push 1)", 6, 2, ["unknown command", "push"]),
    (D + BOX + "(assert ((<= Y_0 1)))", 6, 9, ["operator"]),
    ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)", 2, 16,
     ["X_2", "X_1 is missing"]),
    ("(declare-const X_0 Real)\n(declare-const X_0 Real)", 2, 16, ["declared twice"]),
    ("(declare-const X_0 Int)", 1, 20, ["sort", "Int"]),
    ("(declare-const Z_0 Real)", 1, 16, ["unsupported variable name", "Z_0"]),
    ("(declare-const X_01 Real)", 1, 16, ["unsupported variable name"]),
    ("(declare-const X_0)", 1, 1, ["declare-const NAME Real"]),
    ("(declare-const Y_0 Real)\n", 2, 1, ["no X_i variables"]),
    ("(declare-const X_0 Real)", 1, 25, ["no Y_i variables"]),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\n  )", 4, 3, ["unexpected ')'"]),
]


@pytest.mark.parametrize("text, line, col, words", ERROR_CASES)
def test_error_messages_are_located(text: str, line: int, col: int, words: list[str]) -> None:
    err = parse_error(text)
    message = str(err)
    assert message.startswith(f"prop.vnnlib:{line}:{col}: "), message
    assert (err.path, err.line, err.column) == ("prop.vnnlib", line, col)
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_dnf_blow_up_is_refused() -> None:
    ors = "".join(f"(assert (or (<= Y_0 {k}) (<= Y_1 {k})))\n" for k in range(17))
    err = parse_error(D + BOX + ors)
    assert 2 ** 17 > MAX_DNF_TERMS
    assert "disjunctive normal form" in str(err) and ":5:1:" in str(err)


def test_dnf_blow_up_inside_one_formula_is_refused() -> None:
    inner = " ".join(f"(or (<= Y_0 {k}) (<= Y_1 {k}) (<= Y_0 -{k}))" for k in range(11))
    err = parse_error(D + BOX + f"(assert\n  (and {inner}))")
    assert "disjunctive normal form" in str(err) and ":7:3:" in str(err)


def test_no_bound_error_names_the_disjunct() -> None:
    text = D + "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))" \
               " (and (>= X_0 0) (<= X_0 1) (>= X_1 0))))"
    assert "X_1 has no upper bound (in disjunct 2 of 2" in str(parse_error(text))


def test_deep_nesting_does_not_crash() -> None:
    depth = 20_000
    text = D + BOX + "(assert " + "(and " * depth + "(<= Y_0 1)" + ")" * depth + ")"
    err = parse_error(text)
    assert "nested too deeply" in str(err) and ":6:1:" in str(err)


def test_unclosed_deep_nesting_reports_innermost_open_paren() -> None:
    err = parse_error(D + "(" * 50_000)
    assert ":5:50000:" in str(err) and "expected ')'" in str(err)


# --------------------------------------------------------------------------- scale

def test_large_file_parses_quickly() -> None:
    n_in, n_boxes = 784, 300
    lines = [decls(n_in, 10)]
    lines += [f"(assert (>= X_{i} {i * 1e-3!r}))\n(assert (<= X_{i} {i * 1e-3 + 0.5!r}))"
              for i in range(1, n_in)]
    lines.append("(assert (or " + " ".join(
        f"(and (>= X_0 {k}.0) (<= X_0 {k}.5))" for k in range(n_boxes)) + "))")
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_0))" for j in range(1, 10)) + "))")
    start = time.process_time()  # CPU time: a busy machine must not fail the test
    spec = parse_vnnlib_text("\n".join(lines))
    elapsed = time.process_time() - start
    assert len(spec.cases) == n_boxes and all(len(c.unsafe) == 9 for c in spec.cases)
    assert spec.cases[7].box.lower[0] == 7.0 and spec.cases[7].box.upper[783] == 0.783 + 0.5
    assert elapsed < 10.0  # a quadratic parser takes minutes here


# --------------------------------------------------------------------------- round trip

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
nonzero = finite.filter(lambda v: v != 0.0)


@st.composite
def specs(draw: st.DrawFn) -> tuple[int, int, list]:
    """Random cases: distinct boxes, each with distinct lists of output rows."""
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    interval = st.tuples(finite, finite).map(sorted).map(tuple)
    boxes = draw(st.lists(st.tuples(*[interval] * n_in), min_size=1, max_size=3, unique=True))
    row = st.tuples(st.lists(st.tuples(st.integers(0, n_out - 1), nonzero), min_size=1,
                             max_size=3, unique_by=lambda t: t[0]), finite, st.booleans())
    polys = st.lists(st.lists(row, max_size=3), min_size=1, max_size=3,
                     unique_by=lambda p: tuple((tuple(sorted(r[0])), r[1]) for r in p))
    return n_in, n_out, [(box, draw(polys)) for box in boxes]


def render_row(row: tuple) -> str:
    coefs, rhs, flipped = row
    term = "(+ " + " ".join(f"(* {c!r} Y_{j})" for j, c in coefs) + ")"
    return f"(>= {rhs!r} {term})" if flipped else f"(<= {term} {rhs!r})"


def render(n_in: int, n_out: int, cases: list) -> str:
    disjuncts = []
    for box, polys in cases:
        lower, upper = [lo for lo, _ in box], [hi for _, hi in box]
        outs = " ".join("(and " + " ".join(render_row(r) for r in p) + ")" for p in polys)
        disjuncts.append(f"(and {box_text(lower, upper)} (or {outs}))")
    return decls(n_in, n_out) + "(assert (or\n  " + "\n  ".join(disjuncts) + "))\n"


@settings(max_examples=150, deadline=None)
@given(specs())
def test_round_trip(data: tuple[int, int, list]) -> None:
    n_in, n_out, cases = data
    spec: Spec = parse_vnnlib_text(render(n_in, n_out, cases))
    assert (spec.n_inputs, spec.n_outputs, len(spec.cases)) == (n_in, n_out, len(cases))
    for case, (box, polys) in zip(spec.cases, cases):
        assert case.box.lower.tolist() == [lo for lo, _ in box]
        assert case.box.upper.tolist() == [hi for _, hi in box]
        assert len(case.unsafe) == len(polys)
        for got, rows in zip(case.unsafe, polys):
            assert got.matrix.shape == (len(rows), n_out)
            for r, (coefs, rhs, _) in enumerate(rows):
                expected = np.zeros(n_out)
                for j, c in coefs:
                    expected[j] = c
                assert got.matrix[r].tolist() == expected.tolist()
                assert got.rhs[r] == rhs


def test_overflowing_coefficients_are_refused() -> None:
    err = parse_error(D + BOX + "(assert (<= (+ (* 1e308 Y_0) (* 1e308 Y_0)) 1))")
    assert "coefficient or constant after linearisation is non-finite" in str(err)
    assert ":6:9:" in str(err)


@pytest.mark.parametrize("text, words", [
    # a coefficient that would round to 0 would drop its variable from the row: Y_0 >= 0
    # would read 0 >= 0 (every output unsafe)
    (D + BOX + "(assert (>= (* 1e-400 Y_0) 0))", ["linearisation", "would become 0"]),
    (D + BOX + "(assert (>= (* 1e-200 1e-200 Y_0) 0))", ["linearisation", "become 0"]),
    # X_0 <= 1e400 exactly: no float64 bound says that
    (D + "(assert (<= (* 1e-300 X_0) 1e100)) (assert (>= X_0 0))"
     "(assert (>= X_1 0)) (assert (<= X_1 1)) (assert (>= Y_0 0))",
     ["X_0's upper bound is non-finite"]),
    # Python's Fraction refuses more than 4300 digits: one line, not a traceback
    (D + BOX + "(assert (>= Y_0 1" + "0" * 5000 + "))", ["too many digits"]),
    # Fraction would build 10**999999999 (gigabytes) before any range check
    (D + BOX + "(assert (>= Y_0 1e999999999))", ["'1e999999999'", "exponent"]),
    (D + BOX + "(assert (>= Y_0 1e-999999999))", ["'1e-999999999'", "exponent"]),
    # only ASCII digits: "1" followed by an Arabic-Indic zero is no number, X_1٠ no name
    (D + "(assert (>= X_0 0)) (assert (<= X_0 1\u0660))" + BOX, ["unknown symbol"]),
    (D + BOX + "(assert (>= Y_1\u0660 0))", ["unknown symbol"]),
])
def test_numbers_that_float64_cannot_hold_are_refused(text: str, words: list[str]) -> None:
    err = str(parse_error(text))
    assert all(w in err for w in words), err


def test_a_constant_comparison_is_decided_exactly_even_below_float64() -> None:
    tiny = "0.1" + "0" * 400 + "1"  # exceeds 0.1 by 1e-401: no float64 tells them apart
    spec = parse_vnnlib_text(D + BOX + f"(assert (<= 0.1 {tiny})) (assert (<= Y_0 1))")
    assert len(spec.cases) == 1
    assert parse_vnnlib_text(D + BOX + f"(assert (>= 0.1 {tiny})) (assert (<= Y_0 1))"
                             ).cases == ()


def test_bounds_and_right_hand_sides_below_float64_become_0() -> None:
    """Unlike a coefficient, a bound or right-hand side that underflows keeps its meaning
    up to the nearest-float64 reading every number gets: X_0 >= 1e-330 reads X_0 >= 0."""
    spec = parse_vnnlib_text(D + "(assert (<= X_0 1e-300)) (assert (>= (* 1e300 X_0) 1e-30))"
                             "(assert (>= X_1 0)) (assert (<= X_1 1)) (assert (<= Y_0 1e-400))")
    (case,) = spec.cases
    assert case.box.lower.tolist() == [0.0, 0.0] and case.box.upper[0] == 1e-300
    assert case.unsafe[0].rhs.tolist() == [0.0]


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.vnnlib"
    path.write_bytes(b"\xef\xbb\xbf" + (D + BOX + "(assert (<= Y_0 1))").encode())
    assert len(load_spec(path).cases) == 1


# ------------------------------------------------ exact constants and strict comparisons

def test_constant_arithmetic_is_exact() -> None:
    """(+ 1e20 3 -1e20) is 3 (float64 arithmetic gave 0 and a wrong 'holds')."""
    spec = parse_vnnlib_text(D + "(assert (>= X_0 0))(assert (<= X_0 (+ 1e20 3 -1e20)))"
                             "(assert (>= X_1 0))(assert (<= X_1 1))"
                             "(assert (<= (+ Y_0 1e20) (+ 1e20 3)))")
    assert spec.cases[0].box.upper[0] == 3.0
    rows = spec.cases[0].unsafe[0]
    assert rows.matrix[0, 0] == 1.0 and rows.rhs[0] == 3.0
    spec = parse_vnnlib_text(D + "(assert (>= X_0 0))(assert (<= (* 0.1 X_0) 0.3))"
                             "(assert (>= X_1 0))(assert (<= X_1 1))(assert (<= Y_0 0))")
    assert spec.cases[0].box.upper[0] == 3.0  # 0.3 / 0.1 exactly


def test_strict_comparisons_are_marked_and_honoured() -> None:
    spec = parse_vnnlib_text(D + "(assert (> X_0 0))(assert (<= X_0 1))"
                             "(assert (>= X_1 0))(assert (< X_1 1))(assert (< Y_0 0))")
    box, rows = spec.cases[0].box, spec.cases[0].unsafe[0]
    np.testing.assert_array_equal(box.lower, [0, 0])  # verified as the closed box
    np.testing.assert_array_equal(box.strict_lower, [True, False])
    np.testing.assert_array_equal(box.strict_upper, [False, True])
    assert not box.contains(np.array([0.0, 0.5])) and box.contains(np.array([1e-30, 0.5]))
    assert not box.contains(np.array([0.5, 1.0]))
    assert rows.strict is not None and rows.strict.all()
    assert not rows.satisfied_by(np.array([0.0, 5.0]))
    assert rows.satisfied_by(np.array([-1e-30, 5.0]))
    # a strict and a non-strict bound at the same value: the strict one wins
    spec = parse_vnnlib_text(D + "(assert (>= X_0 0))(assert (> X_0 0))(assert (<= X_0 1))"
                             "(assert (>= X_1 0))(assert (<= X_1 1))(assert (<= Y_0 0))")
    assert spec.cases[0].box.strict_lower[0] and spec.cases[0].unsafe[0].strict is None


def test_constants_are_read_as_the_nearest_float64() -> None:
    """As every VNN-COMP tool reads them: a float32 value written as its shortest decimal
    is that float32 value (a fixed input must admit it), and fl(0.3) satisfies
    X_0 >= 0.3 although it is a hair below 0.3."""
    f32 = float(np.float32(0.1))  # 0.10000000149011612
    spec = parse_vnnlib_text(D + "(assert (>= X_0 0.3))(assert (<= X_0 0.7))"
                             f"(assert (>= X_1 {f32!r}))(assert (<= X_1 {f32!r}))"
                             "(assert (<= Y_0 0.1))")
    box, rows = spec.cases[0].box, spec.cases[0].unsafe[0]
    assert box.lower[1] == box.upper[1] == f32 and box.contains(np.array([0.5, f32]))
    assert box.contains(np.array([0.3, f32]))
    assert not box.contains(np.array([np.nextafter(0.3, -np.inf), f32]))
    assert rows.satisfied_by(np.array([0.1, 0.0]))
    assert not rows.satisfied_by(np.array([np.nextafter(0.1, np.inf), 0.0]))
    assert not rows.satisfied_by(np.array([np.nan, 0.0]))
    assert not rows.satisfied_by(np.array([-np.inf, 0.0]))  # non-finite outputs never count


def test_rows_are_summed_exactly() -> None:
    """Y_0 - Y_1 <= 2^30 at y = (2^30, -2^-30): float64 rounds the sum to 2^30 (inside);
    exactly it is 2^30 + 2^-30 (outside)."""
    spec = parse_vnnlib_text(D + "(assert (>= X_0 0))(assert (<= X_0 1))"
                             "(assert (>= X_1 0))(assert (<= X_1 1))"
                             "(assert (<= (- Y_0 Y_1) 1073741824))")
    rows = spec.cases[0].unsafe[0]
    y = np.array([2.0 ** 30, -(2.0 ** -30)], dtype=np.float32)
    assert float(rows.matrix[0] @ y.astype(np.float64)) <= rows.rhs[0]  # float64 says yes
    assert not rows.satisfied_by(y)
    assert rows.satisfied_by(np.array([2.0 ** 30, 0.0]))


def test_a_disjunct_with_an_empty_box_is_dropped() -> None:
    """[0, 3] and (X_0 <= 1 or X_0 >= 5): the second box is empty, the first remains."""
    spec = parse_vnnlib_text(D + "(assert (>= X_0 0))(assert (<= X_0 3))"
                             "(assert (>= X_1 0))(assert (<= X_1 1))"
                             "(assert (or (<= X_0 1) (>= X_0 5)))(assert (>= Y_0 0.5))")
    assert len(spec.cases) == 1 and spec.cases[0].box.upper[0] == 1.0
    err = parse_error(D + "(assert (>= X_0 4))(assert (<= X_0 3))"
                      "(assert (>= X_1 0))(assert (<= X_1 1))(assert (>= Y_0 0.5))")
    assert "empty box" in str(err) and "np.float64" not in str(err)
