"""Every error class of the server, in the OpenAI envelope, with the right status.

Also: auth on/off, the body limit, a full queue, client disconnects (the generation stops at
once) and two requests at the same time.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from conftest import TEST_API_KEY, FailingEngine, LiveServer, server_settings

MODEL = "gemma-3-27b"
HI = [{"role": "user", "content": "Write a short poem about the sea."}]


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def wait_idle(engine, timeout: float = 20.0) -> float:
    """Seconds until the engine has nothing running or queued (fails after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        stats = engine.stats()
        if stats.active == 0 and stats.queued == 0:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"the engine is still busy after {timeout}s: {engine.stats()}")


# --- 400: validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 65537}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"presence_penalty": 2.01}, "presence_penalty"),
        ({"n": 0}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "4"}]}, "messages[0]"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "x"}}]}]},
            "messages[0].content",
        ),
        ({"stream": "sometimes"}, "stream"),
    ],
)
def test_invalid_parameter_is_400_naming_it(http, patch: dict, param: str) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 1, **patch}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert param.split(".")[0].split("[")[0] in error["message"]


def test_missing_required_parameter(http) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": MODEL}), 400, param="messages")
    assert error["code"] == "missing_required_parameter"


def test_invalid_json_and_non_json_bodies(http) -> None:
    headers = {"content-type": "application/json"}
    r = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [', headers=headers)
    assert_openai_error(r, 400, code="invalid_json")
    # Without a JSON content type the body is not parsed (a web page cannot post without a preflight).
    r = http.post("/v1/chat/completions", content=b'{"model": "x"}', headers={"content-type": "text/plain"})
    error = assert_openai_error(r, 400, code="invalid_json")
    assert "application/json" in error["message"]


def test_sdk_raises_bad_request(openai_client) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=MODEL, messages=HI, temperature=3)
    assert e.value.param == "temperature"


def png_data_url(size: tuple[int, int] = (32, 32)) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(url)]}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def test_image_is_accepted_by_a_vision_model(openai_client, engine) -> None:
    assert engine.info.vision  # the session engine carries the tiny test projector
    text_only = [{"role": "user", "content": "What is this?"}]
    plain = openai_client.chat.completions.create(model=MODEL, messages=text_only, max_tokens=1)
    r = openai_client.chat.completions.create(model=MODEL, messages=image_message(png_data_url()), max_tokens=1)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens  # the image's tokens are in the prompt


def test_bad_images_are_400(http) -> None:
    for url in ("data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,%%%", "ftp://example.com/a.png"):
        body = {"model": MODEL, "max_tokens": 1, "messages": image_message(url)}
        error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400, param="messages[0].content[1]")
        assert error["code"] == "invalid_image"
    # Remote URLs are not fetched unless the server allows it (off by default).
    body = {"model": MODEL, "max_tokens": 1, "messages": image_message("https://example.com/cat.png")}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, code="invalid_image")


class _TextOnly:
    """The session engine, presented as a model without a vision projector."""

    def __init__(self, engine) -> None:
        import dataclasses

        self._engine = engine
        self.info = dataclasses.replace(engine.info, vision=False)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


def test_image_to_text_only_model_is_400(engine) -> None:
    from gemma_local.server import create_app

    server = LiveServer(create_app(_TextOnly(engine), server_settings()))
    try:
        body = {"model": MODEL, "max_tokens": 1, "messages": image_message(png_data_url())}
        r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    finally:
        server.stop()
    error = assert_openai_error(r, 400, param="messages")
    assert "image" in error["message"]


def test_context_overflow(http, engine) -> None:
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "sea " * 2100}]}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400, code="context_length_exceeded")
    n_ctx = engine.info.n_ctx_per_slot
    assert f"{n_ctx} tokens" in error["message"]
    assert "2" in error["message"].split("prompt has")[1]


# --- 404 --------------------------------------------------------------------------------------


def test_unknown_model_and_route(http) -> None:
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 1}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 404, param="model", code="model_not_found")
    assert_openai_error(http.get("/v1/nothing-here"), 404, code="not_found")
    assert_openai_error(http.get("/v1/chat/completions"), 405)


# --- 401: auth ----------------------------------------------------------------------------------


def test_auth_required_when_key_set(auth_server) -> None:
    with httpx.Client(base_url=auth_server.base_url, timeout=60) as client:
        error = assert_openai_error(client.get("/v1/models"), 401, code="invalid_api_key")
        assert error["type"] == "authentication_error"
        assert_openai_error(client.get("/v1/models", headers={"authorization": "Bearer wrong"}), 401)
        assert_openai_error(client.get("/v1/models", headers={"x-api-key": "wrong"}), 401)
        assert_openai_error(client.get("/v1/models", headers={"authorization": TEST_API_KEY}), 401)
        body = {"model": MODEL, "messages": HI, "max_tokens": 1}
        assert_openai_error(client.post("/v1/chat/completions", json=body), 401)
        assert_openai_error(client.get("/metrics"), 401)
        assert client.get("/v1/models", headers={"authorization": f"Bearer {TEST_API_KEY}"}).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": TEST_API_KEY}).status_code == 200
        assert client.get("/health").status_code == 200  # open for load balancers


def test_auth_with_sdk(auth_server) -> None:
    def sdk(key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{auth_server.base_url}/v1", api_key=key, _strict_response_validation=True, max_retries=0
        )

    with pytest.raises(openai.AuthenticationError):
        sdk("nope").chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    r = sdk(TEST_API_KEY).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert r.usage.completion_tokens == 1


def test_no_auth_when_no_key(http) -> None:
    assert http.get("/v1/models").status_code == 200
    assert http.get("/v1/models", headers={"authorization": "Bearer anything"}).status_code == 200


# --- 413 ------------------------------------------------------------------------------------


def test_body_too_large(auth_server) -> None:
    headers = {"authorization": f"Bearer {TEST_API_KEY}", "content-type": "application/json"}
    big = b'{"model": "gemma-3-27b", "messages": [{"role": "user", "content": "' + b"a" * 5000 + b'"}]}'
    with httpx.Client(base_url=auth_server.base_url, timeout=60) as client:
        error = assert_openai_error(client.post("/v1/chat/completions", content=big, headers=headers), 413)
        assert error["code"] == "request_too_large"

        def chunks():  # no Content-Length: chunked transfer encoding
            yield big[:3000]
            yield big[3000:]

        r = client.post("/v1/chat/completions", content=chunks(), headers=headers)
        assert_openai_error(r, 413, code="request_too_large")
        # A body under the limit still works.
        ok = client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 1}, headers=headers
        )
        assert ok.status_code == 200


# --- 429: queue full -------------------------------------------------------------------------------


def test_queue_full_is_429_with_retry_after(http, engine, no_eos) -> None:
    stats = engine.stats()
    capacity = stats.slots + engine.stats().max_queue
    body = {"model": MODEL, "messages": HI, "max_tokens": 64, "n": capacity + 4, "logit_bias": no_eos}
    r = http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(r, 429, code="server_busy")
    assert error["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    # Nothing submitted for the refused request is left running.
    wait_idle(engine)


def test_sdk_sees_rate_limit_error(openai_client, engine, no_eos) -> None:
    capacity = engine.stats().slots + engine.stats().max_queue
    with pytest.raises(openai.RateLimitError):
        openai_client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=64, n=capacity + 1, logit_bias=no_eos
        )
    wait_idle(engine)


# --- 500: a real bug ---------------------------------------------------------------------------


def test_unexpected_exception_is_500_server_error(engine) -> None:
    from gemma_local.server import create_app

    app = create_app(engine, server_settings())

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    server = LiveServer(app)
    try:
        r = httpx.get(f"{server.base_url}/v1/boom", timeout=30)
    finally:
        server.stop()
    error = assert_openai_error(r, 500)
    assert error["type"] == "server_error"
    assert "a bug" not in error["message"]  # internals stay in the server log
    assert r.headers["x-should-retry"] == "false"


# --- disconnects and concurrency ---------------------------------------------------------------


def test_stream_disconnect_cancels_generation(live_server, engine, no_eos) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 1500, "stream": True, "logit_bias": no_eos}
    with (
        httpx.Client(base_url=live_server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        received = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received >= 3:
                break
        assert engine.stats().active == 1
    # Leaving the block closed the connection: the generation must stop at once, not run 1500 tokens
    # (the generous limit is for a loaded CI machine; 1500 tokens take minutes there).
    wait_idle(engine)
    start = time.monotonic()
    with httpx.Client(base_url=live_server.base_url, timeout=60) as client:
        ok = client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 1})
    assert ok.status_code == 200
    assert time.monotonic() - start < 30


def test_non_streaming_disconnect_cancels_generation(live_server, engine, no_eos) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 1500, "logit_bias": no_eos}
    with (
        httpx.Client(base_url=live_server.base_url, timeout=httpx.Timeout(60, read=1.5)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post("/v1/chat/completions", json=body)
    wait_idle(engine)


def test_two_simultaneous_requests_both_complete(openai_client, engine, no_eos) -> None:
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    peak = {"active": 0}

    barrier = threading.Barrier(2)

    def run(i: int, stream: bool) -> None:
        try:
            barrier.wait(10)
            if stream:
                chunks = list(
                    openai_client.chat.completions.create(
                        model=MODEL,
                        messages=HI,
                        max_tokens=12,
                        logit_bias=no_eos,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                results[i] = (chunks[-2].choices[0].finish_reason, chunks[-1].usage.completion_tokens)
            else:
                r = openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=12, logit_bias=no_eos)
                results[i] = (r.choices[0].finish_reason, r.usage.completion_tokens)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, i == 0)) for i in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak["active"] = max(peak["active"], engine.stats().active)
        time.sleep(0.01)
    assert not errors
    assert results == {0: ("length", 12), 1: ("length", 12)}
    assert peak["active"] == 2  # they really ran at the same time


# --- mid-stream errors (scripted engine: the real one cannot be made to fail on demand) ---------


def test_error_after_stream_start_is_sse_error_event(engine) -> None:
    from gemma_local.server import create_app

    server = LiveServer(create_app(FailingEngine(engine.info), server_settings()))
    try:
        body = {"model": MODEL, "messages": HI, "max_tokens": 5, "stream": True}
        raw = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
        )
        seen: list[str] = []
        with pytest.raises(openai.APIError, match="no room left in the KV cache"):
            for chunk in client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, stream=True):
                seen.append(chunk.choices[0].delta.content or "")
        with pytest.raises(openai.InternalServerError):  # non-streaming: the same failure is a 500
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5)
    finally:
        server.stop()
    assert raw.status_code == 200
    events = [e for e in raw.text.split("\n\n") if e]
    assert events[-1].startswith('data: {"error":')
    assert "[DONE]" not in raw.text
    assert "".join(seen) == "partial"
