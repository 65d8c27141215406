"""Prompt prefixes saved on disk (issue 19, part 3): reused by a fresh engine, bounded, checked.

The engine tests use the real 270M (a 512-token window) with checkpoints every 256 tokens and
a 256-token saving threshold, so prompts of ~1.4K tokens exercise every path. Each builds its
own engines (the session engine has no disk cache) and closes them before it ends.
"""

from __future__ import annotations

import ctypes
import shutil
import time
from pathlib import Path

from conftest import TEST_THREADS

from gemma_local.engine import (
    ChatMessage,
    CheckpointPolicy,
    ContextParams,
    DiskCachePolicy,
    Engine,
    GenerationRequest,
    SamplingParams,
)
from gemma_local.engine.kv_slots import Checkpoint, common_prefix_len
from gemma_local.engine.prefix_disk import SUFFIX, PrefixDiskCache

GREEDY = SamplingParams(temperature=0.0)
NOTES = [f"Note {i}: the value of item {i} is {i * 7 % 13} units." for i in range(80)]
CHECKPOINTS = CheckpointPolicy(max_checkpoints=8, checkpoint_every=256)


def conversation(notes: list[str]) -> GenerationRequest:
    return GenerationRequest(
        messages=(
            ChatMessage.text("user", " ".join(notes)),
            ChatMessage.text("assistant", "Noted."),
            ChatMessage.text("user", "Item 5?"),
        ),
        sampling=GREEDY,
        max_tokens=8,
        logprobs=0,
    )


def open_engine(model_path: Path, root: Path | None, *, ctx: int = 2048, min_tokens: int = 256) -> Engine:
    disk = DiskCachePolicy(root=root, min_tokens=min_tokens) if root is not None else None
    return Engine(
        model_path,
        ContextParams(n_ctx_per_seq=ctx, n_seq=2, n_threads=TEST_THREADS),
        checkpoints=CHECKPOINTS,
        prefix_disk=disk,
    )


def tokens(result) -> list[str]:
    return [lp.token for lp in result.logprobs]


def files(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/*{SUFFIX}"))


def test_a_prompt_saved_by_one_engine_is_reused_by_a_fresh_one(model_path: Path, isolated_home: Path) -> None:
    root = isolated_home / "prefix-cache"
    original = conversation(NOTES)
    edited_notes = list(NOTES)
    edited_notes[48] = "Note 48: (removed)."
    edited = conversation(edited_notes)

    with open_engine(model_path, root) as first:
        a, b = first.prompt_tokens(original), first.prompt_tokens(edited)
        answer = first.generate(original)
    assert len(files(root)) == 1  # written before close() returned
    diverge = common_prefix_len(a, b)
    assert len(a) - diverge > 512 + 8  # beyond the window: only a saved checkpoint reaches it
    assert diverge > 768  # past a checkpoint (the first ones, inside the window from 0, are not taken)

    with open_engine(model_path, root) as fresh:
        warm = fresh.generate(edited)
        # Up to the last saved checkpoint before the edit (every 256 tokens) came from the file.
        assert diverge - 256 <= warm.usage.cached_tokens <= diverge
        # The conversation's next turn: the whole saved prompt, although a slot holds part of it.
        turn = (ChatMessage.text("assistant", answer.text), ChatMessage.text("user", "Ok."))
        follow_up = GenerationRequest(messages=original.messages + turn, sampling=GREEDY, max_tokens=1)
        assert common_prefix_len(a, fresh.prompt_tokens(follow_up)) == len(a)
        assert fresh.generate(follow_up).usage.cached_tokens == len(a)
        assert fresh._scheduler.disk.loaded == 2

    with open_engine(model_path, None) as cold_engine:
        cold = cold_engine.generate(edited)
    assert cold.usage.cached_tokens == 0
    assert tokens(warm) == tokens(cold)


def test_a_corrupt_file_is_ignored_and_deleted(model_path: Path, isolated_home: Path) -> None:
    root = isolated_home / "prefix-cache"
    request = conversation(NOTES)
    with open_engine(model_path, root) as first:
        cold = first.generate(request)
    (path,) = files(root)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # state bytes llama.cpp would take at face value
    path.write_bytes(bytes(data))

    # A huge threshold: this engine saves nothing, so any file left would be the corrupt one.
    with open_engine(model_path, root, min_tokens=10**6) as fresh:
        result = fresh.generate(request)
        assert fresh._scheduler.disk.dropped == 1
    assert result.usage.cached_tokens == 0
    assert tokens(result) == tokens(cold)
    assert files(root) == []


def test_another_context_size_does_not_reuse_a_file(model_path: Path, isolated_home: Path) -> None:
    root = isolated_home / "prefix-cache"
    request = conversation(NOTES)
    with open_engine(model_path, root) as first:
        first.generate(request)
    (path,) = files(root)

    with open_engine(model_path, root, ctx=2304, min_tokens=10**6) as other:
        assert other.generate(request).usage.cached_tokens == 0
        assert other._scheduler.disk.loaded == 0
    assert files(root) == [path]  # another identity's file: not this engine's to delete


def test_a_prompt_with_an_image_is_not_saved(model_path: Path, tiny_mmproj: Path, isolated_home: Path) -> None:
    from test_prefix_checkpoints import picture

    from gemma_local.engine import TextPart

    root = isolated_home / "prefix-cache"
    request = GenerationRequest(
        messages=(ChatMessage("user", (picture(), TextPart(" ".join(NOTES[:30])))),), sampling=GREEDY, max_tokens=1
    )
    with Engine(
        model_path,
        ContextParams(n_ctx_per_seq=2048, n_seq=1, n_threads=TEST_THREADS),
        mmproj_path=tiny_mmproj,
        prefix_disk=DiskCachePolicy(root=root, min_tokens=256),
    ) as engine:
        assert len(engine.prompt_tokens(request)) > 256
        engine.generate(request)
    assert files(root) == []


# --- the disk cache alone (no model: states are plain bytes here) ----------------------------


def _state(n: int, fill: int) -> ctypes.Array:
    return (ctypes.c_uint8 * n)(*([fill] * n))


def _cache(root: Path, identity: dict | None = None, **policy) -> PrefixDiskCache:
    return PrefixDiskCache(DiskCachePolicy(root=root, **policy), identity or {"model": "m", "n_ctx_per_seq": 64})


def test_the_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = _cache(tmp_path, max_bytes=2 * 4096 + 2048, min_tokens=4)
    prompts = [[i, 1, 2, 3, 4, i] for i in (10, 20, 30)]
    for tokens in prompts[:2]:
        assert cache.wants(tokens)
        assert cache.save(tokens, _state(4000, tokens[-1]), [Checkpoint(pos=6, data=_state(8, 1))])
        cache.flush()
        time.sleep(0.05)  # distinct modification times
    first = next(e for e in cache.entries() if e.tokens == prompts[0])
    loaded = cache.read(first)  # a hit: now the most recently used
    assert loaded is not None and loaded.tokens == prompts[0] and bytes(loaded.state) == bytes([10]) * 4000
    assert [(c.pos, bytes(c.data)) for c in loaded.checkpoints] == [(6, bytes([1]) * 8)]
    time.sleep(0.05)
    cache.save(prompts[2], _state(4000, 30), [])
    cache.flush()
    assert sorted(e.tokens[-1] for e in cache.entries()) == [10, 30]
    assert len(files(tmp_path)) == 2
    cache.close()


def test_a_prompt_is_saved_once_and_an_extension_replaces_it(tmp_path: Path) -> None:
    cache = _cache(tmp_path, min_tokens=4)
    base = list(range(8))
    assert not cache.wants(base[:3])  # below the threshold
    cache.save(base, _state(16, 1), [])
    cache.flush()
    assert not cache.wants(base)  # already saved
    assert not cache.wants([*base, 8, 9, 10])  # fewer than min_tokens new tokens
    longer = [*base, 8, 9, 10, 11]
    assert cache.wants(longer)
    cache.save(longer, _state(16, 2), [])
    cache.flush()
    assert [e.tokens for e in cache.entries()] == [longer]  # the file it extends is gone
    assert len(files(tmp_path)) == 1
    cache.close()
    assert [e.tokens for e in _cache(tmp_path).entries()] == [longer]  # found again by a new process


def test_a_file_of_another_identity_or_truncated_is_deleted(tmp_path: Path) -> None:
    cache = _cache(tmp_path, min_tokens=4)
    cache.save(list(range(8)), _state(64, 3), [])
    cache.close()
    (path,) = files(tmp_path)
    other = _cache(tmp_path, identity={"model": "m", "n_ctx_per_seq": 128})
    planted = other.dir / path.name
    planted.parent.mkdir(parents=True)
    shutil.copy(path, planted)
    path.write_bytes(path.read_bytes()[:-10])
    again = _cache(tmp_path, identity={"model": "m", "n_ctx_per_seq": 128})
    assert again.entries() == [] and not planted.exists()  # its header names another identity
    reread = _cache(tmp_path)
    (entry,) = reread.entries()  # the header and tokens are intact...
    assert reread.read(entry) is None  # ...but the state is short: refused, deleted
    assert files(tmp_path) == []


def test_info_shows_the_disk_cache(model_path: Path, isolated_home: Path, monkeypatch) -> None:
    import json

    from click.testing import CliRunner

    from gemma_local.cli import main

    monkeypatch.setenv("GEMMA_LOCAL_PREFIX_DISK_MAX_GIB", "2.5")
    shown = CliRunner().invoke(main, ["info", str(model_path), "--json"])
    assert shown.exit_code == 0, shown.output
    disk = json.loads(shown.output)["prefix_disk"]
    assert disk == {
        "enabled": True,
        "path": str(isolated_home / "prefix-cache"),
        "max_bytes": int(2.5 * 2**30),
        "min_new_tokens": 2048,
        "files": 0,
        "used_bytes": 0,
    }
    off = CliRunner().invoke(main, ["info", str(model_path), "--no-prefix-disk"])
    assert off.exit_code == 0, off.output
    assert "prefix on disk   off" in off.output


def test_what_a_file_gives_back_once_loaded() -> None:
    from gemma_local.engine.prefix_disk import DiskEntry

    entry = DiskEntry(Path("x.gpc"), list(range(2000)), (1024, 1536, 2000))
    assert entry.reusable(2000, 512) == 2000  # the conversation's next turn
    assert entry.reusable(1999, 512) == 1999  # the same prompt again (its last token is recomputed)
    assert entry.reusable(1800, 512) == 1536  # further back than the saved window: a checkpoint
    assert entry.reusable(1000, 512) == 0
    assert entry.reusable(1000, 0) == 1000  # no sliding window: every cut is exact
    assert DiskEntry(Path("y.gpc"), list(range(400)), ()).reusable(300, 512) == 300  # all inside the window
