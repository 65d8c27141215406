"""JSON Schema → a llama.cpp GBNF grammar, so that the model can only write schema-valid JSON.

Used for structured outputs (Chat ``response_format``, Responses ``text.format``, Anthropic
``output_config.format``) and for the arguments of forced tool calls (``tools``). The grammar is
built by our own converter rather than llama-cpp-python's ``json_schema_to_gbnf``: that one
lets raw control characters into strings (invalid JSON), allows days like 2024-02-31, ignores
``minimum``/``maximum`` and any keyword it does not know, and reports problems with
``assert``. Here every keyword is either honoured exactly or rejected with
:class:`~gemma_local.errors.UnsupportedSchemaError` naming the keyword and its JSON path.

Supported (each one tested against the real llama.cpp grammar engine):

- ``type`` (one or a list), ``enum``, ``const``, ``anyOf``, ``oneOf`` (only when its branches
  cannot both match: different types, or a property with different ``const``/``enum``
  values, as in pydantic's discriminated unions), ``allOf`` with one subschema, ``$ref`` to
  ``#``, ``#/$defs/...``, ``#/definitions/...`` or any local JSON pointer (recursive schemas
  included, as long as the recursion passes through an object or array).
- objects: ``properties``, ``required``, ``additionalProperties`` (false, true or a schema).
  Properties come out in declared order; optional ones may be left out; no undeclared keys
  are written when ``properties`` is given (``"properties": {}`` means ``{}``). An object
  with neither is any JSON object, one with only an ``additionalProperties`` schema is a map
  of such values.
- arrays: ``items``, ``prefixItems`` (a fixed tuple), ``minItems``, ``maxItems``,
  ``uniqueItems: false``.
- strings: ``minLength``/``maxLength``, ``pattern`` (see :mod:`gbnf_regex`), ``format``
  ``date``, ``time``, ``date-time``, ``uuid``, ``email``, ``hostname``, ``ipv4``, ``uri``.
  ``pattern``, ``format`` and lengths cannot be combined, except lengths that every string
  of the format already satisfies (pydantic's ``HttpUrl`` sends ``maxLength`` with ``uri``).
- numbers and integers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``
  (any decimal bounds). Numbers are written without exponent, with at most 15 significant
  digits, so they keep their value (and their bounds) when parsed as IEEE doubles.
- annotations are ignored: ``title``, ``description``, ``default``, ``examples``,
  ``$schema``, ``$id``, ``$comment``, ``deprecated``, ``readOnly``, ``writeOnly``,
  ``discriminator``, ``contentMediaType``, ``contentEncoding``. Keywords that JSON Schema
  itself does not define (``x-…``, ``propertyOrdering``, OpenAPI's ``nullable``) carry no
  constraint in JSON Schema and are ignored (so ``nullable`` does not add ``null``).

Rejected (400): ``not``, ``if``/``then``/``else``, ``dependentRequired``,
``dependentSchemas``, ``dependencies``, ``patternProperties``, ``propertyNames``,
``minProperties``, ``maxProperties``, ``unevaluatedProperties``, ``unevaluatedItems``,
``contains``, ``minContains``, ``maxContains``, ``uniqueItems: true``, ``multipleOf``,
``$dynamicRef``, ``$anchor``, remote ``$ref``, other formats, ``allOf`` with several
subschemas, and keywords next to ``anyOf``/``oneOf``/``$ref`` that would constrain them.

``strict=True`` additionally applies OpenAI's strict-mode rules (the request is refused
rather than loosely served): the root is an object, and every object lists all its properties
in ``required`` and sets ``additionalProperties: false``. The OpenAI SDK's
``.parse(response_format=Model)`` produces such schemas.

Output whitespace is fixed to at most one space after ``{``, ``[``, ``,``, ``:`` and before
``}``/``]``, so a small model cannot wander off into endless newlines.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from gemma_local.engine import gbnf
from gemma_local.engine.gbnf_regex import PatternError, pattern_to_gbnf
from gemma_local.engine.json_formats import FORMATS
from gemma_local.errors import InvalidRequestError, UnsupportedSchemaError

__all__ = ["JSON_OBJECT_GRAMMAR", "GrammarBuilder", "schema_to_grammar", "validate_instance"]

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",
        "contentMediaType",
        "contentEncoding",
        "$defs",
        "definitions",
    }
)
_UNSUPPORTED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "multipleOf",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
        "$anchor",
        "$vocabulary",
        "additionalItems",
    }
)
_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_KEYS = frozenset({"items", "prefixItems", "minItems", "maxItems", "uniqueItems"})
_STRING_KEYS = frozenset({"minLength", "maxLength", "pattern", "format"})
_NUMBER_KEYS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
#: Keywords whose presence means "these constrain the value" next to a combinator or $ref.
_CONSTRAINTS = _OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS | _NUMBER_KEYS | {"type", "enum", "const"}
#: Above this, maxLength/maxItems make grammars too large to be worth it.
MAX_REPEAT = gbnf.MAX_REPEAT

# Shared primitive rules. Names carry no schema text, so several schemas (one per tool) can
# share one grammar.
_PRIMITIVES = {
    "ws": '" "?',
    "json-hex": "[0-9a-fA-F]",
    # \u escapes outside the surrogate block: a lone surrogate is not a character.
    "json-char": (
        r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] json-hex json-hex json-hex '
        r"| [dD] [0-7] json-hex json-hex))"
    ),
    "json-string": '"\\"" json-char* "\\""',
    "json-int": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "json-number": '"-"? ("0" | [1-9] [0-9]{0,14}) ("." [0-9]{1,15})?',
    "json-bool": '"true" | "false"',
    "json-null": '"null"',
    "json-value": "json-object | json-array | json-string | json-number | json-bool | json-null",
    "json-object": '"{" ws ( json-string ":" ws json-value ( "," ws json-string ":" ws json-value )* ws )? "}"',
    "json-array": '"[" ws ( json-value ( "," ws json-value )* ws )? "]"',
}
_PRIMITIVE_DEPS = {
    "json-char": ("json-hex",),
    "json-string": ("json-char",),
    "json-value": ("json-object", "json-array", "json-string", "json-number", "json-bool", "json-null"),
    "json-object": ("ws", "json-string", "json-value"),
    "json-array": ("ws", "json-value"),
}


class GrammarBuilder:
    """Collects named GBNF rules for one grammar; several schemas may share it.

    Args:
        param: the request parameter named in errors (e.g. ``response_format``, ``tools``).
    """

    def __init__(self, *, param: str | None = None) -> None:
        self.param = param
        self._rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}

    def primitive(self, name: str) -> str:
        """Add a shared primitive rule (and what it uses); return its name."""
        if name not in self._rules:
            self._rules[name] = _PRIMITIVES[name]
            for dep in _PRIMITIVE_DEPS.get(name, ()):
                self.primitive(dep)
        return name

    def rule(self, hint: str, body: str) -> str:
        """Add a rule with ``body`` (reusing an identical one); return its name."""
        if body in self._by_body:
            return self._by_body[body]
        name = self.reserve(hint)
        self.define(name, body)
        return name

    def reserve(self, hint: str) -> str:
        """A fresh rule name derived from ``hint`` (define it later with :meth:`define`)."""
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower() or "r"
        name, i = base, 1
        while name in self._rules or name in _PRIMITIVES or name == "root":
            i += 1
            name = f"{base}-{i}"
        self._rules[name] = ""
        return name

    def define(self, name: str, body: str) -> None:
        self._rules[name] = body
        self._by_body.setdefault(body, name)

    def add_schema(self, schema: Any, *, hint: str, strict: bool = False) -> str:
        """Add the rules for values valid against ``schema``; return an expression for them.

        Raises:
            UnsupportedSchemaError: the schema uses a keyword that cannot be honoured, or
                breaks the strict-mode rules.
        """
        return _SchemaVisitor(self, schema, strict=strict, hint=hint).visit_root()

    def grammar(self, root: str) -> str:
        """The finished grammar text with ``root ::= <root>`` first."""
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self._rules.items()]
        return "\n".join(lines) + "\n"


def schema_to_grammar(schema: dict[str, Any], *, strict: bool, param: str | None = None) -> str:
    """A GBNF grammar whose every complete output is JSON valid against ``schema``.

    Args:
        schema: a JSON Schema (draft 2020-12 keywords; see the module doc for what is supported).
        strict: apply OpenAI's strict-mode rules (all properties required, no additional ones).
        param: the request parameter to name in errors.

    Returns:
        GBNF text with start rule ``root``, for ``SamplingParams.grammar``.

    Raises:
        UnsupportedSchemaError: a keyword cannot be honoured (``.keyword`` and ``.path`` say
            which and where), or the schema is unsatisfiable.
    """
    builder = GrammarBuilder(param=param)
    return builder.grammar(builder.add_schema(schema, hint="root", strict=strict))


def validate_instance(schema: dict[str, Any], value: Any) -> list[str]:
    """Check ``value`` against ``schema`` with ``jsonschema``, formats included.

    Returns:
        One message per violation (``"$.path: message"``); empty when the value is valid.
    """
    from jsonschema import FormatChecker
    from jsonschema.validators import validator_for

    checker = FormatChecker(formats=())
    for name, check in FORMATS.items():
        checker.checks(name)(check)
    cls = validator_for(schema)
    validator = cls(schema, format_checker=checker)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]


# --- the converter ------------------------------------------------------------------------


def _pointer(path: str, *parts: object) -> str:
    escaped = [str(p).replace("~", "~0").replace("/", "~1") for p in parts]
    return "/".join([path, *escaped])


class _SchemaVisitor:
    def __init__(self, builder: GrammarBuilder, root: Any, *, strict: bool, hint: str) -> None:
        self.b = builder
        self.root = root
        self.strict = strict
        self.hint = hint
        self.refs: dict[str, str] = {}

    # errors ---------------------------------------------------------------------------

    def unsupported(self, keyword: str, path: str, why: str) -> UnsupportedSchemaError:
        where = f" at {path}" if path != "#" else ""
        return UnsupportedSchemaError(
            f"Unsupported JSON schema: '{keyword}'{where} {why}.", keyword=keyword, path=path, param=self.b.param
        )

    def invalid(self, path: str, what: str) -> InvalidRequestError:
        return InvalidRequestError(f"Invalid JSON schema at {path}: {what}.", param=self.b.param)

    # entry ----------------------------------------------------------------------------

    def visit_root(self) -> str:
        schema = self.root
        if self.strict and (not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema):
            raise self.unsupported("type", "#", "must be 'object' at the root of a strict schema")
        return self.visit(schema, "#", self.hint, frozenset())

    def visit(self, schema: Any, path: str, hint: str, guard: frozenset[str]) -> str:
        """An expression for values valid against ``schema``; ``guard`` holds $refs entered
        since the last object/array, to refuse recursion that would never produce a character."""
        if schema is True or schema == {}:
            return self.b.primitive("json-value")
        if schema is False:
            raise self.unsupported("false", path, "allows no value at all")
        if not isinstance(schema, dict):
            raise self.invalid(path, f"expected an object, got {type(schema).__name__}")
        for key in schema:
            if key in _UNSUPPORTED:
                raise self.unsupported(key, _pointer(path, key), "cannot be enforced while generating")
        if "$ref" in schema:
            return self.visit_ref(schema, path, hint, guard)
        if "allOf" in schema:
            return self.visit_all_of(schema, path, hint, guard)
        if "anyOf" in schema or "oneOf" in schema:
            return self.visit_union(schema, path, hint, guard)
        if "enum" in schema or "const" in schema:
            return self.visit_enum(schema, path, hint)
        types = self.types_of(schema, path)
        if len(types) > 1:
            alts = [self.visit_typed(schema, t, path, f"{hint}-{t}", guard) for t in types]
            return self.b.rule(hint, gbnf.group(alts))
        return self.visit_typed(schema, types[0], path, hint, guard)

    def types_of(self, schema: dict[str, Any], path: str) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            inferred = [
                t
                for t, keys in (("object", _OBJECT_KEYS), ("array", _ARRAY_KEYS), ("string", _STRING_KEYS))
                if keys & schema.keys()
            ]
            if _NUMBER_KEYS & schema.keys():
                inferred.append("number")
            return inferred or ["any"]
        names = declared if isinstance(declared, list) else [declared]
        if not names or any(n not in _TYPES for n in names):
            raise self.invalid(path, f"unknown type {declared!r}")
        if "number" in names and "integer" in names:
            names = [n for n in names if n != "integer"]
        return list(dict.fromkeys(names))

    def visit_typed(self, schema: dict[str, Any], kind: str, path: str, hint: str, guard: frozenset[str]) -> str:
        if kind == "object":
            return self.visit_object(schema, path, hint)
        if kind == "array":
            return self.visit_array(schema, path, hint)
        if kind == "string":
            return self.visit_string(schema, path, hint)
        if kind in ("number", "integer"):
            return self.visit_number(schema, kind, path, hint)
        if kind == "boolean":
            return self.b.primitive("json-bool")
        if kind == "null":
            return self.b.primitive("json-null")
        return self.b.primitive("json-value")

    # combinators ----------------------------------------------------------------------

    def check_siblings(self, schema: dict[str, Any], keyword: str, path: str) -> None:
        for key in schema:
            if key != keyword and key in _CONSTRAINTS | {"anyOf", "oneOf", "allOf", "$ref"}:
                raise self.unsupported(key, _pointer(path, key), f"next to '{keyword}' is not supported")

    def visit_ref(self, schema: dict[str, Any], path: str, hint: str, guard: frozenset[str]) -> str:
        ref = schema["$ref"]
        self.check_siblings(schema, "$ref", path)
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.unsupported("$ref", _pointer(path, "$ref"), f"{ref!r} is not a local reference")
        if ref in guard:
            raise self.unsupported("$ref", _pointer(path, "$ref"), f"{ref!r} refers to itself without nesting")
        if ref in self.refs:
            return self.refs[ref]
        target = self.resolve(ref, path)
        name = self.b.reserve(f"{self.hint}-{ref.rsplit('/', 1)[-1] or 'self'}")
        self.refs[ref] = name
        self.b.define(name, self.visit(target, ref, name, guard | {ref}))
        return name

    def resolve(self, ref: str, path: str) -> Any:
        node = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.unsupported("$ref", _pointer(path, "$ref"), f"{ref!r} points to nothing in this schema")
        return node

    def visit_all_of(self, schema: dict[str, Any], path: str, hint: str, guard: frozenset[str]) -> str:
        subs = schema["allOf"]
        if not isinstance(subs, list) or len(subs) != 1:
            raise self.unsupported("allOf", _pointer(path, "allOf"), "with more than one subschema")
        self.check_siblings(schema, "allOf", path)
        return self.visit(subs[0], _pointer(path, "allOf", 0), hint, guard)

    def visit_union(self, schema: dict[str, Any], path: str, hint: str, guard: frozenset[str]) -> str:
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        branches = schema[keyword]
        self.check_siblings(schema, keyword, path)
        if not isinstance(branches, list) or not branches:
            raise self.invalid(path, f"{keyword} must be a non-empty list")
        if keyword == "oneOf":
            self.check_disjoint(branches, _pointer(path, "oneOf"))
        alts = [
            self.visit(branch, _pointer(path, keyword, i), f"{hint}-{i}", guard) for i, branch in enumerate(branches)
        ]
        return self.b.rule(hint, gbnf.group(alts))

    def visit_enum(self, schema: dict[str, Any], path: str, hint: str) -> str:
        keyword = "const" if "const" in schema else "enum"
        values = [schema["const"]] if keyword == "const" else schema["enum"]
        if not isinstance(values, list) or not values:
            raise self.invalid(path, "enum must be a non-empty list")
        # Other keywords beside enum/const still apply: keep only the values that pass them.
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        if "const" in schema and "enum" in schema:
            rest["enum"] = schema["enum"]
        if rest.keys() & (_CONSTRAINTS | {"anyOf", "oneOf", "allOf", "$ref"}):
            for key in ("$defs", "definitions"):
                if isinstance(self.root, dict) and key in self.root:
                    rest.setdefault(key, self.root[key])
            values = [v for v in values if not validate_instance(rest, v)]
        if not values:
            raise self.unsupported(keyword, _pointer(path, keyword), "has no value that satisfies the other keywords")
        texts = [json.dumps(v, ensure_ascii=False) for v in values]
        return self.b.rule(hint, gbnf.group([gbnf.literal(t) for t in texts]))

    def check_disjoint(self, branches: list[Any], path: str) -> None:
        facts = [self.facts(branch) for branch in branches]
        for i in range(len(facts)):
            for j in range(i + 1, len(facts)):
                if not _disjoint(facts[i], facts[j]):
                    raise self.unsupported(
                        "oneOf",
                        path,
                        f"has branches {i} and {j} that a value could match both of (oneOf needs exactly one); "
                        "use anyOf, or tell them apart with a 'const' property",
                    )

    def facts(self, schema: Any, depth: int = 0) -> tuple[set[str], set[str] | None, dict[str, set[str]]]:
        """(possible JSON kinds, possible values if finite, required property -> finite values)."""
        all_kinds = {"object", "array", "string", "number", "boolean", "null"}
        if not isinstance(schema, dict) or depth > 8:
            return all_kinds, None, {}
        if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#"):
            try:
                return self.facts(self.resolve(schema["$ref"], "#"), depth + 1)
            except UnsupportedSchemaError:
                return all_kinds, None, {}
        values = None
        if "const" in schema:
            values = [schema["const"]]
        elif isinstance(schema.get("enum"), list):
            values = schema["enum"]
        if values is not None:
            return {_kind(v) for v in values}, {_canonical(v) for v in values}, {}
        declared = schema.get("type")
        if declared is None:
            kinds = all_kinds
        else:
            names = declared if isinstance(declared, list) else [declared]
            kinds = {"number" if n == "integer" else n for n in names}
        props: dict[str, set[str]] = {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        for name, sub in (schema.get("properties") or {}).items():
            if name in required:
                _, sub_values, _ = self.facts(sub, depth + 1)
                if sub_values is not None:
                    props[name] = sub_values
        return kinds, None, props

    # objects --------------------------------------------------------------------------

    def visit_object(self, schema: dict[str, Any], path: str, hint: str) -> str:
        props = schema.get("properties")
        required = schema.get("required", [])
        extra = schema.get("additionalProperties")
        if props is not None and not isinstance(props, dict):
            raise self.invalid(path, "properties must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.invalid(path, "required must be a list of names")
        props = dict(props or {})
        if self.strict:
            if extra is not False:
                raise self.unsupported(
                    "additionalProperties",
                    _pointer(path, "additionalProperties"),
                    "must be false in every object of a strict schema",
                )
            missing = [name for name in props if name not in required]
            if missing:
                why = f"must list every property in strict mode (missing {missing})"
                raise self.unsupported("required", _pointer(path, "required"), why)
        for name in required:
            if name not in props:
                if extra is False:
                    why = f"names {name!r}, which additionalProperties: false forbids"
                    raise self.unsupported("required", _pointer(path, "required"), why)
                props[name] = extra if isinstance(extra, dict) else True
        if not props:
            if isinstance(extra, dict) and extra:
                value = self.visit(extra, _pointer(path, "additionalProperties"), f"{hint}-value", frozenset())
                kv = f'{self.b.primitive("json-string")} ":" ws {value}'
                self.b.primitive("ws")
                return self.b.rule(hint, f'"{{" ws ( {kv} ( "," ws {kv} )* ws )? "}}"')
            if extra is False or "properties" in schema:
                # Declared properties only, and there are none (a tool without arguments).
                self.b.primitive("ws")
                return self.b.rule(hint, '"{" ws "}"')
            return self.b.primitive("json-object")
        self.b.primitive("ws")
        kvs = []
        for name, sub in props.items():
            value = self.visit(sub, _pointer(path, "properties", name), f"{hint}-{name}", frozenset())
            kvs.append((name in required, f'{gbnf.literal(json.dumps(name, ensure_ascii=False))} ":" ws {value}'))
        return self.b.rule(hint, f'"{{" ws {self._members(kvs, hint)} ws "}}"')

    def _members(self, kvs: list[tuple[bool, str]], hint: str) -> str:
        """Members in declared order; optional ones may be skipped (commas only between members)."""
        if all(req for req, _ in kvs):
            return ' "," ws '.join(kv for _, kv in kvs)
        # tails[i][first]: members i.. where `first` says no member was written before them.
        tails: dict[tuple[int, bool], str] = {}

        def tail(i: int, first: bool) -> str:
            if i == len(kvs):
                return '""'
            key = (i, first)
            if key not in tails:
                req, kv = kvs[i]
                sep = "" if first else '"," ws '
                rest = tail(i + 1, False)
                take = f"{sep}{kv}" if rest == '""' else f"{sep}{kv} {rest}"
                body = take if req else gbnf.group([take, tail(i + 1, first)])
                tails[key] = self.b.rule(f"{hint}-tail{i}{'f' if first else ''}", body)
            return tails[key]

        return tail(0, True)

    # arrays ---------------------------------------------------------------------------

    def visit_array(self, schema: dict[str, Any], path: str, hint: str) -> str:
        lo = self.count(schema, "minItems", path, 0)
        hi = self.count(schema, "maxItems", path, None)
        if schema.get("uniqueItems") is True:
            raise self.unsupported("uniqueItems", _pointer(path, "uniqueItems"), "cannot be enforced while generating")
        if hi is not None and lo > hi:
            raise self.unsupported("minItems", _pointer(path, "minItems"), "is larger than maxItems")
        self.b.primitive("ws")
        if "prefixItems" in schema:
            prefix = schema["prefixItems"]
            if not isinstance(prefix, list):
                raise self.invalid(path, "prefixItems must be a list")
            if schema.get("items") not in (None, False):
                raise self.unsupported("items", _pointer(path, "items"), "after prefixItems is not supported")
            n = len(prefix)
            if n < lo or (hi is not None and n > hi):
                raise self.unsupported("prefixItems", _pointer(path, "prefixItems"), "must fit minItems/maxItems")
            items = [
                self.visit(sub, _pointer(path, "prefixItems", i), f"{hint}-{i}", frozenset())
                for i, sub in enumerate(prefix)
            ]
            inner = ' "," ws '.join(items)
            return self.b.rule(hint, f'"[" ws {inner} ws "]"' if items else '"[" ws "]"')
        items_schema = schema.get("items", True)
        if items_schema is False:
            if lo > 0:
                raise self.unsupported("items", _pointer(path, "items"), "is false but minItems asks for items")
            return self.b.rule(hint, '"[" ws "]"')
        item = self.visit(items_schema, _pointer(path, "items"), f"{hint}-item", frozenset())
        if hi == 0:
            return self.b.rule(hint, '"[" ws "]"')
        more = gbnf.repeat(f'"," ws {item}', max(lo - 1, 0), None if hi is None else hi - 1)
        body = f"{item} {more}" if more != '""' else item
        body = f"( {body} ws )?" if lo == 0 else f"{body} ws"
        return self.b.rule(hint, f'"[" ws {body} "]"')

    def count(self, schema: dict[str, Any], key: str, path: str, default: int | None) -> int | None:
        value = schema.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
            raise self.invalid(path, f"{key} must be a non-negative integer")
        if int(value) > MAX_REPEAT:
            raise self.unsupported(key, _pointer(path, key), f"above {MAX_REPEAT}")
        return int(value)

    # strings --------------------------------------------------------------------------

    def visit_string(self, schema: dict[str, Any], path: str, hint: str) -> str:
        lo = self.count(schema, "minLength", path, 0) or 0
        hi = self.count(schema, "maxLength", path, None)
        if hi is not None and lo > hi:
            raise self.unsupported("minLength", _pointer(path, "minLength"), "is larger than maxLength")
        has_length = "minLength" in schema or "maxLength" in schema
        fmt = schema.get("format")
        if fmt is not None:
            if "pattern" in schema:
                raise self.unsupported("pattern", _pointer(path, "pattern"), "together with 'format'")
            spec = _FORMAT_GRAMMARS.get(fmt)
            if spec is None:
                raise self.unsupported(
                    "format", _pointer(path, "format"), f"{fmt!r} is not one of {', '.join(sorted(_FORMAT_GRAMMARS))}"
                )
            body, min_len, max_len = spec
            if has_length and (lo > min_len or (hi is not None and hi < max_len)):
                raise self.unsupported(
                    "maxLength" if "maxLength" in schema else "minLength",
                    path,
                    f"that is tighter than format {fmt!r} ({min_len}..{max_len} characters) is not supported",
                )
            return self.b.rule(f"fmt-{fmt}", f'"\\"" {body} "\\""')
        if "pattern" in schema:
            if has_length:
                raise self.unsupported(
                    "maxLength" if "maxLength" in schema else "minLength", path, "together with 'pattern'"
                )
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                raise self.invalid(path, "pattern must be a string")
            try:
                re.compile(pattern)
                body = pattern_to_gbnf(pattern, self.b.primitive("json-char"))
            except re.error as e:
                raise self.invalid(path, f"pattern /{pattern}/: {e}") from e
            except PatternError as e:
                raise self.unsupported("pattern", _pointer(path, "pattern"), f"is not supported: {e}") from e
            return self.b.rule(hint, f'"\\"" {body} "\\""')
        if has_length:
            char = self.b.primitive("json-char")
            return self.b.rule(hint, f'"\\"" {gbnf.repeat(char, lo, hi)} "\\""')
        return self.b.primitive("json-string")

    # numbers --------------------------------------------------------------------------

    def visit_number(self, schema: dict[str, Any], kind: str, path: str, hint: str) -> str:
        bounds = {}
        for key in _NUMBER_KEYS:
            if key in schema:
                value = schema[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise self.unsupported(key, _pointer(path, key), "must be a finite number")
                bounds[key] = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not bounds:
            return self.b.primitive("json-int" if kind == "integer" else "json-number")
        lo, lo_x = _tighter_low(bounds)
        hi, hi_x = _tighter_high(bounds)
        first_key = next(k for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in bounds)
        try:
            if kind == "integer":
                ilo = None if lo is None else _int_low(lo, lo_x)
                ihi = None if hi is None else _int_high(hi, hi_x)
                cap = 10**16 - 1
                ilo = -cap if ilo is None else ilo
                ihi = max(cap, ilo) if ihi is None else ihi
                if ilo > ihi:
                    raise ValueError("empty")
                body = gbnf.integer_range(ilo, ihi)
            else:
                body = gbnf.decimal_range(lo, lo_x, hi, hi_x)
        except ValueError as e:
            raise self.unsupported(first_key, _pointer(path, first_key), "leaves no number in range") from e
        return self.b.rule(hint, body)


def _tighter_low(bounds: dict[str, Decimal]) -> tuple[Decimal | None, bool]:
    inc, exc = bounds.get("minimum"), bounds.get("exclusiveMinimum")
    if exc is not None and (inc is None or exc >= inc):
        return exc, True
    return inc, False


def _tighter_high(bounds: dict[str, Decimal]) -> tuple[Decimal | None, bool]:
    inc, exc = bounds.get("maximum"), bounds.get("exclusiveMaximum")
    if exc is not None and (inc is None or exc <= inc):
        return exc, True
    return inc, False


def _int_low(value: Decimal, exclusive: bool) -> int:
    n = math.floor(value)
    return n + 1 if (exclusive or n < value) else n


def _int_high(value: Decimal, exclusive: bool) -> int:
    n = math.ceil(value)
    return n - 1 if (exclusive or n > value) else n


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _canonical(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(float(value))
    return json.dumps(value, sort_keys=True)


def _disjoint(
    a: tuple[set[str], set[str] | None, dict[str, set[str]]], b: tuple[set[str], set[str] | None, dict[str, set[str]]]
) -> bool:
    kinds_a, values_a, props_a = a
    kinds_b, values_b, props_b = b
    if not kinds_a & kinds_b:
        return True
    if values_a is not None and values_b is not None and not values_a & values_b:
        return True
    if values_a is not None and values_b is None and _values_outside(values_a, kinds_b):
        return True
    if values_b is not None and values_a is None and _values_outside(values_b, kinds_a):
        return True
    # Only objects in common, each requiring a property with different fixed values there
    # (discriminated unions).
    if kinds_a & kinds_b != {"object"}:
        return False
    return any(not props_a[name] & props_b[name] for name in props_a.keys() & props_b.keys())


def _values_outside(values: set[str], kinds: set[str]) -> bool:
    return all(_kind(json.loads(v)) not in kinds for v in values)


# --- string formats -------------------------------------------------------------------------

_Spec = tuple[str, int, int]  # (GBNF body without quotes, min length, max length)


def _format_grammars() -> dict[str, _Spec]:
    # Days per month, February to 28 so that every date exists in every year.
    day31 = '("0" [1-9] | [12] [0-9] | "3" [01])'
    day30 = '("0" [1-9] | [12] [0-9] | "30")'
    day28 = '("0" [1-9] | "1" [0-9] | "2" [0-8])'
    month_day = f'(("0" [13578] | "1" [02]) "-" {day31} | ("0" [469] | "11") "-" {day30} | "02" "-" {day28})'
    date = f'[0-9] [0-9] [0-9] [0-9] "-" {month_day}'
    hh_mm = '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9]'
    time = f'{hh_mm} ":" [0-5] [0-9] ("." [0-9]{{1,6}})? ("Z" | [+\\x2D] {hh_mm})'
    hexd = "[0-9a-f]"
    uuid = ' "-" '.join(gbnf.repeat(hexd, n, n) for n in (8, 4, 4, 4, 12))
    label = "[a-z0-9] ([a-z0-9\\x2D]{0,18} [a-z0-9])?"
    domain = f'({label} "."){{1,3}} [a-z]{{2,6}}'
    local = "[a-zA-Z0-9_+\\x2D]{1,32}"
    email = f'{local} ("." {local}){{0,2}} "@" {domain}'
    octet = '("25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9] [0-9] | [0-9])'
    ipv4 = f'{octet} "." {octet} "." {octet} "." {octet}'
    segment = "[a-zA-Z0-9_.~\\x2D]{1,24}"
    uri = f'"http" "s"? "://" {domain} ("/" {segment}){{0,6}} "/"?'
    label_max = 20
    domain_max = 3 * (label_max + 1) + 6
    return {
        "date": (date, 10, 10),
        "time": (time, 9, 21),
        "date-time": (f'{date} "T" {time}', 20, 32),
        "uuid": (uuid, 36, 36),
        "email": (email, 1 + 1 + 4, 3 * 33 + 1 + domain_max),
        "hostname": (domain, 4, domain_max),
        "ipv4": (ipv4, 7, 15),
        "uri": (uri, 11, 8 + domain_max + 6 * 25 + 1),
    }


_FORMAT_GRAMMARS: dict[str, _Spec] = _format_grammars()

#: Any JSON object: ``response_format: {"type": "json_object"}``.
JSON_OBJECT_GRAMMAR = schema_to_grammar({"type": "object"}, strict=False)
