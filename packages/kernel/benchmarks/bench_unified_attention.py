"""Decode layers with and without the attention combine kernel: the slot splits combined by a second kernel (as
shipped) against one softmax shift for a head's splits (``decode_attention_unified``), whose accumulators the
output projection reads (``gemv(att=...)``). The ~1.1B Llama shape (hidden 2048, 32 heads, 4 KV heads, FFN 5632),
one row, a 384-slot cache at length 256.

    python packages/kernel/benchmarks/bench_unified_attention.py --out unified.json   # on a GPU
    TRITON_INTERPRET=1 python packages/kernel/benchmarks/bench_unified_attention.py --check  # values, small

Each variant runs LAYERS layers (their own weights, past the L2) as a decode step chains them: the q/k/v gemv with
the folded norm, attention with RoPE and the cache write, (the combine,) the o gemv plus the residual, the gate/up
gemv with SwiGLU, the down gemv plus the residual, every kernel launched with PDL, all in one CUDA graph, at the
card's gemv tiles (``kernel/triton/gemv_tiles.json``), bf16 and int8 weights. Reports us per layer (median of the
replays), A-B-A-B. A benchmark, not a test: figures go to docs/benchmarks.md.

``--combine-o ROWS``: a third form (a prototype), with no combine kernel and no atomics in attention: the o
projection combines the splits itself, split by head. Each of its programs takes one head and ROWS output rows:
it combines that head's splits (64 values), multiplies them by its (ROWS, 64) slice of o's weight, and adds the
ROWS sums to fp32 accumulators by atomics; the last of the heads to finish a row block (an acquire-release
count) adds the residual, writes the rows and zeroes the accumulators for the next call. Timed on an H200 (run
DG, docs/benchmarks.md): slower than split + combine for both weights (int8 +2.5 us a layer: the fused kernel's
exposed 6.2-6.4 us against the combine's 1.5 and o's 2.3), so it stays here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os

import torch
import triton
import triton.language as tl
from bench_decode_kernels import bench_rotated  # beside this script
from bench_kernels import checked_gpu, write_json

from kernel.triton import decode_attention as da
from kernel.triton import decode_unified as du
from kernel.triton import gemv as gemv_mod
from kernel.triton._device import pdl_capable
from kernel.triton._pdl import pdl_enter, pdl_mode

D, H, KVH, DH, FF, SLOTS, LEN, LAYERS = 2048, 32, 4, 64, 5632, 384, 256, 22
EPS = 1e-5


def make_layers(n: int, d: int, h: int, kvh: int, dh: int, ff: int, slots: int, int8: bool, device: str,
                seed: int = 0) -> list[dict]:
    """``n`` layers of random weights (int8 with per-row bf16 scales, or bf16) and their (1, kvh, slots, dh) caches."""
    g = torch.Generator().manual_seed(seed)

    def w(rows, cols):
        if int8:
            return (torch.randint(-127, 128, (rows, cols), generator=g, dtype=torch.int8).to(device),
                    (torch.rand(rows, generator=g) / 127 / cols ** 0.5 * 2).to(device, torch.bfloat16))
        return (torch.randn(rows, cols, generator=g) / cols ** 0.5).to(device, torch.bfloat16), None

    def cache():
        return torch.randn(1, kvh, slots, dh, generator=g).to(device, torch.bfloat16)

    return [dict(qkv=w(h * dh + 2 * kvh * dh, d), o=w(d, h * dh), gate_up=w(2 * ff, d), down=w(d, ff), k=cache(),
                 v=cache()) for _ in range(n)]


@triton.jit
def _combine_o(acc_ptr, m_ptr, l_ptr, w_ptr, scale_ptr, res_ptr, out_ptr, ws_ptr, cnt_ptr, N, H, NS,
               DH: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SCALE: tl.constexpr,
               PDL: tl.constexpr):
    h = tl.program_id(0)
    rb = tl.program_id(1)
    r = rb * ROWS + tl.arange(0, ROWS)
    r_ok = r < N
    d = tl.arange(0, DH)
    w = tl.load(w_ptr + r[:, None].to(tl.int64) * (H * DH) + h * DH + d[None, :], mask=r_ok[:, None], other=0)
    pdl_enter(PDL)  # this head's slice of o's weight is in flight while attention drains
    sp = tl.arange(0, BLOCK_N)
    sp_ok = sp < NS
    part = h * NS + sp
    m = tl.load(m_ptr + part, mask=sp_ok, other=float("-inf"))
    l_s = tl.load(l_ptr + part, mask=sp_ok, other=0.0)
    acc = tl.load(acc_ptr + part[:, None] * DH + d[None, :], mask=sp_ok[:, None], other=0.0)
    odt = out_ptr.dtype.element_ty
    o = da._merge(m, l_s, acc, 0).to(odt).to(tl.float32)  # rounded as the combine kernel's output is
    tl.atomic_add(ws_ptr + r, tl.sum(w.to(tl.float32) * o[None, :], 1), mask=r_ok, sem="relaxed", scope="gpu")
    tl.debug_barrier()  # every thread's adds before the count that publishes them
    done = tl.atomic_add(cnt_ptr + rb, 1, sem="acq_rel", scope="gpu")
    if done == H - 1:  # the last head of this row block: the residual, the rows, and the accumulators zeroed
        y = tl.load(ws_ptr + r, mask=r_ok, other=0.0, cache_modifier=".cg")
        if HAS_SCALE:
            y = y * tl.load(scale_ptr + r, mask=r_ok, other=0.0).to(tl.float32)
        y = y + tl.load(res_ptr + r, mask=r_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + r, y.to(odt), mask=r_ok)
        tl.store(ws_ptr + r, tl.zeros((ROWS,), tl.float32), mask=r_ok)
        tl.atomic_xchg(cnt_ptr + rb, 0, sem="relaxed", scope="gpu")


def combine_o(acc: torch.Tensor, m: torch.Tensor, l_s: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None,
              residual: torch.Tensor, ws: torch.Tensor, cnt: torch.Tensor, rows: int, pdl: bool) -> torch.Tensor:
    """One row's attention splits (``decode_attention``'s partials: acc (1, H, NS, Dh), m and l (1, H, NS)) combined
    and projected by ``w`` (N, H x Dh; int8 with ``scale`` (N,), or float), plus ``residual`` (1, N): (1, N) in the
    residual's dtype. ``ws`` (N,) fp32 and ``cnt`` (N / rows,) int32 start zeroed and are left zeroed."""
    _, H, ns, dh = acc.shape
    N = w.shape[0]
    out = torch.empty(1, N, device=w.device, dtype=residual.dtype)
    launch = {"launch_pdl": True} if pdl else {}
    _combine_o[(H, triton.cdiv(N, rows))](
        acc, m, l_s, w, scale if scale is not None else out, residual, out, ws, cnt, N, H, ns, DH=dh, ROWS=rows,
        BLOCK_N=triton.next_power_of_2(ns), HAS_SCALE=scale is not None, PDL=pdl_mode(pdl), num_warps=4, **launch)
    return out


def layer_step(layers: list[dict], lens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, h: int, kvh: int,
               dh: int, card: str, pdl: bool, ws: torch.Tensor | None, splits: int | None = None,
               env: dict | None = None, o_tile: tuple | None = None, no_atomics: bool = False,
               combine_o_rows: int | None = None):
    """A function x -> x through every layer, at ``card``'s gemv tiles (the table's, as decode picks them; (4, 256,
    4) where it has none); ``ws``: the unified attention's workspace (else split + combine); ``splits``: attention's
    split count ($LMSTACK_DECODE_SPLITS while the layers are called; None: the shipped choice); ``env``: more
    variables set while they are called; ``o_tile``: the o gemv's (ROWS, BLOCK_K, warps) instead of the table's;
    ``no_atomics``: the unified attention without its atomics (wrong sums, to price them); ``combine_o_rows``:
    no combine kernel, :func:`combine_o` at that many rows a program instead (with ``ws`` None)."""
    d_out = layers[0]["o"][0].shape[0]
    co_ws = torch.zeros(d_out, dtype=torch.float32, device=lens.device)
    co_cnt = torch.zeros(triton.cdiv(d_out, combine_o_rows or 1), dtype=torch.int32, device=lens.device)

    def cfg(w, glu=False):
        return gemv_mod.choose_tiles(*w.shape, w.dtype, card, glu) or (4, 256, 4)

    def run(x):
        sets = {**(env or {}), **({da.SPLITS_ENV: str(splits)} if splits else {})}
        saved = {k: os.environ.get(k) for k in sets}
        os.environ.update(sets)
        try:
            with du.timing_without_atomics() if no_atomics else contextlib.nullcontext():
                return layers_run(x)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v

    def layers_run(x):
        for i, lay in enumerate(layers):
            (wq, sq), (wo, so), (wg, sg), (wd, sd) = lay["qkv"], lay["o"], lay["gate_up"], lay["down"]
            qkv = gemv_mod.gemv(x, wq, sq, config=cfg(wq), rms_eps=EPS, pdl=pdl)
            q, k, v = qkv.split([h * dh, kvh * dh, kvh * dh], -1)
            kw = dict(k_new=k.view(1, kvh, dh), v_new=v.view(1, kvh, dh), cos_PDh=cos, sin_PDh=sin, pdl=pdl)
            if combine_o_rows:
                _, acc, m, l_s, ns = da._launch(q.view(1, h, dh), lay["k"], lay["v"], lens, None, None, None,
                                                kw["k_new"], kw["v_new"], None, None, None, pdl, cos, sin,
                                                combine_kernel=False)
                assert ns > 1, "combine_o takes the splits' partials: one split writes the output itself"
                hid = combine_o(acc, m, l_s, wo, so, x, co_ws, co_cnt, combine_o_rows, pdl)
            elif ws is None:
                o = da.decode_attention(q.view(1, h, dh), lay["k"], lay["v"], lens, **kw)
                hid = gemv_mod.gemv(o.view(1, h * dh), wo, so, config=o_tile or cfg(wo), residual=x, pdl=pdl)
            else:
                p = da.decode_attention_unified(q.view(1, h, dh), lay["k"], lay["v"], lens, ws=ws, layer=i, **kw)
                hid = gemv_mod.gemv(p.x, wo, so, config=o_tile or cfg(wo), residual=x, pdl=pdl, out_dtype=x.dtype,
                                    att=(p.acc, p.m, p.l))
            act = gemv_mod.gemv(hid, wg, sg, config=cfg(wg, True), rms_eps=EPS, glu=True, pdl=pdl)
            x = gemv_mod.gemv(act, wd, sd, config=cfg(wd), residual=hid, pdl=pdl)
        return x
    return run


def exposed_us(fn, labels: list[str], replays: int = 20) -> dict[str, float]:
    """us a layer per kernel of ``fn`` (one CUDA graph, replayed under torch.profiler), ``labels`` naming one
    layer's kernels in launch order: each kernel's exposed time (its end past every earlier kernel's end) and its
    own duration; a replay's first kernel counts from its own start."""
    graph = torch.cuda.CUDAGraph()
    fn()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                     and e.device_time > 0), key=lambda e: e.time_range.start)
    out: dict[str, float] = {}
    last_end = events[0].time_range.start if events else 0.0
    for i, e in enumerate(events):
        name = labels[i % len(labels)]
        end = e.time_range.end
        out[f"{name} exposed"] = out.get(f"{name} exposed", 0.0) + max(0.0, end - last_end)
        out[f"{name} own"] = out.get(f"{name} own", 0.0) + e.time_range.end - e.time_range.start
        last_end = max(last_end, end)
    n = len(events) // len(labels)
    return {k: round(v / n, 3) for k, v in sorted(out.items())}


def check(device: str) -> float:
    """Two layers of a small shape, unified and combine-o (32 rows a program; called twice: the same output within
    rounding) against split + combine, int8 weights; the largest difference relative to the output's largest
    magnitude (all round the attention output to bf16 before o)."""
    d, h, kvh, dh, ff, slots = 128, 8, 2, 16, 96, 64
    layers = make_layers(2, d, h, kvh, dh, ff, slots, True, device, seed=3)
    g = torch.Generator().manual_seed(4)
    cos, sin = (torch.randn(slots, dh, generator=g).to(device) for _ in range(2))
    lens = torch.tensor([40], device=device)
    x0 = torch.randn(1, d, generator=g).to(device, torch.bfloat16)
    want = layer_step(layers, lens, cos, sin, h, kvh, dh, "", False, None)(x0).float()
    ws = du.unified_workspace(2, 1, h, dh, device)
    got = layer_step(layers, lens, cos, sin, h, kvh, dh, "", False, ws)(x0).float()
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 2e-2, err
    assert not ws[0, :, :h * dh + h + 1].any(), "the last layer did not zero the first layer's accumulators"
    fused = layer_step(layers, lens, cos, sin, h, kvh, dh, "", False, None, combine_o_rows=32)
    first = fused(x0)
    err = max(err, ((first.float() - want).abs().max() / want.abs().max()).item())
    assert err < 2e-2, err
    # a second call sums its heads again from zero (the atomics' order may differ: equal within rounding)
    again = (fused(x0).float() - first.float()).abs().max() / first.float().abs().max()
    assert again < 1e-2, f"combine_o did not leave its accumulators and counts zeroed: {again.item():.3g}"
    return err


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--check", action="store_true", help="only check the values on a small shape")
    p.add_argument("--repeats", type=int, default=2, help="A-B rounds (default %(default)s)")
    p.add_argument("--unified-splits", type=int, nargs="*", default=[],
                   help="also time the unified attention at these split counts")
    p.add_argument("--o-tiles", nargs="*", default=[],
                   help="also time both forms with these o gemv tiles, each ROWS,BLOCK_K,WARPS")
    p.add_argument("--dtypes", default="bf16,int8", help="weights to time, of %(default)s")
    p.add_argument("--combine-o", type=int, nargs="*", default=[], metavar="ROWS",
                   help="also time the o projection combining attention's splits itself, ROWS rows a program")
    p.add_argument("--no-atomics", action="store_true",
                   help="also time the unified attention without its atomics (wrong sums: to price them) and with "
                        "Triton's scalar atomics")
    a = p.parse_args()
    dtypes = a.dtypes.split(",")
    if not dtypes or not set(dtypes) <= {"bf16", "int8"}:
        p.error(f"--dtypes: expected bf16, int8 or both, comma-separated, got {a.dtypes!r}")
    if any(rows <= 0 or rows & (rows - 1) for rows in a.combine_o):
        p.error(f"--combine-o: expected powers of two, got {a.combine_o}")
    err = checked_gpu("bench_unified_attention", check, "unified against split + combine, two small layers", a.check)
    if err is None:
        return
    device = "cuda"
    card = torch.cuda.get_device_name()
    results = {"card": card, "date": datetime.date.today().isoformat(), "layers": LAYERS, "len": LEN,
               "check_error": err, "us_per_layer": {}}
    g = torch.Generator().manual_seed(9)
    cos, sin = (torch.randn(SLOTS, DH, generator=g).to(device) for _ in range(2))
    lens = torch.tensor([LEN], device=device)
    x0 = torch.randn(1, D, generator=g).to(device, torch.bfloat16)
    pdl = pdl_capable(x0)
    for dtype in dtypes:
        layers = make_layers(LAYERS, D, H, KVH, DH, FF, SLOTS, dtype == "int8", device)
        ws = du.unified_workspace(LAYERS, 1, H, DH, device)
        variants = {"split + combine": layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, None),
                    "unified": layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, ws)}
        if a.no_atomics:  # timing only: the sums are wrong; and Triton's atomics, a value each
            variants["unified, no atomics"] = layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, ws,
                                                         no_atomics=True)
            variants["unified, scalar atomics"] = layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, ws,
                                                             env={du.UNIFIED_TIMING_ENV: "scalar"})
        for tile in a.o_tiles:  # both forms, so a tile that suits o either way shows as such
            t = tuple(int(v) for v in tile.split(","))
            variants[f"split + combine, o tile {t}"] = layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl,
                                                                  None, o_tile=t)
            variants[f"unified, o tile {t}"] = layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, ws, o_tile=t)
        for rows in a.combine_o:
            variants[f"combine-o {rows}"] = layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, None,
                                                       combine_o_rows=rows)
        for ns in a.unified_splits:
            variants[f"unified, {ns} splits"] = layer_step(layers, lens, cos, sin, H, KVH, DH, card, pdl, ws, ns)
        split = variants["split + combine"]
        for name, fn in variants.items():
            if name.startswith(("unified", "combine-o")) and name != "unified, no atomics":
                diff = (fn(x0).float() - split(x0).float()).abs().max() / split(x0).float().abs().max()
                results[f"{dtype} {name} vs split, {LAYERS} layers"] = diff.item()
            combine = ["combine"] if name.startswith("split") else []
            o = ["combine+o"] if name.startswith("combine-o") else ["o"]
            labels = ["qkv", "attention", *combine, *o, "gate/up", "down"]
            results[f"{dtype} {name} kernels"] = prof = exposed_us(lambda f=fn: f(x0), labels)
            print(dtype, name, {k: v for k, v in prof.items() if "exposed" in k})
        for r in range(a.repeats):
            for name, fn in variants.items():
                t = bench_rotated(lambda f=fn: f(x0), [()], device, replays=30) / LAYERS * 1e6
                results["us_per_layer"][f"{dtype} {name} {r + 1}"] = round(t, 3)
                print(f"{dtype} {name:16s} {r + 1}: {t:7.2f} us a layer")
        del layers
    if a.out:
        write_json(a.out, results)


if __name__ == "__main__":
    main()
