"""Building blocks for llama.cpp GBNF grammars: literals, character sets, repetition, numbers.

Everything here returns GBNF *expressions* (strings that can stand on the right of ``::=``);
``json_schema`` assembles them into named rules. The helpers know the two encodings in play:
GBNF source syntax (how a character is written in a grammar) and JSON string syntax (how a
character of a string value is written in the model's output, e.g. ``"`` as ``\\"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

MAX_CODEPOINT = 0x10FFFF

#: The most significant digits a generated number has. 15 digits survive a trip through an
#: IEEE double unchanged, so a number that is in range as decimal text stays in range (and
#: distinct from an exclusive bound) once a client parses it as a float.
MAX_DIGITS = 15

#: Largest repetition count a generated grammar uses (maxLength, maxItems, regex {n,m}).
MAX_REPEAT = 4096

Ranges = tuple[tuple[int, int], ...]


# --- literals and character classes ---------------------------------------------------------


def literal(text: str) -> str:
    """A GBNF string literal matching exactly ``text``."""
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sort and merge inclusive code point ranges."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def complement(ranges: Ranges) -> Ranges:
    """Every code point not in ``ranges``."""
    out: list[tuple[int, int]] = []
    start = 0
    for lo, hi in normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODEPOINT:
        out.append((start, MAX_CODEPOINT))
    return tuple(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """Code points in both ``a`` and ``b``."""
    out = []
    for alo, ahi in normalize(a):
        for blo, bhi in normalize(b):
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return normalize(out)


def subtract(a: Ranges, b: Ranges) -> Ranges:
    """Code points in ``a`` but not in ``b``."""
    return intersect(a, complement(b))


def _class_char(cp: int) -> str:
    ch = chr(cp)
    if ch.isascii() and ch.isalnum():
        return ch
    if cp < 0x80:
        return f"\\x{cp:02X}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def char_class(ranges: Ranges) -> str:
    """A GBNF character class ``[...]`` for non-empty ``ranges``."""
    parts = []
    for lo, hi in normalize(ranges):
        parts.append(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}")
    if not parts:
        raise ValueError("empty character class")
    return "[" + "".join(parts) + "]"


# --- repetition and grouping ----------------------------------------------------------------


def group(alternatives: Sequence[str]) -> str:
    """``a | b | c`` in parentheses (or the single alternative as it is)."""
    alts = list(dict.fromkeys(a for a in alternatives if a))
    if not alts:
        raise ValueError("no alternatives")
    if len(alts) == 1:
        return alts[0]
    return "(" + " | ".join(alts) + ")"


def repeat(expr: str, lo: int, hi: int | None) -> str:
    """``expr`` repeated ``lo`` to ``hi`` times (``hi`` None: no upper bound)."""
    if hi is not None and (hi < lo or hi < 0):
        raise ValueError(f"bad repetition {{{lo},{hi}}}")
    if hi == 0:
        return '""'
    atom = expr if _is_atom(expr) else f"({expr})"
    if (lo, hi) == (1, 1):
        return expr
    if (lo, hi) == (0, 1):
        return f"{atom}?"
    if (lo, hi) == (0, None):
        return f"{atom}*"
    if (lo, hi) == (1, None):
        return f"{atom}+"
    if hi is None:
        return f"{atom}{{{lo},}}"
    if lo == hi:
        return f"{atom}{{{lo}}}"
    return f"{atom}{{{lo},{hi}}}"


def _is_atom(expr: str) -> bool:
    """True when ``expr`` is one literal, class, rule name or parenthesised group."""
    if not expr:
        return False
    if expr[0] == '"':
        i = 1
        while i < len(expr):
            if expr[i] == "\\":
                i += 2
                continue
            if expr[i] == '"':
                return i == len(expr) - 1
            i += 1
        return False
    if expr[0] == "[":
        i = 1
        while i < len(expr):
            if expr[i] == "\\":
                i += 2
                continue
            if expr[i] == "]":
                return i == len(expr) - 1
            i += 1
        return False
    if expr[0] == "(":
        depth = 0
        in_literal = False
        i = 0
        while i < len(expr):
            c = expr[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_literal = not in_literal
            elif not in_literal and c == "(":
                depth += 1
            elif not in_literal and c == ")":
                depth -= 1
                if depth == 0:
                    return i == len(expr) - 1
            i += 1
        return False
    return all(c.isalnum() or c == "-" for c in expr)


# --- JSON strings ---------------------------------------------------------------------------

_QUOTE, _BACKSLASH = 0x22, 0x5C
#: Characters a JSON string must escape: controls, the quote and the backslash.
_MUST_ESCAPE: Ranges = ((0x00, 0x1F), (_QUOTE, _QUOTE), (_BACKSLASH, _BACKSLASH))
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", _QUOTE: '\\"', _BACKSLASH: "\\\\"}


def json_chars(ranges: Ranges) -> str:
    """One character of a JSON string value drawn from ``ranges``, as the model must write it.

    Characters JSON must escape come out as their escape (``\\"``, ``\\n``, ``\\u001f``); all
    others raw.
    """
    alts = []
    raw = subtract(ranges, _MUST_ESCAPE)
    if raw:
        alts.append(char_class(raw))
    for lo, hi in intersect(normalize(ranges), _MUST_ESCAPE):
        for cp in range(lo, hi + 1):
            alts.append(literal(_SHORT_ESCAPES.get(cp, f"\\u{cp:04x}")))
    return group(alts)


# --- numbers --------------------------------------------------------------------------------


def _digits(lo: str, hi: str) -> str:
    """Digit strings of one length between ``lo`` and ``hi`` inclusive (leading zeros allowed)."""
    n = len(lo)
    if lo == hi:
        return literal(lo)
    if set(lo) == {"0"} and set(hi) == {"9"}:
        return repeat("[0-9]", n, n)
    a, b = int(lo[0]), int(hi[0])
    if n == 1:
        return f"[{a}-{b}]"
    if a == b:
        return f"{literal(lo[0])} {_digits(lo[1:], hi[1:])}"
    alts = []
    lo_rest_free = set(lo[1:]) == {"0"}
    hi_rest_free = set(hi[1:]) == {"9"}
    first = a if lo_rest_free else a + 1
    last = b if hi_rest_free else b - 1
    if not lo_rest_free:
        alts.append(f"{literal(lo[0])} {_digits(lo[1:], '9' * (n - 1))}")
    if first <= last:
        cls = literal(str(first)) if first == last else f"[{first}-{last}]"
        alts.append(f"{cls} {repeat('[0-9]', n - 1, n - 1)}")
    if not hi_rest_free:
        alts.append(f"{literal(hi[0])} {_digits('0' * (n - 1), hi[1:])}")
    return group(alts)


def natural_range(lo: int, hi: int, suffix=None) -> str:
    """Decimal numerals (no leading zeros) for the integers ``lo..hi`` (0 <= lo <= hi).

    Args:
        suffix: optional ``f(n_digits) -> expr | None`` appended to numerals of each length
            (a fraction part whose size depends on the integer part's); None drops that length.
    """
    alts = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = min(hi, 10**n - 1)
        if a > b:
            continue
        body = _digits(str(a), str(b))
        if suffix is not None:
            tail = suffix(n)
            if tail is None:
                continue
            body = f"{body} {tail}" if tail else body
        alts.append(body)
    return group(alts)


def integer_range(lo: int, hi: int) -> str:
    """JSON integers from ``lo`` to ``hi`` inclusive.

    Raises:
        ValueError: ``lo > hi``.
    """
    if lo > hi:
        raise ValueError("empty range")
    alts = []
    if lo < 0:
        alts.append(f'"-" {natural_range(max(1, -hi), -lo)}')
    if hi >= 0:
        alts.append(natural_range(max(lo, 0), hi))
    return group(alts)


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal as (integer part, fraction digits without trailing zeros)."""
    integral = int(value)
    text = format(value - integral, "f")
    fraction = text.split(".")[1].rstrip("0") if "." in text else ""
    return integral, fraction


def _fraction(lo: str | None, lo_x: bool, hi: str | None, hi_x: bool, n: int) -> tuple[bool, str | None]:
    """Fraction digit strings F (as in ``0.F``) between two bounds, at most ``n`` digits long.

    ``lo``/``hi`` are the bound's remaining digits ("" = zero from here on; None = no bound),
    ``*_x`` whether the bound is exclusive. Returns (whether the empty fraction is allowed,
    an expression for the allowed non-empty ones or None).
    """
    if lo == "" and not lo_x:
        lo = None
    empty_ok = lo is None and not (hi == "" and hi_x)
    if n == 0:
        return empty_ok, None
    if lo is None and hi is None:
        return empty_ok, repeat("[0-9]", 1, n)
    if lo is None and hi == "" and not hi_x:
        return True, repeat('"0"', 1, n)  # at most the bound: only zeros may follow
    l0 = int(lo[0]) if lo else 0
    h0 = int(hi[0]) if hi else (0 if hi == "" else 9)
    alts = []
    specials: dict[int, tuple[str | None, bool, str | None, bool]] = {}
    if lo is not None:
        specials[l0] = (lo[1:], lo_x, None, False)
    if hi is not None:
        prev = specials.get(h0)
        specials[h0] = (prev[0] if prev else None, prev[1] if prev else False, hi[1:], hi_x)
    start = l0 + 1 if lo is not None else l0
    end = h0 - 1 if hi is not None else h0
    if start <= end:
        cls = literal(str(start)) if start == end else f"[{start}-{end}]"
        alts.append(f"{cls} {repeat('[0-9]', 0, n - 1)}" if n > 1 else cls)
    for digit, (rlo, rlo_x, rhi, rhi_x) in sorted(specials.items()):
        if not l0 <= digit <= h0:
            continue
        rest_empty, rest = _fraction(rlo, rlo_x, rhi, rhi_x, n - 1)
        head = literal(str(digit))
        if rest_empty and rest:
            alts.append(f"{head} {repeat(rest, 0, 1)}")
        elif rest_empty:
            alts.append(head)
        elif rest:
            alts.append(f"{head} {rest}")
    return empty_ok, (group(alts) if alts else None)


def _with_fraction(empty_ok: bool, digits: str | None) -> str | None:
    if empty_ok and digits:
        return repeat(f'"." {digits}', 0, 1)
    if empty_ok:
        return ""
    if digits:
        return f'"." {digits}'
    return None


def _nonneg_decimal(lo: Decimal, lo_x: bool, hi: Decimal | None, hi_x: bool) -> str | None:
    """Non-negative decimals (no exponent, at most MAX_DIGITS digits) in the range."""
    li, lf = _split(lo)
    alts: list[str] = []

    def frac_room(n_int_digits: int) -> int:
        return max(0, MAX_DIGITS - n_int_digits)

    if hi is not None:
        hi_i, hf = _split(hi)
        if li == hi_i:
            tail = _with_fraction(*_fraction(lf, lo_x, hf, hi_x, frac_room(len(str(li)))))
            return None if tail is None else f"{literal(str(li))} {tail}".strip()
        top = hi_i - 1
    else:
        hi_i, hf = None, None
        top = 10**MAX_DIGITS - 1
    first = _with_fraction(*_fraction(lf, lo_x, None, False, frac_room(len(str(li)))))
    if first is not None:
        alts.append(f"{literal(str(li))} {first}".strip())
    if li + 1 <= top:

        def any_fraction(n_int_digits: int) -> str | None:
            return _with_fraction(*_fraction(None, False, None, False, frac_room(n_int_digits)))

        alts.append(natural_range(li + 1, top, suffix=any_fraction))
    if hi_i is not None:
        last = _with_fraction(*_fraction(None, False, hf, hi_x, frac_room(len(str(hi_i)))))
        if last is not None:
            alts.append(f"{literal(str(hi_i))} {last}".strip())
    return group(alts) if alts else None


def decimal_range(lo: Decimal | None, lo_x: bool, hi: Decimal | None, hi_x: bool) -> str:
    """JSON numbers (no exponent) between optional bounds, each inclusive or exclusive (``*_x``).

    Raises:
        ValueError: no number fits the bounds.
    """
    if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_x or hi_x))):
        raise ValueError("empty range")
    alts = []
    # x >= 0 side.
    if hi is None or hi > 0 or (hi == 0 and not hi_x):
        if lo is None or lo < 0:
            pos = _nonneg_decimal(Decimal(0), False, hi, hi_x)
        else:
            pos = _nonneg_decimal(lo, lo_x, hi, hi_x)
        if pos:
            alts.append(pos)
    # x < 0 side, written as "-" and the magnitude; -0 is left to the other side.
    if lo is None or lo < 0:
        if hi is None or hi >= 0:
            mag_lo, mag_lo_x = Decimal(0), True
        else:
            mag_lo, mag_lo_x = -hi, hi_x
        neg = _nonneg_decimal(mag_lo, mag_lo_x, None if lo is None else -lo, lo_x)
        if neg:
            alts.append(f'"-" {neg}' if _is_atom(neg) else f'"-" ({neg})')
    if not alts:
        raise ValueError("empty range")
    return group(alts)
