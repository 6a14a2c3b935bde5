"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own (no process-global state).

Names follow vLLM's where a counterpart exists, under the ``lmstack:`` prefix: request counts by endpoint and
status, prompt / generation / prefix-cached tokens, preemptions, running and waiting requests, KV-cache usage,
and histograms of time to first token, inter-token latency and end-to-end request latency.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serve.engine import Engine

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _EngineCollector(Collector):
    """Reads the engine's counters at scrape time."""

    def __init__(self, engine: Engine, model_name: str):
        self.engine = engine
        self.labels = {"model_name": model_name}

    def collect(self) -> Iterator[Any]:
        s = self.engine.stats
        names = list(self.labels)
        values = list(self.labels.values())

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"lmstack:{name}", doc, labels=names)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"lmstack:{name}", doc, labels=names)
            c.add_metric(values, value)
            return c

        yield gauge("num_requests_running", "Requests in the decode batch.", s.running)
        yield gauge("num_requests_waiting", "Requests waiting for KV-cache room.", s.waiting)
        used = 1.0 - s.free_blocks / s.num_blocks if s.num_blocks else 0.0
        yield gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use.", used)
        yield gauge("kv_cache_num_blocks", "KV-cache blocks in the pool.", s.num_blocks)
        yield counter("prompt_tokens", "Prompt tokens admitted.", s.prompt_tokens)
        yield counter("prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.", s.cached_prompt_tokens)
        yield counter("generation_tokens", "Tokens generated.", s.generation_tokens)
        yield counter("num_preemptions", "Requests preempted (recomputed) for lack of KV-cache room.", s.preemptions)
        yield counter("engine_steps", "Engine iterations.", s.steps)
        fin = CounterMetricFamily("lmstack:request_success", "Finished requests by finish reason.",
                                  labels=[*names, "finished_reason"])
        for reason, n in sorted(s.finished.items()):
            fin.add_metric([*values, reason], n)
        yield fin


class ServerMetrics:
    """The server's registry: engine gauges plus per-request histograms recorded by the HTTP layer."""

    def __init__(self, engine: Engine, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name))
        self.requests = Counter("lmstack:http_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.ttft = Histogram("lmstack:time_to_first_token_seconds", "Time to first token.",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("lmstack:inter_token_latency_seconds", "Time between tokens of a request.",
                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("lmstack:e2e_request_latency_seconds", "Request latency from arrival to last token.",
                             buckets=_LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
