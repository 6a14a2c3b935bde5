"""``bench server``: N concurrent streaming clients against a running OpenAI-compatible server.

Each client sends ``/v1/completions`` requests with a prompt of ``--prompt-tokens`` random token ids, asks for
exactly ``--max-tokens`` tokens (``ignore_eos``) with one logprob so every token arrives in its own SSE chunk, and
records time to first token (TTFT) and the gaps between later tokens (inter-token latency, ITL), as vLLM's
benchmark_serving does. Reports request and token throughput over the wall-clock duration, per-request prefill
(prompt tokens / TTFT) and decode (tokens after the first / time after the first) rates, and TTFT / ITL percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx

from eval.bench import options
from eval.bench.common import percentiles, report
from specs.errors import LmstackError


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name (default: the first of GET /v1/models)")
    p.add_argument("--api-key", default=None, help="bearer key, if the server needs one")
    p.add_argument("--concurrency", type=options.count(1), default=4, help="concurrent clients")
    p.add_argument("--requests", type=options.count(1), default=16, help="requests in total")
    p.add_argument("--prompt-tokens", type=options.count(1), default=64, help="prompt length in tokens")
    p.add_argument("--max-tokens", type=options.count(1), default=32, help="tokens to generate per request")
    p.add_argument("--vocab-size", type=options.count(1), default=None,
                   help="draw prompt ids below this (default: GET /tokenizer_info's vocab_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=options.seconds, default=600.0, help="seconds per request")


async def _one(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise LmstackError(f"server answered {r.status_code}: {(await r.aread()).decode(errors='replace')}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise LmstackError(f"server error mid-stream: {chunk['error']}")
            for choice in chunk.get("choices", []):
                lps = choice.get("logprobs") or {}
                n = len(lps.get("tokens") or []) or (1 if choice.get("text") else 0)
                stamps.extend([time.perf_counter()] * n)
    return {"start": start, "stamps": stamps, "end": time.perf_counter()}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout) as client:
        model = args.model
        if model is None:
            r = await client.get("/v1/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        vocab = args.vocab_size
        if vocab is None:
            r = await client.get("/tokenizer_info")
            if r.status_code != 200 or "vocab_size" not in r.json():
                raise LmstackError("the server has no /tokenizer_info with vocab_size; pass --vocab-size")
            vocab = int(r.json()["vocab_size"])
        rng = random.Random(args.seed)
        bodies = [{"model": model, "prompt": [rng.randrange(vocab) for _ in range(args.prompt_tokens)],
                   "max_tokens": args.max_tokens, "temperature": 0, "stream": True, "logprobs": 0,
                   "ignore_eos": True} for _ in range(args.requests)]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)
        results: list[dict[str, Any]] = []

        async def worker() -> None:
            while not queue.empty():
                results.append(await _one(client, queue.get_nowait()))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        duration = time.perf_counter() - t0
    ttft = [(r["stamps"][0] - r["start"]) for r in results if r["stamps"]]
    itl = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    n_out = sum(len(r["stamps"]) for r in results)
    decode = [(len(r["stamps"]) - 1) / (r["stamps"][-1] - r["stamps"][0])
              for r in results if len(r["stamps"]) > 1 and r["stamps"][-1] > r["stamps"][0]]
    return {
        "model": model, "duration_s": duration, "requests": len(results),
        "prompt_tokens": args.prompt_tokens * len(results), "completion_tokens": n_out,
        "requests_per_s": len(results) / duration,
        "input_tokens_per_s": args.prompt_tokens * len(results) / duration,
        "output_tokens_per_s": n_out / duration,
        "prefill_tokens_per_s": percentiles([args.prompt_tokens / t for t in ttft if t > 0]),
        "decode_tokens_per_s": percentiles(decode),
        "ttft_ms": percentiles([t * 1e3 for t in ttft]),
        "itl_ms": percentiles([t * 1e3 for t in itl]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        results = asyncio.run(_run(args))
    except httpx.HTTPError as exc:  # some (timeouts) have an empty message: then their type says what happened
        raise LmstackError(f"cannot benchmark {args.url}: {str(exc) or type(exc).__name__}") from None
    return report("server", {k: v for k, v in vars(args).items() if k not in ("api_key", "func")}, results)
