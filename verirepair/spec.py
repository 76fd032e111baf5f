"""A VNN-LIB 1.0 parser for the dialect used by VNN-COMP.

The file describes the UNSAFE set: the property is violated iff some input ``x``
and output ``y = f(x)`` satisfy every ``assert``. Supported subset:

* comments ``;`` to end of line;
* ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; the indices of each
  kind must be exactly ``0..n-1``;
* ``(assert F)`` with ``F`` built from ``and``, ``or``, ``true``, ``false`` and the
  comparisons ``<=``, ``>=``, ``<``, ``>``, ``=`` (chains like ``(<= a b c)`` mean
  ``a <= b and b <= c``) over linear terms: numbers, variables, ``+``, ``-`` and
  ``*`` with at most one non-constant factor.

Strict comparisons are verified as non-strict. This only enlarges the unsafe set (by
its boundary), so a verdict "property holds" computed on the parsed spec remains
sound for the original file; the strict rows and bounds are marked (``Halfspaces.strict``,
``Box.strict_lower/upper``) so that a counterexample must satisfy them strictly.

Arithmetic on constants is exact (rational numbers), so ``(+ 1e20 3 -1e20)`` is 3, not
0 as in float64. Only the final coefficients, right-hand sides and bounds are rounded to
the nearest float64, as every VNN-COMP tool reads a plain number: a relative error of
at most 2^-53, which the verifier's bound margins (1e-10 relative) absorb. The parsed
(float64) property is the one decided, also for counterexamples: a float32 value
written as its shortest decimal (``0.10000000149011612``) is that float32 value, as for
every VNN-COMP tool; its rows are then evaluated exactly (``Halfspaces.satisfied_by``).

The conjunction of all asserts is converted to disjunctive normal form. In each
DNF term the input atoms must be single-variable bounds (they define a box) and the
output atoms become rows ``c @ y <= d``. Terms are grouped by identical box into one
:class:`SpecCase` each. The SMT-LIB housekeeping commands ``check-sat``,
``get-model``, ``set-logic``, ``set-info``, ``set-option`` and ``exit`` are ignored.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np

from verirepair.errors import InputFileError, SpecError
from verirepair.spec_types import Box, Halfspaces, Spec, SpecCase

__all__ = ["parse_vnnlib_text", "load_spec", "MAX_DNF_TERMS"]

#: Upper limit on the number of DNF terms before the parser gives up.
MAX_DNF_TERMS = 100_000

_TOKEN_RE = re.compile(
    r"(?P<nl>\n)|(?P<ws>[^\S\n]+)|(?P<comment>;[^\n]*)"
    r"|(?P<lp>\()|(?P<rp>\))|(?P<atom>[^\s();]+)"
)
# ASCII digits only: Python's \d also matches other scripts' digits ("1٠" is not ten)
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?\Z", re.ASCII)
_VAR_RE = re.compile(r"([XY])_(0|[1-9]\d*)\Z", re.ASCII)
# A literal's exponent beyond this is refused before Fraction builds 10**exponent (a
# 12-character "1e999999999" would take gigabytes); every finite nonzero float64 needs
# far less.
MAX_EXPONENT_DIGITS = 6
_IGNORED_COMMANDS = frozenset(
    {"check-sat", "get-model", "set-logic", "set-info", "set-option", "exit"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})

VarKey = tuple[str, int]  # ("X", i) or ("Y", j)


# --------------------------------------------------------------------------- s-expressions

@dataclass(frozen=True)
class SAtom:
    """A symbol or numeral with its 1-based source position."""

    text: str
    line: int
    col: int


@dataclass(frozen=True)
class SList:
    """A parenthesised list; ``line``/``col`` locate its opening parenthesis."""

    items: tuple["SExpr", ...]
    line: int
    col: int


SExpr = Union[SAtom, SList]


class _EmptyBox(SpecError):
    """A DNF term whose input bounds admit no input."""


class _Ctx:
    """Parsing context: the source name, used to build located :class:`SpecError`s."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, message: str, node: SExpr | None = None,
              line: int = 1, col: int = 1, kind: type[SpecError] = SpecError) -> SpecError:
        if node is not None:
            line, col = node.line, node.col
        return kind(message, self.source, line, col)


def _read_sexprs(text: str, ctx: _Ctx) -> tuple[list[SExpr], tuple[int, int]]:
    """Tokenise and build the top-level s-expressions with an explicit stack.

    Runs in linear time. Returns the expressions and the end-of-file position.
    """
    stack: list[tuple[list[SExpr], int, int]] = [([], 0, 0)]
    line, line_start = 1, 0
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        col = m.start() - line_start + 1
        if kind == "nl":
            line, line_start = line + 1, m.end()
        elif kind == "lp":
            stack.append(([], line, col))
        elif kind == "rp":
            if len(stack) == 1:
                raise ctx.error("unexpected ')' with no matching '('", line=line, col=col)
            items, oline, ocol = stack.pop()
            stack[-1][0].append(SList(tuple(items), oline, ocol))
        elif kind == "atom":
            stack[-1][0].append(SAtom(m.group(), line, col))
    if len(stack) > 1:
        _, oline, ocol = stack[-1]
        raise ctx.error("expected ')' to close this '(' before end of file",
                        line=oline, col=ocol)
    return stack[0][0], (line, len(text) - line_start + 1)


# --------------------------------------------------------------------------- linear terms

ZERO, ONE = Fraction(0), Fraction(1)


@dataclass(frozen=True)
class _Linear:
    """``sum(coefs[v] * v) + const``, exact (rational)."""

    coefs: dict[VarKey, Fraction]
    const: Fraction

    def scaled(self, factor: Fraction) -> "_Linear":
        return _Linear({k: v * factor for k, v in self.coefs.items()}, self.const * factor)


def _add(terms: list[_Linear]) -> _Linear:
    coefs: dict[VarKey, Fraction] = {}
    const = ZERO
    for t in terms:
        const += t.const
        for k, v in t.coefs.items():
            coefs[k] = coefs.get(k, ZERO) + v
    return _Linear({k: v for k, v in coefs.items() if v != 0}, const)


@dataclass(frozen=True)
class _Atom:
    """A linearised constraint ``sum(coefs[v] * v) <= rhs`` (``<`` when ``strict``),
    exact, with its source node."""

    coefs: dict[VarKey, Fraction]
    rhs: Fraction
    node: SExpr
    strict: bool = False


def _to_float(q: Fraction) -> float:
    """``q`` as the nearest float64. Raises OverflowError beyond the float64 range."""
    f = float(q)  # OverflowError when far too large
    if not math.isfinite(f):
        raise OverflowError
    return f + 0.0  # "+ 0.0" turns -0.0 into 0.0


def _coefficient_float(q: Fraction) -> float:
    """A variable's coefficient as the nearest float64; OverflowError also when a nonzero
    coefficient would round to 0 (the variable would drop out of the constraint: Y_0 >= 0
    would read 0 >= 0)."""
    f = _to_float(q)
    if f == 0.0 and q != 0:
        raise OverflowError
    return f


def _out_of_range(q: Fraction) -> str:
    """Why a number was refused."""
    return "non-finite (beyond the float64 range)" if abs(q) >= 1 else \
        "a coefficient below the float64 range (it would become 0)"


_Chunk = tuple[_Atom, ...]  # a conjunction of atoms, shared between DNF terms
_Term = tuple[_Chunk, ...]  # a conjunction of chunks (cheap to concatenate)
_Dnf = list[_Term]  # a disjunction of conjunctions


class _Parser:
    """Turns the s-expressions of one file into declarations and a DNF."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.declared: dict[VarKey, SAtom] = {}
        self.asserts: list[SList] = []

    # ---- commands

    def command(self, expr: SExpr) -> None:
        """Process one top-level command."""
        if isinstance(expr, SAtom):
            raise self.ctx.error(f"unexpected token '{expr.text}' at top level "
                                 "(expected a command in parentheses)", expr)
        head = self._head(expr, "a command")
        if head == "declare-const":
            self._declare(expr)
        elif head == "assert":
            if len(expr.items) != 2:
                raise self.ctx.error("'assert' takes exactly one formula", expr)
            self.asserts.append(expr)
        elif head not in _IGNORED_COMMANDS:
            raise self.ctx.error(f"unknown command '{head}'", expr.items[0])

    def _head(self, expr: SList, what: str) -> str:
        if not expr.items or not isinstance(expr.items[0], SAtom):
            raise self.ctx.error(f"expected {what} starting with an operator name", expr)
        return expr.items[0].text

    def _declare(self, expr: SList) -> None:
        if len(expr.items) != 3 or not all(isinstance(i, SAtom) for i in expr.items):
            raise self.ctx.error("expected '(declare-const NAME Real)'", expr)
        name, sort = expr.items[1], expr.items[2]
        assert isinstance(name, SAtom) and isinstance(sort, SAtom)
        m = _VAR_RE.match(name.text)
        if m is None:
            raise self.ctx.error(f"unsupported variable name '{name.text}' "
                                 "(expected X_i for inputs or Y_j for outputs)", name)
        if sort.text != "Real":
            raise self.ctx.error(f"unsupported sort '{sort.text}' for {name.text} "
                                 "(only Real)", sort)
        key = (m.group(1), int(m.group(2)))
        if key in self.declared:
            first = self.declared[key]
            raise self.ctx.error(f"variable {name.text} declared twice "
                                 f"(first at line {first.line})", name)
        self.declared[key] = name

    # ---- terms

    def term(self, expr: SExpr) -> _Linear:
        """Evaluate a linear term."""
        if isinstance(expr, SAtom):
            return self._atom_term(expr)
        op = self._head(expr, "a term")
        if op not in ("+", "-", "*"):
            raise self.ctx.error(f"unknown operator '{op}' in term", expr.items[0])
        args = [self.term(a) for a in expr.items[1:]]
        if not args:
            raise self.ctx.error(f"'{op}' needs at least one argument", expr)
        if op == "+":
            return _add(args)
        if op == "-":
            if len(args) == 1:
                return args[0].scaled(-ONE)
            return _add([args[0]] + [a.scaled(-ONE) for a in args[1:]])
        return self._product(expr, args)

    def _product(self, expr: SList, args: list[_Linear]) -> _Linear:
        """``(* ...)`` with at most one non-constant factor."""
        factor = ONE
        linear: _Linear | None = None
        for a in args:
            if not a.coefs:
                factor *= a.const
            elif linear is None:
                linear = a
            else:
                raise self.ctx.error("nonlinear product of variables is not supported", expr)
        if linear is None:
            return _Linear({}, factor)
        scaled = linear.scaled(factor)
        return _Linear({k: v for k, v in scaled.coefs.items() if v != 0}, scaled.const)

    def _atom_term(self, atom: SAtom) -> _Linear:
        text = atom.text
        number = _NUMBER_RE.match(text)
        if number:
            exponent = (number.group(1) or "").lstrip("+-").lstrip("0")
            if len(exponent) > MAX_EXPONENT_DIGITS:
                raise self.ctx.error(f"number '{text}' has an exponent far beyond the "
                                     "float64 range", atom)
            try:
                value = Fraction(text)
            except ValueError:  # Python refuses integers of more than 4300 digits
                raise self.ctx.error(f"number '{text[:20]}...' has too many digits",
                                     atom) from None
            try:
                _to_float(value)
            except OverflowError:
                raise self.ctx.error(f"number '{text}' is {_out_of_range(value)}",
                                     atom) from None
            return _Linear({}, value)
        m = _VAR_RE.match(text)
        if m is not None:
            key = (m.group(1), int(m.group(2)))
            if key not in self.declared:
                raise self.ctx.error(f"undeclared variable '{text}'", atom)
            return _Linear({key: ONE}, ZERO)
        if _is_non_finite_literal(text):
            raise self.ctx.error(f"non-finite number '{text}'", atom)
        raise self.ctx.error(f"unknown symbol '{text}'", atom)

    # ---- formulas

    def formula(self, expr: SExpr) -> _Dnf:
        """Convert a formula to DNF (list of conjunctions of atoms)."""
        if isinstance(expr, SAtom):
            if expr.text == "true":
                return [()]
            if expr.text == "false":
                return []
            raise self.ctx.error(f"expected a formula, got '{expr.text}'", expr)
        op = self._head(expr, "a formula")
        children = expr.items[1:]
        if op == "and":
            return self.conjoin([self.formula(c) for c in children], expr)
        if op == "or":
            return self._disjoin([self.formula(c) for c in children], expr)
        if op in _COMPARISONS:
            return self._comparison(op, expr)
        raise self.ctx.error(f"unknown operator '{op}' in formula", expr.items[0])

    def _disjoin(self, parts: list[_Dnf], node: SList) -> _Dnf:
        total = sum(len(p) for p in parts)
        self._check_size(total, node)
        return [t for p in parts for t in p]

    def conjoin(self, parts: list[_Dnf], node: SExpr) -> _Dnf:
        """Cross product of DNFs; single-term parts are merged first (linear time)."""
        if any(not p for p in parts):
            return []
        common: list[_Atom] = []
        multi: list[_Dnf] = []
        for p in parts:
            if len(p) == 1:
                for chunk in p[0]:
                    common.extend(chunk)
            else:
                multi.append(p)
        total = 1
        for p in multi:
            total *= len(p)
            self._check_size(total, node)
        result: _Dnf = [(tuple(common),) if common else ()]
        for p in multi:
            result = [a + b for a in result for b in p]
        return result

    def _check_size(self, count: int, node: SExpr) -> None:
        if count > MAX_DNF_TERMS:
            raise self.ctx.error(f"formula expands to more than {MAX_DNF_TERMS} "
                                 "disjuncts in disjunctive normal form", node)

    def _comparison(self, op: str, expr: SList) -> _Dnf:
        args = [self.term(a) for a in expr.items[1:]]
        if len(args) < 2:
            raise self.ctx.error(f"'{op}' needs at least two arguments", expr)
        atoms: list[_Atom] = []
        strict = op in ("<", ">")
        for lhs, rhs in zip(args, args[1:]):
            if op in ("<=", "<", "="):
                atoms.append(_le(lhs, rhs, expr, strict))
            if op in (">=", ">", "="):
                atoms.append(_le(rhs, lhs, expr, strict))
        kept: list[_Atom] = []
        for atom in atoms:
            if not atom.coefs:  # decided exactly
                if ZERO < atom.rhs or (ZERO == atom.rhs and not atom.strict):
                    continue  # constant true
                return []  # constant false: the whole conjunction is empty
            for value, convert in ((atom.rhs, _to_float),
                                   *((c, _coefficient_float) for c in atom.coefs.values())):
                try:
                    convert(value)
                except OverflowError:
                    raise self.ctx.error("a coefficient or constant after linearisation is "
                                         f"{_out_of_range(value)}", expr) from None
            self._classify(atom)
            kept.append(atom)
        return [(tuple(kept),) if kept else ()]

    def _classify(self, atom: _Atom) -> None:
        kinds = {k for k, _ in atom.coefs}
        if kinds == {"X", "Y"}:
            raise self.ctx.error("unsupported constraint mixing input (X) and output (Y) "
                                 "variables", atom.node)
        if kinds == {"X"} and len(atom.coefs) > 1:
            raise self.ctx.error("unsupported constraint over several input variables "
                                 "(only bounds on single X_i are allowed)", atom.node)


def _is_non_finite_literal(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _le(lhs: _Linear, rhs: _Linear, node: SExpr, strict: bool = False) -> _Atom:
    """Linearise ``lhs <= rhs`` (``<`` when strict) to ``coefs . vars <= const``."""
    diff = _add([lhs, rhs.scaled(-ONE)])
    return _Atom(diff.coefs, -diff.const, node, strict)


# --------------------------------------------------------------------------- assembling

def _count(parser: _Parser, kind: str, eof: tuple[int, int]) -> int:
    """Number of declared variables of ``kind``; their indices must be 0..n-1."""
    indices = sorted(i for k, i in parser.declared if k == kind)
    for expected, index in enumerate(indices):
        if index != expected:
            node = parser.declared[(kind, index)]
            raise parser.ctx.error(f"variable {kind}_{index} declared but {kind}_{expected} "
                                   f"is missing (indices must be 0..n-1)", node)
    if not indices:
        raise parser.ctx.error(f"no {kind}_i variables declared", line=eof[0], col=eof[1])
    return len(indices)


def _is_input(atom: _Atom) -> bool:
    """Whether an atom constrains inputs (atoms never mix X and Y, see ``_classify``)."""
    return next(iter(atom.coefs))[0] == "X"


def _box_from_atoms(atoms: list[_Atom], n_inputs: int, parser: _Parser, where: SExpr,
                    label: str) -> Box:
    """Intersect single-variable input bounds ``a * X_i <= c`` into a box: the tightest
    exact bound wins (a strict one over an equal non-strict one); each is then rounded to
    the nearest float64, as VNN-COMP tools read a number (not outward: where a bound is
    rounded inward, the real points within half an ulp of that face, where no float64
    input lies, are left out)."""
    exact_lo: dict[int, tuple[Fraction, bool]] = {}
    exact_hi: dict[int, tuple[Fraction, bool]] = {}
    lower_at: dict[int, SExpr] = {}
    upper_at: dict[int, SExpr] = {}
    for atom in atoms:
        ((_, i), a), = atom.coefs.items()
        bound = atom.rhs / a
        if a > 0 and (i not in exact_hi or (bound, not atom.strict) < (exact_hi[i][0],
                                                                         not exact_hi[i][1])):
            exact_hi[i], upper_at[i] = (bound, atom.strict), atom.node
        elif a < 0 and (i not in exact_lo or (bound, atom.strict) > exact_lo[i]):
            exact_lo[i], lower_at[i] = (bound, atom.strict), atom.node
    lower = np.full(n_inputs, -np.inf)
    upper = np.full(n_inputs, np.inf)
    strict_lo = np.zeros(n_inputs, dtype=bool)
    strict_hi = np.zeros(n_inputs, dtype=bool)
    for i, (q, s) in exact_lo.items():
        lower[i], strict_lo[i] = _bound_float(q, f"X_{i}'s lower", parser, lower_at[i]), s
    for i, (q, s) in exact_hi.items():
        upper[i], strict_hi[i] = _bound_float(q, f"X_{i}'s upper", parser, upper_at[i]), s
    for i in range(n_inputs):
        _check_bounds(i, lower, upper, lower_at, upper_at, parser, where, label)
        empty_point = lower[i] == upper[i] and (strict_lo[i] or strict_hi[i])
        if empty_point:
            raise parser.ctx.error(f"empty box: X_{i} is strictly bounded at both sides "
                                   f"by {float(lower[i])!r}", where, kind=_EmptyBox)
    return Box(lower, upper, strict_lo if strict_lo.any() else None,
               strict_hi if strict_hi.any() else None)


def _bound_float(q: Fraction, what: str, parser: _Parser, node: SExpr) -> float:
    """An exact input bound as its nearest float64; one line naming the bound when it is
    beyond the float64 range (e.g. ``(<= (* 1e-300 X_0) 1e100)``: X_0 <= 1e400)."""
    try:
        return _to_float(q)
    except OverflowError:
        raise parser.ctx.error(f"{what} bound is {_out_of_range(q)}", node) from None


def _check_bounds(i: int, lower: np.ndarray, upper: np.ndarray, lower_at: dict[int, SExpr],
                  upper_at: dict[int, SExpr], parser: _Parser, where: SExpr,
                  label: str) -> None:
    """Raise if input ``i`` is unbounded on a side or its interval is empty."""
    ctx = parser.ctx
    if i not in lower_at:
        raise ctx.error(f"X_{i} has no lower bound{label}", where)
    if i not in upper_at:
        raise ctx.error(f"X_{i} has no upper bound{label}", where)
    if lower[i] > upper[i]:
        late = max(lower_at[i], upper_at[i], key=lambda n: (n.line, n.col))
        raise ctx.error(f"empty box: X_{i} has lower bound {float(lower[i])!r} > "
                        f"upper bound {float(upper[i])!r}", late, kind=_EmptyBox)


def _label(index: int, count: int) -> str:
    """Say which DNF term an error is about, when there are several."""
    return "" if count == 1 else f" (in disjunct {index + 1} of {count} of the DNF)"


def _rows(atoms: list[_Atom], n_outputs: int) -> Halfspaces:
    """Output atoms as ``matrix @ y <= rhs`` (nearest float64 values; strict rows
    marked)."""
    matrix = np.zeros((len(atoms), n_outputs))
    rhs = np.zeros(len(atoms))
    strict = np.zeros(len(atoms), dtype=bool)
    for r, atom in enumerate(atoms):
        for (_, j), c in atom.coefs.items():
            matrix[r, j] = _to_float(c)
        rhs[r] = _to_float(atom.rhs)
        strict[r] = atom.strict
    return Halfspaces(matrix, rhs, strict if strict.any() else None)


class _Assembler:
    """Turns DNF terms into grouped cases, sharing per-chunk and per-box work.

    Terms produced by a cross product share their chunks, so the input/output split
    of a chunk and the box of a combination of input chunks are computed only once.
    """

    def __init__(self, parser: _Parser, n_inputs: int, n_outputs: int, where: SExpr) -> None:
        self.parser, self.where = parser, where
        self.n_inputs, self.n_outputs = n_inputs, n_outputs
        self._splits: dict[int, tuple[_Chunk, _Chunk]] = {}
        self._boxes: dict[tuple[int, ...], tuple[Box, tuple[float, ...]]] = {}

    def _split(self, chunk: _Chunk) -> tuple[_Chunk, _Chunk]:
        got = self._splits.get(id(chunk))
        if got is None:
            inputs = tuple(a for a in chunk if _is_input(a))
            outputs = tuple(a for a in chunk if not _is_input(a))
            got = self._splits[id(chunk)] = (inputs, outputs)
        return got

    def _box(self, term: _Term, label: str) -> tuple[Box, tuple[float, ...]]:
        """The box of a term and its hashable key (exact bounds)."""
        x_chunks = [c for c in term if self._split(c)[0]]
        key = tuple(id(c) for c in x_chunks)
        got = self._boxes.get(key)
        if got is None:
            atoms = [a for c in x_chunks for a in self._split(c)[0]]
            box = _box_from_atoms(atoms, self.n_inputs, self.parser, self.where, label)
            flags = [box.strict_lower, box.strict_upper]
            got = self._boxes[key] = (box, tuple(box.lower.tolist() + box.upper.tolist()
                                                 + [None if f is None else f.tobytes()
                                                    for f in flags]))
        return got

    def cases(self, dnf: _Dnf) -> tuple[SpecCase, ...]:
        """Group terms by identical box (first-seen order), deduplicating disjuncts.
        Terms whose box is empty admit no input and are dropped, unless every term's
        box is empty (then the file has no inputs at all: an error)."""
        groups: dict[tuple[float, ...], tuple[Box, dict[tuple, Halfspaces]]] = {}
        first_empty: _EmptyBox | None = None
        for k, term in enumerate(dnf):
            try:
                box, key = self._box(term, _label(k, len(dnf)))
            except _EmptyBox as exc:
                first_empty = first_empty or exc
                continue
            poly = _rows([a for c in term for a in self._split(c)[1]], self.n_outputs)
            _, disjuncts = groups.setdefault(key, (box, {}))
            pkey = (poly.matrix.shape, poly.matrix.tobytes(), poly.rhs.tobytes(),
                    None if poly.strict is None else poly.strict.tobytes())
            disjuncts.setdefault(pkey, poly)
        if first_empty is not None and not groups:
            raise first_empty
        return tuple(SpecCase(box, tuple(d.values())) for box, d in groups.values())


def parse_vnnlib_text(text: str, source: str = "<string>") -> Spec:
    """Parse VNN-LIB text into a :class:`Spec`; raises :class:`SpecError` on bad input.

    Arithmetic on constants is exact (rationals; a comparison of constants is decided
    exactly); each resulting bound, coefficient and right-hand side is then the nearest
    float64 (as VNN-COMP tools read numbers), and the property is decided exactly on those
    values. A number or bound beyond the float64 range, and a nonzero coefficient that
    would round to 0, are refused. A leading byte-order mark is ignored."""
    text = text.removeprefix("\ufeff")
    ctx = _Ctx(source)
    exprs, eof = _read_sexprs(text, ctx)
    parser = _Parser(ctx)
    for expr in exprs:
        parser.command(expr)
    n_inputs = _count(parser, "X", eof)
    n_outputs = _count(parser, "Y", eof)
    parts: list[_Dnf] = []
    for node in parser.asserts:
        try:
            parts.append(parser.formula(node.items[1]))
        except RecursionError:
            raise ctx.error("formula is nested too deeply", node) from None
    # Errors about a whole DNF term point at the first assert (or the end of file).
    where: SExpr = parser.asserts[0] if parser.asserts else SAtom("", *eof)
    dnf = parser.conjoin(parts, where)
    cases = _Assembler(parser, n_inputs, n_outputs, where).cases(dnf)
    return Spec(n_inputs, n_outputs, cases, source)


def load_spec(path: str | Path) -> Spec:
    """Load a ``.vnnlib`` or gzip-compressed ``.vnnlib.gz`` property file."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif name.endswith(".gz"):
            raise InputFileError(f"cannot read property file {name}: not a gzip file")
        text = data.decode("utf-8")
    except (OSError, EOFError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InputFileError(f"cannot read property file {name}: {reason}") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"cannot read property file {name}: not UTF-8 text "
                             f"(byte offset {exc.start})") from None
    return parse_vnnlib_text(text, name)
