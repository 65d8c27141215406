"""JSON Schema ``pattern`` (a regular expression) → a GBNF expression for the JSON string body.

The expression generates the *JSON-encoded* characters of the string value (a ``"`` in the
value is written ``\\"``); the caller adds the surrounding quotes. Every string the grammar
allows matches the pattern under both Python's ``re`` (what ``jsonschema`` uses) and ECMA-262
(what the JSON Schema spec names): where the two differ, the grammar keeps to what both accept.

Supported: literals and escapes (``\\n``, ``\\t``, ``\\xHH``, ``\\uHHHH``, escaped punctuation),
``.``, classes ``[...]``/``[^...]`` with ranges, ``\\d \\w \\s \\D \\W \\S`` (ASCII meanings),
groups ``(...)``, ``(?:...)``, ``(?P<n>...)``/``(?<n>...)``, alternation, the quantifiers
``* + ? {n} {n,} {n,m}`` (lazy ``?`` suffixes accepted: they do not change what matches),
``^`` at the start and ``$`` at the end of a top-level branch. A pattern that is not anchored
matches anywhere in the string, so unanchored ends allow any characters there.

Rejected with :class:`PatternError`: lookarounds, backreferences, ``\\b``/``\\B``, inline flags,
possessive quantifiers, Unicode properties and anchors anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_local.engine import gbnf
from gemma_local.engine.gbnf import Ranges


class PatternError(ValueError):
    """The pattern uses regex syntax the converter does not support."""


_ANY: Ranges = ((0, gbnf.MAX_CODEPOINT),)
_PRINTABLE_ASCII: Ranges = ((0x20, 0x7E),)
_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE: Ranges = ((0x09, 0x0D), (0x20, 0x20))
#: ``.`` excludes line terminators in ECMA-262 (\n \r U+2028 U+2029) and \n in Python.
_DOT: Ranges = gbnf.subtract(_ANY, ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)))
# The negated shorthands mean "any non-digit" etc. in Unicode in Python but ASCII in ECMA;
# printable ASCII minus the set is inside both.
_SHORTHANDS: dict[str, Ranges] = {
    "d": _DIGIT,
    "w": _WORD,
    "s": _SPACE,
    "D": gbnf.subtract(_PRINTABLE_ASCII, _DIGIT),
    "W": gbnf.subtract(_PRINTABLE_ASCII, _WORD),
    "S": gbnf.subtract(_PRINTABLE_ASCII, _SPACE),
}
_CHAR_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}


@dataclass(frozen=True)
class _Set:
    ranges: Ranges


@dataclass(frozen=True)
class _Seq:
    items: tuple[object, ...]


@dataclass(frozen=True)
class _Alt:
    branches: tuple[_Seq, ...]


@dataclass(frozen=True)
class _Repeat:
    node: object
    lo: int
    hi: int | None


@dataclass(frozen=True)
class _Anchor:
    kind: str  # "^" or "$"


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.i = 0

    def fail(self, what: str) -> PatternError:
        return PatternError(f"{what} (at position {self.i} of /{self.s}/) is not supported")

    def peek(self, k: int = 0) -> str:
        return self.s[self.i + k] if self.i + k < len(self.s) else ""

    def parse(self) -> _Alt:
        alt = self.alternation()
        if self.i != len(self.s):
            raise self.fail("an unbalanced ')'")
        return alt

    def alternation(self) -> _Alt:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return _Alt(tuple(branches))

    def sequence(self) -> _Seq:
        items: list[object] = []
        while self.peek() and self.peek() not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        return _Seq(tuple(items))

    def quantified(self, atom: object) -> object:
        while True:
            c = self.peek()
            if c in ("*", "+", "?"):
                self.i += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            elif c == "{" and self._quantifier_ahead():
                lo, hi = self._braces()
            else:
                return atom
            if isinstance(atom, _Anchor):
                raise self.fail("a quantifier on an anchor")
            if self.peek() == "?":
                self.i += 1  # lazy: matches the same strings
            elif self.peek() == "+":
                raise self.fail("a possessive quantifier")
            atom = _Repeat(atom, lo, hi)

    def _quantifier_ahead(self) -> bool:
        j = self.s.find("}", self.i)
        if j < 0:
            return False
        body = self.s[self.i + 1 : j]
        lo, _, hi = body.partition(",")
        return lo.isdigit() and (hi == "" or hi.isdigit())

    def _braces(self) -> tuple[int, int | None]:
        j = self.s.index("}", self.i)
        body = self.s[self.i + 1 : j]
        self.i = j + 1
        if "," in body:
            lo_text, hi_text = body.split(",", 1)
            lo, hi = int(lo_text), (int(hi_text) if hi_text else None)
        else:
            lo = hi = int(body)
        if hi is not None and hi < lo:
            raise self.fail(f"the quantifier {{{body}}}")
        if max(lo, hi or 0) > gbnf.MAX_REPEAT:
            raise self.fail(f"a repetition count above {gbnf.MAX_REPEAT}")
        return lo, hi

    def atom(self) -> object:
        c = self.peek()
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        if c == ".":
            self.i += 1
            return _Set(_DOT)
        if c in ("^", "$"):
            self.i += 1
            return _Anchor(c)
        if c == "\\":
            return _Set(self.escape(in_class=False))
        if c in ("*", "+", "?") or (c == "{" and self._quantifier_ahead()):
            raise self.fail("a quantifier with nothing to repeat")
        self.i += 1
        return _Set(((ord(c), ord(c)),))

    def group(self) -> object:
        self.i += 1
        if self.peek() == "?":
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.s.startswith("?P<", self.i) or (self.s.startswith("?<", self.i) and self.peek(2) not in "=!"):
                end = self.s.find(">", self.i)
                if end < 0:
                    raise self.fail("an unterminated group name")
                self.i = end + 1
            else:
                raise self.fail("the group syntax (?" + self.peek(1))
        inner = self.alternation()
        if self.peek() != ")":
            raise self.fail("an unterminated group")
        self.i += 1
        return inner

    def escape(self, *, in_class: bool) -> Ranges:
        self.i += 1
        c = self.peek()
        if not c:
            raise self.fail("a trailing backslash")
        self.i += 1
        if c in _SHORTHANDS:
            return _SHORTHANDS[c]
        if c in _CHAR_ESCAPES and not (c == "0" and self.peek().isdigit()):
            cp = _CHAR_ESCAPES[c]
            return ((cp, cp),)
        if c in ("x", "u"):
            width = 2 if c == "x" else 4
            digits = self.s[self.i : self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"the escape \\{c}{digits}")
            self.i += width
            cp = int(digits, 16)
            return ((cp, cp),)
        if c == "b" and in_class:
            return ((0x08, 0x08),)
        if c.isalnum():
            raise self.fail(f"the escape \\{c}")
        return ((ord(c), ord(c)),)

    def char_class(self) -> _Set:
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        if self.peek() == "]":
            raise self.fail("a class starting with ']'")
        ranges: list[tuple[int, int]] = []
        uses_shorthand = False
        while True:
            c = self.peek()
            if not c:
                raise self.fail("an unterminated character class")
            if c == "]":
                self.i += 1
                break
            if c == "\\":
                start_i = self.i
                got = self.escape(in_class=True)
                if self.s[start_i + 1] in _SHORTHANDS:
                    uses_shorthand = True
                    ranges.extend(got)
                    continue
                lo = got[0][0]
            else:
                if c == "[" and self.peek(1) in (":", "=", "."):
                    raise self.fail("a POSIX class")
                lo = ord(c)
                self.i += 1
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                if self.peek() == "\\":
                    start_i = self.i
                    got = self.escape(in_class=True)
                    if self.s[start_i + 1] in _SHORTHANDS:
                        raise self.fail("a range ending in a shorthand class")
                    hi = got[0][0]
                else:
                    hi = ord(self.peek())
                    self.i += 1
                if hi < lo:
                    raise self.fail("a reversed range")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        result = gbnf.normalize(ranges)
        if negated:
            result = gbnf.complement(result)
            if uses_shorthand:
                # [^\d] excludes every Unicode digit in Python: stay inside printable ASCII.
                result = gbnf.intersect(result, _PRINTABLE_ASCII)
        if not result:
            raise self.fail("an empty character class")
        return _Set(result)


def _emit(node: object) -> str:
    if isinstance(node, _Set):
        return gbnf.json_chars(node.ranges)
    if isinstance(node, _Seq):
        parts = [_emit(item) for item in node.items]
        parts = [p for p in parts if p != '""']
        if not parts:
            return '""'
        return parts[0] if len(parts) == 1 else "(" + " ".join(parts) + ")"
    if isinstance(node, _Alt):
        return gbnf.group([_emit(b) for b in node.branches])
    if isinstance(node, _Repeat):
        return gbnf.repeat(_emit(node.node), node.lo, node.hi)
    if isinstance(node, _Anchor):
        raise PatternError(f"the anchor {node.kind} is supported only at the start or end of the pattern")
    raise TypeError(node)  # pragma: no cover


def pattern_to_gbnf(pattern: str, any_char: str) -> str:
    """A GBNF expression for the JSON-encoded body of strings matching ``pattern``.

    Args:
        pattern: the regular expression (``re.search`` semantics: unanchored unless ``^``/``$``).
        any_char: expression for one arbitrary JSON string character, used for unanchored ends.

    Raises:
        PatternError: the pattern uses unsupported syntax.
    """
    try:
        tree = _Parser(pattern).parse()
    except (IndexError, ValueError) as e:
        if isinstance(e, PatternError):
            raise
        raise PatternError(f"/{pattern}/ could not be parsed: {e}") from e
    branches = []
    for branch in tree.branches:
        items = list(branch.items)
        anchored_start = bool(items) and items[0] == _Anchor("^")
        if anchored_start:
            items = items[1:]
        anchored_end = bool(items) and items[-1] == _Anchor("$")
        if anchored_end:
            items = items[:-1]
        body = _emit(_Seq(tuple(items)))
        parts = [] if anchored_start else [f"{any_char}*"]
        if body != '""':
            parts.append(body)
        if not anchored_end:
            parts.append(f"{any_char}*")
        branches.append(" ".join(parts) if parts else '""')
    return gbnf.group(branches)
