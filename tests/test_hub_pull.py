"""``pull`` against the fake Hub, in process: fresh pulls, resume after a dropped connection,
checksum failures, gated repos, disk space, revisions and quantization choice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fake import FakeFile, FakeHub, gguf_mmproj, gguf_model, sha256

from gemma_local.errors import (
    ChecksumMismatchError,
    DownloadError,
    GatedRepoError,
    InsufficientDiskError,
    OfflineError,
    RemoteNotFoundError,
    UnknownModelNameError,
)
from gemma_local.hub.download import pull
from gemma_local.hub.plan import plan_pull
from gemma_local.hub.remote import HubClient
from gemma_local.hub.resolve import resolve_model
from gemma_local.hub.store import ModelStore
from gemma_local.memory import GIB, MachineMemory

PLENTY = MachineMemory.assume(64 * GIB, "test memory")
REPO = "test-org/tiny-gemma-GGUF"


@pytest.fixture(autouse=True)
def no_saved_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any token saved by `hf auth login` on the developer's machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        yield hub


def do_pull(hub: FakeHub, name: str, *, token: str | None = None, **kwargs):
    client = HubClient(endpoint=hub.url, token=token)
    store = ModelStore()
    plan = plan_pull(name, client=client, store=store, machine=kwargs.pop("machine", PLENTY), **kwargs)
    return pull(plan, client=client, store=store)


def leftovers(home: Path) -> list[str]:
    """Partial downloads still on disk (lock files do not count)."""
    return sorted(p.name for p in (home / "store" / ".partial").glob("*.part"))


@pytest.fixture
def tiny_repo(fake_hub: FakeHub) -> dict[str, bytes]:
    files = {
        "tiny-Q4_K_M.gguf": gguf_model(300_000, seed=1),
        "tiny-Q8_0.gguf": gguf_model(500_000, seed=2, file_type=7),
        "mmproj-tiny-f16.gguf": gguf_mmproj(50_000),
        "README.md": b"# tiny\n",
    }
    fake_hub.add_repo(REPO, {k: FakeFile(v, lfs=k.endswith(".gguf")) for k, v in files.items()})
    return files


def test_fresh_pull_registers_verified_files_with_their_metadata(
    fake_hub: FakeHub, tiny_repo: dict[str, bytes], isolated_home: Path
) -> None:
    entry = do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    commit = fake_hub.repos[REPO.lower()].head

    assert entry.name == f"hf.co/{REPO}:Q4_K_M"
    assert entry.repo == REPO and entry.revision == commit and entry.quant == "q4_k_m"
    assert entry.vision is True
    assert entry.path == isolated_home / "store" / "test-org" / "tiny-gemma-GGUF" / commit / "tiny-Q4_K_M.gguf"
    assert entry.path.read_bytes() == tiny_repo["tiny-Q4_K_M.gguf"]
    assert entry.mmproj_path is not None and entry.mmproj_path.read_bytes() == tiny_repo["mmproj-tiny-f16.gguf"]
    assert [(f.role, f.size, f.sha256) for f in entry.files] == [
        ("model", len(tiny_repo["tiny-Q4_K_M.gguf"]), sha256(tiny_repo["tiny-Q4_K_M.gguf"])),
        ("mmproj", len(tiny_repo["mmproj-tiny-f16.gguf"]), sha256(tiny_repo["mmproj-tiny-f16.gguf"])),
    ]
    assert entry.size_bytes == len(tiny_repo["tiny-Q4_K_M.gguf"]) + len(tiny_repo["mmproj-tiny-f16.gguf"])
    assert leftovers(isolated_home) == []
    # Each byte fetched once, from the start: no Range on a fresh download.
    content = fake_hub.content_requests()
    assert [(r.path, r.range_start) for r in content] == [
        (f"/cdn/{sha256(tiny_repo['tiny-Q4_K_M.gguf'])}", None),
        (f"/cdn/{sha256(tiny_repo['mmproj-tiny-f16.gguf'])}", None),
    ]
    # The registry on disk says the same, and every name form finds it (offline lookups).
    registry = json.loads((isolated_home / "registry.json").read_text())
    assert [m["name"] for m in registry["models"]] == [entry.name]
    store = ModelStore()
    assert store.find(f"hf.co/{REPO}:q4_k_m").name == entry.name
    assert store.find(f"huggingface.co/{REPO}").name == entry.name
    assert store.find(f"hf.co/{REPO}:tiny-Q4_K_M.gguf").name == entry.name
    resolved = resolve_model(f"hf.co/{REPO}:Q4_K_M")
    assert (resolved.path, resolved.mmproj) == (entry.path, entry.mmproj_path)


def test_pulling_again_fetches_nothing(fake_hub: FakeHub, tiny_repo: dict[str, bytes]) -> None:
    do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    before = len(fake_hub.content_requests())
    client, store = HubClient(endpoint=fake_hub.url), ModelStore()
    plan = plan_pull(f"hf.co/{REPO}:Q4_K_M", client=client, store=store, machine=PLENTY)
    assert plan.download_bytes == 0 and all(f.stored for f in plan.files)
    # A second quant from the same repo shares the stored projector: only its own file is fetched.
    do_pull(fake_hub, f"hf.co/{REPO}:Q8_0")
    fetched = fake_hub.content_requests()[before:]
    assert [r.path for r in fetched] == [f"/cdn/{sha256(tiny_repo['tiny-Q8_0.gguf'])}"]


def test_resumes_after_the_server_drops_the_connection(
    fake_hub: FakeHub, tiny_repo: dict[str, bytes], isolated_home: Path
) -> None:
    model = fake_hub.file(REPO, "tiny-Q4_K_M.gguf")
    model.drops = [100_000, 70_000]  # two drops mid-file, then a clean answer
    entry = do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")

    assert entry.path.read_bytes() == tiny_repo["tiny-Q4_K_M.gguf"]
    gets = [r for r in fake_hub.content_requests() if r.path == f"/cdn/{model.sha256}"]
    assert [(r.range_start, r.bytes_sent) for r in gets] == [
        (None, 100_000),
        (100_000, 70_000),
        (170_000, len(model.content) - 170_000),
    ]
    # Not one byte fetched twice.
    assert sum(r.bytes_sent for r in gets) == len(model.content)
    assert leftovers(isolated_home) == []


def test_gives_up_after_repeated_drops_but_keeps_the_bytes(
    fake_hub: FakeHub, tiny_repo: dict[str, bytes], isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma_local.hub.download as download

    monkeypatch.setattr(download, "_RETRY_DELAYS", (0.0,))
    model = fake_hub.file(REPO, "tiny-Q4_K_M.gguf")
    model.drops = [10_000] + [0] * 10  # some progress, then a server that sends nothing
    with pytest.raises(DownloadError, match=r"10,000 of .* bytes are kept\. Run the same command again to resume"):
        do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    assert leftovers(isolated_home) == [f"{model.sha256}.part"]
    assert ModelStore().list() == []  # a partial file is never registered
    model.drops = []
    entry = do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    assert entry.path.read_bytes() == model.content
    assert fake_hub.content_requests()[-2].range_start == 10_000  # resumed, then the projector


def test_a_server_that_ignores_range_restarts_the_file_cleanly(
    fake_hub: FakeHub, tiny_repo: dict[str, bytes], isolated_home: Path
) -> None:
    model = fake_hub.file(REPO, "tiny-Q4_K_M.gguf")
    model.drops = [100_000]
    model.ignore_range = True  # the retry gets 200 + the whole file instead of 206
    entry = do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    assert entry.path.read_bytes() == model.content  # not the first 100 kB twice
    gets = [r for r in fake_hub.content_requests() if r.path == f"/cdn/{model.sha256}"]
    assert [(r.status, r.bytes_sent) for r in gets] == [(200, 100_000), (200, len(model.content))]


def test_a_revision_belongs_to_one_repo_so_a_quant_must_be_named(fake_hub: FakeHub) -> None:
    with pytest.raises(UnknownModelNameError, match=r"name the quantization too, e\.g\. 'gemma-3-27b:qat'"):
        plan_pull("gemma-3-27b", revision="abc", client=HubClient(endpoint=fake_hub.url), machine=PLENTY)
    assert fake_hub.requests == []


def test_corrupt_bytes_fail_the_hash_and_nothing_is_registered(
    fake_hub: FakeHub, tiny_repo: dict[str, bytes], isolated_home: Path
) -> None:
    model = fake_hub.file(REPO, "tiny-Q4_K_M.gguf")
    corrupt = bytearray(model.content)
    corrupt[150_000] ^= 0xFF
    model.served = bytes(corrupt)
    with pytest.raises(ChecksumMismatchError) as err:
        do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    assert err.value.expected == model.sha256
    assert err.value.actual == hashlib.sha256(corrupt).hexdigest()
    assert "run the same command again" in err.value.message
    assert ModelStore().list() == []
    assert leftovers(isolated_home) == []
    assert not list((isolated_home / "store").rglob("tiny-Q4_K_M.gguf"))


def test_gated_repo_without_token_says_how_to_get_access(fake_hub: FakeHub) -> None:
    repo = "google/gemma-3-4b-it-qat-q4_0-gguf"
    fake_hub.add_repo(repo, {"gemma-3-4b-it-q4_0.gguf": gguf_model(1000)}, gated=True)
    with pytest.raises(GatedRepoError) as err:
        do_pull(fake_hub, f"hf.co/{repo}")
    assert err.value.repo_id == repo and err.value.has_token is False
    assert err.value.message == (
        "google/gemma-3-4b-it-qat-q4_0-gguf is gated: accept the licence at "
        "https://huggingface.co/google/gemma-3-4b-it-qat-q4_0-gguf while logged in, then create a read token at "
        "https://huggingface.co/settings/tokens and set HF_TOKEN (or run `hf auth login`). Or pull the ungated "
        "mirror instead: `gemma-local pull gemma-3-4b:qat`."
    )
    assert isinstance(err.value, PermissionError)
    assert not any("/resolve/" in r.path for r in fake_hub.requests)  # known from the metadata: no file request
    # A token whose account has not accepted the licence: 403, and the message says to check it.
    with pytest.raises(GatedRepoError, match="check that HF_TOKEN belongs to the account that accepted it"):
        do_pull(fake_hub, f"hf.co/{repo}", token="hf_not_accepted")
    # Once accepted, the same token works and is what the Hub received.
    fake_hub.accepted_tokens.add("hf_accepted")
    entry = do_pull(fake_hub, f"hf.co/{repo}", token="hf_accepted")
    assert entry.path.is_file()
    assert {r.authorization for r in fake_hub.requests if "/resolve/" in r.path} == {
        "Bearer hf_not_accepted",
        "Bearer hf_accepted",
    }


def test_not_enough_disk_is_refused_before_the_first_byte(fake_hub: FakeHub, isolated_home: Path) -> None:
    huge = FakeFile(gguf_model(1000), advertised_size=10**16)  # metadata says 10 PB
    fake_hub.add_repo("test-org/huge-GGUF", {"huge-Q4_K_M.gguf": huge})
    with pytest.raises(InsufficientDiskError) as err:
        do_pull(fake_hub, "hf.co/test-org/huge-GGUF")
    assert err.value.required > 10**16 and err.value.free < err.value.required
    assert "Not enough disk space" in err.value.message and "GEMMA_LOCAL_HOME" in err.value.message
    assert fake_hub.content_requests() == []
    assert not any("/resolve/" in r.path for r in fake_hub.requests)


def test_revision_pins_an_older_commit(fake_hub: FakeHub) -> None:
    old = gguf_model(2000, seed=10)
    fake_hub.add_repo("test-org/moving-GGUF", {"m-Q4_K_M.gguf": old})
    old_commit = fake_hub.repos["test-org/moving-gguf"].head
    new_commit = fake_hub.push("test-org/moving-GGUF", {"m-Q4_K_M.gguf": gguf_model(2000, seed=11)})

    entry = do_pull(fake_hub, "hf.co/test-org/moving-GGUF", revision=old_commit)
    assert entry.revision == old_commit != new_commit
    assert entry.path.read_bytes() == old
    assert old_commit in str(entry.path)
    with pytest.raises(RemoteNotFoundError, match="has no revision 'f00d'"):
        do_pull(fake_hub, "hf.co/test-org/moving-GGUF", revision="f00d")


def test_unknown_repo_and_file_are_clear(fake_hub: FakeHub, tiny_repo: dict[str, bytes]) -> None:
    with pytest.raises(RemoteNotFoundError, match=r"No model repo 'test-org/nope' on http://127\.0\.0\.1"):
        do_pull(fake_hub, "hf.co/test-org/nope")
    with pytest.raises(RemoteNotFoundError, match=r"has no GGUF tagged 'Q2_K' \(it has: tiny-Q4_K_M.gguf, tiny-Q8_0"):
        do_pull(fake_hub, f"hf.co/{REPO}:Q2_K")


def test_unreachable_hub_is_one_clear_offline_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OfflineError) as err:
        plan_pull("hf.co/org/repo", client=HubClient(endpoint=f"http://127.0.0.1:{port}"), machine=PLENTY)
    assert err.value.message.startswith(f"Cannot reach the Hugging Face Hub at http://127.0.0.1:{port} (")
    assert "`pull` needs the network" in err.value.message


# --- catalog names -----------------------------------------------------------------------------


def serve_270m(hub: FakeHub, sizes: dict[str, int] | None = None) -> None:
    """The catalog's 270M repos, with small real files (or advertised sizes for planning)."""
    sizes = sizes or {}

    def f(name: str, quant: str, seed: int) -> FakeFile:
        return FakeFile(gguf_model(1000, seed=seed), advertised_size=sizes.get(quant))

    hub.add_repo("ggml-org/gemma-3-270m-it-qat-GGUF", {"gemma-3-270m-it-qat-Q4_0.gguf": f("", "qat", 1)})
    hub.add_repo(
        "unsloth/gemma-3-270m-it-GGUF",
        {
            f"gemma-3-270m-it-{tag}.gguf": f("", tag.lower(), seed)
            for seed, tag in enumerate(["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "BF16"], start=2)
        },
    )


def test_best_quant_that_fits_is_chosen_and_explained(fake_hub: FakeHub) -> None:
    serve_270m(fake_hub, {"bf16": 10 * GIB, "q8_0": 5 * GIB, "q6_k": 4 * GIB, "q5_k_m": 3 * GIB, "qat": 2 * GIB})
    six_gib = MachineMemory.assume(6 * GIB, "available RAM")
    plan = plan_pull("gemma-3-270m", client=HubClient(endpoint=fake_hub.url), machine=six_gib)
    # The planner's estimate: weights + KV cache and buffers for one slot of 8192 tokens, within
    # 85% of the 6 GiB (5.1 GiB): q8_0's 5 GiB of weights fit, bf16's 10 do not.
    assert plan.name == "gemma-3-270m:q8_0" and plan.aliases == ("gemma-3-270m",)
    assert plan.choice is not None and plan.choice.reason == (
        "best quality that fits 85% of 6.0 GiB of available RAM (needs ≈5.1 GiB for 1 slot of 8192 tokens); "
        "bf16 would need ≈10.0 GiB for 1 slot of 8192 tokens"
    )
    assert fake_hub.content_requests() == []  # planning reads metadata only


def test_forcing_a_quant_that_does_not_fit_warns(fake_hub: FakeHub) -> None:
    serve_270m(fake_hub, {"bf16": 10 * GIB})
    six_gib = MachineMemory.assume(6 * GIB, "available RAM")
    plan = plan_pull("gemma-3-270m:bf16", client=HubClient(endpoint=fake_hub.url), machine=six_gib)
    assert plan.choice is None
    assert plan.warning is not None
    assert plan.warning.startswith("gemma-3-270m:bf16 needs ≈10.0 GiB for 1 slot of 8192 tokens")


def test_catalog_pull_registers_aliases_and_vision(fake_hub: FakeHub) -> None:
    files = {"gemma-3-4b-it-qat-Q4_0.gguf": gguf_model(5000), "mmproj-model-f16-4B.gguf": gguf_mmproj(3000)}
    fake_hub.add_repo("ggml-org/gemma-3-4b-it-qat-GGUF", files)
    entry = do_pull(fake_hub, "gemma-3-4b:qat")
    assert (entry.name, entry.quant, entry.vision) == ("gemma-3-4b:qat", "qat", True)
    assert entry.mmproj_path is not None and entry.mmproj_path.name == "mmproj-model-f16-4B.gguf"
    store = ModelStore()
    for name in ("gemma-3-4b", "gemma-3-4b:qat", "GEMMA-3-4B:Q4_0"):
        assert store.find(name).name == "gemma-3-4b:qat", name

    serve_270m(fake_hub)
    auto = do_pull(fake_hub, "gemma-3-270m")  # tiny files: the best quality fits
    assert (auto.name, auto.aliases) == ("gemma-3-270m:bf16", ["gemma-3-270m"])
    assert store.find("gemma-3-270m").name == "gemma-3-270m:bf16"
    # The repo drops its BF16 build: the next bare-name pull takes Q8_0 and the alias moves to it.
    unsloth = fake_hub.repos["unsloth/gemma-3-270m-it-gguf"]
    files = dict(unsloth.commits[unsloth.head])
    del files["gemma-3-270m-it-BF16.gguf"]
    fake_hub.push("unsloth/gemma-3-270m-it-GGUF", files)
    do_pull(fake_hub, "gemma-3-270m")
    assert store.find("gemma-3-270m").name == "gemma-3-270m:q8_0"
    assert store.find("gemma-3-270m:bf16").aliases == []


def test_two_pulls_never_write_the_same_partial_file(fake_hub: FakeHub, tiny_repo: dict[str, bytes]) -> None:
    from filelock import FileLock

    model = fake_hub.file(REPO, "tiny-Q4_K_M.gguf")
    lock = FileLock(str(ModelStore().partial_path(model.sha256)) + ".lock")
    lock.acquire()  # as another process downloading the same file would hold it
    try:
        with pytest.raises(DownloadError, match=r"Another gemma-local pull is downloading tiny-Q4_K_M\.gguf right now"):
            do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M")
    finally:
        lock.release()
    assert do_pull(fake_hub, f"hf.co/{REPO}:Q4_K_M").path.read_bytes() == model.content
