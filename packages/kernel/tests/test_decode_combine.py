"""The decode attention kernel's in-kernel combine of its slot splits, compiled offline for sm90 (no GPU needed):
the interpreter runs programs one after another, so only the generated code shows the publication order that
makes the last program's reads safe on a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from kernel.triton import decode_attention as da
names = ["q_ptr", "k_ptr", "v_ptr", "lens_ptr", "table_ptr", "o_ptr", "acc_ptr", "m_ptr", "l_ptr", "kn_ptr", "vn_ptr",
         "cos_ptr", "sin_ptr", "cnt_ptr", "stride_qb", "stride_qh", "stride_kb", "stride_kh", "stride_ks", "stride_vb",
         "stride_vh", "stride_vs", "stride_tb", "stride_ob", "stride_oh", "stride_knb", "stride_knh", "stride_vnb",
         "stride_vnh", "stride_cb", "scale", "G", "Dh", "H", "NS", "KVH"]
types = (["*bf16"] * 3 + ["*i64"] * 2 + ["*bf16"] + ["*fp32"] * 3 + ["*bf16"] * 4 + ["*i32"] + ["i32"] * 16 + ["fp32"]
         + ["i32"] * 5)
for combine in (False, True):
    consts = dict(PAGED=False, PAGE=1, DOT=1, SPLIT=True, NEW=True, ROPE=True, COMBINE=combine, BLOCK_G=16,
                  BLOCK_S=64, BLOCK_D=64, BLOCK_N=8)
    src = triton.compiler.ASTSource(fn=da._decode, signature={**dict(zip(names, types)),
                                                              **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    sys.stdout.write(kern.asm["ptx"] + "\\n=====\\n")
"""


def test_split_combine_counts_after_a_barrier_and_reads_the_partials_from_l2():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    plain, fused, _ = out.stdout.split("\n=====\n")
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
