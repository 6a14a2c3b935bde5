"""Would one kernel for a decode layer's whole int8 MLP beat the gemv chain? A prototype, timed against the shipped
two-kernel chain at the ~1.1B Llama shape (hidden 2048, FFN 5632) on one activation row.

    python packages/kernel/benchmarks/bench_fused_mlp.py --out fused_mlp.json       # on a GPU
    TRITON_INTERPRET=1 python packages/kernel/benchmarks/bench_fused_mlp.py --check  # values only, small shapes

Batch-1 decode runs each layer's MLP as two gemv kernels (``kernel.triton.gemv``): the fused gate/up projection with
the folded RMSNorm and SwiGLU in its epilogue, then the down projection adding the residual. The down kernel cannot
start its products before the whole SwiGLU output exists, so every layer pays a kernel boundary (its launch, its
first memory round trip, its tail) that the int8 weights' halved bytes do not hide (docs/benchmarks.md, runs CB-CD).

The prototype runs both in one kernel by splitting the down projection along its K (the FFN dimension): program p
computes FB SwiGLU outputs h[p*FB:(p+1)*FB] from its gate and up rows, multiplies them by the matching FB rows of
the transposed down weight (FB x 2048, so its loads are contiguous) and adds its partial (2048,) output to an fp32
accumulator with vector atomics. Program 0 adds the residual too. The accumulator must start at zero: layer l
zeroes layer l-2's (which layer l-1 has finished reading), so a chain of layers, replayed, stays correct with no
kernel of its own. The sum's order then varies from run to run (fp32, last bits).

Each variant runs 22 layers (their own weights, 760 MB, past the L2) in one CUDA graph, chained by PDL as decode
runs them, and reports microseconds a layer, median of the replays. A benchmark, not a test: figures go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import triton
import triton.language as tl
from bench_decode_kernels import bench_rotated  # beside this script
from bench_kernels import checked_gpu, write_json

from kernel.triton import gemv as gemv_mod
from kernel.triton._device import pdl_capable
from kernel.triton._pdl import pdl_enter

D, F, LAYERS = 2048, 5632, 22
EPS = 1e-5
# The forms timed: (FB SwiGLU outputs a program, BLOCK_K, num_warps, the down weights loaded before the PDL wait,
# the down products' form, each K step's gate/up products summed into the row sums at once, the partials added by
# atomics). The down products: fp32 (0), fp16 widened to fp32 before their sum over FB (1), or summed in fp16 with h
# scaled by 2^-7 (2; offline, 2,288 sm90 instructions against 2,704 at the first tile). Summing each K step at once
# takes fewer registers (offline: 236 against 255 at the first tile, 127 against 154 at FB 8). Without atomics each
# program stores its own partial row instead, unsummed: timing only, to price the atomics. Run CE timed the first
# forms at 17.9-31.9 us a layer against the chain's 12.1; run CH the next five at 17.0-37.2 (the atomics ~1 us).
CONFIGS = [(16, 512, 4, False, 1, False, True), (16, 512, 4, False, 1, True, True),
           (16, 512, 4, False, 1, False, False), (16, 512, 4, False, 1, True, False),
           (8, 512, 4, False, 1, True, True), (16, 512, 8, False, 1, True, True),
           (32, 512, 16, False, 1, True, True), (16, 512, 4, False, 2, False, True),
           (16, 512, 4, False, 2, False, False), (8, 512, 4, False, 2, False, True)]


@triton.jit
def _fused_mlp(x_ptr, wgu_ptr, sgu_ptr, wd_ptr, sd_ptr, acc_ptr, zero_ptr, F, D, eps,
               FB: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
               DOWN_EARLY: tl.constexpr, I8_F16: tl.constexpr, F16_DOWN: tl.constexpr, ROWSUM: tl.constexpr,
               ATOMIC: tl.constexpr):
    pid = tl.program_id(0)
    # gate/up rows of outputs pid * FB ...: gate j and up j interleaved, as the gemv's GLU blocks are
    i = tl.arange(0, 2 * FB)
    j = pid * FB + i // 2
    rows = j + (i % 2) * F
    ok = j < F
    kk = tl.arange(0, BLOCK_K)
    w_row = wgu_ptr + rows[:, None].to(tl.int64) * D
    w = tl.load(w_row + kk[None, :], mask=ok[:, None] & (kk < D)[None, :], other=0)
    sg = tl.load(sgu_ptr + rows, mask=ok, other=0.0).to(tl.float32)
    ff = pid * FB + tl.arange(0, FB)
    nn = tl.arange(0, BLOCK_D)
    wd_ptrs = wd_ptr + ff[:, None].to(tl.int64) * D + nn[None, :]
    wd_mask = (ff < F)[:, None] & (nn < D)[None, :]
    if DOWN_EARLY:
        wd = tl.load(wd_ptrs, mask=wd_mask, other=0)
    sd = tl.load(sd_ptr + nn, mask=nn < D, other=0.0).to(tl.float32)
    pdl_enter(PDL)
    if not DOWN_EARLY:
        wd = tl.load(wd_ptrs, mask=wd_mask, other=0)
    # the gate/up products, as the gemv computes them (fp16 products of int8 weights and x / 128)
    x = tl.load(x_ptr + kk, mask=kk < D, other=0.0).to(tl.float32)
    acc = gemv_mod._weights_f16(w, I8_F16) * (x * gemv_mod.F16_X_SCALE).to(tl.float16)[None, :]
    if ROWSUM:
        rowsum = tl.sum(acc.to(tl.float32), 1)
    ss = x * x
    for k0 in range(BLOCK_K, D, BLOCK_K):
        w = tl.load(w_row + (k0 + kk)[None, :], mask=ok[:, None] & (k0 + kk < D)[None, :], other=0)
        x = tl.load(x_ptr + k0 + kk, mask=k0 + kk < D, other=0.0).to(tl.float32)
        prod = gemv_mod._weights_f16(w, I8_F16) * (x * gemv_mod.F16_X_SCALE).to(tl.float16)[None, :]
        if ROWSUM:
            rowsum += tl.sum(prod.to(tl.float32), 1)
        else:
            acc += prod
        ss += x * x
    if ROWSUM:
        y = rowsum * (1.0 / gemv_mod.F16_X_SCALE)
    else:
        y = tl.sum(acc.to(tl.float32), 1) * (1.0 / gemv_mod.F16_X_SCALE)
    y = y * tl.rsqrt(tl.sum(ss, 0) / D + eps) * sg
    gate, up = tl.split(tl.reshape(y.to(tl.bfloat16).to(tl.float32), (FB, 2)))
    h = (gate * tl.sigmoid(gate) * up).to(tl.bfloat16).to(tl.float32)  # (FB,), rounded as the gemv stores it
    # the down projection's partial sums over this program's FB columns of its K
    if F16_DOWN == 2:  # fp16 products summed over FB in fp16, h scaled as the gemv scales x (fewer conversions)
        hs = (h * gemv_mod.F16_X_SCALE).to(tl.float16)
        part = tl.sum(gemv_mod._weights_f16(wd, I8_F16) * hs[:, None], 0).to(tl.float32) * (sd / gemv_mod.F16_X_SCALE)
    elif F16_DOWN:  # fp16 products (as the gemv's: an int8 weight times h stays within h's magnitude x 127)
        part = tl.sum((gemv_mod._weights_f16(wd, I8_F16) * h.to(tl.float16)[:, None]).to(tl.float32), 0) * sd
    else:
        part = tl.sum(gemv_mod._weights(wd, True) * h[:, None], 0) * sd  # (BLOCK_D,)
    if pid == 0:  # the residual, once; and layer l-2's accumulator back to zero for its next use
        part += tl.load(x_ptr + nn, mask=nn < D, other=0.0).to(tl.float32)
        tl.store(zero_ptr + nn, tl.zeros((BLOCK_D,), tl.float32), mask=nn < D)
    if ATOMIC:
        tl.atomic_add(acc_ptr + nn, part, mask=nn < D, sem="relaxed")
    else:  # timing only: acc_ptr is a (programs, D) scratch and each program stores its own partial
        tl.store(acc_ptr + pid * D + nn, part, mask=nn < D)


def fused_mlp(x: torch.Tensor, wgu: torch.Tensor, sgu: torch.Tensor, wd_t: torch.Tensor, sd: torch.Tensor,
              acc: torch.Tensor, zero: torch.Tensor, cfg: tuple, pdl: bool) -> torch.Tensor:
    """acc (D,) fp32, zero on entry, += x + down(silu(gate) * up)(rmsnorm(x)); ``zero`` (D,) is set to zero. A
    ``cfg`` without atomics (its last field False) needs acc of (programs, D) and leaves the partials unsummed."""
    fb, block_k, warps, early, f16_down, rowsum, atomic = cfg
    f = wd_t.shape[0]
    i8_f16 = 2 if os.environ.get("TRITON_INTERPRET") != "1" else 1
    _fused_mlp[(triton.cdiv(f, fb),)](x, wgu, sgu, wd_t, sd, acc, zero, f, x.shape[-1], EPS, FB=fb, BLOCK_K=block_k,
                                      BLOCK_D=triton.next_power_of_2(x.shape[-1]), PDL=2 if pdl else 0,
                                      DOWN_EARLY=early, I8_F16=i8_f16, F16_DOWN=f16_down, ROWSUM=rowsum,
                                      ATOMIC=atomic, num_warps=warps,
                                      **({"launch_pdl": True} if pdl else {}))
    return acc


def layer_weights(d: int, f: int, g: torch.Generator, device: str):
    """Random int8 layer weights with per-row scales: gate/up (2f, d), down (d, f) and its transpose (f, d)."""
    wgu = torch.randint(-127, 128, (2 * f, d), generator=g, dtype=torch.int8).to(device)
    sgu = (torch.rand(2 * f, generator=g) / 127 / d ** 0.5 * 4).to(device, torch.bfloat16)
    wd = torch.randint(-127, 128, (d, f), generator=g, dtype=torch.int8).to(device)
    sd = (torch.rand(d, generator=g) / 127 / f ** 0.5).to(device, torch.bfloat16)
    return wgu, sgu, wd, wd.t().contiguous(), sd


def reference(x: torch.Tensor, wgu, sgu, wd, sd) -> torch.Tensor:
    """x + down(silu(gate) * up)(rmsnorm(x)) in fp32, h rounded to bf16 as the kernels store it."""
    xf = x.float().reshape(-1)
    xn = xf * torch.rsqrt(xf.pow(2).mean() + EPS)
    y = ((wgu.float() @ xn) * sgu.float()).to(torch.bfloat16).float()
    gate, up = y.chunk(2)
    h = (torch.nn.functional.silu(gate) * up).to(torch.bfloat16).float()
    return xf + (wd.float() @ h) * sd.float()


def check(device: str, d: int = 256, f: int = 320) -> float:
    """The fused kernel against the reference on one layer of a small shape, with atomics and (its partial rows
    summed here) without; the largest error of the atomic forms relative to the output's largest magnitude."""
    g = torch.Generator().manual_seed(0)
    wgu, sgu, wd, wd_t, sd = layer_weights(d, f, g, device)
    x = torch.randn(d, generator=g).to(device)
    worst = 0.0
    want = reference(x, wgu, sgu, wd, sd)
    forms = [(16, 128, 4, False, 0, False, True), (8, 64, 2, True, 1, True, True), (8, 64, 2, False, 2, False, True)]
    for cfg in forms:
        acc, zero = torch.zeros(d, device=device), torch.ones(d, device=device)
        fused_mlp(x, wgu, sgu, wd_t, sd, acc, zero, cfg, pdl=False)
        err = ((acc - want).abs().max() / want.abs().max()).item()
        assert err < 2e-2, (cfg, err)
        assert torch.equal(zero, torch.zeros_like(zero)), "layer l-2's accumulator was not zeroed"
        worst = max(worst, err)
    # without atomics the programs' partial rows, summed, are the same sum
    cfg = (16, 128, 4, False, 1, True, False)
    rows = torch.zeros(triton.cdiv(f, cfg[0]), d, device=device)
    fused_mlp(x, wgu, sgu, wd_t, sd, rows, torch.ones(d, device=device), cfg, pdl=False)
    err = ((rows.sum(0) - want).abs().max() / want.abs().max()).item()
    assert err < 2e-2, (cfg, err)
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--check", action="store_true", help="only check the fused kernel's values on a small shape")
    a = p.parse_args()
    err = checked_gpu("bench_fused_mlp", check, "fused MLP against the reference", a.check)
    if err is None:
        return
    device = "cuda"
    g = torch.Generator().manual_seed(1)
    layers = [layer_weights(D, F, g, device) for _ in range(LAYERS)]
    x0 = torch.randn(1, D, generator=g).to(device, torch.bfloat16)
    pdl = pdl_capable(x0)
    card = torch.cuda.get_device_name()
    tiles = gemv_mod.load_tiles().get(card, {})
    glu_cfg = tuple(tiles.get(f"{gemv_mod.tile_key(2 * F, D, torch.int8)} glu", (32, 512, 4, 1, 0)))
    down_cfg = tuple(tiles.get(gemv_mod.tile_key(D, F, torch.int8), (4, 2048, 8, 1, 0)))

    def chain():
        x = x0
        for wgu, sgu, wd, _, sd in layers:
            h = gemv_mod.gemv(x, wgu, sgu, config=glu_cfg, rms_eps=EPS, glu=True, pdl=pdl)
            x = gemv_mod.gemv(h, wd, sd, config=down_cfg, residual=x, pdl=pdl)
        return x

    accs = torch.zeros(LAYERS, D, device=device)
    x0f = x0.float().reshape(-1)

    def fused(cfg):
        # without atomics each layer stores its programs' partial rows into a scratch of its own, and the next
        # layer reads the first row as its x (timing only)
        scratch = None if cfg[-1] else torch.zeros(LAYERS, triton.cdiv(F, cfg[0]), D, device=device)

        def run():
            x = x0f
            for l, (wgu, sgu, _, wd_t, sd) in enumerate(layers):
                out = accs[l] if scratch is None else scratch[l]
                fused_mlp(x, wgu, sgu, wd_t, sd, out, accs[(l - 2) % LAYERS], cfg, pdl)
                x = out if scratch is None else out[0]
            return x
        return run

    results = {"card": card, "date": datetime.date.today().isoformat(), "layers": LAYERS, "pdl": pdl,
               "check_error": err, "chain_tiles": {"glu": glu_cfg, "down": down_cfg}, "us_per_layer": {}}
    want = chain().float().reshape(-1)
    got = fused(CONFIGS[0])()
    results["chain_vs_fused_22_layers"] = ((got - want).abs().max() / want.abs().max()).item()
    order = ["chain"] + [f"fused {c}" for c in CONFIGS] + ["chain again"]
    for name in order:
        fn = chain if name.startswith("chain") else fused(CONFIGS[order.index(name) - 1])
        try:
            t = bench_rotated(fn, [()], device, replays=30) / LAYERS * 1e6  # one CUDA graph of the 22 layers
        except Exception as e:  # a configuration that does not compile or fit is reported, not fatal
            results["us_per_layer"][name] = f"{type(e).__name__}: {str(e)[:200]}"
            print(name, "failed:", str(e)[:200])
            continue
        results["us_per_layer"][name] = round(t, 3)
        print(f"{name:40s} {t:7.2f} us a layer ({(D * F * 3) / t / 1e3:6.0f} GB/s of weights)")
    if a.out:
        write_json(a.out, results)


if __name__ == "__main__":
    main()
