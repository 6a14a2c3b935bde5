"""``bench decode``: decode tokens/s against the HBM roofline and transformers' static-cache ``generate``.

Batch-1 decode of a dense model reads every weight once per token, so its ceiling is (copy bandwidth) / (weight bytes
per token). The bandwidth is measured here (a large device-to-device copy, bytes read + written), the weight bytes
are counted from the model (every parameter except the token-embedding table, of which a step reads one row), and
the result is ``fraction_of_roofline``. Variants, each in the same run on the same card:

- ``lmstack``: the graph-captured loop (``lmstack.decoders`` / ``fast``: serve's FastGenerator over the fixed-shape
  cache, ``torch.compile(mode="reduce-overhead")``), at every ``--batch-sizes`` entry;
- ``lmstack-int8``: the same after ``lmstack.quantizers`` / ``int8_weight_only`` (weight-only int8);
- ``lmstack-pdl`` / ``lmstack-int8-pdl`` and ``lmstack-nopdl`` / ``lmstack-int8-nopdl``: the same with inductor's
  programmatic dependent launch forced on or off (``FastGenerator(pdl=True/False)``; its default "auto" turns it on
  for Hopper and later, so there the plain variants are the PDL ones). When a PDL variant runs beside one without,
  the result has the speedup and the share of batch-1 greedy tokens they agree on (separately compiled bf16 loops of
  a random model part at near-ties);
- ``transformers`` (the baseline): LlamaForCausalLM with the same shape and weights,
  ``generate(cache_implementation="static")``.

Decode tokens/s is (n - 1) new tokens over the time of an n-token call less a one-token call's (prefill and first
pick), medians of ``--repeat``. The lmstack variants also give ``decode_tokens_per_s_clocked``: the same tokens over
the decode steps' time by the generator's own clock (CUDA events around its decode loop, ``FastGenerator``'s
``last_decode_s``), which the prefill's run-to-run variation (a few ms of ~130 at batch 1) does not reach, and
``fraction_of_roofline_batch1_clocked`` and ``int8_speedup_batch1_clocked`` from those.

Every lmstack variant gets ``greedy_gap_max``: each of its batch-1 greedy tokens scored by one eager forward of the
prompt and the tokens before it (the prefill path, other kernels), the largest gap between the best logit and the
chosen token's. A correct loop only ever picks a token within the rounding of the two paths of the best; a kernel
that read a buffer before its producer finished (a PDL race, a split combined too early) picks tokens far from it.

Random weights: greedy decoding of a random model is still a fixed amount of work per token; EOS is disabled.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from eval.bench import options
from eval.bench.common import DTYPES, hf_llama, prefer_kernels, profiled_gpu, report, sync
from eval.loading import pick_device
from kernel import default_registry
from specs.plugins import resolve
from specs.presets import preset

VARIANTS = ("lmstack", "lmstack-int8", "transformers", "lmstack-pdl", "lmstack-int8-pdl", "lmstack-nopdl",
            "lmstack-int8-nopdl")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="llama-1b", help="specs preset (llama family for the transformers baseline)")
    p.add_argument("--prompt-tokens", type=options.count(1), default=128)
    p.add_argument("--new-tokens", type=options.count(2, "the decode rate times the tokens after the first"),
                   default=256)
    p.add_argument("--batch-sizes", type=options.counts(1), default="1,32")
    p.add_argument("--repeat", type=options.count(1), default=3)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", type=options.device, default="cuda", help=options.DEVICE_FORMS)
    p.add_argument("--variants", type=options.names(VARIANTS), default="lmstack,lmstack-int8,transformers",
                   help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--prefer", default="", help="kernel choices, e.g. attention=sdpa,linear_cross_entropy=triton")
    p.add_argument("--compile", default="reduce-overhead",
                   help="torch.compile mode for the lmstack loop ('none': eager)")
    p.add_argument("--linear-impl", default="auto",
                   help="route the lmstack model's Linear layers through the kernel registry's 'linear' op with this "
                        "implementation (e.g. triton_skinny); 'none': F.linear; default 'auto': FastGenerator's "
                        "default (the registry's choice when it is not F.linear)")
    p.add_argument("--fold-norms", action=argparse.BooleanOptionalAction, default=None,
                   help="lmstack variants: fold the RMSNorm weights into the projections, which then normalise their "
                        "input and add the residual (FastGenerator(fold_norms=True); int8: folded before quantizing); "
                        "--no-fold-norms: never; default: FastGenerator's 'auto' (folded where the Linears are "
                        "routed through the registry, int8 included)")
    p.add_argument("--layer-kernel", default="auto",
                   help="lmstack variants at batch 1: each layer of a decode step as one kernel registry decode_layer "
                        "call (FastGenerator(layer_kernel=...)): 'on' (the registry's choice), 'off', an "
                        "implementation name (e.g. triton), or 'auto' (the default: FastGenerator's)")
    p.add_argument("--decode-attention", default="auto",
                   help="lmstack variants: the decode_attention implementation of the decode steps "
                        "(FastGenerator(decode_attention=...), e.g. triton or triton_pdl; 'model': the model's own); "
                        "default: FastGenerator's 'auto'")
    p.add_argument("--unified", default="auto", choices=["auto", "on", "off"],
                   help="lmstack variants: decode attention without its combine kernel, the output projection "
                        "reading its accumulators (FastGenerator(unified=...)); default: FastGenerator's 'auto'")
    p.add_argument("--fuse-swiglu", action=argparse.BooleanOptionalAction, default=True,
                   help="lmstack variants: the fused gate/up projection returns silu(gate) * up from its own epilogue "
                        "(FastGenerator(fuse_swiglu=True), its default); --no-fuse-swiglu: the MLP applies it")
    p.add_argument("--profile", action="store_true",
                   help="also profile the batch-1 lmstack decode (bf16 and int8 variants): GPU kernels per token and "
                        "the top kernels by time")


def _linear_impls(model: torch.nn.Module) -> list[str]:
    """The registry implementations a generator routed the model's Linears through (sorted; [] for plain ones)."""
    return sorted({m.impl for m in model.modules() if isinstance(getattr(m, "impl", None), str)})


def copy_bandwidth(device: str, nbytes: int | None = None, repeat: int = 20) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written (median of ``repeat``).
    1 GiB on a GPU (well past its caches), 64 MiB elsewhere."""
    if nbytes is None:
        nbytes = 1 << 30 if torch.device(device).type == "cuda" else 1 << 26
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer a decode step reads in full (the embedding table excepted)."""
    emb = model.model.embed_tokens.weight
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or t is emb and model.lm_head.weight is not emb:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _time_decode(generate: Any, B: int, n: int, repeat: int, device: str,
                 decode_s: Callable[[], float | None] | None = None) -> dict[str, Any]:
    """``generate(k)`` makes k new tokens for B rows. t1 = one token (prefill + first pick), tN = n tokens;
    decode tokens/s = B (n - 1) / (tN - t1). Medians of ``repeat`` after two warm-up calls (compile, capture).
    ``host_us_per_token``: the same difference for the time ``generate`` takes to return, before the device is
    synchronised: what the host spends launching a step (a decode loop without host syncs returns before its
    kernels finish, so a figure near the per-token time says the host, not the GPU, sets the pace).
    ``decode_s()``, when given: the seconds the last ``generate(n)`` spent on its n - 1 decode steps by the device's
    own clock (FastGenerator's ``last_decode_s``); then ``decode_tokens_per_s_clocked`` = B (n - 1) over its median
    too, free of the prefill's variation, which the subtraction above carries (a few ms in ~130)."""
    generate(n)
    generate(n)
    t_one, t_all, h_one, h_all, clocked = [], [], [], [], []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        generate(1)
        h_one.append(time.perf_counter() - t0)
        sync(device)
        t1 = time.perf_counter()
        generate(n)
        h_all.append(time.perf_counter() - t1)
        sync(device)
        t_one.append(t1 - t0)
        t_all.append(time.perf_counter() - t1)
        if decode_s is not None:
            clocked.append(decode_s())
    t1m, tnm = statistics.median(t_one), statistics.median(t_all)
    host = (statistics.median(h_all) - statistics.median(h_one)) / (n - 1) if n > 1 else 0.0
    # (a subtraction measures nothing when the n-token call ran, or returned, no later than the one-token call: a
    # few tokens of a tiny model on a busy host; then None and a note, never a negative or infinite figure)
    out = {"decode_tokens_per_s": B * (n - 1) / (tnm - t1m) if tnm > t1m else None,
           "end_to_end_tokens_per_s": B * n / tnm, "prefill_s": t1m, "total_s": tnm,
           "host_us_per_token": None if n > 1 and host <= 0 else host * 1e6}
    notes = []
    if tnm <= t1m:
        notes.append(f"the {n}-token call ({tnm:.6f} s) took no longer than the one-token call ({t1m:.6f} s)")
    if n > 1 and host <= 0:
        notes.append("the host's launches: the n-token call returned no later than the one-token call")
    if notes:
        out["decode_timing_note"] = ("; ".join(notes) + ": too few tokens to time by subtraction; raise --new-tokens "
                                     "or --repeat")
    if clocked and None not in clocked:
        out["decode_s_clocked"] = clocked
        out["decode_tokens_per_s_clocked"] = B * (n - 1) / statistics.median(clocked)
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    """``a[key] / b[key]``, or None where either side has no figure (a rate the subtraction could not measure)."""
    if a.get(key) is None or b.get(key) is None:
        return None
    return a[key] / b[key]


def _time_generate(gen: Any, prompt: torch.Tensor, n: int, repeat: int, device: str) -> dict[str, Any]:
    clocked = hasattr(gen, "record_decode_time")  # FastGenerator times its own decode steps
    if clocked:
        gen.record_decode_time = True
    return _time_decode(lambda k: gen.generate(prompt, k), prompt.shape[0], n, repeat, device,
                        (lambda: gen.last_decode_s) if clocked else None)


def _profiling(args: argparse.Namespace, device: str) -> bool:
    """Whether ``--profile`` applies: GPU kernels are what it counts, so on CUDA only."""
    return bool(args.profile) and device.startswith("cuda")


def profile_decode(gen: Any, prompt: torch.Tensor, n: int = 33, top: int = 25) -> dict[str, Any]:
    """GPU kernels of ``n - 1`` decode steps: profile ``generate(n)`` and ``generate(1)`` (prefill + first pick)
    and take the difference per kernel name and launch grid (:func:`eval.bench.common.gpu_rows`: the skinny
    matmul gets a row per projection shape), so what remains is the decode steps alone (CUDA-graph replays
    included: CUPTI reports the kernels inside a graph). ``us_per_token`` is a kernel's duration, waits inside it
    included; ``exposed_us_per_token`` what it added to the GPU's busy time (:func:`eval.bench.common.exposed_gpu_us`),
    which under programmatic dependent launch leaves out the wait for its predecessor; the exposed times sum to
    ``busy_us_per_token``. ``chain``: the exposed times again, split by the kernel that started before each
    (:func:`eval.bench.common.exposed_gpu_chain`: a layer's q/k/v and o projections, one kernel at one grid, get a
    row each), the ``top`` largest."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(k: int) -> tuple[dict[str, list[float]], dict[str, float], dict[tuple[str, str], list[float]]]:
        gen.generate(prompt, k)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            gen.generate(prompt, k)
            torch.cuda.synchronize()
        return profiled_gpu(prof)

    (one, one_x, one_c), (many, many_x, many_c) = kernels(1), kernels(n)
    steps = n - 1
    rows = []
    for name, (cnt, us) in many.items():
        c1, u1 = one.get(name, [0, 0.0])
        if cnt - c1 > 0:
            rows.append({"kernel": name[:120], "per_token": (cnt - c1) / steps, "us_per_token": (us - u1) / steps,
                         "exposed_us_per_token": (many_x.get(name, 0.0) - one_x.get(name, 0.0)) / steps})
    rows.sort(key=lambda r: -r["us_per_token"])
    chain = []
    for (after, name), (cnt, us) in many_c.items():
        c1, u1 = one_c.get((after, name), [0, 0.0])
        if cnt - c1 > 0:
            chain.append({"kernel": name[:120], "after": after[:120], "per_token": (cnt - c1) / steps,
                          "exposed_us_per_token": (us - u1) / steps})
    chain.sort(key=lambda r: -r["exposed_us_per_token"])
    return {"kernels_per_token": sum(r["per_token"] for r in rows),
            "kernel_us_per_token": sum(r["us_per_token"] for r in rows),
            "busy_us_per_token": sum(r["exposed_us_per_token"] for r in rows), "top": rows[:top],
            "chain": chain[:top]}


@torch.no_grad()
def greedy_gap(model: Any, prompt_1T: torch.Tensor, tokens_1N: torch.Tensor) -> float:
    """Largest (best logit - chosen token's logit) over greedy ``tokens_1N``, scored by one forward of the prompt and
    the tokens (no cache: the prefill path). Zero when every token is the argmax; small when a token differs only at
    a near-tie the two paths round differently."""
    ids = torch.cat([prompt_1T, tokens_1N.to(prompt_1T.device)[:, :-1]], dim=1)
    T = prompt_1T.shape[1]
    logits = model(ids)[:, T - 1:].float()  # the logits that picked each new token
    chosen = logits.gather(-1, tokens_1N.to(logits.device)[..., None])[..., 0]
    return float((logits.max(-1).values - chosen).max())


def _time_hf(hf: Any, prompt: torch.Tensor, n: int, repeat: int, device: str) -> dict[str, Any]:
    def gen(k: int) -> None:
        out = hf.generate(prompt, max_new_tokens=k, do_sample=False, cache_implementation="static",
                          min_new_tokens=k, pad_token_id=0)
        assert out.shape[1] == prompt.shape[1] + k

    return _time_decode(gen, prompt.shape[0], n, repeat, device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefer_kernels(args.prefer)
    device, dtype = pick_device(args.device), DTYPES[args.dtype]  # ConfigError when CUDA is absent
    variants, sizes = args.variants, args.batch_sizes
    if args.layer_kernel not in ("auto", "on", "off"):  # a decode_layer implementation: a bad name fails here,
        default_registry().get("decode_layer", args.layer_kernel)  # before a model is built (PluginError)
    if args.decode_attention == "model":
        args.decode_attention = None
    if args.decode_attention not in (None, "auto"):
        default_registry().get("decode_attention", args.decode_attention)
    cfg = preset(args.preset)
    torch.manual_seed(0)
    model = resolve("lmstack.models", cfg.arch)(cfg).to(device=device, dtype=dtype).eval()
    Fast = resolve("lmstack.decoders", "fast")
    mode = None if args.compile == "none" else args.compile
    L = args.prompt_tokens + args.new_tokens
    bw = copy_bandwidth(device)
    wbytes = weight_bytes_per_token(model)
    results: dict[str, Any] = {"copy_bandwidth_GBps": bw / 1e9, "weight_bytes_per_token": wbytes,
                               "roofline_tokens_per_s_batch1": bw / wbytes, "variants": {}}
    g = torch.Generator().manual_seed(1)
    prompts = {B: torch.randint(0, cfg.vocab_size, (B, args.prompt_tokens), generator=g).to(device) for B in sizes}
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> None:
        """Run one variant; a failure is recorded (and the command exits non-zero) without losing the others."""
        if name not in variants:
            return
        try:
            fn()
        except Exception as e:  # the JSON keeps every variant that ran
            errors[name] = f"{type(e).__name__}: {e}"
            results["variants"][name] = {"error": errors[name]}
            torch.cuda.empty_cache() if device.startswith("cuda") else None

    def transformers_variant() -> None:
        hf = hf_llama(model, cfg, dtype, device)
        results["variants"]["transformers"] = {"batch1": _time_hf(hf, prompts[sizes[0]][:1], args.new_tokens,
                                                                  args.repeat, device)}
        k = min(16, args.new_tokens)
        with torch.no_grad():  # same weights, same greedy tokens (a short check of the mapping); on a copy, as
            # FastGenerator fuses and may route the layers of the model it is given
            ours = Fast(copy.deepcopy(model), 1, L, compile=None).generate(prompts[sizes[0]][:1], k)
            theirs = hf.generate(prompts[sizes[0]][:1], max_new_tokens=k, do_sample=False, pad_token_id=0,
                                 min_new_tokens=k)[:, args.prompt_tokens:]
        results["variants"]["transformers"]["greedy_agreement"] = float((ours == theirs).float().mean())
        del hf
        torch.cuda.empty_cache() if device.startswith("cuda") else None

    tokens: dict[str, torch.Tensor] = {}  # batch-1 greedy tokens per variant (greedy gaps, the PDL comparison)
    unified = {"on": True, "off": False}.get(args.unified, "auto")

    def lmstack_variant(name: str = "lmstack", pdl: bool | str = "auto") -> None:
        out = {}
        # routing Linear layers changes their class: keep the shared model plain for the int8 variant
        linear_impl = None if args.linear_impl == "none" else args.linear_impl
        fold = "auto" if args.fold_norms is None else args.fold_norms
        lm = copy.deepcopy(model) if linear_impl or fold or pdl is not False else model
        asked = {"on": True, "off": False}.get(args.layer_kernel, args.layer_kernel)
        for B in sizes:
            layer_kernel = asked if B == 1 or asked in ("auto", False) else False  # one row only
            gen = Fast(lm, B, L, compile=mode, linear_impl=linear_impl, fold_norms=fold, pdl=pdl,
                       layer_kernel=layer_kernel, fuse_swiglu=args.fuse_swiglu,
                       decode_attention=args.decode_attention, unified=unified)
            out[f"batch{B}"] = _time_generate(gen, prompts[B], args.new_tokens, args.repeat, device)
            if sizes[0] == B:
                tokens[name] = gen.generate(prompts[B], args.new_tokens)[:1].cpu()
            # what "auto" made of them at this batch size; the variant's own fields are its first batch's (the one
            # the roofline fraction and the greedy gaps are of)
            choices = {"pdl": gen.pdl, "fold_norms": gen.fold_norms, "fuse_swiglu": gen.fuse_swiglu,
                       "linear_impl": _linear_impls(gen.model), "decode_attention": gen.decode_attention,
                       "unified": gen.unified}
            out[f"batch{B}"]["choices"] = choices
            if sizes[0] == B:
                out.update(choices)
            if B == 1:
                out["layer_kernel"] = gen.layer_kernel
            if _profiling(args, device) and sizes[0] == B:
                out[f"batch{B}"]["profile"] = profile_decode(gen, prompts[B])
            del gen
        results["variants"][name] = out

    def int8_variant(name: str = "lmstack-int8", pdl: bool | str = "auto") -> None:
        qmodel = copy.deepcopy(model)
        if hasattr(qmodel, "fuse_projections"):
            qmodel.fuse_projections()  # fused GEMVs for int8 too (a no-op when the lmstack variant already fused)
        fold = Fast.auto_fold_norms(qmodel) if args.fold_norms is None else args.fold_norms
        if fold:
            qmodel.fold_norms()  # before quantizing: the folded weights are what gets quantized
        resolve("lmstack.quantizers", "int8_weight_only")(qmodel)
        qbytes = weight_bytes_per_token(qmodel)
        gen = Fast(qmodel, 1, L, compile=mode, pdl=pdl, fuse_swiglu=args.fuse_swiglu,
                   decode_attention=args.decode_attention, unified=unified)
        r = _time_generate(gen, prompts[sizes[0]][:1], args.new_tokens, args.repeat, device)
        tokens[name] = gen.generate(prompts[sizes[0]][:1], args.new_tokens).cpu()
        if _profiling(args, device):
            r["profile"] = profile_decode(gen, prompts[sizes[0]][:1])
        results["variants"][name] = {"batch1": r, "weight_bytes_per_token": qbytes, "pdl": gen.pdl,
                                     "fold_norms": bool(fold), "fuse_swiglu": gen.fuse_swiglu,
                                     "decode_attention": gen.decode_attention, "unified": gen.unified}

    attempt("transformers", transformers_variant)
    attempt("lmstack", lmstack_variant)
    attempt("lmstack-pdl", lambda: lmstack_variant("lmstack-pdl", pdl=True))
    attempt("lmstack-nopdl", lambda: lmstack_variant("lmstack-nopdl", pdl=False))
    attempt("lmstack-int8", int8_variant)
    attempt("lmstack-int8-pdl", lambda: int8_variant("lmstack-int8-pdl", pdl=True))
    attempt("lmstack-int8-nopdl", lambda: int8_variant("lmstack-int8-nopdl", pdl=False))
    for name in ("lmstack", "lmstack-int8"):  # a variant with PDL against one without (the default is either)
        ran = [n for n in (f"{name}-pdl", name, f"{name}-nopdl") if n in tokens]
        on = next((n for n in ran if results["variants"][n]["pdl"]), None)
        off = next((n for n in ran if not results["variants"][n]["pdl"]), None)
        if on and off:
            fast, plain = results["variants"][on].get("batch1"), results["variants"][off].get("batch1")
            if fast and plain:  # (absent when batch 1 was not asked for)
                results[f"{name}_pdl_speedup_batch1"] = _ratio(fast, plain, "decode_tokens_per_s")
                if "decode_tokens_per_s_clocked" in fast and "decode_tokens_per_s_clocked" in plain:
                    results[f"{name}_pdl_speedup_batch1_clocked"] = _ratio(fast, plain, "decode_tokens_per_s_clocked")
            same = (tokens[off] == tokens[on]).flatten()
            results[f"{name}_pdl_greedy_agreement"] = float(same.float().mean())
            results[f"{name}_pdl_first_difference"] = None if bool(same.all()) else int((~same).nonzero()[0])
    for name, toks in tokens.items():  # scored by the shared unquantized model (int8 tokens too)
        results["variants"][name]["greedy_gap_max"] = greedy_gap(model, prompts[sizes[0]][:1], toks)
    if errors:
        results["errors"] = errors
    base = results["variants"].get("lmstack", {}).get("batch1")
    if base:
        rate, roof = base["decode_tokens_per_s"], results["roofline_tokens_per_s_batch1"]
        results["fraction_of_roofline_batch1"] = None if rate is None else rate / roof
        if "decode_tokens_per_s_clocked" in base:
            results["fraction_of_roofline_batch1_clocked"] = (base["decode_tokens_per_s_clocked"]
                                                              / results["roofline_tokens_per_s_batch1"])
        hf = results["variants"].get("transformers", {}).get("batch1")
        if hf:
            results["speedup_vs_transformers_batch1"] = _ratio(base, hf, "decode_tokens_per_s")
        q = results["variants"].get("lmstack-int8", {}).get("batch1")
        if q:
            results["int8_speedup_batch1"] = _ratio(q, base, "decode_tokens_per_s")
            if "decode_tokens_per_s_clocked" in q and "decode_tokens_per_s_clocked" in base:
                results["int8_speedup_batch1_clocked"] = (q["decode_tokens_per_s_clocked"]
                                                          / base["decode_tokens_per_s_clocked"])
    return report("decode", vars(args), results, device)
