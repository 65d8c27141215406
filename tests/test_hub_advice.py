"""Pre-trained or instruction-tuned, and what to pull next: the rule, the advice, and the one-line
notice ``serve``, ``chat`` and ``generate`` print on stderr for a pre-trained model (never under
``--json``, never in an API response)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import pytest
from conftest import TEST_THREADS, LiveServer, server_settings
from hub_fake import FakeFile, FakeHub, gguf_model

from gemma_local.hub import embedded
from gemma_local.hub.advice import PullAdvice, base_model_notice, recommend_pull
from gemma_local.hub.catalog import load_catalog
from gemma_local.hub.plan import plan_pull
from gemma_local.hub.remote import HubClient
from gemma_local.hub.resolve import ResolvedModel
from gemma_local.hub.tuning import file_instruction_tuned, is_instruction_tuned
from gemma_local.memory import GIB, MachineMemory

EMBEDDED = ResolvedModel(id=embedded.EMBEDDED_NAME, path=Path("not-read"), embedded=True)
NOTICE = re.compile(
    r"note: gemma-3-270m-embedded is Gemma 3 270M pre-trained \(not instruction-tuned\), for tests and offline "
    r"smoke checks, not a chat assistant\. For an assistant that fits this machine: gemma-local pull "
    r"(?P<model>gemma-3-\w+) \(≈\d+\.\d GB download(, more memory than is free now)?\)\."
)
TEMPLATE = "{% for message in messages %}<start_of_turn>{{ message['content'] }}<end_of_turn>\n{% endfor %}"


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "tuned"),
    [
        ({}, False),  # no template, no tag: nothing to chat with
        ({"tokenizer.chat_template": TEMPLATE}, True),
        ({"general.finetune": "it"}, True),
        ({"general.finetune": "it-qat"}, True),
        ({"general.finetune": "Instruct"}, True),
        ({"general.finetune": "pt", "tokenizer.chat_template": TEMPLATE}, False),  # the tag wins
        ({"general.finetune": "base"}, False),
        ({"general.finetune": "abliterated", "tokenizer.chat_template": TEMPLATE}, True),  # unknown tag: template
        ({"general.name": "gemma-3-270m-it"}, False),  # a name is not evidence
    ],
)
def test_instruction_tuned_rule(metadata: dict, tuned: bool) -> None:
    assert is_instruction_tuned(metadata) is tuned


def test_catalog_describes_the_embedded_model_and_only_tuned_catalog_models() -> None:
    catalog = load_catalog()
    assert catalog.embedded.name == embedded.EMBEDDED_NAME
    assert catalog.embedded.instruction_tuned is False
    assert all(model.instruction_tuned for model in catalog.models.values())
    assert {name for name, m in catalog.models.items() if m.vision} == {
        name for name, m in catalog.models.items() if m.mmproj_approx_bytes
    }


def test_the_embedded_gguf_agrees_with_the_catalog(model_path: Path) -> None:
    assert file_instruction_tuned(model_path) is False
    assert file_instruction_tuned(model_path.with_name("missing.gguf")) is None


# --- what to pull ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gib", "expected"),
    [
        # The memory planner serve uses decides (weights + projector + one 8K slot + buffers).
        (64, PullAdvice("gemma-3-27b", "f16", 54_000_000_000 + 857_739_168, fits=True)),
        (20, PullAdvice("gemma-3-27b", "qat", 15_908_791_488 + 857_739_168, fits=True)),
        (18, PullAdvice("gemma-3-12b", "q8_0", 12_500_000_000 + 854_200_000, fits=True)),
        (7, PullAdvice("gemma-3-4b", "q8_0", 4_130_000_000 + 851_251_104, fits=True)),
        (0.25, PullAdvice("gemma-3-270m", "qat", 241_410_624, fits=False)),
    ],
)
def test_recommend_pull_takes_the_largest_model_that_fits(gib: float, expected: PullAdvice) -> None:
    assert recommend_pull(MachineMemory.assume(int(gib * GIB), "test budget")) == expected


def _serve_catalog_model(hub: FakeHub, name: str) -> None:
    """The catalog's repos for ``name``, each file advertising the catalog's approximate size."""
    model = load_catalog().models[name]
    repos: dict[str, dict[str, FakeFile]] = {}
    for seed, source in enumerate(model.quants.values()):
        files = repos.setdefault(source.repo, {})
        for part in source.files:
            size = source.approx_bytes // len(source.files)
            files[part] = FakeFile(gguf_model(1000, seed=seed), advertised_size=size)
        if source.mmproj is not None:
            files[source.mmproj] = FakeFile(gguf_model(500, seed=100), advertised_size=model.mmproj_approx_bytes)
    for repo, files in repos.items():
        hub.add_repo(repo, files)


@pytest.mark.parametrize("gib", [6, 7, 9])
def test_pull_chooses_what_the_advice_promised(gib: float) -> None:
    machine = MachineMemory.assume(int(gib * GIB), "test budget")
    advice = recommend_pull(machine)
    assert advice.model == "gemma-3-4b"
    with FakeHub() as hub:
        _serve_catalog_model(hub, advice.model)
        plan = plan_pull(advice.model, client=HubClient(endpoint=hub.url), machine=machine)
    assert plan.choice is not None and plan.choice.quant == advice.quant
    assert plan.total_bytes == advice.download_bytes


# --- the notice -----------------------------------------------------------------------------------


def test_notice_text_for_the_embedded_model() -> None:
    notice = base_model_notice(EMBEDDED, machine=MachineMemory.assume(13 * GIB, "test budget"))
    assert notice == (
        "note: gemma-3-270m-embedded is Gemma 3 270M pre-trained (not instruction-tuned), for tests and offline "
        "smoke checks, not a chat assistant. For an assistant that fits this machine: gemma-local pull "
        "gemma-3-12b (≈10.6 GB download)."
    )
    assert NOTICE.fullmatch(notice)
    tiny = base_model_notice(EMBEDDED, machine=MachineMemory.assume(GIB // 4, "test budget"))
    assert tiny is not None and tiny.endswith(
        "gemma-local pull gemma-3-270m (≈0.2 GB download, more memory than is free now)."
    )


def test_notice_points_to_the_model_already_pulled(tmp_path: Path) -> None:
    from gemma_local.hub.importer import import_model

    stand_in = tmp_path / "stand-in.gguf"
    stand_in.write_bytes(gguf_model(1000))
    import_model(stand_in, name="gemma-3-12b")
    notice = base_model_notice(EMBEDDED, machine=MachineMemory.assume(13 * GIB, "test budget"))
    assert notice is not None and notice.endswith(
        "not a chat assistant. For an assistant: --model gemma-3-12b (already pulled)."
    )


def test_notice_for_a_pre_trained_file(model_path: Path) -> None:
    notice = base_model_notice(ResolvedModel(id="my-base", path=model_path), machine=MachineMemory.assume(7 * GIB, "t"))
    assert notice == (
        "note: my-base is pre-trained (not instruction-tuned): it continues text rather than answering. For an "
        "assistant that fits this machine: gemma-local pull gemma-3-4b (≈5.0 GB download)."
    )


# --- an instruction-tuned copy of the 270M: the same weights, a chat template and an "it" tag ----------


def copy_with_metadata(src: Path, dest: Path, extra: dict[str, str]) -> Path:
    """``src`` rewritten by the gguf package with ``extra`` string keys added (tensors unchanged)."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch)  # writes general.architecture itself
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE or field.name in extra:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    for key, value in extra.items():
        writer.add_string(key, value)
    for tensor in reader.tensors:
        data = tensor.data
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return dest


@pytest.fixture(scope="module")
def it_copy(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("it") / "gemma-3-270m-it-copy.gguf"
    return copy_with_metadata(model_path, dest, {"tokenizer.chat_template": TEMPLATE, gguf.Keys.General.FINETUNE: "it"})


def test_the_copy_is_instruction_tuned_for_the_reader_and_for_llama_cpp(it_copy: Path) -> None:
    from gemma_local.engine.model import ContextParams, LlamaModel

    assert file_instruction_tuned(it_copy) is True
    model = LlamaModel(it_copy, ContextParams(n_ctx_per_seq=256, n_threads=TEST_THREADS))
    try:
        assert is_instruction_tuned(model.metadata) is True  # what the server reads
    finally:
        model.close()


# --- through the CLI, as a user runs it ---------------------------------------------------------------


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEMMA_LOCAL_THREADS": str(TEST_THREADS)}
    return subprocess.run(
        [sys.executable, "-m", "gemma_local", *args], input=stdin, capture_output=True, text=True, timeout=180, env=env
    )


GENERATE = ("generate", "Hello", "--temperature", "0", "--max-tokens", "2", "--ctx", "512")


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note:")]


def test_embedded_model_gets_the_notice_on_stderr_only(model_path: Path) -> None:
    plain = run_cli(*GENERATE)
    assert plain.returncode == 0, plain.stderr
    [line] = notices(plain.stderr)
    match = NOTICE.fullmatch(line)
    assert match, line
    # pull's memory rule on this machine; free memory moves between two measurements, so allow a band.
    measured = MachineMemory.detect().available_ram
    bands = (0.8, 1, 1.25)
    assert match["model"] in {recommend_pull(MachineMemory.assume(int(measured * f), "t")).model for f in bands}
    assert "note:" not in plain.stdout

    as_json = run_cli(*GENERATE, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert "note:" not in as_json.stderr and "note:" not in as_json.stdout
    assert json.loads(as_json.stdout)["model"] == embedded.EMBEDDED_NAME

    chat = run_cli("chat", "--ctx", "512", stdin="/exit\n")
    assert chat.returncode == 0, chat.stderr
    [chat_line] = notices(chat.stderr)
    assert NOTICE.fullmatch(chat_line), chat_line


def test_an_imported_instruction_tuned_file_gets_no_notice(it_copy: Path) -> None:
    imported = run_cli("models", "import", str(it_copy), "--name", "it-copy", "--json")
    assert imported.returncode == 0, imported.stderr

    listed = {row["name"]: row for row in json.loads(run_cli("models", "--json").stdout)}
    assert listed[embedded.EMBEDDED_NAME]["instruction_tuned"] is False
    assert listed["it-copy"]["instruction_tuned"] is True
    text = run_cli("models").stdout
    assert re.search(r"^gemma-3-270m-embedded .* embedded \(default, pre-trained\)$", text, re.MULTILINE), text
    assert re.search(r"^it-copy .* store$", text, re.MULTILINE), text

    for args in (GENERATE, ("chat", "--ctx", "512")):
        proc = run_cli(*args, "--model", "it-copy", stdin="/exit\n")
        assert proc.returncode == 0, proc.stderr
        assert notices(proc.stderr) == [], proc.stderr


# --- the server ------------------------------------------------------------------------------------


def test_v1_models_marks_the_embedded_model_pre_trained(http) -> None:
    listed = http.get("/v1/models").json()
    assert {m["instruction_tuned"] for m in listed["data"]} == {False}
    one = http.get("/v1/models/gemma-3-27b").json()
    assert one["instruction_tuned"] is False
    assert "note:" not in json.dumps(listed)


@pytest.fixture(scope="module")
def it_server(it_copy: Path) -> Iterator[LiveServer]:
    from gemma_local.engine import ContextParams, Engine
    from gemma_local.server import create_app

    engine = Engine(it_copy, ContextParams(n_ctx_per_seq=256, n_seq=1, n_threads=TEST_THREADS), model_id="it-copy")
    server = LiveServer(create_app(engine, server_settings()))
    yield server
    server.stop()
    engine.close()


def test_v1_models_marks_an_instruction_tuned_model(it_server: LiveServer) -> None:
    listed = httpx.get(f"{it_server.base_url}/v1/models", timeout=30).json()
    assert listed["data"][0]["id"] == "it-copy"
    assert {m["instruction_tuned"] for m in listed["data"]} == {True}
