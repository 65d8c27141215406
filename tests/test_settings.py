"""One settings object: the only reader of ``GEMMA_LOCAL_*``, and the source of serve's options.

Precedence is flag > env > default for every option of ``serve``, checked through click's
CliRunner with the server itself stubbed out (``serve._run``): nothing is loaded or bound.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import gemma_local
from gemma_local.cli import main
from gemma_local.commands import serve as serve_command
from gemma_local.errors import GemmaLocalError
from gemma_local.settings import AppSettings, EngineSettings, SearchSettings, ServerSettings, env_var

SERVE_SETTINGS = (ServerSettings, EngineSettings, SearchSettings)
PACKAGE = Path(gemma_local.__file__).parent


def test_only_the_settings_module_reads_the_environment() -> None:
    """No module but settings.py reads env vars: no os.environ/getenv, no click envvar=, no settings class."""
    reader = re.compile(r"\bos\.environ\b|\bgetenv\(|\benviron\.get\(|\benvvar\s*=|class\s+\w+\([^)]*BaseSettings")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "settings.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if reader.search(line)
    ]
    assert offenders == []


def test_settings_fields_do_not_collide() -> None:
    """serve splits its flags among three settings classes by field name: each name in one only."""
    names = [name for cls in (*SERVE_SETTINGS, AppSettings) for name in cls.model_fields]
    assert len(names) == len(set(names))


def _field(name: str) -> tuple[type, Any]:
    for cls in SERVE_SETTINGS:
        if name in cls.model_fields:
            return cls, cls.model_fields[name]
    raise AssertionError(f"serve's option {name!r} is no settings field")


def _serve_options() -> list[click.Option]:
    return [p for p in serve_command.serve.params if isinstance(p, click.Option) and p.name != "help"]


def test_every_serve_option_is_a_settings_field_with_its_bounds_and_help() -> None:
    options = _serve_options()
    assert {o.name for o in options} >= {"host", "port", "api_key", "shutdown_grace", "model", "ctx", "search_timeout"}
    for option in options:
        cls, field = _field(option.name)
        assert option.envvar is None, f"{option.name}: click must not read the environment itself"
        assert option.default in (None, ()), f"{option.name}: the default belongs to {cls.__name__}"
        assert field.description and field.description in (option.help or ""), option.name
        assert env_var(option.name) in (option.help or ""), option.name
        bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
        if isinstance(option.type, click.IntRange | click.FloatRange):
            assert option.type.min == bounds.get("ge", bounds.get("gt")), option.name
            assert option.type.max == bounds.get("le", bounds.get("lt")), option.name


def _values(option: click.Option) -> tuple[str, Any, list[str], Any]:
    """(env text, its parsed value, flag args, their parsed value) for one option."""
    flag = option.opts[0]
    if option.is_flag:  # --x/--no-x: the env turns it on, the flag off again
        return "true", True, [option.secondary_opts[0]], False
    if option.multiple:
        return json.dumps(["env.example"]), ["env.example"], [flag, "flag.example"], ["flag.example"]
    kind = option.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0]), kind.choices[0], [flag, str(kind.choices[1])], kind.choices[1]
    if isinstance(kind, click.IntRange):
        low = kind.min if kind.min is not None else 1
        return str(low), low, [flag, str(low + 1)], low + 1
    if isinstance(kind, click.FloatRange):
        return "1.5", 1.5, [flag, "2.5"], 2.5
    return "env-value", "env-value", [flag, "flag-value"], "flag-value"


@pytest.fixture
def serve_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run(server: ServerSettings, engine: EngineSettings, search: SearchSettings) -> None:
        calls.append({**server.model_dump(), **engine.model_dump(), **search.model_dump()})

    monkeypatch.setattr(serve_command, "_run", run)
    return calls


@pytest.mark.parametrize("option", _serve_options(), ids=lambda o: o.opts[0])
def test_serve_option_env_is_honoured_and_the_flag_overrides_it(
    option: click.Option, serve_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, field = _field(option.name)
    env_text, env_value, flag_args, flag_value = _values(option)
    runner = CliRunner()
    if option.name == "mmproj":  # a projector goes with one model (--mmproj alone is refused)
        monkeypatch.setenv("GEMMA_LOCAL_MODEL", "some-model")
    assert runner.invoke(main, ["serve"]).exit_code == 0
    monkeypatch.setenv(env_var(option.name), env_text)
    result = runner.invoke(main, ["serve"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["serve", *flag_args])
    assert result.exit_code == 0, result.output
    default, from_env, from_flag = (call[option.name] for call in serve_calls)
    # No model: every stored model is served on demand.
    expected_default = field.get_default(call_default_factory=True)
    assert (default, from_env, from_flag) == (expected_default, env_value, flag_value)


def test_serve_defaults_shutdown_grace_to_ten_seconds(serve_calls: list[dict[str, Any]]) -> None:
    assert CliRunner().invoke(main, ["serve"]).exit_code == 0
    assert serve_calls[0]["shutdown_grace"] == 10.0 and serve_calls[0]["port"] == 8080


def test_an_invalid_env_value_is_one_clear_line(
    serve_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMMA_LOCAL_CTX", "12")
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1 and serve_calls == []
    assert result.output.startswith("Error: Invalid value for --ctx or GEMMA_LOCAL_CTX: ")
    assert "greater than or equal to 256" in result.output and result.output.count("\n") == 1
    monkeypatch.setenv("GEMMA_LOCAL_CTX", "1024")
    monkeypatch.setenv("GEMMA_LOCAL_CORS_ORIGINS", "not a JSON list")
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1 and "GEMMA_LOCAL_CORS_ORIGINS" in result.output and "Traceback" not in result.output


def test_info_plans_with_the_env_context_unless_a_flag_says_otherwise(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMMA_LOCAL_CTX", "1024")
    from_env = CliRunner().invoke(main, ["info", str(model_path), "--json"])
    from_flag = CliRunner().invoke(main, ["info", str(model_path), "--json", "--ctx", "2048"])
    assert json.loads(from_env.output)["plan"]["ctx"] == 1024
    report = json.loads(from_flag.output)
    assert report["plan"]["ctx"] == 2048
    machine = report["machine"]  # what the plan was allowed, and from what
    assert machine["plan_budget_bytes"] == report["plan"]["budget"] and machine["plan_budget"].startswith("85% of ")


@pytest.mark.parametrize("value", ["1", "true"])
def test_debug_env_shows_the_exception(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = CliRunner().invoke(main, ["info", "no-such-model"])
    assert quiet.exit_code == 1 and quiet.output.startswith("Error: ")
    monkeypatch.setenv("GEMMA_LOCAL_DEBUG", value)
    loud = CliRunner().invoke(main, ["info", "no-such-model"])
    assert isinstance(loud.exception, GemmaLocalError)


def test_home_and_cache_come_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gemma_local.paths import cache_dir, home_dir

    monkeypatch.setenv("GEMMA_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEMMA_LOCAL_CACHE", str(tmp_path / "cache"))
    assert (home_dir(), cache_dir()) == (tmp_path / "home", tmp_path / "cache")
    monkeypatch.setenv("GEMMA_LOCAL_CACHE", "")  # empty counts as unset
    assert cache_dir() != tmp_path / "cache"
