"""The real Claude Code and Codex CLI complete turns with a tool round trip against `serve`.

The embedded 270M does not choose to call a tool, and these clients give it no useful output
limit, so the server runs with ``--force-tool NAME`` (one forced call to a harmless tool at
the start of each user turn, free answers after the result) and ``--max-output-tokens`` (so
each answer ends). Claude Code forces ``Read`` (read-only; ``-p`` runs it without asking);
Codex forces ``get_goal`` (reads the thread's goal, no side effects). Slow on a CPU: Claude
Code's prompt is thousands of tokens, prefilled once and then reused from the cache.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
from agent_clients import LoggedRequest, ServeProcess, agent_binary, codex_home, serve

#: Past the suite's 300 s per-test timeout: a cold prefill of a client's prompt takes minutes on a loaded CPU.
pytestmark = pytest.mark.timeout(1800)

MODEL = "gemma-3-27b"
#: A Claude Code turn on a loaded 2-core CPU: one ~5K-token prefill, then cached requests.
CLIENT_TIMEOUT = 900


#: The server's output cap in the Claude Code test (the client is told it too).
OUTPUT_CAP = "320"


def _reuse(requests: list[LoggedRequest]) -> list[float]:
    """For each request after the first: cached tokens / the previous request's prompt tokens.

    Not after an answer cut at the output cap: its cut call was dropped, so the client's next
    request does not hold what the model wrote, and the conversation differs from that point.
    """
    return [b.cached_tokens / a.prompt_tokens for a, b in itertools.pairwise(requests) if a.finish != "length"]


def _claude(binary: Path, server: ServeProcess, work: Path, config: Path, *args: str) -> dict:
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": server.root,
        "ANTHROPIC_API_KEY": "unused",
        "ANTHROPIC_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CONFIG_DIR": str(config),
        # The server's output cap, so Claude Code does not retry a capped answer with ever larger
        # max_tokens (up to 128000) before giving up.
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": OUTPUT_CAP,
    }
    # The forced call, then the answer after its result (which ends where another call would
    # open). Claude Code sends no temperature, so the 270M samples the call's file path: now and
    # then it runs to the output cap, the cut call is dropped and Claude Code asks again (the
    # next user turn is forced again); a few turns leave room for that. Ending at the turn limit
    # (exit 1, subtype error_max_turns) is fine; an API error or no JSON is a failure.
    cmd = [binary, "-p", *args, "--output-format", "json", "--tools", "Read", "--max-turns", "4"]
    out = subprocess.run(
        cmd, cwd=work, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL
    )
    result = json.loads(out.stdout)
    assert result["type"] == "result" and result["subtype"] in ("success", "error_max_turns"), result
    # The one API error allowed: the 270M's free answer ran to the output cap (its length is
    # chance: Claude Code sends no temperature). Anything else (a 4xx/5xx, a refused request) fails.
    assert result.get("api_error") in (None, "max_output_tokens"), out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-2000:]
    return result


def _claude_session(binary: Path, root: Path) -> None:
    """Two ``-p`` runs (the second ``--continue``s the first) against a fresh server; asserts."""
    work, config, home = root / "work", root / "claude", root / "home"
    for d in (work, config, home):
        d.mkdir(parents=True)
    (work / "notes.txt").write_text("The meeting is on Tuesday.\n")
    # Claude Code sends no temperature (0.7 here), so the forced Read call's length varies: 96
    # tokens cut it short now and then (a truncated call is dropped), 320 leaves it room.
    flags = ("--ctx", "16384", "--parallel", "1", "--max-output-tokens", OUTPUT_CAP, "--force-tool", "Read")
    with serve(home, *flags) as server:
        _claude(binary, server, work, config, "What does notes.txt say?")
        after_first = len(server.requests("/v1/messages"))
        second = _claude(binary, server, work, config, "--continue", "Read it again.")
        requests = server.requests("/v1/messages")
    assert all(r.status == 200 for r in requests), requests
    # Each `-p` run: a forced call that came back whole, then a request carrying its result.
    for run in (requests[:after_first], requests[after_first:]):
        calls = [i for i, r in enumerate(run) if r.finish == "tool_calls"]
        assert calls and calls[0] + 1 < len(run), run
    # Every request reuses >= 95% of the one before it, across the two runs too.
    reuse = _reuse(requests)
    assert min(reuse) >= 0.95, [(r.prompt_tokens, r.cached_tokens) for r in requests]
    # Reported where the Anthropic API puts it.
    assert second["usage"]["cache_read_input_tokens"] > 0


def test_claude_code_turns_take_a_tool_round_trip_and_reuse_the_prompt(tmp_path: Path) -> None:
    # A second session when the first fails: what the 270M samples (a path, an answer's length)
    # is chance, and a session where it runs to the cap twice in a row says nothing about the
    # server. Two failed sessions are a failure.
    binary = agent_binary("claude")
    try:
        _claude_session(binary, tmp_path / "first")
    except AssertionError:
        _claude_session(binary, tmp_path / "second")


CODEX_CONFIG = """\
model = "{model}"
model_provider = "gemma-local"
model_context_window = 16384

[model_providers.gemma-local]
name = "gemma-local"
base_url = "{base_url}/v1"
env_key = "GEMMA_LOCAL_CLIENT_KEY"
wire_api = "responses"
# A cold prefill of Codex's ~9K-token prompt can take minutes on a loaded CPU, longer than
# Codex's default 5-minute wait for the next stream event.
stream_idle_timeout_ms = 1800000
"""


def test_codex_exec_takes_a_tool_round_trip(tmp_path: Path) -> None:
    binary = agent_binary("codex")
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    flags = ("--ctx", "16384", "--parallel", "1", "--max-output-tokens", "48", "--force-tool", "get_goal")
    with serve(home, *flags) as server, codex_home() as codex:
        (codex / "config.toml").write_text(CODEX_CONFIG.format(model=MODEL, base_url=server.root))
        env = {**os.environ, "CODEX_HOME": str(codex), "GEMMA_LOCAL_CLIENT_KEY": "unused"}
        # Read-only sandbox: after the result the 270M may call exec_command with made-up text.
        cmd = [binary, "exec", "--json", "--skip-git-repo-check", "--sandbox", "read-only", "What is my goal?"]
        out = subprocess.run(
            cmd, cwd=work, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL
        )
        requests = server.requests("/v1/responses")
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    ends = [e for e in events if e["type"] in ("turn.completed", "turn.failed")]
    assert ends, out.stdout[-3000:] + out.stderr[-2000:]
    # The forced get_goal call, then a request carrying its output, answered by the model.
    assert requests[0].finish == "tool_calls" and len(requests) >= 2, requests
    assert all(r.status == 200 for r in requests), requests
    assert min(_reuse(requests)) >= 0.95, [(r.prompt_tokens, r.cached_tokens) for r in requests]
    # The 270M's free answer after the result runs to the output cap more often than not,
    # which Codex reports as a failed turn ("Incomplete response returned, reason:
    # max_output_tokens"); any other failure is one.
    if ends[-1]["type"] == "turn.failed":
        assert "max_output_tokens" in ends[-1]["error"]["message"], ends[-1]
    else:
        assert ends[-1]["usage"]["cached_input_tokens"] > 0
