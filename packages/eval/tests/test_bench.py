"""python -m eval.bench: each subcommand runs on tiny sizes and reports sane JSON; adding one is one entry."""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import pytest
import torch

from eval.bench import SUBCOMMANDS, Subcommand
from eval.bench.__main__ import main
from eval.bench.common import percentiles


def _run(capsys, argv, commands=SUBCOMMANDS):
    assert main(argv, commands) == 0
    return json.loads(capsys.readouterr().out)


def test_percentiles_match_numpy_linear():
    import numpy as np

    v = [5.0, 1.0, 9.0, 3.0, 7.5]
    got = percentiles(v)
    assert got["mean"] == pytest.approx(np.mean(v))
    for q in (50, 90, 99):
        assert got[f"p{q}"] == pytest.approx(np.percentile(v, q))


def test_server_bench_against_a_live_server(server, capsys, tmp_path):
    out = tmp_path / "bench.json"
    doc = _run(capsys, ["server", "--url", server, "--concurrency", "3", "--requests", "6", "--prompt-tokens", "12",
                        "--max-tokens", "5", "--out", str(out)])
    r = doc["results"]
    assert doc["bench"] == "server" and r["model"] == "tiny" and r["requests"] == 6
    assert r["completion_tokens"] == 30 and r["prompt_tokens"] == 72  # ignore_eos: exactly 5 tokens each
    assert r["ttft_ms"]["p50"] > 0 and r["itl_ms"]["p50"] > 0 and r["itl_ms"]["p50"] <= r["itl_ms"]["p99"]
    assert r["output_tokens_per_s"] > 0 and r["decode_tokens_per_s"]["mean"] > 0
    assert json.loads(out.read_text()) == doc


def test_generate_bench_uses_the_generator_plugin(capsys):
    doc = _run(capsys, ["generate", "--model", "llama-debug", "--batch-sizes", "1,2", "--prompt-tokens", "8",
                        "--new-tokens", "4", "--repeat", "2", "--warmup", "1", "--device", "cpu"])
    rows = doc["results"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["prefill_tokens_per_s"] > 0 and r["total_s"] > 0 for r in rows)
    assert doc["results"]["params"] > 0 and doc["args"]["generator"] == "default"


def test_train_step_bench_learns(capsys):
    doc = _run(capsys, ["train-step", "--preset", "llama-debug", "--batch-size", "2", "--seq-len", "16",
                        "--steps", "3", "--warmup", "1", "--lr", "0.01", "--device", "cpu"])
    r = doc["results"]
    assert r["tokens_per_step"] == 32 and r["tokens_per_s"] > 0
    assert r["last_loss"] < r["first_loss"]  # AdamW steps on one batch reduce its loss


def test_adding_a_subcommand_is_one_entry(capsys):
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n", type=int, default=2)

    extra = {**SUBCOMMANDS, "square": Subcommand("n squared", add_args, lambda a: {"n2": a.n * a.n})}
    assert _run(capsys, ["square", "--n", "7"], extra) == {"n2": 49}


def test_errors_exit_2_without_traceback(capsys, fails_with):
    assert main(["generate", "--model", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model:") and "llama-debug" in err
    assert main(["server", "--url", "http://127.0.0.1:9", "--vocab-size", "10"]) == 2
    assert "cannot benchmark" in capsys.readouterr().err
    fails_with(["generate", "--batch-sizes", "1,x"], "argument --batch-sizes: expected comma-separated integers")
    if not torch.cuda.is_available():
        for cmd in ("decode", "train-compare"):
            assert main([cmd, "--preset", "debug", "--device", "cuda"]) == 2
            assert capsys.readouterr().err.startswith("error: device:")


def test_decode_runs_on_cpu_and_a_failing_variant_keeps_the_others(capsys, tmp_path, monkeypatch):
    """bench decode on a tiny model: the lmstack and int8 loops run; a variant that raises (here transformers,
    made to fail) is recorded under ``errors``, the JSON is still written, and the command exits 1."""
    import eval.bench.decode as decode

    def broken(*a, **k):
        raise RuntimeError("no transformers here")

    monkeypatch.setattr(decode, "hf_llama", broken)
    out = tmp_path / "decode.json"
    argv = ["decode", "--preset", "llama-debug", "--device", "cpu", "--dtype", "fp32", "--compile", "none",
            "--variants", "transformers,lmstack,lmstack-int8", "--batch-sizes", "1", "--prompt-tokens", "4",
            "--new-tokens", "4", "--repeat", "1", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "variant 'transformers' failed: RuntimeError: no transformers here" in err
    r = json.loads(out.read_text())["results"]
    assert r["errors"] == {"transformers": "RuntimeError: no transformers here"}
    for name in ("lmstack", "lmstack-int8"):  # 3 tokens by subtraction: a rate where measurable, never a negative one
        _check_subtraction(r["variants"][name]["batch1"], rows=1, tokens=3)
    subtracted = [r["variants"][n]["batch1"]["decode_tokens_per_s"] for n in ("lmstack-int8", "lmstack")]
    assert r["int8_speedup_batch1"] == (None if None in subtracted else subtracted[0] / subtracted[1])
    # the decode steps timed by the generator's own clock too (prefill left out): 3 tokens over its median
    for name in ("lmstack", "lmstack-int8"):
        b1 = r["variants"][name]["batch1"]
        assert len(b1["decode_s_clocked"]) == 1 and b1["decode_tokens_per_s_clocked"] == 3 / b1["decode_s_clocked"][0]
    bf16 = r["variants"]["lmstack"]["batch1"]["decode_tokens_per_s_clocked"]
    int8 = r["variants"]["lmstack-int8"]["batch1"]["decode_tokens_per_s_clocked"]
    assert r["int8_speedup_batch1_clocked"] == int8 / bf16
    assert r["fraction_of_roofline_batch1_clocked"] == bf16 / r["roofline_tokens_per_s_batch1"]
    # every lmstack variant's greedy tokens are scored by the prefill path (fp32 here: the best token each time;
    # int8 ones by the unquantized model); on a CPU the Linears stay F.linear, so nothing is folded
    assert r["variants"]["lmstack"]["greedy_gap_max"] < 1e-4 and r["variants"]["lmstack-int8"]["greedy_gap_max"] >= 0
    assert r["variants"]["lmstack"]["fold_norms"] is False and r["variants"]["lmstack-int8"]["fold_norms"] is False
    assert r["variants"]["lmstack"]["fuse_swiglu"] is False and r["variants"]["lmstack"]["linear_impl"] == []


def test_decode_reports_each_batch_sizes_choices_and_the_first_ones_per_variant(monkeypatch, tmp_path):
    """FastGenerator's "auto" choices differ by batch size (PDL attention at one row only): each batch records its
    own, and the variant's fields are its first batch's, not whichever ran last."""
    import eval.bench.decode as decode

    real = decode.resolve

    def resolve(group, name):
        obj = real(group, name)
        if group != "lmstack.decoders":
            return obj

        class PerBatch(obj):
            def __init__(self, model, batch_size, *a, **k):
                super().__init__(model, batch_size, *a, **k)
                self.decode_attention = f"choice-for-{batch_size}"

        return PerBatch

    monkeypatch.setattr(decode, "resolve", resolve)
    out = tmp_path / "decode.json"
    assert main(["decode", "--preset", "llama-debug", "--device", "cpu", "--dtype", "fp32", "--compile", "none",
                 "--variants", "lmstack", "--batch-sizes", "1,2", "--prompt-tokens", "4", "--new-tokens", "4",
                 "--repeat", "1", "--out", str(out)]) == 0
    v = json.loads(out.read_text())["results"]["variants"]["lmstack"]
    assert v["batch1"]["choices"]["decode_attention"] == "choice-for-1"
    assert v["batch2"]["choices"]["decode_attention"] == "choice-for-2"
    assert v["decode_attention"] == "choice-for-1" and v["pdl"] == v["batch1"]["choices"]["pdl"]


def test_decode_refuses_an_unknown_layer_kernel_before_building_a_model(monkeypatch, capsys):
    import eval.bench.decode as decode

    monkeypatch.setattr(decode, "resolve", lambda *a, **k: pytest.fail("a model was built before the check"))
    assert main(["decode", "--preset", "llama-debug", "--device", "cpu", "--layer-kernel", "nope"]) != 0
    assert "unknown decode_layer implementation 'nope'; valid names: auto, reference, triton" in \
        capsys.readouterr().err


def test_decode_refuses_an_unknown_decode_attention_before_building_a_model(monkeypatch, capsys):
    import eval.bench.decode as decode

    monkeypatch.setattr(decode, "resolve", lambda *a, **k: pytest.fail("a model was built before the check"))
    assert main(["decode", "--preset", "llama-debug", "--device", "cpu", "--decode-attention", "nope"]) != 0
    assert "unknown decode_attention implementation 'nope'" in capsys.readouterr().err


def test_decode_fold_norms_folds_the_int8_variant_before_quantizing(tmp_path):
    """--fold-norms: the lmstack loop folds, and the int8 variant folds before quantizing (its int8 layers then
    normalise their input and add the residual), both with --unified on; both loops' greedy tokens are the prefill
    path's choices (int8 ones scored by the unquantized model: within quantization error)."""
    out = tmp_path / "decode.json"
    argv = ["decode", "--preset", "llama-debug", "--device", "cpu", "--dtype", "fp32", "--compile", "none",
            "--variants", "lmstack,lmstack-int8", "--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "4",
            "--repeat", "1", "--fold-norms", "--linear-impl", "reference", "--fuse-swiglu", "--decode-attention",
            "reference", "--unified", "on", "--out", str(out)]
    assert main(argv) == 0
    v = json.loads(out.read_text())["results"]["variants"]
    assert v["lmstack"]["fold_norms"] is True and v["lmstack-int8"]["fold_norms"] is True
    # (--unified on: o reads the unified attention's accumulators, in both loops)
    assert v["lmstack"]["unified"] is True and v["lmstack-int8"]["unified"] is True
    # (--fuse-swiglu with routed Linears: the gate/up projections return the SwiGLU themselves, same tokens)
    assert v["lmstack"]["fuse_swiglu"] is True and v["lmstack"]["linear_impl"] == ["reference"]
    assert v["lmstack"]["decode_attention"] == "reference" and v["lmstack-int8"]["decode_attention"] == "reference"
    assert v["lmstack-int8"]["fuse_swiglu"] is True
    assert v["lmstack"]["greedy_gap_max"] < 1e-4 and v["lmstack-int8"]["greedy_gap_max"] < 0.02  # logits' std ~0.16


def test_decode_profile_covers_the_int8_variant_too(tmp_path, monkeypatch):
    """--profile profiles the batch-1 loop of the int8 variant as well as lmstack's, each with one prompt row (on a
    GPU only: here the CUDA check and the profiler are stood in for)."""
    from eval.bench import decode

    assert not decode._profiling(argparse.Namespace(profile=True), "cpu")
    assert decode._profiling(argparse.Namespace(profile=True), "cuda:0")
    assert not decode._profiling(argparse.Namespace(profile=False), "cuda")
    calls = []
    monkeypatch.setattr(decode, "_profiling", lambda args, device: args.profile)
    monkeypatch.setattr(decode, "profile_decode", lambda gen, prompt: calls.append(tuple(prompt.shape)) or {"rows": 1})
    out = tmp_path / "decode.json"
    argv = ["decode", "--preset", "llama-debug", "--device", "cpu", "--dtype", "fp32", "--compile", "none",
            "--variants", "lmstack,lmstack-int8", "--batch-sizes", "2,1", "--prompt-tokens", "4", "--new-tokens",
            "2", "--repeat", "1", "--profile", "--out", str(out)]
    assert main(argv) == 0
    v = json.loads(out.read_text())["results"]["variants"]
    assert v["lmstack"]["batch2"]["profile"] == v["lmstack-int8"]["batch1"]["profile"] == {"rows": 1}
    assert "profile" not in v["lmstack"]["batch1"]  # the first batch size's loop only, as before
    assert calls == [(2, 4), (1, 4)]


def test_profile_decode_takes_the_one_token_profile_off_per_kernel(monkeypatch):
    """profile_decode profiles generate(1) and generate(n) and reports the difference per decode step: durations,
    counts and exposed times per kernel, a kernel only the one-token run has dropped, busy time the sum of the
    exposed times, and the exposed times by kernel and predecessor (``chain``: one kernel at one grid after
    different kernels gets a row each), largest first (the profiler's rows stood in for: the real ones need a
    GPU)."""
    from eval.bench import decode

    g = "_gemv grid=512x1x1"
    one = ({"_prefill": [2, 40.0], g: [4, 40.0]}, {"_prefill": 30.0, g: 20.0},
           {("", "_prefill"): [2, 30.0], ("_prefill", g): [4, 20.0]})
    many = ({"_prefill": [2, 40.0], g: [68, 680.0], "_decode": [32, 96.0]},
            {"_prefill": 30.0, g: 340.0, "_decode": 32.0},
            {("", "_prefill"): [2, 30.0], ("_prefill", g): [4, 20.0], (g, "_decode"): [32, 32.0],
             ("_decode", g): [32, 256.0], ("_combine", g): [32, 64.0]})
    asked = []

    class Gen:
        def generate(self, prompt, k):
            asked.append(k)

    profiles = iter([one, many])
    monkeypatch.setattr(decode, "profiled_gpu", lambda prof: next(profiles))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.profiler, "profile", lambda activities: contextlib.nullcontext())
    p = decode.profile_decode(Gen(), torch.zeros(1, 4, dtype=torch.long), n=33)
    assert asked == [1, 1, 33, 33]  # a warm-up call before each profiled one
    rows = {r["kernel"]: r for r in p["top"]}
    assert set(rows) == {"_gemv grid=512x1x1", "_decode"}
    assert rows["_gemv grid=512x1x1"] == {"kernel": "_gemv grid=512x1x1", "per_token": 2.0, "us_per_token": 20.0,
                                          "exposed_us_per_token": 10.0}
    assert rows["_decode"]["exposed_us_per_token"] == 1.0 and rows["_decode"]["us_per_token"] == 3.0
    assert p["kernels_per_token"] == 3.0 and p["kernel_us_per_token"] == 23.0 and p["busy_us_per_token"] == 11.0
    assert p["top"][0]["kernel"] == "_gemv grid=512x1x1"  # by duration
    assert p["chain"] == [{"kernel": g, "after": "_decode", "per_token": 1.0, "exposed_us_per_token": 8.0},
                          {"kernel": g, "after": "_combine", "per_token": 1.0, "exposed_us_per_token": 2.0},
                          {"kernel": "_decode", "after": g, "per_token": 1.0, "exposed_us_per_token": 1.0}]


def test_train_compare_fused_variant_trains_the_same_model_on_cpu(capsys):
    """lmstack-fused (one q/k/v GEMM) starts from the same weights as lmstack: the same losses, step for step."""
    doc = _run(capsys, ["train-compare", "--preset", "gpt2-debug", "--device", "cpu", "--compile", "none",
                        "--variants", "lmstack,lmstack-fused", "--seq", "16", "--batch", "2", "--steps", "2",
                        "--warmup", "1"])
    v = doc["results"]["variants"]
    assert v["lmstack-fused"]["tokens_per_s"] > 0
    assert v["lmstack-fused"]["loss"] == pytest.approx(v["lmstack"]["loss"], rel=2e-2)


def _check_subtraction(b1: dict, rows: int, tokens: int) -> None:
    """A timing's subtraction figure: rows x tokens over (n-token call - one-token call), or None with a note."""
    if b1["total_s"] > b1["prefill_s"]:
        assert b1["decode_tokens_per_s"] == pytest.approx(rows * tokens / (b1["total_s"] - b1["prefill_s"]))
    else:
        assert b1["decode_tokens_per_s"] is None and "decode_timing_note" in b1
    assert b1["host_us_per_token"] is None or b1["host_us_per_token"] > 0  # (None: noted too)
    assert b1["host_us_per_token"] is not None or "host's launches" in b1["decode_timing_note"]


def _decode_pdl_pair(tmp_path, batch: int, new_tokens: int) -> dict:
    """bench decode's lmstack-nopdl and lmstack-pdl variants on a CPU (fp32, inductor), the results as written."""
    out = tmp_path / "decode.json"
    argv = ["decode", "--preset", "llama-debug", "--device", "cpu", "--dtype", "fp32", "--compile", "default",
            "--variants", "lmstack-nopdl,lmstack-pdl", "--batch-sizes", str(batch), "--prompt-tokens", "4",
            "--new-tokens", str(new_tokens), "--repeat", "1", "--out", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text())["results"]


def test_decode_pdl_variant_reports_its_speedup_and_token_agreement(tmp_path):
    """lmstack-pdl / lmstack-nopdl: the same loop compiled with inductor's PDL option forced on (inert on a CPU) and
    off, timed in the same run, their greedy tokens compared and each token scored by the prefill path."""
    r = _decode_pdl_pair(tmp_path, batch=1, new_tokens=6)
    fast, plain = r["variants"]["lmstack-pdl"]["batch1"], r["variants"]["lmstack-nopdl"]["batch1"]
    # by the generator's clock (on a CPU the host's, after each step) the ratio is always measurable; by the
    # subtraction of a one-token call it is None where noise swamped six tokens of a tiny model
    assert r["lmstack_pdl_speedup_batch1_clocked"] == pytest.approx(
        fast["decode_tokens_per_s_clocked"] / plain["decode_tokens_per_s_clocked"]) and fast["decode_s_clocked"][0] > 0
    _check_subtraction(fast, rows=1, tokens=5)
    _check_subtraction(plain, rows=1, tokens=5)
    subtracted = (fast["decode_tokens_per_s"], plain["decode_tokens_per_s"])
    assert r["lmstack_pdl_speedup_batch1"] == (None if None in subtracted else subtracted[0] / subtracted[1])
    assert r["lmstack_pdl_greedy_agreement"] == 1.0 and r["lmstack_pdl_first_difference"] is None
    assert "lmstack-int8_pdl_speedup_batch1" not in r
    for name in ("lmstack-nopdl", "lmstack-pdl"):  # fp32 greedy tokens are the prefill path's argmax
        assert 0.0 <= r["variants"][name]["greedy_gap_max"] < 1e-3


def test_decode_pdl_comparison_without_batch_one_reports_gaps_but_no_batch1_speedup(tmp_path):
    r = _decode_pdl_pair(tmp_path, batch=2, new_tokens=4)
    assert "lmstack_pdl_speedup_batch1" not in r and "batch2" in r["variants"]["lmstack-pdl"]
    assert r["lmstack_pdl_greedy_agreement"] == 1.0
    assert r["variants"]["lmstack-pdl"]["pdl"] is True and r["variants"]["lmstack-nopdl"]["pdl"] is False
    assert all(0.0 <= r["variants"][v]["greedy_gap_max"] < 1e-3 for v in ("lmstack-pdl", "lmstack-nopdl"))


def test_greedy_gap_is_zero_for_argmax_tokens_and_grows_for_a_wrong_one():
    from eval.bench.decode import greedy_gap
    from specs.plugins import resolve
    from specs.presets import preset

    torch.manual_seed(0)
    cfg = preset("llama-debug")
    model = resolve("lmstack.models", cfg.arch)(cfg).eval()
    prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(1))
    ids = prompt
    with torch.no_grad():
        for _ in range(4):  # greedy by full forwards
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    toks = ids[:, 5:]
    assert greedy_gap(model, prompt, toks) == 0.0
    bad = toks.clone()
    with torch.no_grad():
        worst = model(torch.cat([prompt, toks[:, :2]], 1))[0, -1].argmin()
    bad[0, 2] = worst  # the least likely token at step 3
    assert greedy_gap(model, prompt, bad) > 1.0


def test_train_compare_profile_splits_a_step_by_kernel_class(capsys):
    """--profile on a CPU: aten operators by self time, the matmuls among the top ones, classes summing to the
    whole, next to the step time they have to fit under."""
    doc = _run(capsys, ["train-compare", "--preset", "gpt2-debug", "--device", "cpu", "--compile", "none",
                        "--variants", "lmstack", "--seq", "16", "--batch", "2", "--steps", "2", "--warmup", "1",
                        "--profile", "--profile-top", "4"])
    prof = doc["results"]["variants"]["lmstack"]["profile"]
    assert prof["kernels_per_step"] > 10 and prof["kernel_us_per_step"] > 0
    assert len(prof["top"]) == 4  # --profile-top
    assert sum(prof["by_class"].values()) == pytest.approx(prof["kernel_us_per_step"])
    assert prof["by_class"].get("matmul", 0) > 0  # (AdamW on a CPU is plain aten ops: no optimizer class)
    assert any(r["kernel"] in ("aten::mm", "aten::addmm") for r in prof["top"])
    assert prof["top"][0]["us_per_step"] >= prof["top"][-1]["us_per_step"]
    assert prof["step_us"] > 0


def test_kernel_classes_name_the_usual_gpu_kernels():
    import re

    from eval.bench.common import KERNEL_CLASSES

    def cls(name):
        return next((c for c, pat in KERNEL_CLASSES if re.search(pat, name, re.I)), "other")

    assert cls("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert cls("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTN") == "matmul"
    assert cls("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert cls("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert cls("triton_per_fused_native_layer_norm_0") == "fused elementwise/reduction (inductor, Triton)"
    assert cls("triton_poi_fused__to_copy_add_1") == "fused elementwise/reduction (inductor, Triton)"
    assert cls("Memcpy DtoD (Device -> Device)") == "copy/fill"


def test_gpu_rows_split_a_kernel_by_launch_grid_and_skip_host_events():
    """Kineto's Chrome-trace events: GPU kernels carry their grid, so the skinny matmul run at two shapes is two
    rows; copies and fills count, host-side events do not."""
    from eval.bench.common import gpu_rows

    def kernel(name, dur, grid=None, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "dur": dur, "args": {"grid": grid} if grid else {}}

    events = [kernel("_skinny", 6.5, [80, 1, 1]), kernel("_skinny", 6.6, [80, 1, 1]),
              kernel("_skinny", 13.8, [352, 1, 1]),
              kernel("Memcpy DtoD (Device -> Device)", 1.0, cat="gpu_memcpy"),
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 50.0},
              {"ph": "i", "cat": "kernel", "name": "marker"}]
    rows = gpu_rows(events)
    assert rows == {"_skinny grid=80x1x1": [2, pytest.approx(13.1)], "_skinny grid=352x1x1": [1, 13.8],
                    "Memcpy DtoD (Device -> Device)": [1, 1.0]}


def test_exposed_gpu_us_splits_the_busy_time_of_an_overlapping_chain():
    """A chain launched early under PDL (each kernel starts before its predecessor ends and waits inside): each
    kernel is charged what it ran past the frontier, gaps are charged to no one, a kernel wholly inside another's
    interval gets 0, and the charges sum to the union of the intervals (measured here on a 0.5 us grid)."""
    from eval.bench.common import exposed_gpu_chain, exposed_gpu_us

    def ev(name, ts, dur, grid=None, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"grid": grid} if grid else {}}

    events = [ev("_gemv", 0.0, 10.0, [512, 1, 1]), ev("_decode", 2.0, 11.0),  # waits 2-10, runs past to 13
              ev("_combine", 15.0, 5.0),  # after a 2 us gap
              ev("Memcpy DtoD (Device -> Device)", 16.0, 2.0, cat="gpu_memcpy"),  # inside _combine
              ev("_gemv", 19.0, 4.0, [512, 1, 1]),
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 100.0}]
    x = exposed_gpu_us(list(reversed(events)))  # order of the trace does not matter
    assert x == {"_gemv grid=512x1x1": pytest.approx(13.0), "_decode": pytest.approx(3.0),
                 "_combine": pytest.approx(5.0), "Memcpy DtoD (Device -> Device)": 0.0}
    covered = sum(any(e["ts"] <= t / 2 < e["ts"] + e["dur"] for e in events if e["cat"] != "cpu_op")
                  for t in range(0, 60))
    assert sum(x.values()) == pytest.approx(covered / 2)
    # by the event that started before each: the two _gemv launches apart
    chain = exposed_gpu_chain(events)
    assert chain == {("", "_gemv grid=512x1x1"): [1, pytest.approx(10.0)],
                     ("_gemv grid=512x1x1", "_decode"): [1, pytest.approx(3.0)],
                     ("_decode", "_combine"): [1, pytest.approx(5.0)],
                     ("_combine", "Memcpy DtoD (Device -> Device)"): [1, 0.0],
                     ("Memcpy DtoD (Device -> Device)", "_gemv grid=512x1x1"): [1, pytest.approx(3.0)]}


def test_trace_events_reads_a_profile_back():
    from torch.profiler import ProfilerActivity, profile

    from eval.bench.common import profiled_gpu_rows, trace_events

    def profiled():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.randn(8, 8) @ torch.randn(8, 8)
        return prof

    events = trace_events(profiled())  # (a profile exports its trace once)
    assert any(e.get("name") == "aten::mm" and e.get("ph") == "X" for e in events)
    assert profiled_gpu_rows(profiled()) == {}  # host events only: no GPU rows either way


def test_prefer_kernels_also_wins_under_torch_compile(monkeypatch):
    """--prefer op=name: the named kernel is auto's choice in eager code and in compiled code, where auto otherwise
    keeps its fusable defaults (linear_cross_entropy: 'logits')."""
    import dataclasses

    from eval.bench.common import prefer_kernels
    from kernel import default_registry
    from kernel import registry as kreg

    reg = default_registry()
    before = reg.get("linear_cross_entropy", "reference")
    monkeypatch.setattr(kreg, "COMPILE_PREFERENCE", dict(kreg.COMPILE_PREFERENCE))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    try:
        reg.cache_clear()
        assert reg.resolve("linear_cross_entropy", "auto", device="cpu", dtype=torch.float32) is \
            reg.get("linear_cross_entropy", "logits").load()
        assert prefer_kernels("linear_cross_entropy=reference") == {"linear_cross_entropy": "reference"}
        assert reg.resolve("linear_cross_entropy", "auto", device="cpu", dtype=torch.float32) is \
            reg.get("linear_cross_entropy", "reference").load()
    finally:
        reg.register(dataclasses.replace(before), replace=True)
        reg.cache_clear()


def test_train_compare_refuses_a_profile_top_below_one(fails_with):
    fails_with(["train-compare", "--preset", "gpt2-debug", "--device", "cpu", "--profile", "--profile-top", "0"],
               "argument --profile-top: must be >= 1, got 0")


def test_train_compare_refuses_an_unknown_variant_before_building_anything(monkeypatch, fails_with):
    import eval.bench.train_compare as tc

    monkeypatch.setattr(tc, "resolve", lambda *a, **k: pytest.fail("a model was built before the check"))
    fails_with(["train-compare", "--preset", "gpt2-debug", "--device", "cpu", "--variants", "lmstack,lmstak"],
               "argument --variants: unknown 'lmstak'; valid (comma-separated): lmstack, lmstack-fused, transformers")


def test_decode_timing_by_subtraction_reports_none_not_a_negative_rate(monkeypatch):
    """A one-token call slower than the n-token one (prefill noise swamping a few fast tokens) gives no rate and a note
    naming the fix, never a negative tokens/s; a measurable difference gives B (n - 1) over it. (A clock of our own:
    each call advances it by the seconds given.)"""
    from eval.bench.decode import _time_decode

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def make(one_s: float, all_s: float):
        return lambda k: now.__setitem__(0, now[0] + (one_s if k == 1 else all_s))

    r = _time_decode(make(0.02, 0.005), B=2, n=4, repeat=3, device="cpu")
    assert r["decode_tokens_per_s"] is None and r["host_us_per_token"] is None  # (here the host's is the same time)
    assert "4-token call" in r["decode_timing_note"] and "host's launches" in r["decode_timing_note"]
    assert "--new-tokens" in r["decode_timing_note"]
    assert r["end_to_end_tokens_per_s"] == pytest.approx(2 * 4 / 0.005)
    r = _time_decode(make(0.01, 0.04), B=2, n=4, repeat=3, device="cpu")
    assert r["decode_tokens_per_s"] == pytest.approx(2 * 3 / 0.03) and "decode_timing_note" not in r
    assert r["host_us_per_token"] == pytest.approx(0.03 / 3 * 1e6)
