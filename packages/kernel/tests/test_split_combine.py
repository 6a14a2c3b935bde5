"""Splits combined in the kernel (decode attention's slot splits, the skinny matmul's split K), checked offline for
sm90 (no GPU needed): the interpreter runs programs one after another, so only the generated code shows the
publication order that makes the last program's reads safe on a GPU; and torch.compile's analysis of what a
user-defined Triton kernel writes must find the workspaces and counters, and nothing else (a kernel it cannot
analyse is assumed to write every input, which would copy the weights on every call)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("triton")

from triton_testing import compile_offline

_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import decode_attention as da
from triton_testing import DECODE_ARG_NAMES as names, DECODE_ARG_TYPES as types
for combine in (False, True):
    consts = dict(PAGED=False, PAGE=1, DOT=1, SPLIT=True, NEW=True, ROPE=True, COMBINE=combine, BLOCK_G=16,
                  BLOCK_S=64, BLOCK_D=64, BLOCK_N=8, PDL=False, EARLY=False, ROPE_AT_POS=False, UNIFIED=False)
    src = triton.compiler.ASTSource(fn=da._decode, signature={**dict(zip(names, types)),
                                                              **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_split_combine_counts_after_a_barrier_and_reads_the_partials_from_l2():
    plain, fused, _ = compile_offline(_AOT).split("\n=====\n")
    assert "atom." not in plain and "ld.global.cg" not in plain
    lines = fused.splitlines()
    count = [i for i, line in enumerate(lines) if re.search(r"atom\.global\.gpu\.acq_rel\.add", line)]
    assert len(count) == 1, "one counting atomic, acquire-release at GPU scope"
    stores = [i for i, line in enumerate(lines[:count[0]]) if "st.global" in line]
    # every partial store, then a CTA barrier, then the count: the pattern of CUTLASS's split-K semaphore
    assert stores and any("bar.sync" in line for line in lines[stores[-1]:count[0]])
    # the last program's reads of the other programs' partials bypass L1
    assert sum("ld.global.cg" in line for line in lines[count[0]:]) >= 3
    assert re.search(r"atom\.global\.gpu\.\w+\.exch", fused), "the counter is set back to zero"


_MUTATIONS = """
import json, torch, triton
from triton.backends.compiler import GPUTarget
from torch._higher_order_ops import triton_kernel_wrap as tkw


class Sm90:  # torch's analysis asks the active driver for its target; there is none without a GPU
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


triton.runtime.driver.set_active(Sm90())
from kernel.triton import decode_attention as da, skinny


def written(kernel, kw):
    tensors = {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)}
    idx = tkw.kernel_side_table.add_kernel(kernel)
    cidx = tkw.kernel_side_table.add_constant_args({k: v for k, v in kw.items() if k not in tensors})
    return sorted(tkw.get_mutated_tensors(idx, cidx, tensors, {}))


bf, f32, i32 = torch.bfloat16, torch.float32, torch.int32
mm = dict(x_ptr=torch.empty(1, 2048, dtype=bf), w_ptr=torch.empty(2048, 2048, dtype=bf),
          out_ptr=torch.empty(1, 2048, dtype=bf), scale_ptr=torch.empty(1, dtype=bf), bias_ptr=torch.empty(1, dtype=bf),
          res_ptr=torch.empty(1, 2048, dtype=bf), ws_ptr=torch.empty(2, 1, 2048), ss_ptr=torch.empty(2048),
          cnt_ptr=torch.empty(128, dtype=i32), M=1, N=2048, K=2048, K_PER_SPLIT=1024, SPLIT=2, stride_xm=2048,
          stride_wn=2048, stride_os=2048, stride_om=2048, stride_rm=2048, rms_eps=1e-5, UPCAST=False, FINAL=False,
          SERIAL=True, HAS_SCALE=False, HAS_BIAS=False, RMS=True, HAS_RES=True, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128,
          NUM_STAGES=5, PDL=False, PREFETCH=False, W_LINE=64, RMS_ROWS=1, RMS_K=1024, SPLIT_P2=2)
t = lambda *shape, dtype=bf: torch.empty(*shape, dtype=dtype)
dec = dict(q_ptr=t(1, 32, 64), k_ptr=t(1, 4, 384, 64), v_ptr=t(1, 4, 384, 64), lens_ptr=t(1, dtype=torch.int64),
           table_ptr=t(1, dtype=torch.int64), o_ptr=t(1, 32, 64), acc_ptr=t(1, 32, 6, 64, dtype=f32),
           m_ptr=t(1, 32, 6, dtype=f32), l_ptr=t(1, 32, 6, dtype=f32), kn_ptr=t(1, 4, 64), vn_ptr=t(1, 4, 64),
           cos_ptr=t(1, 64), sin_ptr=t(1, 64), cnt_ptr=t(4, dtype=i32), stride_qb=2048, stride_qh=64,
           stride_kb=98304, stride_kh=24576, stride_ks=64, stride_vb=98304, stride_vh=24576, stride_vs=64,
           stride_tb=0, stride_ob=2048, stride_oh=64, stride_knb=256, stride_knh=64, stride_vnb=256, stride_vnh=64,
           stride_cb=0, scale=0.125, G=8, Dh=64, H=32, NS=6, KVH=4, L=384, ws_ptr=t(1, dtype=f32),
           zero_ptr=t(1, dtype=f32), WS=0, PAGED=False, PAGE=1, DOT=1, SPLIT=True,
           NEW=True, ROPE=True, COMBINE=True, BLOCK_G=16, BLOCK_S=64, BLOCK_D=64, BLOCK_N=8, PDL=False,
           EARLY=False, ROPE_AT_POS=False, UNIFIED=False)
print(json.dumps({"skinny": written(skinny._skinny, mm), "decode": written(da._decode, dec)}))
"""


def test_torch_compile_sees_exactly_what_the_combining_kernels_write():
    import json

    got = json.loads(compile_offline(_MUTATIONS).strip().splitlines()[-1])
    assert got["skinny"] == ["cnt_ptr", "out_ptr", "ss_ptr", "ws_ptr"]
    # the cache write (k, v), the partials, the output and the counters
    assert got["decode"] == ["acc_ptr", "cnt_ptr", "k_ptr", "l_ptr", "m_ptr", "o_ptr", "v_ptr"]
