"""The CLI's structured output, tools and ``-n``: the same pipeline as the server, in a shell."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import run_cli

ADD_TOOL = {
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
COMMON = ("--temperature", "0", "--ctx", "1024")


def test_generate_json_schema_answers_with_valid_json(model_path: Path) -> None:
    import jsonschema

    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
    proc = run_cli("generate", "How many legs has a cat?", "--json-schema", json.dumps(schema), "--json", *COMMON)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["finish_reason"] == "stop"
    jsonschema.validate(json.loads(result["text"]), schema)


def test_generate_prints_forced_calls_as_json_lines(tmp_path: Path, model_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": ADD_TOOL}]))
    proc = run_cli(
        "generate", "Add 2 and 3.", "--tools", str(tools), "--tool-choice", "add", "--max-tokens", "60", *COMMON
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout
    assert {line["type"] for line in lines} == {"tool_call"}
    assert lines[0]["name"] == "add" and set(lines[0]["arguments"]) == {"a", "b"}
    assert lines[0]["id"].startswith("call_")


def test_generate_n_choices(model_path: Path) -> None:
    two = ("generate", "Once upon a time", "-n", "2", "--temperature", "1", "--seed", "5", "--max-tokens", "4")
    proc = run_cli(*two, "--json", "--ctx", "1024")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [c["index"] for c in result["choices"]] == [0, 1]
    assert 2 <= result["usage"]["completion_tokens"] <= 8  # both choices counted, each at most 4
    assert result["text"] == result["choices"][0]["text"]
    plain = run_cli(*two, "--ctx", "1024")
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.count("[choice ") >= 2


def test_bad_structured_options_are_one_line(tmp_path: Path) -> None:
    bad_schema = run_cli("generate", "hi", "--json-schema", "{not json")
    assert bad_schema.returncode == 1 and bad_schema.stderr.startswith("Error: --json-schema: not valid JSON")
    missing = run_cli("generate", "hi", "--tools", str(tmp_path / "none.json"))
    assert missing.returncode == 1 and "--tools: cannot read" in missing.stderr
    (tmp_path / "t.json").write_text(json.dumps([ADD_TOOL]))
    unknown = run_cli("generate", "hi", "--tools", str(tmp_path / "t.json"), "--tool-choice", "mul")
    assert unknown.returncode == 1 and "--tool-choice mul: no such function" in unknown.stderr
    stops = run_cli("generate", "hi", *[arg for i in range(17) for arg in ("--stop", f"s{i}")], "--ctx", "1024")
    assert stops.returncode == 1 and "at most 16" in stops.stderr
    assert "Traceback" not in bad_schema.stderr + missing.stderr + unknown.stderr + stops.stderr


def test_chat_shows_calls_and_keeps_going(tmp_path: Path, model_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": [ADD_TOOL]}))
    script = "Add 2 and 3.\nThanks.\n/exit\n"
    proc = run_cli(
        "chat", "--tools", str(tools), "--tool-choice", "required", "--max-tokens", "60", *COMMON, stdin=script
    )
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line[line.index("{") :]) for line in proc.stdout.splitlines() if '"tool_call"' in line]
    assert len(calls) >= 2 and all(c["name"] == "add" for c in calls)  # one answer per user turn
