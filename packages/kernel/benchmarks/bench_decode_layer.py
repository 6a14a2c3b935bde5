"""One folded Llama decode layer at batch 1: the kernels a decode step chains today against the persistent layer
kernel (``kernel.triton.decode_layer``), same weights, same card, same run.

``python packages/kernel/benchmarks/bench_decode_layer.py [--out F.json]`` builds LAYERS layers of the 1.1B decode
shape (hidden 2048, 32 heads, 4 KV heads, FFN 5632) with distinct random weights (1.9 GB: every layer's weights come
from HBM, not L2), captures all layers of each variant in one CUDA graph and times its replays. ``chain`` is the
unfused path with folded norms (skinny q/k/v with the norm, decode attention with RoPE and the cache write, skinny o
plus the residual, skinny gate/up with the norm, swiglu, skinny down plus the residual); ``layer`` variants are the
persistent kernel with its tile options. Before timing, the GPU checks: the kernel with grid barriers gives exactly
what its five stages give as five launches, and both match the chain within bf16 rounding; the counters are zero
after every call. Reports us per layer and the fraction of the measured copy bandwidth the weight bytes reach.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from bench_decode_kernels import bench_rotated  # beside this script: every call in one CUDA graph

from specs.io import atomic_write_text

D, H, KVH, DH, FF, SLOTS, LEN = 2048, 32, 4, 64, 5632, 384, 256
LAYERS = 22
EPS = 1e-5


def make_layers(n: int, device: str, dtype: torch.dtype) -> list[dict]:
    from kernel.reference import decode_layer_counters as layer_counters

    g = torch.Generator(device=device).manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    return [dict(w_qkv=r(H * DH + 2 * KVH * DH, D, scale=D ** -0.5), w_o=r(D, H * DH, scale=(H * DH) ** -0.5),
                 w_gate_up=r(2 * FF, D, scale=D ** -0.5), w_down=r(D, FF, scale=FF ** -0.5),
                 k_cache=r(1, KVH, SLOTS, DH), v_cache=r(1, KVH, SLOTS, DH), counters=layer_counters(KVH, device))
            for _ in range(n)]


def chain_layer(x, lay, lens, cos, sin):
    from kernel.triton.decode_attention import decode_attention
    from kernel.triton.skinny import linear
    from kernel.triton.swiglu import swiglu

    xr = x.view(1, D)
    q, k, v = linear(xr, lay["w_qkv"], rms_eps=EPS).split([H * DH, KVH * DH, KVH * DH], -1)
    o = decode_attention(q.view(1, H, DH), lay["k_cache"], lay["v_cache"], lens, k_new=k.view(1, KVH, DH),
                         v_new=v.view(1, KVH, DH), cos_BDh=cos.view(1, DH), sin_BDh=sin.view(1, DH))
    h = linear(o.reshape(1, H * DH), lay["w_o"], residual=xr)
    gate, up = linear(h, lay["w_gate_up"], rms_eps=EPS).chunk(2, -1)
    return linear(swiglu(gate.contiguous(), up.contiguous()), lay["w_down"], residual=h).view(x.shape)


def kernel_layer(opts):
    from kernel.triton.decode_layer import decode_layer, launch

    def run(x, lay, lens, cos, sin):
        fn = launch if opts else decode_layer  # the checked op as a model calls it, or the launch with options
        return fn(x, lay["w_qkv"], lay["w_o"], lay["w_gate_up"], lay["w_down"], lay["k_cache"], lay["v_cache"],
                  lens, cos, sin, lay["counters"], n_heads=H, eps_attn=EPS, eps_mlp=EPS, **opts)
    return run


SEGMENTS = ["qkv", "sync1", "attention", "sync2", "o", "sync3", "gate_up", "sync4", "down"]


def stage_cycles(layers, x, lens, cos, sin, opts) -> dict:
    """SM cycles per stage and per barrier wait (each program's clock at every stage boundary): the mean over
    layers of the median and the largest program."""
    from kernel.triton._device import device_info
    from kernel.triton.decode_layer import TIME_SLOTS

    P = device_info(x)[0]
    times = [torch.zeros(P, TIME_SLOTS.value, dtype=torch.int64, device="cuda") for _ in layers]
    run = kernel_layer({**opts, "times": None})
    y = x
    for lay in layers:  # warm
        y = run(y, lay, lens, cos, sin)
    y = x
    for lay, t in zip(layers, times):
        y = kernel_layer({**opts, "times": t})(y, lay, lens, cos, sin)
    torch.cuda.synchronize()
    d = torch.stack([t.diff(dim=1) for t in times]).double()  # (layers, P, 9)
    out = {seg: {"median": d[:, :, i].median(dim=1).values.mean().item(),
                 "max": d[:, :, i].max(dim=1).values.mean().item()}
           for i, seg in enumerate(SEGMENTS)}
    out["total"] = {"median": (torch.stack(times)[:, :, -1] - torch.stack(times)[:, :, 0]).double().median(dim=1)
                    .values.mean().item()}
    return out


def time_graph(step, layers, x, lens, cos, sin) -> float:
    """Median seconds per layer: every layer in one CUDA graph, x flowing through them."""
    def whole():
        y = x
        for lay in layers:
            y = step(y, lay, lens, cos, sin)
        return y

    return bench_rotated(whole, [()], "cuda", replays=20) / len(layers)


def copy_bandwidth() -> float:
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") / 1e3)


VARIANTS = {  # launch options (kernel.triton.decode_layer.launch); the names are $LMSTACK_DECODE_LAYER's flags
    "layer": {},
    "layer-poll_one": {"poll_one": True},
    "layer-interleave": {"interleave": True},
    "layer-poll_one+interleave": {"poll_one": True, "interleave": True},
    "layer-staged": {"sync": False},
    "layer-staged+interleave": {"sync": False, "interleave": True},
}


def check(layers, x, lens, cos, sin) -> dict:
    """The kernel with grid barriers against its five stages as five launches (exact), and against the chain."""
    lay = {k: (v.clone() if k in ("k_cache", "v_cache") else v) for k, v in layers[0].items()}
    fresh = {k: v.clone() for k, v in lay.items() if k in ("k_cache", "v_cache")}
    results = {}
    staged = kernel_layer({"sync": False})(x, {**lay, **{k: v.clone() for k, v in fresh.items()}}, lens, cos, sin)
    for _ in range(20):
        got = kernel_layer({})(x, {**lay, **{k: v.clone() for k, v in fresh.items()}}, lens, cos, sin)
        if not torch.equal(got, staged):
            raise AssertionError(f"grid-barrier kernel differs from the staged launches: "
                                 f"{(got.float() - staged.float()).abs().max().item()}")
    if int(lay["counters"].abs().sum()) != 0:
        raise AssertionError(f"counters not reset: {lay['counters'].tolist()}")
    ref = chain_layer(x, {**lay, **{k: v.clone() for k, v in fresh.items()}}, lens, cos, sin)
    results["max_abs_diff_vs_chain"] = (got.float() - ref.float()).abs().max().item()
    results["max_abs_out"] = ref.float().abs().max().item()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--once", action="store_true",
                    help="no timing: the check, then every layer once through the chain and the kernel, eagerly "
                         "(for a profiler: ncu --kernel-name regex:'_layer|_skinny' ...)")
    ap.add_argument("--variants", default="chain," + ",".join(VARIANTS))
    args = ap.parse_args()
    unknown = [v for v in args.variants.split(",") if v and v != "chain" and v not in VARIANTS]
    if unknown:
        sys.exit(f"error: --variants: unknown {unknown}; valid: chain, {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        sys.exit("bench_decode_layer needs a CUDA GPU")
    dtype = torch.bfloat16
    layers = make_layers(LAYERS, "cuda", dtype)
    x = torch.randn(1, 1, D, device="cuda").to(dtype)
    lens = torch.tensor([LEN], device="cuda")
    ang = torch.rand(DH // 2, device="cuda") * 3
    cos = torch.cat([ang.cos(), ang.cos()]).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()]).to(dtype)
    report = {"card": torch.cuda.get_device_name(), "layers": LAYERS, "check": check(layers, x, lens, cos, sin)}
    print(json.dumps(report), flush=True)
    if args.once:
        for step in (chain_layer, kernel_layer({})):
            y = x
            for lay in layers:
                y = step(y, lay, lens, cos, sin)
        torch.cuda.synchronize()
        return
    bw = copy_bandwidth()
    layer_bytes = sum(layers[0][k].numel() * layers[0][k].element_size() for k in ("w_qkv", "w_o", "w_gate_up",
                                                                                   "w_down"))
    report.update(copy_bandwidth_gbs=bw / 1e9, layer_weight_mb=layer_bytes / 1e6, roofline_us=layer_bytes / bw * 1e6)
    report["variants"] = {}
    for name in args.variants.split(","):
        step = chain_layer if name == "chain" else kernel_layer(VARIANTS[name])
        try:
            t = time_graph(step, layers, x, lens, cos, sin)
        except Exception as e:  # a variant that fails to compile or launch is reported, the rest still run
            report["variants"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        report["variants"][name] = {"us_per_layer": t * 1e6, "fraction_of_copy_bw": layer_bytes / t / bw}
        print(name, json.dumps(report["variants"][name]), flush=True)
    report["stage_cycles"] = {}
    for name in ("layer", "layer-poll_one+interleave"):
        try:
            report["stage_cycles"][name] = stage_cycles(layers, x, lens, cos, sin, VARIANTS[name])
        except Exception as e:
            report["stage_cycles"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, "cycles", json.dumps(report["stage_cycles"][name]), flush=True)
    if "chain" in report["variants"] and "us_per_layer" in report["variants"]["chain"]:
        base = report["variants"]["chain"]["us_per_layer"]
        for v in report["variants"].values():
            if "us_per_layer" in v:
                v["speedup_vs_chain"] = base / v["us_per_layer"]
        timed = {k: v["us_per_layer"] for k, v in report["variants"].items() if k != "chain" and "us_per_layer" in v}
        if timed:  # the fastest launch options, as $LMSTACK_DECODE_LAYER spells them
            best = min(timed, key=timed.get).removeprefix("layer").removeprefix("-")
            report["best_options"] = best.replace("+", ",")
    print(json.dumps(report, indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
