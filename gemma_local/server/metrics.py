"""Prometheus metrics for one app, in its own registry (several apps can share a process).

Generation series carry the ``model`` that served them (its own id, whatever alias the
request used); the slot gauges exist twice: summed over the loaded models (``gemma_local_slots``,
…) and per model (``gemma_local_model_slots{model=…}``, with the model's planned memory and
whether it is loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gemma_local.engine.types import Timings, Usage

__all__ = ["CONTENT_TYPE_LATEST", "ModelGauges", "ServerMetrics"]


@dataclass(frozen=True)
class ModelGauges:
    """One loaded model's gauges now."""

    model: str
    slots: int
    active: int
    queued: int
    memory_bytes: int


class _PerModel(Collector):
    """Reads the loaded models at each scrape (a model unloaded since simply has no series)."""

    def __init__(self, read: Callable[[], list[ModelGauges]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self._read()
        families = (
            ("gemma_local_model_slots", "Requests the model can generate at once.", "slots"),
            ("gemma_local_model_active_requests", "Requests the model is generating now.", "active"),
            ("gemma_local_model_queue_depth", "Requests waiting for one of the model's slots.", "queued"),
            ("gemma_local_model_memory_bytes", "The model's planned memory (0: not planned here).", "memory_bytes"),
        )
        for name, doc, attr in families:
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for row in rows:
                family.add_metric([row.model], float(getattr(row, attr)))
            yield family
        loaded = GaugeMetricFamily("gemma_local_models_loaded", "Models loaded now.")
        loaded.add_metric([], float(len(rows)))
        yield loaded

    def describe(self) -> list[GaugeMetricFamily]:
        return []


_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class ServerMetrics:
    """The server's counters, gauges and histograms.

    Args:
        models: the loaded models' gauges now (empty while none is loaded).
    """

    def __init__(self, models: Callable[[], list[ModelGauges]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gemma_local_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(
            "gemma_local_prompt_tokens",
            "Prompt tokens processed (cached ones included).",
            ["endpoint", "model"],
            registry=r,
        )
        self.cached_tokens = Counter(
            "gemma_local_cached_prompt_tokens",
            "Prompt tokens reused from the prefix cache.",
            ["endpoint", "model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "gemma_local_completion_tokens", "Tokens generated.", ["endpoint", "model"], registry=r
        )
        self.generations = Counter(
            "gemma_local_generations",
            "Generations finished, by reason.",
            ["endpoint", "model", "finish_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "gemma_local_time_to_first_token_seconds",
            "From submission to the first generated token.",
            ["endpoint", "model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "gemma_local_generation_tokens_per_second",
            "Generation speed of each finished generation.",
            ["endpoint", "model"],
            buckets=_TPS_BUCKETS,
            registry=r,
        )

        def stat(attr: str) -> Callable[[], float]:
            def read() -> float:
                return float(sum(getattr(row, attr) for row in models()))

            return read

        Gauge("gemma_local_slots", "Requests the engine can generate at once.", registry=r).set_function(stat("slots"))
        Gauge("gemma_local_active_requests", "Requests generating now.", registry=r).set_function(stat("active"))
        Gauge("gemma_local_queue_depth", "Requests waiting for a free slot.", registry=r).set_function(stat("queued"))
        r.register(_PerModel(models))

    def observe_generation(self, endpoint: str, model: str, finish_reason: str, usage: Usage, timings: Timings) -> None:
        """Record one finished generation (one choice) of ``model`` (its own id)."""
        self.generations.labels(endpoint, model, finish_reason).inc()
        self.prompt_tokens.labels(endpoint, model).inc(usage.prompt_tokens)
        self.cached_tokens.labels(endpoint, model).inc(usage.cached_tokens)
        self.completion_tokens.labels(endpoint, model).inc(usage.completion_tokens)
        if usage.completion_tokens > 0 and timings.time_to_first_token_s > 0:
            self.ttft.labels(endpoint, model).observe(timings.time_to_first_token_s)
        if usage.completion_tokens > 1 and timings.generation_s > 0:
            speed = timings.generation_tokens_per_s(usage.completion_tokens)
            self.tokens_per_second.labels(endpoint, model).observe(speed)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
