"""python -m eval.bench engine: the engine plugin vs transformers' batched generate on a tiny CPU model."""

from __future__ import annotations

import json

import pytest
import torch

import eval.bench.engine as bench_engine
from eval.bench.__main__ import main

TINY = ["engine", "--preset", "llama-debug", "--device", "cpu", "--dtype", "fp32", "--prompt-tokens", "8",
        "--new-tokens", "4", "--warmup", "2"]  # later options override these


def _run(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_engine_vs_transformers_same_tokens(capsys, tmp_path):
    out = tmp_path / "engine.json"
    doc = _run(capsys, [*TINY, "--requests", "6", "--concurrency", "4", "--new-tokens", "5", "--out", str(out)])
    r = doc["results"]
    assert doc["bench"] == "engine" and r["requests"] == 6 and r["concurrency"] == 4
    ours, hf = r["variants"]["lmstack"], r["variants"]["transformers"]
    assert ours["output_tokens"] == hf["output_tokens"] == 6 * 5
    assert r["greedy_agreement"] == 1.0  # fp32, same weights: transformers' greedy tokens exactly
    # 6 requests, 4 slots: the last two start after a slot frees, so the run needs more steps than tokens.
    assert ours["engine_steps"] > 5 and ours["preemptions"] == 0
    assert ours["output_tokens_per_s"] == pytest.approx(30 / ours["wall_s"])
    for lat in (ours["ttft_ms"], ours["itl_ms"]):
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert hf["itl_ms"] == pytest.approx(hf["wall_s"] / 5 * 1e3) and hf["ttft_ms"] > 0
    assert r["speedup_vs_transformers"] == pytest.approx(ours["output_tokens_per_s"] / hf["output_tokens_per_s"])
    assert json.loads(out.read_text()) == doc


def test_structured_variant_beside_plain(capsys):
    """--structured: the same requests constrained to a regex, every output matching it, the ratio reported."""
    doc = _run(capsys, [*TINY, "--requests", "3", "--concurrency", "3", "--new-tokens", "6", "--variants", "lmstack",
                        "--structured", "[a-z ]*", "--tokenizer", "byte"])
    r = doc["results"]
    plain, constrained = r["variants"]["lmstack"], r["variants"]["lmstack_structured"]
    assert plain["output_tokens"] == constrained["output_tokens"] == 18
    assert r["structured_valid"] == 1.0
    assert r["structured_vs_plain"] == pytest.approx(constrained["output_tokens_per_s"] / plain["output_tokens_per_s"])


def test_lora_variant_beside_plain(capsys):
    """--loras: the same requests spread over random adapters (every projection), the ratio reported."""
    doc = _run(capsys, [*TINY, "--requests", "5", "--concurrency", "4", "--new-tokens", "3", "--variants", "lmstack",
                        "--loras", "2", "--lora-rank", "4"])
    r = doc["results"]
    plain, adapted = r["variants"]["lmstack"], r["variants"]["lmstack_lora"]
    assert plain["output_tokens"] == adapted["output_tokens"] == 15
    assert r["lora_vs_plain"] == pytest.approx(adapted["output_tokens_per_s"] / plain["output_tokens_per_s"])


def test_latencies_from_the_plugin_timestamps(capsys, monkeypatch):
    """A stand-in engine with known timestamps: tokens/s, TTFT and ITL are computed from them as documented."""
    real = bench_engine.resolve

    def fake_engine(model, prompts, n, *, max_batch_size, block_size):
        # request i: first token at 0.1 (i + 1) s after t0 = 100, then one token every 0.01 (i + 1) s
        return [{"token_ids": [1] * n, "submit_time": 100.0, "engine_steps": 7,
                 "token_times": [100.0 + 0.1 * (i + 1) + 0.01 * (i + 1) * j for j in range(n)]}
                for i in range(len(prompts))]

    monkeypatch.setattr(bench_engine, "resolve",
                        lambda group, name: fake_engine if group == "lmstack.engines" else real(group, name))
    r = _run(capsys, [*TINY, "--requests", "2", "--new-tokens", "3", "--variants", "lmstack"])["results"]
    ours = r["variants"]["lmstack"]
    assert ours["wall_s"] == pytest.approx(0.24)  # the second request's last token: 0.2 + 2 * 0.02
    assert ours["output_tokens_per_s"] == pytest.approx(6 / 0.24)
    assert ours["requests_per_s"] == pytest.approx(2 / 0.24)
    assert ours["ttft_ms"]["mean"] == pytest.approx(150) and ours["itl_ms"]["mean"] == pytest.approx(15)
    assert ours["engine_steps"] == 7 and "preemptions" not in ours
    assert "transformers" not in r["variants"] and "speedup_vs_transformers" not in r


@pytest.mark.parametrize(("extra", "message"), [
    (["--variants", "lmstack,vllm"], "argument --variants: unknown 'vllm'; valid (comma-separated): lmstack, "
                                     "transformers"),
    (["--requests", "0"], "argument --requests: must be >= 1, got 0"),
    (["--prompt-tokens", "200", "--new-tokens", "100"], "error: --new-tokens: prompt (200) + new tokens (100)"),
])
def test_bad_options_exit_2(fails_with, extra, message):
    fails_with([*TINY, *extra], message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_cuda_is_a_clear_error(capsys):
    assert main(["engine", "--preset", "llama-debug", "--new-tokens", "4", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: device:")
