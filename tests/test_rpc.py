"""Splitting the model over llama.cpp RPC workers: real `gemma-local worker` processes on 127.0.0.1.

- greedy output over two workers is token-identical to a local run (weights not repacked
  locally: a worker's CPU backend never repacks, and repacked kernels round differently);
- the planner's per-worker split matches what llama.cpp allocates on each worker within 10%;
- a worker killed mid-generation: the stream ends with a clear error event, new requests get
  503 in every API's format, /health says degraded, and the server exits with status 3: no hang;
- an unreachable worker is one clear line naming it; the worker warns when not on loopback.

These need llama-cpp-python built with GGML_RPC=ON; `make install` (and so `make test`)
rebuilds it when the installed one lacks it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from test_faults import serve_process, stream_in_thread

from gemma_local.engine import rpc

needs_rpc = pytest.mark.skipif(
    not rpc.supported(),
    reason="llama-cpp-python was built without GGML_RPC=ON: `make install` rebuilds it",
)

#: Gemma 3's <eos> and <end_of_turn>: kept from ending a generation early.
NO_EOS = {"1": -100, "106": -100}
THREADS = "1"  # two busy cores: one thread per process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """``python -m gemma_local worker`` on a free loopback port."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "gemma_local", "worker", "--port", str(self.port), "--threads", THREADS, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker did not start: {self.proc.communicate()[0]}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def workers(n: int) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(n):
            started.append(Worker())
        yield started
    finally:
        for w in started:
            w.kill()


@pytest.fixture(scope="module")
def two_workers() -> Iterator[list[Worker]]:
    with workers(2) as ws:
        yield ws


# --- pure parts ----------------------------------------------------------------------------------


def test_endpoints_parse_with_default_port_and_reject_junk() -> None:
    from gemma_local.errors import InvalidRequestError

    assert rpc.parse_endpoints(" 10.0.0.2:50053, box ") == ("10.0.0.2:50053", "box:50052")
    assert rpc.parse_endpoints("[::1]:7000") == ("[::1]:7000",)
    for bad in ("a:0", "a:99999", "a:x", "a:1,a:1"):
        with pytest.raises(InvalidRequestError):
            rpc.parse_endpoints(bad)


def test_layers_are_assigned_as_llama_cpp_assigns_them(model_path: Path) -> None:
    from gemma_local.memory import ModelShape, estimate
    from gemma_local.memory.split import LayerWeights, SplitDevice, parse_tensor_split, plan_split

    shape = ModelShape.from_gguf(model_path)
    weights = LayerWeights.from_gguf(model_path)
    assert len(weights.blocks) == shape.n_layer == 18
    est = estimate(shape, ctx=1024)
    gib = 2**30
    devices = [SplitDevice("RPC0[a:1]", "a:1", 8 * gib, 8 * gib), SplitDevice("RPC1[b:1]", "b:1", 8 * gib, 8 * gib)]
    even = plan_split(weights, shape, est, devices, cpu_budget=gib)
    # 19 layers (the output head counts) at 50/50: layer i goes to device 0 while i/19 < 0.5.
    assert even.gpu_layers == 19
    assert [len(d.layers) for d in even.devices] == [0, 10, 9]
    assert even.devices[2].layers[-1] == 18  # the head, with its copy of the tied embeddings
    assert even.devices[2].weights > weights.input
    assert even.devices[0].weights == weights.input  # the embeddings stay on this machine
    skewed = plan_split(weights, shape, est, devices, cpu_budget=gib, shares=parse_tensor_split("3,1", 2))
    assert [len(d.layers) for d in skewed.devices] == [0, 15, 4]
    # A worker too small for its fixed share: fewer layers are offloaded, the rest stay local.
    tiny = [devices[0], SplitDevice("RPC1[b:1]", "b:1", 150 * 2**20, gib)]
    partial = plan_split(weights, shape, est, tiny, cpu_budget=gib, shares=(1.0, 1.0))
    assert partial.fits and partial.gpu_layers < 19 and partial.devices[0].layers
    with pytest.raises(ValueError, match="2 device"):
        parse_tensor_split("1,1,1", 2)


# --- real workers --------------------------------------------------------------------------------


def _engine(endpoints: tuple[str, ...], model_path: Path):
    from gemma_local.cli_support import open_engine
    from gemma_local.settings import EngineSettings

    settings = EngineSettings(model=str(model_path), ctx=1024, parallel=1, threads=1, rpc=",".join(endpoints))
    return settings, open_engine(settings)


def _greedy(engine) -> tuple[str, list[tuple[int, ...]]]:
    from gemma_local.engine import ChatMessage, GenerationRequest, SamplingParams

    request = GenerationRequest(
        messages=(ChatMessage.text("user", "List the planets of the solar system."),),
        sampling=SamplingParams(temperature=0),
        max_tokens=32,
        logprobs=0,
    )
    result = engine.generate(request)
    return result.text, [lp.bytes for lp in result.logprobs]


@needs_rpc
def test_split_over_two_workers_is_token_identical_and_allocated_as_planned(two_workers, model_path) -> None:
    from gemma_local.cli_support import plan_for, rpc_workers
    from gemma_local.engine import ContextParams, Engine

    endpoints = tuple(w.endpoint for w in two_workers)
    settings, split_engine = _engine(endpoints, model_path)
    try:
        split_text, split_tokens = _greedy(split_engine)
        allocated = split_engine.model.allocations.by_device
        plan = plan_for(settings, model_path, workers=rpc_workers(settings))
    finally:
        split_engine.close()
    with Engine(model_path, ContextParams(n_ctx_per_seq=1024, n_seq=1, n_threads=1, gpu_layers=0, repack=False)) as e:
        local_text, local_tokens = _greedy(e)
    assert len(split_tokens) == 32
    assert split_tokens == local_tokens and split_text == local_text

    assert plan.split is not None
    for row in plan.split.devices[1:]:
        assert row.layers, row
        got = {
            kind: sum(size for name, k, size in allocated if name == row.name and k == kind) for kind in ("model", "KV")
        }
        assert abs(got["model"] - row.weights) <= 0.10 * got["model"], (row, got)
        assert abs(got["KV"] - row.kv) <= 0.10 * got["KV"], (row, got)


@needs_rpc
def test_info_shows_the_plan_per_worker(two_workers, model_path) -> None:
    endpoints = ",".join(w.endpoint for w in two_workers)
    out = subprocess.run(
        [sys.executable, "-m", "gemma_local", "info", str(model_path), "--rpc", endpoints, "--ctx", "1024", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    split = json.loads(out)["plan"]["split"]
    names = [d["name"] for d in split["devices"]]
    assert names == ["CPU", *(f"RPC0[{w.endpoint}]" for w in two_workers)]
    assert split["gpu_layers"] == 19 and split["fits"]
    assert sum(len(d["layers"]) for d in split["devices"]) == 19


@needs_rpc
def test_unreachable_worker_is_one_clear_line(model_path) -> None:
    port = free_port()  # nothing listens there
    for command in (["generate", "hi"], ["serve", "--port", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "gemma_local", *command, "-m", str(model_path), "--rpc", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"RPC worker 127.0.0.1:{port} is unreachable" in lines[0], done.stderr


@needs_rpc
def test_worker_warns_loudly_off_loopback() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_local", "worker", "--host", "0.0.0.0", "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        while proc.stdout and not any("listening on" in line for line in lines):
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)
        text = "".join(lines)
        assert "NO authentication" in text and "CPU" in text and "free of" in text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


@needs_rpc
def test_killed_worker_fails_requests_cleanly_and_the_server_exits_3(model_path) -> None:
    with workers(2) as (first, second):
        args = ("-m", str(model_path), "--rpc", f"{first.endpoint},{second.endpoint}")
        with serve_process(*args, "--ctx", "1024", "--parallel", "2", "--threads", THREADS) as server:
            base_url = server.wait_ready(timeout=240)
            model = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]["id"]
            body = {"model": model, "messages": [{"role": "user", "content": "Count to a thousand."}]}
            long = {**body, "max_tokens": 2000, "stream": True, "logit_bias": NO_EOS}
            thread, result = stream_in_thread(base_url, long)
            assert result.first_event.wait(120) and result.error is None
            killed_at = time.monotonic()
            second.kill()
            thread.join(60)
            assert not thread.is_alive(), "the stream hung"
            assert result.ended_at is not None and result.ended_at - killed_at < 30
            errors = [e for e in result.events if isinstance(e, dict) and "error" in e]
            assert errors and second.endpoint in errors[-1]["error"]["message"], (result.events, server.stderr)

            health = httpx.get(f"{base_url}/health", timeout=10)
            assert health.status_code == 503
            assert health.json()["status"] == "degraded" and second.endpoint in health.json()["error"]
            chat = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=10)
            assert chat.status_code == 503 and second.endpoint in chat.json()["error"]["message"]
            messages = httpx.post(f"{base_url}/v1/messages", json={**body, "max_tokens": 8}, timeout=10)
            assert messages.status_code == 503 and messages.json()["type"] == "error"
            assert second.endpoint in messages.json()["error"]["message"]

            assert server.proc.wait(60) == 3
            assert "was lost" in server.stderr
