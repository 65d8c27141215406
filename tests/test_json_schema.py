"""JSON Schema → GBNF: every supported keyword against llama.cpp's grammar engine, the real model
producing schema-valid JSON for a table of 20 schemas, and unsupported keywords refused by name."""

from __future__ import annotations

import enum
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from grammar_support import GrammarProbe
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from gemma_local.engine import ChatMessage, GenerationRequest, SamplingParams
from gemma_local.engine.json_schema import JSON_OBJECT_GRAMMAR, schema_to_grammar, validate_instance
from gemma_local.errors import InvalidRequestError, UnsupportedSchemaError


@pytest.fixture(scope="module")
def probe(model_path: Path):
    p = GrammarProbe(model_path)
    yield p
    p.close()


def accepted(probe: GrammarProbe, schema: dict[str, Any], texts: list[str], *, strict: bool = False) -> list[str]:
    grammar = schema_to_grammar(schema, strict=strict)
    return [t for t in texts if probe.accepts(grammar, t)]


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


# --- keyword by keyword, through llama.cpp's grammar engine --------------------------------


def test_strings_are_valid_json_strings(probe: GrammarProbe) -> None:
    texts = ['"plain"', '"tab\\t and \\"quote\\""', '"\\u00e9t\\u00E9"', '"é€😀"']
    texts += ['"line\nbreak"', '"bad \\x"', '"\\ud800"']  # raw newline, bad escape, lone surrogate
    assert accepted(probe, {"type": "string"}, texts) == texts[:4]


def test_string_lengths(probe: GrammarProbe) -> None:
    texts = ['"a"', '"ab"', '"a\\nb"', '"é€😀"', '"abcd"', '"abcde"']
    assert accepted(probe, {"type": "string", "minLength": 2, "maxLength": 4}, texts) == texts[1:5]


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date", ["2024-02-28", "1999-12-31", "2024-04-30"], ["2024-02-30", "2024-04-31", "2024-13-01", "24-01-01"]),
        ("time", ["12:30:00Z", "23:59:59.123456-05:30"], ["24:00:00Z", "12:30:00", "12:60:00Z"]),
        ("date-time", ["2024-02-28T12:30:00Z", "2024-06-01T00:00:00.5+02:00"], ["2024-02-28 12:30:00Z", "2024-02-28"]),
        ("uuid", ["123e4567-e89b-12d3-a456-426614174000"], ["123e4567e89b12d3a456426614174000", "xyz"]),
        ("email", ["john.doe@example.com", "a+b@mail.co.uk"], ["john@localhost", "@x.com", "a b@x.com"]),
        ("hostname", ["api.example.com", "a-b.io"], ["-bad.com", "under_score.com"]),
        ("ipv4", ["192.168.0.1", "0.0.0.0", "255.255.255.255"], ["256.1.1.1", "01.1.1.1", "1.2.3"]),
        ("uri", ["https://example.com/a/b", "http://x.io"], ["example.com", "https://exa mple.com"]),
    ],
)
def test_string_formats(probe: GrammarProbe, fmt: str, good: list[str], bad: list[str]) -> None:
    schema = {"type": "string", "format": fmt}
    for value in good:
        assert validate_instance(schema, value) == [], value
    for value in bad:
        assert validate_instance(schema, value) != [], value
    texts = [json.dumps(v) for v in good + bad]
    assert accepted(probe, schema, texts) == texts[: len(good)]


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"^[A-Z]{2}-\d{3}$", ["AB-123"], ["AB-1234", "ab-123", "xAB-123"]),
        (r"^(\+\d{1,3} )?\(\d{3}\) \d{3}-\d{4}$", ["(555) 123-4567", "+1 (555) 123-4567"], ["555-1234"]),
        (r"abc", ["abc", "xx abc yy"], ["ab"]),
        (r"^(?:cat|dog)s?$", ["cat", "dogs"], ["cow", "cats!"]),
        (r'^[^"\\]+$', ["plain text"], ['a"b', "a\\b"]),
        (r'^a"b\\c\.$', ['a"b\\c.'], ['a"b\\cx']),
        (r"^\s+$", [" \n\t"], ["x"]),
        (r"^[\w.-]{2,}@x\.org$", ["a.b-c@x.org"], ["a@x.org"]),
    ],
)
def test_string_patterns(probe: GrammarProbe, pattern: str, good: list[str], bad: list[str]) -> None:
    schema = {"type": "string", "pattern": pattern}
    texts = [json.dumps(v) for v in good + bad]
    assert accepted(probe, schema, texts) == texts[: len(good)]


def test_integer_bounds_exactly(probe: GrammarProbe) -> None:
    schema = {"type": "integer", "minimum": -15, "exclusiveMaximum": 230}
    grammar = schema_to_grammar(schema, strict=False)
    for n in [*range(-25, 25), *range(95, 105), *range(220, 240), 999, -100]:
        assert probe.accepts(grammar, str(n)) == (-15 <= n < 230), n
    assert not probe.accepts(grammar, "007")
    assert not probe.accepts(grammar, "1.0")


def test_number_bounds_match_jsonschema(probe: GrammarProbe) -> None:
    rng = random.Random(6)
    checked = 0
    for _ in range(25):
        lo = Decimal(rng.choice(["-10", "-2.5", "0", "0.25", "3", "-0.125", "7.75"]))
        hi = lo + Decimal(rng.choice(["0.5", "1", "2.75", "13", "100.01"]))
        lo_key = rng.choice(["minimum", "exclusiveMinimum"])
        hi_key = rng.choice(["maximum", "exclusiveMaximum"])
        schema = {"type": "number", lo_key: float(lo), hi_key: float(hi)}
        grammar = schema_to_grammar(schema, strict=False)
        candidates = set()
        for bound in (lo, hi):
            for step in ("0", "0.001", "0.1", "0.5", "1", "0.125"):
                for value in (bound + Decimal(step), bound - Decimal(step)):
                    candidates |= {format(value, "f"), format(value.normalize(), "f"), format(value, "f") + "0"}
        for text in candidates:
            plain = text.lstrip("-")
            leading_zero = len(plain) > 1 and plain[0] == "0" and plain[1] != "."
            if leading_zero or (float(text) == 0 and "-" in text):
                continue  # not a canonical JSON number (or negative zero, which the grammar never writes)
            expect = validate_instance(schema, json.loads(text)) == []
            assert probe.accepts(grammar, text) == expect, (schema, text)
            checked += 1
    assert checked > 500


def test_numbers_keep_at_most_15_digits(probe: GrammarProbe) -> None:
    grammar = schema_to_grammar({"type": "number", "exclusiveMaximum": 1, "minimum": 0}, strict=False)
    assert probe.accepts(grammar, "0.99999999999999")
    assert not probe.accepts(grammar, "0.9999999999999999999")  # would round to 1.0 as a double


def test_arrays(probe: GrammarProbe) -> None:
    bounded = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}
    texts = ["[1]", "[1, 2]", "[ 1,2,3 ]", "[1, 2, 3, 4]", '[1, "2"]']
    assert accepted(probe, bounded, texts) == ["[1, 2]", "[ 1,2,3 ]"]
    tuple_ = {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": False}
    assert accepted(probe, tuple_, ['["a", true]', '["a"]', '["a", true, 1]']) == ['["a", true]']
    assert accepted(probe, {"type": "array"}, ["[]", '[1, "x", {"a": null}]']) == ["[]", '[1, "x", {"a": null}]']


def test_objects(probe: GrammarProbe) -> None:
    optional = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"]}
    texts = ['{"b": "x"}', '{"a": 1, "b": "x"}', "{}", '{"a": 1}', '{"b": "x", "a": 1}']
    # Declared order only: the reordered object is valid but never generated.
    assert accepted(probe, optional, texts) == texts[:2]
    mapping = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert accepted(probe, mapping, ["{}", '{"x": 1, "y": 2}', '{"x": "1"}']) == ["{}", '{"x": 1, "y": 2}']
    anything = '{"any": [1, {"thing": true}]}'
    assert accepted(probe, {"type": "object"}, [anything, "[]"]) == [anything]


def test_enum_const_and_unions(probe: GrammarProbe) -> None:
    assert accepted(probe, {"enum": ["red", 1, None, {"a": [1]}]}, ['"red"', "1", "null", '{"a": [1]}', '"blue"']) == [
        '"red"',
        "1",
        "null",
        '{"a": [1]}',
    ]
    # Sibling keywords still apply to enum values.
    assert accepted(probe, {"type": "string", "enum": ["a", 1, "b"]}, ['"a"', "1", '"b"']) == ['"a"', '"b"']
    assert accepted(probe, {"const": {"k": "v"}}, ['{"k": "v"}', '{"k": "w"}']) == ['{"k": "v"}']
    union = {"type": ["string", "null"], "maxLength": 2}
    assert accepted(probe, union, ['"ab"', "null", '"abc"', "1"]) == ['"ab"', "null"]
    any_of = {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "boolean"}]}
    assert accepted(probe, any_of, ["5", "4", "true", '"x"']) == ["5", "true"]


def test_refs_recursion_and_pydantic_strict_schemas(probe: GrammarProbe) -> None:
    tree = {
        "$defs": {"node": obj(name={"type": "string"}, kids={"type": "array", "items": {"$ref": "#/$defs/node"}})},
        "$ref": "#/$defs/node",
    }
    text = '{"name": "a", "kids": [{"name": "b", "kids": []}, {"name": "c", "kids": [{"name": "d", "kids": []}]}]}'
    assert accepted(probe, tree, [text, '{"name": "a", "kids": [{"name": "b"}]}']) == [text]
    schema = to_strict_json_schema(Pet)
    good = '{"pet": {"kind": "cat", "lives": 9}, "color": "blue", "nickname": null}'
    bad = '{"pet": {"kind": "cat", "good": true}, "color": "blue", "nickname": null}'
    assert accepted(probe, schema, [good, bad], strict=True) == [good]
    assert validate_instance(schema, json.loads(good)) == []


EXTRA_SCHEMAS = [
    obj(**{f: {"type": "string", "format": f} for f in ("date", "time", "date-time", "uuid", "email", "uri")}),
    {
        "type": "array",
        "items": {
            "anyOf": [
                {"type": "number", "minimum": -3.5, "exclusiveMaximum": 7.25},
                {"type": "integer", "exclusiveMinimum": -100, "maximum": 12345},
            ]
        },
        "maxItems": 6,
    },
    {"type": "array", "items": {"type": "string", "pattern": "^(?:[a-f0-9]{2}:){2}[A-Z\\d]+|x+\\.y?$"}, "maxItems": 4},
    {"type": "string", "pattern": "[^a-z\\s]{2,}$"},
    {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 3}, "maxItems": 5},
    {"type": "object"},
]


def test_random_walks_through_every_grammar_are_schema_valid(probe: GrammarProbe) -> None:
    """Not just what the model happens to write: random texts the grammar allows are all valid."""
    rng = random.Random(0)
    for schema in [s for _, _, s in TABLE] + EXTRA_SCHEMAS:
        grammar = schema_to_grammar(schema, strict=False)
        walks = [w for w in (probe.random_walk(grammar, rng) for _ in range(12)) if w is not None]
        assert len(walks) >= 3, schema
        for text in walks:
            assert validate_instance(schema, json.loads(text)) == [], (schema, text)


def test_every_table_grammar_compiles(probe: GrammarProbe) -> None:
    for name, _, schema in TABLE:
        assert probe.compiles(schema_to_grammar(schema, strict=False)), name
    assert probe.compiles(JSON_OBJECT_GRAMMAR)


# --- refused schemas --------------------------------------------------------------------------


def _tagged(tag: str) -> dict[str, Any]:
    return {"type": ["object", "string"], "properties": {"k": {"const": tag}}, "required": ["k"]}


@pytest.mark.parametrize(
    ("schema", "keyword", "path"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not", "#/properties/a/not"),
        ({"type": "string", "format": "ipv6"}, "format", "#/format"),
        ({"type": "number", "multipleOf": 5}, "multipleOf", "#/multipleOf"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems", "#/uniqueItems"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties", "#/patternProperties"),
        ({"type": "object", "minProperties": 1}, "minProperties", "#/minProperties"),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "if", "#/if"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf", "#/allOf"),
        ({"$ref": "https://example.com/s.json"}, "$ref", "#/$ref"),
        ({"type": "string", "pattern": "^(?=a)b$"}, "pattern", "#/pattern"),
        ({"type": "string", "pattern": r"^(a)\1$"}, "pattern", "#/pattern"),
        ({"type": "string", "pattern": "^a{2,1000000}$"}, "pattern", "#/pattern"),
        ({"type": "string", "maxLength": 100000}, "maxLength", "#/maxLength"),
        ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, "maxLength", "#"),
        ({"type": "string", "format": "date", "maxLength": 5}, "maxLength", "#"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf", "#/oneOf"),
        ({"oneOf": [_tagged("a"), _tagged("b")]}, "oneOf", "#/oneOf"),  # "x" would match both
        ({"anyOf": [{"type": "string"}], "maxLength": 3}, "maxLength", "#/maxLength"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "minimum", "#/minimum"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems", "#/minItems"),
        ({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}, "$ref": "#/$defs/a"}, "$ref", None),
        ({"enum": ["a"], "type": "integer"}, "enum", "#/enum"),
    ],
)
def test_unsupported_keywords_are_named(schema: dict[str, Any], keyword: str, path: str | None) -> None:
    with pytest.raises(UnsupportedSchemaError) as info:
        schema_to_grammar(schema, strict=False, param="response_format")
    err = info.value
    assert err.keyword == keyword
    if path is not None:
        assert err.path == path
    assert isinstance(err, InvalidRequestError) and err.param == "response_format"
    assert f"'{keyword}'" in str(err)


@pytest.mark.parametrize("schema", [{"type": "strin"}, {"type": "object", "required": "a"}, {"enum": []}, [1]])
def test_malformed_schemas_are_invalid_requests(schema: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        schema_to_grammar(schema, strict=False, param="text.format")
    assert not isinstance(info.value, UnsupportedSchemaError)
    assert info.value.param == "text.format" and "Invalid JSON schema" in str(info.value)


def test_strict_mode_follows_openai_rules() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    with pytest.raises(UnsupportedSchemaError) as info:
        schema_to_grammar(loose, strict=True)
    assert info.value.keyword == "additionalProperties"
    optional = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    with pytest.raises(UnsupportedSchemaError) as info:
        schema_to_grammar(optional, strict=True)
    assert info.value.keyword == "required" and info.value.path == "#/required"
    with pytest.raises(UnsupportedSchemaError):
        schema_to_grammar({"type": "array", "items": {"type": "string"}}, strict=True)
    # Both are fine without strict.
    schema_to_grammar(loose, strict=False)
    schema_to_grammar(optional, strict=False)
    # What the OpenAI SDK sends for .parse(response_format=Model) passes.
    schema_to_grammar(to_strict_json_schema(Solution), strict=True)


def test_discriminated_one_of_is_accepted_and_annotations_ignored() -> None:
    schema = to_strict_json_schema(Pet)
    assert "oneOf" in json.dumps(schema) and "discriminator" in json.dumps(schema)
    schema_to_grammar(schema, strict=True)
    annotated = {"type": "string", "title": "T", "description": "d", "default": "x", "examples": ["y"], "x-extra": 1}
    assert schema_to_grammar(annotated, strict=False) == schema_to_grammar({"type": "string"}, strict=False)


def test_validate_instance_reports_violations() -> None:
    schema = obj(when={"type": "string", "format": "date-time"}, n={"type": "integer", "maximum": 3})
    assert validate_instance(schema, {"when": "2024-01-01T00:00:00Z", "n": 3}) == []
    errors = validate_instance(schema, {"when": "yesterday", "n": 4})
    assert len(errors) == 2 and any("$.when" in e for e in errors) and any("$.n" in e for e in errors)


# --- the real model ---------------------------------------------------------------------------


class Step(BaseModel):
    explanation: str = Field(max_length=40)
    output: str = Field(max_length=20)


class Solution(BaseModel):
    steps: list[Step] = Field(max_length=2)
    final_answer: str = Field(max_length=20)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Color(enum.Enum):
    red = "red"
    blue = "blue"


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    color: Color
    nickname: str | None = Field(max_length=16)


NAME = {"type": "string", "maxLength": 24}
KIDS = {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}
TABLE: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "Describe a person.", obj(name=NAME, age={"type": "integer", "minimum": 0, "maximum": 120})),
    ("enum", "What colour is the sky?", obj(color={"enum": ["red", "green", "blue"]})),
    ("bool-null", "Is the task done?", obj(done={"type": "boolean"}, note={"type": "null"})),
    ("nested", "Give a user account.", obj(user=obj(name=NAME, email={"type": "string", "format": "email"}))),
    (
        "array",
        "Tags for a post about cooking.",
        obj(tags={"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3}),
    ),
    ("const", "Write a report header.", obj(version={"const": 2}, kind={"const": "report"})),
    ("any-of", "Give a value.", obj(value={"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]})),
    ("type-list", "Give an optional id.", obj(id={"type": ["integer", "null"]})),
    ("number", "Give a probability.", obj(p={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})),
    ("integer", "How cold is Oslo in winter?", obj(celsius={"type": "integer", "minimum": -50, "maximum": 50})),
    ("date-time", "When does the meeting start?", obj(starts={"type": "string", "format": "date-time"})),
    ("uuid", "Give a request id.", obj(id={"type": "string", "format": "uuid"})),
    ("pattern", "Give a product code.", obj(code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"})),
    (
        "optional",
        "Describe a movie.",
        {"type": "object", "properties": {"title": NAME, "year": {"type": "integer", "minimum": 1900}}, "required": []},
    ),
    ("map", "Count the fruit: 3 apples and 2 pears.", {"type": "object", "additionalProperties": {"type": "integer"}}),
    ("tuple", "A name and a flag.", obj(row={"type": "array", "prefixItems": [NAME, {"type": "boolean"}]})),
    ("ipv4", "What is the server's address?", obj(ip={"type": "string", "format": "ipv4"})),
    (
        "recursive",
        "Ann has two children, Bob and Cid.",
        {"$defs": {"node": obj(name=NAME, children=KIDS)}, "$ref": "#/$defs/node"},
    ),
    ("pydantic-defs", "Solve 2 + 3 step by step.", to_strict_json_schema(Solution)),
    ("pydantic-one-of", "Describe my pet.", to_strict_json_schema(Pet)),
]


def _greedy(grammar: str | None) -> SamplingParams:
    # Greedy decoding with a repetition penalty: the 270M base model otherwise loops forever
    # inside unbounded arrays and maps.
    return SamplingParams(temperature=0.0, repeat_penalty=1.3, grammar=grammar)


def _run_all(engine, requests: list[GenerationRequest]):
    """Submit with at most 8 in flight (the session engine queues 8), return results in order."""
    results = [None] * len(requests)
    pending: list[tuple[int, Any]] = []
    for i, request in enumerate(requests):
        if len(pending) >= 8:
            j, stream = pending.pop(0)
            results[j] = stream.result()
        pending.append((i, engine.submit(request)))
    for j, stream in pending:
        results[j] = stream.result()
    return results


def test_twenty_schemas_give_schema_valid_json_with_the_real_model(engine) -> None:
    assert len(TABLE) == 20
    requests = [
        GenerationRequest(
            messages=(ChatMessage.text("user", f"{prompt} Answer in JSON."),),
            sampling=_greedy(schema_to_grammar(schema, strict=name.startswith("pydantic"))),
            max_tokens=200,
        )
        for name, prompt, schema in TABLE
    ]
    failures = []
    for (name, _, schema), result in zip(TABLE, _run_all(engine, requests), strict=True):
        if result.finish_reason != "stop":
            failures.append(f"{name}: finished with {result.finish_reason}: {result.text!r}")
            continue
        errors = validate_instance(schema, json.loads(result.text))
        if errors:
            failures.append(f"{name}: {result.text!r} {errors}")
    assert failures == []


def test_json_object_mode_and_length_cut(engine) -> None:
    prompt = (ChatMessage.text("user", "Describe a cat as JSON."),)
    whole = engine.generate(GenerationRequest(messages=prompt, sampling=_greedy(JSON_OBJECT_GRAMMAR), max_tokens=200))
    assert whole.finish_reason == "stop"
    assert isinstance(json.loads(whole.text), dict)
    cut = engine.generate(GenerationRequest(messages=prompt, sampling=_greedy(JSON_OBJECT_GRAMMAR), max_tokens=3))
    assert cut.finish_reason == "length"
    assert cut.text.startswith("{")


def test_a_grammar_llama_cpp_rejects_is_a_clear_error_not_a_crash(engine) -> None:
    # The last one would make llama.cpp allocate until the process dies, were it not refused first.
    for bad in ("root ::= undefined-rule", 'root ::= "a" (', "root ::= root", 'root ::= "{2,1}" [}] "a"{2,1}'):
        request = GenerationRequest(messages=(ChatMessage.text("user", "hi"),), sampling=_greedy(bad), max_tokens=5)
        with pytest.raises(InvalidRequestError) as info:
            engine.submit(request)
        assert info.value.param == "grammar"
    # The engine still serves afterwards.
    ok = engine.generate(GenerationRequest(messages=(ChatMessage.text("user", "hi"),), max_tokens=2))
    assert ok.usage.completion_tokens >= 1
