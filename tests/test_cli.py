"""The CLI through a real subprocess, the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_local.engine.model import ContextParams, LlamaModel
from gemma_local.errors import ModelLoadError, ModelNotFoundError


def run_cli(
    *args: str, stdin: str | None = None, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEMMA_LOCAL_THREADS": "2", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "gemma_local", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_generate_json_reports_usage_and_timings(model_path: Path) -> None:
    proc = run_cli("generate", "The sky is", "--temperature", "0", "--max-tokens", "6", "--json", "--ctx", "1024")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 6
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + 6
    assert result["timings"]["generation_tokens_per_s"] > 0
    assert "Traceback" not in proc.stderr


def test_generate_streams_plain_text_and_reads_stdin(model_path: Path) -> None:
    as_json = run_cli(
        "generate", "-", "--temperature", "0", "--max-tokens", "6", "--json", "--ctx", "1024", stdin="Once upon a time"
    )
    plain = run_cli(
        "generate", "-", "--temperature", "0", "--max-tokens", "6", "--ctx", "1024", stdin="Once upon a time"
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == json.loads(as_json.stdout)["text"] + "\n"


def test_missing_model_is_one_clear_line() -> None:
    proc = run_cli("generate", "hi", "--model", "/nonexistent/model.gguf")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: Model file not found: /nonexistent/model.gguf"


def test_unknown_model_name_says_how_to_get_it() -> None:
    proc = run_cli("generate", "hi", "--model", "gemma-3-9000b")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "gemma-local pull gemma-3-9000b" in proc.stderr


def test_corrupt_gguf_is_a_clear_error(tmp_path: Path, model_path: Path) -> None:
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("this is not a model")
    proc = run_cli("generate", "hi", "--model", str(not_gguf))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is not a GGUF model file" in proc.stderr

    for cut, message in ((1 << 20, "is truncated"), (64 << 20, "could not load")):
        truncated = tmp_path / f"truncated-{cut}.gguf"
        truncated.write_bytes(model_path.read_bytes()[:cut])
        proc = run_cli("generate", "hi", "--model", str(truncated))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_loader_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        LlamaModel(tmp_path / "missing.gguf", ContextParams(n_ctx_per_seq=512))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError):
        LlamaModel(bad, ContextParams(n_ctx_per_seq=512))


def test_bad_option_values_are_rejected() -> None:
    proc = run_cli("generate", "hi", "--temperature", "5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--temperature" in proc.stderr


def test_models_lists_the_embedded_default(model_path: Path) -> None:
    proc = run_cli("models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert any(r["default"] and r["source"] == "embedded" for r in rows)


def test_chat_keeps_history_and_handles_commands(model_path: Path) -> None:
    script = "My name is Ada.\n/reset\nHello\n/exit\n"
    proc = run_cli("chat", "--temperature", "0", "--max-tokens", "4", "--ctx", "1024", stdin=script)
    assert proc.returncode == 0, proc.stderr
    assert "(history cleared)" in proc.stderr
    assert proc.stdout.count(">>>") == 4


def test_ctrl_c_stops_the_answer_but_not_the_chat(model_path: Path) -> None:
    import signal
    import time

    env = {**os.environ, "GEMMA_LOCAL_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_local", "chat", "--max-tokens", "3000", "--ctx", "4096"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("Write a very long story.\n")
    proc.stdin.flush()
    # Wait for the answer to start streaming (the prompt marker, then text).
    seen = ""
    deadline = time.time() + 120
    while time.time() < deadline and len(seen) < 40:
        seen += proc.stdout.read(1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.stdin.write("/exit\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "[stopped]" in seen + out
