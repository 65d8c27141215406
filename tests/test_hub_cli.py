"""``gemma-local pull`` as a user runs it: a real subprocess, HF_ENDPOINT pointing at the fake Hub.

The headline test kills a pull with SIGKILL mid-file and runs it again: the second process must
ask for ``Range: bytes=N-`` where N is what the first one had written, and fetch no byte twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hub_fake import FakeFile, FakeHub, gguf_mmproj, gguf_model

from gemma_local.cli import main
from gemma_local.hub.progress import human_bytes

REPO = "test-org/slow-GGUF"


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        yield hub


@pytest.fixture
def env(fake_hub: FakeHub, isolated_home: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=fake_hub.url,
        HF_HOME=str(tmp_path / "hf-home"),  # no saved token, no shared cache
        HF_HUB_DISABLE_TELEMETRY="1",
        GEMMA_LOCAL_HOME=str(isolated_home),
    )
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gemma_local", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_pull_resumes_after_sigkill_without_refetching_a_byte(
    fake_hub: FakeHub, env: dict[str, str], isolated_home: Path
) -> None:
    content = gguf_model(3 * 2**20, seed=7)
    model = FakeFile(content, throttle=(16 * 1024, 0.01))  # slow enough to be killed mid-file
    projector = gguf_mmproj(20_000)
    fake_hub.add_repo(REPO, {"slow-Q4_K_M.gguf": model, "mmproj-slow-f16.gguf": projector})
    partial = isolated_home / "store" / ".partial" / f"{model.sha256}.part"

    first = subprocess.Popen(
        [sys.executable, "-m", "gemma_local", "pull", f"hf.co/{REPO}", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 256 * 1024):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first pull never got going"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL

    kept = partial.stat().st_size
    assert 0 < kept < len(content)
    assert partial.read_bytes() == content[:kept]  # what survived the kill is a clean prefix
    assert (isolated_home / "registry.json").exists() is False  # nothing registered
    fake_hub.wait_idle()
    first_run = len(fake_hub.requests)

    model.throttle = None
    second = cli(env, "pull", f"hf.co/{REPO}", "--json")
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["status"] == "pulled"
    assert Path(result["model"]["path"]).read_bytes() == content
    assert not partial.exists()

    blob = f"/cdn/{model.sha256}"
    before = [r for r in fake_hub.requests[:first_run] if r.path == blob and r.method == "GET"]
    after = [r for r in fake_hub.requests[first_run:] if r.path == blob and r.method == "GET"]
    assert [r.range_start for r in before] == [None]
    # The second process resumed exactly where the first one's bytes end, and fetched only the rest.
    assert [(r.status, r.range_start) for r in after] == [(206, kept)]
    assert after[0].bytes_sent == len(content) - kept


def test_pull_json_then_models_list_json(fake_hub: FakeHub, env: dict[str, str]) -> None:
    fake_hub.add_repo(REPO, {"slow-Q4_K_M.gguf": gguf_model(10_000), "mmproj-slow-f16.gguf": gguf_mmproj(5000)})
    pulled = cli(env, "pull", f"hf.co/{REPO}:Q4_K_M", "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr == ""  # --json: no progress bar, no chatter
    model = json.loads(pulled.stdout)["model"]

    listed = cli(env, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r["source"] == "store"]
    assert rows == [
        {
            "name": f"hf.co/{REPO}:Q4_K_M",
            "path": model["path"],
            "size_bytes": model["size_bytes"],
            "source": "store",
            "default": False,
            "vision": True,
            "instruction_tuned": True,  # the test GGUF carries a chat template
            "mmproj_path": model["mmproj_path"],
            "repo": REPO,
            "revision": fake_hub.repos[REPO.lower()].head,
            "quant": "q4_k_m",
            "aliases": [],
            "pulled_at": model["pulled_at"],
        }
    ]
    # `models` alone is `models list`.
    alias = CliRunner().invoke(main, ["models", "--json"], env={"GEMMA_LOCAL_HOME": env["GEMMA_LOCAL_HOME"]})
    assert json.loads(alias.output) == json.loads(listed.stdout)

    again = cli(env, "pull", f"hf.co/{REPO}:Q4_K_M")
    assert again.returncode == 0 and again.stdout.startswith(f"hf.co/{REPO}:Q4_K_M is already pulled")


def test_pull_without_a_terminal_prints_lines_not_a_bar(fake_hub: FakeHub, env: dict[str, str]) -> None:
    fake_hub.add_repo(REPO, {"slow-Q4_K_M.gguf": gguf_model(10_000)})
    proc = cli(env, "pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    commit = fake_hub.repos[REPO.lower()].head
    size = human_bytes(len(fake_hub.file(REPO, "slow-Q4_K_M.gguf").content))
    assert proc.stderr == f"Pulling hf.co/{REPO} from {REPO} @ {commit[:12]}: {size} to fetch.\n"  # and no bar
    assert proc.stdout.startswith(f"Pulled hf.co/{REPO} ({size}, sha256 verified): ")


@pytest.mark.parametrize(
    ("extra_env", "expected"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "(HF_HUB_OFFLINE is set); `pull` needs the network."),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "`pull` needs the network."),  # nothing listens on port 9
    ],
)
def test_offline_pull_fails_with_one_clear_line(env: dict[str, str], extra_env: dict[str, str], expected: str) -> None:
    proc = cli({**env, **extra_env}, "pull", "gemma-3-4b:qat")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: Cannot reach the Hugging Face Hub at ")
    assert expected in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_gated_repo_error_is_one_line_naming_the_fix(fake_hub: FakeHub, env: dict[str, str]) -> None:
    fake_hub.add_repo("google/gemma-3-27b-it-qat-q4_0-gguf", {"gemma-3-27b-it-q4_0.gguf": gguf_model(1000)}, gated=True)
    proc = cli(env, "pull", "hf.co/google/gemma-3-27b-it-qat-q4_0-gguf")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "is gated: accept the licence at https://huggingface.co/google/gemma-3-27b-it-qat-q4_0-gguf" in proc.stderr
    assert "set HF_TOKEN" in proc.stderr
    assert "`gemma-local pull gemma-3-27b:qat`" in proc.stderr


def test_dry_run_shows_the_choice_and_fetches_nothing(fake_hub: FakeHub, env: dict[str, str]) -> None:
    fake_hub.add_repo("ggml-org/gemma-3-1b-it-qat-GGUF", {"gemma-3-1b-it-qat-Q4_0.gguf": gguf_model(1000)})
    fake_hub.add_repo(
        "unsloth/gemma-3-1b-it-GGUF",
        {f"gemma-3-1b-it-{t}.gguf": gguf_model(1000, seed=i) for i, t in enumerate(["Q4_K_M", "Q5_K_M", "Q6_K"])},
    )
    proc = cli(env, "pull", "gemma-3-1b", "--dry-run", "--memory-gib", "4")
    assert proc.returncode == 0, proc.stderr
    # BF16 and Q8_0 are not in the (fake) repo any more: Q6_K is the best left, and it fits.
    assert proc.stderr.startswith(
        "Chose gemma-3-1b:q6_k (Q6_K): best quality that fits 85% of 4.0 GiB of memory given by --memory-gib"
    )
    assert proc.stdout.startswith("gemma-3-1b:q6_k: unsloth/gemma-3-1b-it-GGUF @ ")
    assert fake_hub.content_requests() == []
