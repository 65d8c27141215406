"""Continuous batching over one llama.cpp context with N sequence slots.

One thread owns the context. Each step it packs, into a single ``llama_decode`` call, the next
token of every generating request plus chunks of pending prompts (so a long prompt never
stalls running streams), then samples each request's token with that request's own sampler
chain. Requests join between steps and leave, freeing their slot, as soon as they finish or
are cancelled. A slot keeps its KV after a request ends, so the next request that shares a
prefix with it (multi-turn chat, a shared system prompt) only computes the new tokens. Which
slot a request gets, what it reuses there, and the sliding-window checkpoints that let a prompt
edited far back reuse everything up to the edit are :mod:`gemma_local.engine.kv_slots`'s job;
prompt chunks end where a checkpoint is due. With a disk cache (:mod:`gemma_local.engine.prefix_disk`),
a long prompt's state is copied here when its prefill ends (only this thread may read the
context; the file is written on another), and a request that a saved prompt serves better than
any slot has it loaded into its slot first.

Speculative decoding rides in the same call: a generating slot may add draft tokens after its
next token (prompt lookup, :mod:`gemma_local.engine.drafting`, or a draft model in a context of
its own, :mod:`gemma_local.engine.draft_model`), each position is sampled with the request's
sampler and the drafts are kept while they match (the docstrings there say why that is exact).

A step is at most one micro-batch (``n_ubatch`` tokens), the most llama.cpp computes in one
pass anyway: a long prompt is decoded over many steps, and between any two the scheduler
admits new requests, reaps cancelled ones and notices :meth:`Scheduler.close`. So closing
waits for one micro-batch at most, and it does wait for it: the model is freed only once the
thread has left ``llama_decode`` (freeing it under a running decode is a use-after-free).
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import llama_cpp
import numpy as np
import psutil

from gemma_local.engine.draft_model import DraftModel, DraftRequest
from gemma_local.engine.drafting import DraftPacer, NgramDrafter, SpeculationPolicy
from gemma_local.engine.kv_slots import MIN_PREFIX_COPY, CheckpointPolicy, Slot, SlotCache
from gemma_local.engine.model import LlamaModel
from gemma_local.engine.prefix_disk import DiskCachePolicy, PrefixDiskCache, model_identity
from gemma_local.engine.sampling import SamplerChain
from gemma_local.engine.stream import GenerationStream
from gemma_local.engine.text_stream import TextAssembler
from gemma_local.engine.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    TextDelta,
    Timings,
    TokenLogprob,
    Usage,
)
from gemma_local.engine.vision import EncodedImage
from gemma_local.errors import EngineClosedError, GemmaLocalError, GenerationError, ServerBusyError

logger = logging.getLogger("gemma_local.engine")

#: How long :meth:`Scheduler.close` waits quietly before saying (in the log) what it waits for.
CLOSE_NOTICE_S = 5.0


@dataclass
class Prompt:
    """Prompt tokens, with each image's soft tokens as a run of one placeholder id.

    ``images`` maps the index where an image's run starts to its encoding; the scheduler
    decodes those runs from the embeddings instead of token ids.
    """

    tokens: list[int]
    images: dict[int, EncodedImage] = field(default_factory=dict)

    def next_image_at_or_after(self, index: int) -> int | None:
        starts = [i for i in self.images if i >= index]
        return min(starts) if starts else None

    def image_covering(self, index: int) -> int | None:
        """The start of the image run that ``index`` falls strictly inside, if any."""
        for start, image in self.images.items():
            if start < index < start + image.n_tokens:
                return start
        return None


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    stream: GenerationStream
    prompt_info: Prompt
    sampler: SamplerChain
    submitted_at: float
    slot: Slot | None = None
    n_past: int = 0  # tokens of this sequence already in the KV cache
    cached_tokens: int = 0
    next_token: int | None = None  # sampled, not yet decoded
    n_generated: int = 0
    out_index: int = -1  # where this job's logits sit in the current batch
    started_at: float = 0.0
    first_token_at: float = 0.0
    prompt_done_at: float = 0.0
    assembler: TextAssembler = field(default_factory=TextAssembler)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    drafter: NgramDrafter | None = None
    uses_draft_model: bool = False  # drafts come from the draft model (else from ``drafter``)
    pacer: DraftPacer | None = None
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of which kept

    @property
    def prompt(self) -> list[int]:
        return self.prompt_info.tokens

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)


@dataclass(frozen=True)
class SchedulerStats:
    slots: int
    active: int
    queued: int
    n_ctx_per_slot: int
    #: Requests allowed to wait for a slot; slots + max_queue is the most in flight at once.
    max_queue: int = 0


class Scheduler:
    """Runs every submitted job to completion on one background thread."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        max_queue: int = 64,
        checkpoints: CheckpointPolicy | None = None,
        speculation: SpeculationPolicy | None = None,
        draft: DraftModel | None = None,
        prefix_disk: DiskCachePolicy | None = None,
    ) -> None:
        self.model = model
        #: The draft model, when the policy drafts with one (its sequence i drafts for slot i).
        self.draft = draft
        self.max_queue = max_queue
        self.cache = SlotCache(model, checkpoints)
        self.disk = PrefixDiskCache(prefix_disk, model_identity(model)) if prefix_disk is not None else None
        self.speculation = speculation or SpeculationPolicy()
        # Verifying drafts needs a row of logits per draft position (llama.cpp is told the most).
        self.speculation = replace(
            self.speculation, draft_max=min(self.speculation.draft_max, model.params.n_outputs_per_seq - 1)
        )
        self.slots = self.cache.slots
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._cond = threading.Condition()
        self._closing = False
        #: Set by :meth:`abandon`: the thread is stuck in llama.cpp for good (a lost RPC worker).
        self._lost: Exception | None = None
        self._clear_requests: list[threading.Event] = []
        #: Tokens per step: one micro-batch (see the module docstring).
        self._step_tokens = min(model.n_batch, model.params.n_ubatch)
        self._batch = llama_cpp.llama_batch_init(self._step_tokens, 0, 1)
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="gemma-local-scheduler", daemon=True)
        self._thread.start()

    # --- public, any thread ------------------------------------------------------------------

    def submit(self, request: GenerationRequest, prompt: Prompt, sampler: SamplerChain) -> GenerationStream:
        request_id = request.request_id or f"gen-{next(self._ids)}"
        stream = GenerationStream(request_id, on_cancel=self._wake, prompt_tokens=len(prompt.tokens))
        job = Job(request=request, stream=stream, prompt_info=prompt, sampler=sampler, submitted_at=time.perf_counter())
        with self._cond:
            if self._closing:
                sampler.close()
                raise self._lost.with_traceback(None) if self._lost else EngineClosedError()
            free = len(self.slots) - len(self._active)
            if len(self._pending) >= self.max_queue + max(free, 0):
                sampler.close()
                raise ServerBusyError(queue_size=len(self._pending))
            self._pending.append(job)
            self._cond.notify()
        return stream

    def stats(self) -> SchedulerStats:
        with self._cond:
            return SchedulerStats(
                slots=len(self.slots),
                active=len(self._active),
                queued=len(self._pending),
                n_ctx_per_slot=self.model.n_ctx_per_seq,
                max_queue=self.max_queue,
            )

    def close(self) -> None:
        """Stop accepting work, end every running and waiting request, wait for the thread.

        Returns once the thread is gone, so the caller may free the model: a step in progress
        (one micro-batch) is finished first, never abandoned mid-``llama_decode``.
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._lost is not None:
            return  # the thread never comes back from llama.cpp; nothing it uses may be freed
        self._thread.join(CLOSE_NOTICE_S)
        if self._thread.is_alive():
            logger.info("waiting for the engine to finish its current micro-batch before freeing the model")
            self._thread.join()
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.disk is not None:
            self.disk.close()  # the snapshots already taken still reach the disk

    def cancel_all(self) -> int:
        """Cancel every running and waiting request (each stream ends ``cancelled``); return how many."""
        with self._cond:
            streams = [job.stream for job in (*self._active, *self._pending) if job.stream.finished is None]
        for stream in streams:
            stream.cancel()
        return len(streams)

    def abandon(self, error: Exception) -> int:
        """End every running and waiting request with ``error`` and refuse new ones; return how many.

        For when the scheduler thread can never leave ``llama_decode`` (an RPC worker holding
        part of the model was lost, see :mod:`gemma_local.engine.rpc`): that thread cannot end
        its jobs, so this does, from the thread that learnt of the loss. The jobs are not
        released (their samplers and slots belong to the stuck thread): the model is done for.
        """
        with self._cond:
            self._closing = True
            self._lost = error
            jobs = [*self._active, *self._pending]
            self._pending.clear()
        for job in jobs:
            if job.stream.finished is None:
                job.stream._push(
                    Finished(finish_reason="error", usage=self._usage(job), timings=self._timings(job), error=error)
                )
        return len(jobs)

    def clear_prefix_cache(self, timeout: float = 30.0) -> bool:
        """Drop the KV that idle slots keep for reuse (the next prompts are computed cold)."""
        done = threading.Event()
        with self._cond:
            self._clear_requests.append(done)
            self._cond.notify()
        return done.wait(timeout)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._active and not self._pending and not self._clear_requests:
                    self._cond.wait()
                if self._closing:
                    break
                clear_requests, self._clear_requests = self._clear_requests, []
                admitted = self._admit_locked()
            if clear_requests:
                self._clear_idle_slots()
                for done in clear_requests:
                    done.set()
            for job in admitted:
                self._isolated(job, self._start)
            self._reap_cancelled()
            if self._active:
                try:
                    self._step()
                except Exception as e:  # a bug must fail the requests in flight, not the engine
                    logger.exception("scheduler step failed")
                    for job in list(self._active):
                        self._fail(job, GenerationError(f"Generation failed: {e}"))
        self._shutdown()

    def _admit_locked(self) -> list[Job]:
        admitted = []
        # Cancelled waiting jobs leave the queue at once, even when every slot is busy.
        for job in [j for j in self._pending if j.stream.cancel_requested]:
            self._pending.remove(job)
            self._finish_unstarted(job, "cancelled")
        free = len(self.slots) - len(self._active) - len(admitted)
        while self._pending and free > 0:
            job = self._pending.popleft()
            self._active.append(job)
            admitted.append(job)
            free -= 1
        return admitted

    def _start(self, job: Job) -> None:
        job.started_at = time.perf_counter()
        info = job.prompt_info
        last = len(info.tokens) - 1

        def cut(n: int) -> int:
            # The last prompt token is always decoded again: its logits give the first new
            # token. An image is decoded whole, never from its middle.
            n = min(n, last)
            inside = info.image_covering(n)
            return inside if inside is not None else n

        slot, n_keep = self._place(info.tokens, cut)
        slot.job = job
        job.slot = slot
        job.assembler = TextAssembler(job.request.stop)
        job.n_past = n_keep
        job.cached_tokens = n_keep
        drafter = self.speculation.drafter_for(job.request.sampling.temperature)
        if drafter == "model" and self.draft is not None and not info.images:
            self.draft.start(slot.seq_id, info.tokens)
            job.uses_draft_model = True
        elif drafter is not None:
            # Prompt lookup also for an image prompt under the draft model (which cannot see images).
            job.drafter = NgramDrafter(info.tokens)
        if drafter is not None:
            job.pacer = DraftPacer(max_len=self.speculation.draft_max)

    def _place(self, prompt: list[int], cut: Callable[[int], int]) -> tuple[Slot, int]:
        """:meth:`SlotCache.place`, unless a saved prompt on disk gives more than every slot."""
        if self.disk is not None:
            try:
                placed = self._place_from_disk(prompt, cut)
            except Exception:  # the disk cache is an optimisation: never a reason to fail a request
                logger.exception("prefix cache: loading from disk failed")
                placed = None
            if placed is not None:
                return placed
        return self.cache.place(prompt, cut)

    def _place_from_disk(self, prompt: list[int], cut: Callable[[int], int]) -> tuple[Slot, int] | None:
        assert self.disk is not None
        in_memory = self.cache.best_reuse(prompt, cut)
        if len(prompt) < in_memory + MIN_PREFIX_COPY:
            return None  # no file could be worth reading
        offer = self.disk.find(prompt, cut, self.model.n_swa)
        if offer is None:
            return None
        entry, expected = offer
        if expected < in_memory + MIN_PREFIX_COPY:
            return None
        loaded = self.disk.read(entry)
        if loaded is None:
            return None
        slot = self.cache.target(prompt)
        n = self.cache.load(slot, loaded.tokens, loaded.state, loaded.checkpoints, cut(expected))
        if n == 0:
            self.disk.drop(entry.path)  # llama.cpp refused its state: not for this context
            return None
        if n <= in_memory:
            return None  # the slot now holds the file's prefix; place() chooses again
        return slot, n

    def _save_prefix(self, job: Job) -> None:
        """Hand a long prompt just processed to the disk cache (see :mod:`gemma_local.engine.prefix_disk`)."""
        disk, slot = self.disk, job.slot
        if disk is None or slot is None or job.prompt_info.images:
            return
        try:
            if not disk.wants(job.prompt):
                return
            # The copy is the slot's whole KV: never at the cost of the machine's last free memory.
            state = self.cache.snapshot(slot, limit=psutil.virtual_memory().available // 2)
            if state is not None and slot.tokens == job.prompt:
                disk.save(job.prompt, state, slot.checkpoints)
        except Exception:
            logger.exception("prefix cache: could not copy a prompt's state for the disk")

    def _clear_idle_slots(self) -> None:
        for slot in self.slots:
            if slot.job is None:
                self.cache.clear(slot)
                if self.draft is not None:
                    self.draft.clear(slot.seq_id)

    def _reap_cancelled(self) -> None:
        for job in [j for j in self._active if j.stream.cancel_requested]:
            self._finish(job, "cancelled")
        with self._cond:
            for job in [j for j in self._pending if j.stream.cancel_requested]:
                self._pending.remove(job)
                self._finish_unstarted(job, "cancelled")

    def _step(self) -> None:
        for job in [j for j in self._active if j.prefilling and j.n_past in j.prompt_info.images]:
            if self._closing:  # each image is a decode call of its own: stop between them
                return
            self._isolated(job, self._decode_image)
        n_ctx = self.model.n_ctx_per_seq
        room = self._step_tokens
        # What each job adds this step: its next token, or the next chunk of its prompt.
        in_batch: list[tuple[Job, list[int]]] = []
        generating = [j for j in self._active if not j.prefilling]
        # Drafts only while few slots generate (see SpeculationPolicy), after every slot's own token.
        drafting = self.speculation.enabled and len(generating) <= self.speculation.max_busy
        room -= len(generating)
        budgets: list[tuple[Job, int]] = []
        for job in generating:
            if job.n_past >= n_ctx:
                self._finish(job, "length")
                continue
            k = self._draft_budget(job, room) if drafting else 0
            room -= k
            budgets.append((job, k))
        for (job, k), drafts in zip(budgets, self._drafts(budgets, catch_up=drafting), strict=True):
            room += k - len(drafts)
            in_batch.append((job, [job.next_token, *drafts]))
        for job in [j for j in self._active if j.prefilling]:
            if room <= 0:
                break
            if job.n_past in job.prompt_info.images:
                continue  # its image is decoded first, in a call of its own (next step)
            end = job.n_past + room
            next_image = job.prompt_info.next_image_at_or_after(job.n_past)
            if next_image is not None:
                end = min(end, next_image)
            mark = self.cache.next_mark(job.n_past)
            if mark is not None:  # a chunk ends where a checkpoint is due
                end = min(end, mark)
            chunk = job.prompt[job.n_past : end]
            in_batch.append((job, chunk))
            room -= len(chunk)
        # In sequence order: over separate KV streams, llama.cpp puts one token of every
        # sequence in the same micro-batch only when they come in increasing sequence ids;
        # otherwise four streams cost up to four passes over the weights.
        in_batch.sort(key=lambda item: item[0].slot.seq_id)
        batch = self._batch
        n = 0
        for job, tokens in in_batch:
            # A generating slot needs logits at its token and at each of its drafts; a prompt
            # chunk only at the prompt's last token.
            generating = not job.prefilling
            wants_logits = generating or job.n_past + len(tokens) == len(job.prompt)
            first_out = n if generating else n + len(tokens) - 1
            for i, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = job.n_past + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = job.slot.seq_id
                batch.logits[n] = wants_logits and (generating or i == len(tokens) - 1)
                n += 1
            job.out_index = first_out if wants_logits else -1
        if n == 0:
            return
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.model.ctx, batch)
        self.cache.decoded()
        if rc != 0:
            self._decode_failed(rc, [job for job, _ in in_batch])
            return
        now = time.perf_counter()
        for job, tokens in in_batch:
            self.cache.append(job.slot, tokens)
            if not job.prefilling:
                self._isolated(job, lambda j, tokens=tokens: self._verify(j, tokens))
                continue
            job.n_past += len(tokens)
            self.cache.maybe_checkpoint(job.slot, prompt_done=not job.prefilling)
            if job.out_index >= 0:
                job.prompt_done_at = now
                self._isolated(job, lambda j: self._take(j, j.out_index))
                self._save_prefix(job)  # after the first token: a save never delays it

    def _draft_budget(self, job: Job, room: int) -> int:
        """How many tokens ``job`` may draft this step (0 without a drafter or room)."""
        if job.pacer is None:
            return 0
        limit = min(room, self.model.n_ctx_per_seq - job.n_past - 1)
        if job.request.max_tokens is not None:
            limit = min(limit, job.request.max_tokens - job.n_generated - 1)
        return max(0, min(limit, job.pacer.budget()))

    def _drafts(self, budgets: list[tuple[Job, int]], *, catch_up: bool) -> list[list[int]]:
        """Each generating job's draft tokens this step, for its budget (prompt lookup, or the
        draft model for all its slots at once). ``catch_up``: the draft model also decodes the
        prompts the target is processing, so that it is ready to draft at their first token."""
        out: list[list[int]] = [[] for _ in budgets]
        wanted: list[tuple[int, DraftRequest]] = []
        for i, (job, k) in enumerate(budgets):
            if job.uses_draft_model:
                if k > 0:
                    context = [*job.slot.tokens, job.next_token]
                    wanted.append((i, DraftRequest(job.slot.seq_id, context, k, len(job.prompt))))
            elif job.drafter is not None and k > 0:
                out[i] = job.drafter.draft(k)
        if self.draft is None:
            return out
        behind = [
            DraftRequest(j.slot.seq_id, list(j.slot.tokens), 0, len(j.prompt))
            for j in self._active
            if catch_up and j.uses_draft_model and j.prefilling and j.slot.tokens
        ]
        if not (wanted or behind):
            return out
        try:
            proposed = self.draft.propose([r for _, r in wanted] + behind)
        except Exception:
            # Drafts are optional: a failing draft model costs this step's drafts (and its KV,
            # which may no longer match its record), never the requests.
            logger.exception("the draft model failed; no drafts this step")
            self.draft.clear_all()
            return out
        for (i, _), drafts in zip(wanted, proposed, strict=False):
            out[i] = drafts
        return out

    def _verify(self, job: Job, tokens: list[int]) -> None:
        """Sample each decoded position of a generating slot; keep drafts while they match.

        ``tokens`` is the slot's next token and its drafts, decoded at ``job.n_past`` on. The
        token sampled after position i is compared with draft i+1: equal, that draft is kept
        and the next position is sampled too; otherwise the rest is dropped from the KV.
        """
        base = job.n_past
        drafts = tokens[1:]
        accepted = 0
        for i in range(len(tokens)):
            job.n_past = base + i + 1
            if not self._take(job, job.out_index + i):
                break  # finished: the slot keeps its KV as decoded (the record matches it)
            if i < len(drafts) and job.next_token == drafts[i]:
                accepted += 1
                continue
            break
        if drafts:
            job.drafted += len(drafts)
            job.accepted += accepted
            if job.pacer is not None:
                job.pacer.record(len(drafts), accepted)
        # Roll rejected drafts back out of the KV (exact: they lie inside the sliding window).
        rejected = job.stream.finished is None and job.n_past < base + len(tokens)
        if rejected and self.cache.truncate(job.slot, job.n_past) != job.n_past:
            raise GenerationError("Generation failed: the KV cache could not drop rejected draft tokens.")

    def _isolated(self, job: Job, action: Callable[[Job], None]) -> None:
        """Run one job's part of a step; if it raises, that job fails and the others go on."""
        try:
            action(job)
        except Exception as e:
            logger.exception("request %s failed", job.stream.request_id)
            if job.stream.finished is None:
                self._fail(job, e if isinstance(e, GemmaLocalError) else GenerationError(f"Generation failed: {e}"))

    def _decode_image(self, job: Job) -> None:
        """Decode one image's embeddings into the job's sequence, alone in its llama_decode call.

        Image tokens attend to each other both ways (non-causal), which llama.cpp switches on
        for the whole context; it must cover only this call, and the image must fit in one
        micro-batch, or llama.cpp aborts the process.
        """
        image = job.prompt_info.images[job.n_past]
        n, n_embd = image.embeddings.shape
        if n > self.model.params.n_ubatch:
            self._fail(
                job,
                GenerationError(
                    f"An image needs {n} tokens in one micro-batch but n_ubatch is {self.model.params.n_ubatch}; "
                    "start the engine with a larger n_ubatch (GEMMA_LOCAL_N_UBATCH)."
                ),
            )
            return
        if job.n_past + n > self.model.n_ctx_per_seq:
            self._finish(job, "length")
            return
        batch = llama_cpp.llama_batch_init(n, n_embd, 1)
        try:
            ctypes.memmove(batch.embd, image.embeddings.ctypes.data, image.embeddings.nbytes)
            for i in range(n):
                batch.pos[i] = job.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = job.slot.seq_id
                batch.logits[i] = False
            batch.n_tokens = n
            if image.non_causal:
                llama_cpp.llama_set_causal_attn(self.model.ctx, False)
            try:
                rc = llama_cpp.llama_decode(self.model.ctx, batch)
                self.cache.decoded()
            finally:
                if image.non_causal:
                    llama_cpp.llama_set_causal_attn(self.model.ctx, True)
        finally:
            llama_cpp.llama_batch_free(batch)
        if rc != 0:
            self._decode_failed(rc, [job])
            return
        self.cache.append(job.slot, job.prompt[job.n_past : job.n_past + n])
        job.n_past += n

    def _decode_failed(self, rc: int, jobs: list[Job]) -> None:
        reason = {1: "no room left in the KV cache", 2: "aborted"}.get(rc, f"llama_decode returned {rc}")
        logger.error("decode failed (%s) for %d requests", reason, len(jobs))
        for job in jobs:
            self.cache.clear(job.slot)
            self._fail(job, GenerationError(f"Generation failed: {reason}."))

    def _take(self, job: Job, index: int) -> bool:
        """Sample the job's next token from the logits at batch ``index``; return whether it goes on."""
        model = self.model
        token = job.sampler.sample(model.ctx, index)
        if job.n_generated == 0:
            job.first_token_at = time.perf_counter()
        job.n_generated += 1
        if job.request.logprobs is not None:
            job.pending_logprobs.append(self._logprob(index, token, job.request.logprobs))
        if model.is_end_of_generation(token):
            self._finish(job, "stop")
            return False
        text, hit = job.assembler.push(model.token_bytes(token))
        if text:
            self._emit(job, text)
        if hit is not None:
            self._finish(job, "stop", stop_sequence=hit.stop, flush=False)
        elif (
            job.request.max_tokens is not None and job.n_generated >= job.request.max_tokens
        ) or job.n_past >= model.n_ctx_per_seq:
            self._finish(job, "length")
        else:
            job.next_token = token
            if job.drafter is not None:
                job.drafter.push(token)
            return True
        return False

    def _logprob(self, index: int, token: int, top_n: int) -> TokenLogprob:
        model = self.model
        ptr = llama_cpp.llama_get_logits_ith(model.ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).astype(np.float64)
        top = logits.max()
        logsumexp = top + np.log(np.exp(logits - top).sum())

        def entry(t: int) -> tuple[str, float, tuple[int, ...]]:
            raw = model.token_bytes(int(t))
            return raw.decode("utf-8", errors="replace"), float(logits[t] - logsumexp), tuple(raw)

        alternatives: tuple[tuple[str, float, tuple[int, ...]], ...] = ()
        if top_n > 0:
            ids = np.argpartition(-logits, top_n)[:top_n]
            ids = ids[np.argsort(-logits[ids])]
            alternatives = tuple(entry(int(t)) for t in ids)
        text, logprob, raw = entry(token)
        return TokenLogprob(token=text, logprob=logprob, bytes=raw, top=alternatives)

    def _emit(self, job: Job, text: str) -> None:
        logprobs = tuple(job.pending_logprobs)
        job.pending_logprobs.clear()
        job.stream._push(TextDelta(text=text, n_tokens=len(logprobs) or 1, logprobs=logprobs))

    def _usage(self, job: Job) -> Usage:
        return Usage(
            prompt_tokens=len(job.prompt),
            completion_tokens=job.n_generated,
            cached_tokens=job.cached_tokens,
            draft_tokens=job.drafted,
            accepted_tokens=job.accepted,
        )

    def _timings(self, job: Job) -> Timings:
        now = time.perf_counter()
        started = job.started_at or now
        prompt_done = job.prompt_done_at or now
        return Timings(
            queued_s=started - job.submitted_at,
            time_to_first_token_s=(job.first_token_at - job.submitted_at) if job.first_token_at else 0.0,
            prompt_s=prompt_done - started,
            generation_s=now - prompt_done,
        )

    def _release(self, job: Job) -> None:
        # Under the lock: submit() and stats() read _active from other threads.
        with self._cond:
            if job in self._active:
                self._active.remove(job)
        if job.slot is not None:
            job.slot.job = None
            job.slot.last_used = time.perf_counter()
        job.sampler.close()

    def _finish(self, job: Job, reason: FinishReason, *, stop_sequence: str | None = None, flush: bool = True) -> None:
        if flush:
            tail = job.assembler.finish()
            if tail or job.pending_logprobs:
                self._emit(job, tail)
        elif job.pending_logprobs:
            self._emit(job, "")
        self._release(job)
        job.stream._push(
            Finished(
                finish_reason=reason,
                usage=self._usage(job),
                timings=self._timings(job),
                stop_sequence=stop_sequence,
            )
        )

    def _fail(self, job: Job, error: Exception) -> None:
        self._release(job)
        job.stream._push(
            Finished(finish_reason="error", usage=self._usage(job), timings=self._timings(job), error=error)
        )

    def _finish_unstarted(self, job: Job, reason: FinishReason, error: Exception | None = None) -> None:
        job.sampler.close()
        job.stream._push(
            Finished(
                finish_reason=reason,
                usage=Usage(prompt_tokens=len(job.prompt), completion_tokens=0),
                timings=self._timings(job),
                error=error,
            )
        )

    def _shutdown(self) -> None:
        for job in list(self._active):
            self._finish(job, "cancelled")
        with self._cond:
            pending, self._pending = list(self._pending), collections.deque()
        for job in pending:
            self._finish_unstarted(job, "error", EngineClosedError())
