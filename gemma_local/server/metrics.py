"""Prometheus metrics for one app, in its own registry (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gemma_local.engine.types import Timings, Usage

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class ServerMetrics:
    """The server's counters, gauges and histograms.

    Args:
        engine_stats: returns ``(slots, active, queued)`` now, or None while no engine is loaded.
    """

    def __init__(self, engine_stats: Callable[[], tuple[int, int, int] | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gemma_local_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(
            "gemma_local_prompt_tokens", "Prompt tokens processed (cached ones included).", ["endpoint"], registry=r
        )
        self.cached_tokens = Counter(
            "gemma_local_cached_prompt_tokens", "Prompt tokens reused from the prefix cache.", ["endpoint"], registry=r
        )
        self.completion_tokens = Counter("gemma_local_completion_tokens", "Tokens generated.", ["endpoint"], registry=r)
        self.draft_tokens = Counter(
            "gemma_local_draft_tokens", "Speculative draft tokens verified.", ["endpoint"], registry=r
        )
        self.accepted_tokens = Counter(
            "gemma_local_draft_accepted_tokens", "Speculative draft tokens accepted (kept).", ["endpoint"], registry=r
        )
        self.generations = Counter(
            "gemma_local_generations", "Generations finished, by reason.", ["endpoint", "finish_reason"], registry=r
        )
        self.ttft = Histogram(
            "gemma_local_time_to_first_token_seconds",
            "From submission to the first generated token.",
            ["endpoint"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "gemma_local_generation_tokens_per_second",
            "Generation speed of each finished generation.",
            ["endpoint"],
            buckets=_TPS_BUCKETS,
            registry=r,
        )

        def stat(i: int) -> Callable[[], float]:
            def read() -> float:
                stats = engine_stats()
                return float(stats[i]) if stats is not None else 0.0

            return read

        Gauge("gemma_local_slots", "Requests the engine can generate at once.", registry=r).set_function(stat(0))
        Gauge("gemma_local_active_requests", "Requests generating now.", registry=r).set_function(stat(1))
        Gauge("gemma_local_queue_depth", "Requests waiting for a free slot.", registry=r).set_function(stat(2))

    def observe_generation(self, endpoint: str, finish_reason: str, usage: Usage, timings: Timings) -> None:
        """Record one finished generation (one choice)."""
        self.generations.labels(endpoint, finish_reason).inc()
        self.prompt_tokens.labels(endpoint).inc(usage.prompt_tokens)
        self.cached_tokens.labels(endpoint).inc(usage.cached_tokens)
        self.completion_tokens.labels(endpoint).inc(usage.completion_tokens)
        self.draft_tokens.labels(endpoint).inc(usage.draft_tokens)
        self.accepted_tokens.labels(endpoint).inc(usage.accepted_tokens)
        if usage.completion_tokens > 0 and timings.time_to_first_token_s > 0:
            self.ttft.labels(endpoint).observe(timings.time_to_first_token_s)
        if usage.completion_tokens > 1 and timings.generation_s > 0:
            self.tokens_per_second.labels(endpoint).observe(timings.generation_tokens_per_s(usage.completion_tokens))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
