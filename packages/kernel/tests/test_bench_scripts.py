"""The kernel benchmark scripts' command lines: what the tuner accepts, and what it refuses before it times anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import their neighbour bench_kernels as a top-level module

bench_decode_kernels = pytest.importorskip("bench_decode_kernels")

from triton_testing import DEVICE  # noqa: E402 (the GPU where there is one, else the CPU under the interpreter)


def test_tune_space_from_the_command_line():
    space = bench_decode_kernels.parse_tune_space("4,8", "3, 5,6", "qkv,o")
    assert space == {"warps": (4, 8), "stages": (3, 5, 6), "matrices": ("qkv", "o"), "weights": ("float", "int8")}
    assert bench_decode_kernels.parse_tune_space("4", "5", None)["matrices"] is None
    assert bench_decode_kernels.parse_tune_space("4", "5", None, "float")["weights"] == ("float",)
    with pytest.raises(SystemExit, match="--tune-weights expects float and/or int8"):
        bench_decode_kernels.parse_tune_space("4", "5", None, "bf16")
    with pytest.raises(SystemExit, match="--tune-warps expects comma-separated positive integers"):
        bench_decode_kernels.parse_tune_space("four", "5", None)
    with pytest.raises(SystemExit, match="--tune-stages expects"):
        bench_decode_kernels.parse_tune_space("4", "0", None)
    with pytest.raises(SystemExit, match="unknown \\['qvk'\\]; valid: qkv, o, gate_up, down, lm_head"):
        bench_decode_kernels.parse_tune_space("4", "5", "qvk")


def test_tuning_refuses_a_cpu_and_writes_nothing(tmp_path, monkeypatch):
    table = tmp_path / "tiles.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(BENCH / "bench_decode_kernels.py"), "--device", "cpu",
                          "--tune-skinny", str(table), "--tune-warps", "4,8"], env=env, capture_output=True,
                         text=True, timeout=300)  # the script as run (its exit status and message)
    assert out.returncode != 0 and "--tune-skinny times the kernels of a GPU" in out.stderr
    assert not table.exists()
    for args, message in ((["--tune-skinny", str(table), "--tune-matrices", "nope"], "--tune-matrices: unknown"),
                          (["--tune-gemv", str(table)], "--tune-gemv times the kernels of a GPU")):
        monkeypatch.setattr(sys, "argv", ["bench_decode_kernels.py", "--device", "cpu", *args])  # the rest in-process
        with pytest.raises(SystemExit, match=message):
            bench_decode_kernels.main()
        assert not table.exists()


def test_one_row_case_reads_what_it_says():
    """The tuners' inputs: one row, the weight's bytes (int8: one a weight plus the scales), the fp32 product."""
    import torch

    bench_decode_kernels = pytest.importorskip("bench_decode_kernels")
    g = torch.Generator().manual_seed(0)
    x, w, args, nbytes, want = bench_decode_kernels.one_row_case(24, 40, False, g, "cpu", torch.float32)
    assert x.shape == (1, 40) and w.shape == (24, 40) and len(args) == 2 and nbytes == 24 * 40 * 4
    torch.testing.assert_close(want, x @ w.T)
    x, w, args, nbytes, want = bench_decode_kernels.one_row_case(24, 40, True, g, "cpu", torch.bfloat16)
    assert w.dtype == torch.int8 and len(args) == 3 and nbytes == 24 * 40 + 24 * 2
    torch.testing.assert_close(want, (x.float() @ w.float().T) * args[2].float())


def test_hbm_floor_read_kernel_sums_and_the_fit_recovers_a_line():
    """bench_hbm_floor's read kernel (under the interpreter here) sums what it reads, every element once, and its
    fit recovers the fixed cost and bandwidth of exact data."""
    import torch

    floor = pytest.importorskip("bench_hbm_floor")
    device = DEVICE
    x = torch.randn(floor.BLOCK * floor.UNROLL * 3 + 77, generator=torch.Generator().manual_seed(0)).to(device)
    out = torch.empty(5, device=device)
    got = floor.read(x, out, programs=5).sum().item()
    assert abs(got - x.sum().item()) < 1e-3
    sizes = [1e6, 1e7, 5e7, 1e8]
    a, bw = floor.fit(sizes, [3e-6 + s / 4e12 for s in sizes])
    assert abs(a - 3e-6) < 1e-9 and abs(bw / 4e12 - 1) < 1e-6


def test_fused_mlp_prototype_matches_its_reference_and_zeroes_the_ring():
    """bench_fused_mlp's one-kernel int8 MLP (under the interpreter here, on a small shape): x plus the down
    projection of the SwiGLU of the RMS-normalised x within 2% of the fp32 reference's largest output, and layer
    l-2's accumulator set back to zero (check() asserts both, for an fp32 and an fp16 down product)."""

    fused = pytest.importorskip("bench_fused_mlp")
    assert fused.check(DEVICE) < 2e-2


def test_unified_attention_layers_match_split_and_combine():
    """bench_unified_attention's two small int8 layers (under the interpreter here): the unified attention with the
    o gemv reading its accumulators, and the o projection combining the splits itself (combine-o), give split +
    combine's output within 2%; the last layer zeroes the first layer's accumulators, and combine-o leaves its own
    zeroed (a second call gives the same output within rounding) (check() asserts them)."""

    unified = pytest.importorskip("bench_unified_attention")
    assert unified.check(DEVICE) < 2e-2


@pytest.mark.parametrize("script", ["bench_fused_mlp", "bench_unified_attention", "bench_rowpair_gemv", "bench_lora"])
def test_prototype_timing_without_a_gpu_stops_with_a_message_and_writes_nothing(tmp_path, script, monkeypatch,
                                                                                capsys):
    """Each script's main, in-process (the scripts' own command line as run: the tuner test above): the check runs
    (under the interpreter), then the timing stops with a message."""
    import importlib

    import torch

    if torch.cuda.is_available():
        pytest.skip("there is a GPU here: the timing would run")
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--out", str(out)])
    with pytest.raises(SystemExit, match=f"{script}: timing needs a CUDA GPU"):
        importlib.import_module(script).main()
    assert "max error" in capsys.readouterr().out and not out.exists()


def test_gemv_tuner_times_only_tiles_that_compute_the_product(monkeypatch):
    """The gemv tuner's candidate loop (under the interpreter here): every timed tile gave the product, plain and
    with the SwiGLU epilogue (even ROWS only there). (Each timing runs its launch once, its time stubbed: what is
    timed is the point here, not how long it takes.)"""
    import json

    import torch

    bench_decode_kernels = pytest.importorskip("bench_decode_kernels")
    monkeypatch.setattr(bench_decode_kernels, "bench_rotated", lambda fn, sets, device, replays=10: (
        fn(*sets[0]), 1e-6)[1])
    from kernel.reference import swiglu
    from kernel.triton.gemv import gemv

    g = torch.Generator().manual_seed(0)
    dev = DEVICE
    x, w, args, nbytes, want = bench_decode_kernels.one_row_case(16, 128, False, g, dev, torch.float32)
    plain = bench_decode_kernels._gemv_timings(gemv, args, [args], want, 128, 4, dev, glu=False)
    glu = bench_decode_kernels._gemv_timings(gemv, args, [args], swiglu(want[:, :8], want[:, 8:]), 128, 4, dev,
                                             glu=True)
    assert plain and glu and all(t > 0 for t in [*plain.values(), *glu.values()])
    assert "[1, 256, 1]" in plain and all(json.loads(k)[0] % 2 == 0 for k in glu)
    # called as a folded decode step calls it (x far from unit RMS, so a tile that skipped the norm could not match)
    args = (args[0] * 5, args[1])
    for name in ("qkv", "o"):
        extra = bench_decode_kernels.decode_call(name, 16, g, dev, torch.float32)
        want = bench_decode_kernels.call_product(args, extra)
        assert not torch.allclose(want, bench_decode_kernels.call_product(args, {}), rtol=2e-2, atol=2e-2)
        assert bench_decode_kernels._gemv_timings(gemv, args, [args], want, 128, 4, dev, glu=False, extra=extra)
        assert not bench_decode_kernels._gemv_timings(gemv, args, [args], want, 128, 4, dev, glu=False)


def test_gemv_tuner_admits_blocks_up_to_k_s_next_power_of_two():
    bench_decode_kernels = pytest.importorskip("bench_decode_kernels")
    admits = bench_decode_kernels._gemv_admits
    # int8 (1 byte), 4 rows, 4 warps: K 2048 takes 2048-wide blocks, not half-empty 4096 ones; K 5632 takes both
    # 4096 and 8192 (its rows in one or two steps)
    assert admits(4, 2048, 4, 2048, 1, False) and not admits(4, 4096, 8, 2048, 1, False)
    assert admits(4, 4096, 8, 5632, 1, False) and admits(8, 8192, 16, 5632, 1, False)
    assert not admits(4, 8192, 16, 2048, 1, False)
    # K below the narrowest candidate block still gets that block; a thread's share stays 32-128 bytes; glu: even rows
    assert admits(1, 256, 1, 128, 4, False) and not admits(1, 512, 1, 128, 4, False)
    assert not admits(1, 256, 8, 2048, 4, False) and not admits(32, 2048, 1, 2048, 2, False)
    assert admits(2, 256, 1, 2048, 4, True) and not admits(1, 256, 1, 2048, 4, True)


def test_gemv_tuner_writes_a_table_the_kernel_reads(tmp_path, monkeypatch):
    """--tune-gemv end to end on a tiny gate/up shape (under the interpreter here, with a small candidate space):
    the table it writes has this card's entry for the shape and for its SwiGLU epilogue, five fields each
    ([ROWS, BLOCK_K, num_warps, PDL, PER_SM]), which the kernel's own table reader accepts."""
    import json

    import torch

    bench_decode_kernels = pytest.importorskip("bench_decode_kernels")
    from kernel.triton import gemv
    from kernel.triton._device import device_info

    dev = DEVICE
    card = device_info(torch.empty(0, device=dev))[1]  # the name the table files this device's entries under
    for name, value in (("MATRICES", [("gate_up", 32, 128)]), ("TUNE_GEMV_ROWS", (2,)),
                        ("TUNE_GEMV_BLOCK_K", (128,)), ("TUNE_GEMV_WARPS", (1, 2)), ("TUNE_GEMV_PER_SM", (0, 2))):
        monkeypatch.setattr(bench_decode_kernels, name, value)
    monkeypatch.setattr(bench_decode_kernels, "bench_rotated", lambda fn, sets, device, replays=10: fn(*sets[0])
                        is not None and 1e-6)  # every launch really runs once; its time is not the point here
    path = tmp_path / "gemv.json"
    bench_decode_kernels.tune_gemv(str(path), dev, torch.float32, weights=("float",))
    table = json.loads(path.read_text())
    entries = table[card]
    assert set(entries) <= {"fp32 32x128", "fp32 32x128 glu"} and "fp32 32x128 glu" in entries
    assert all(len(cfg) == 5 and cfg[0] == 2 for cfg in entries.values())
    from kernel.triton._device import pdl_capable

    modes = ("plain", "chained") if pdl_capable(torch.empty(0, device=dev)) else ("plain",)  # chained: sm90+
    assert set(table["_meta"]["detail"][card]["fp32 32x128"]["launches"]) == {f"{m} {n}" for m in modes for n in (0, 2)}
    assert table["_meta"]["detail"][card]["fp32 32x128"]["call"] == "rms"  # gate/up reads the residual stream
    assert "int8" not in table["_meta"]["detail"][card]["fp32 32x128"]
    monkeypatch.setenv(gemv.TILES_ENV, str(path))
    assert gemv.choose_tiles(32, 128, torch.float32, card, True) == tuple(entries["fp32 32x128 glu"])
    # launch_top: how many of the fastest plain tiles are timed every way (2 candidates here, each 1 more way)
    monkeypatch.setattr(bench_decode_kernels, "TUNE_GEMV_ROWS", (2, 4))
    monkeypatch.setattr(bench_decode_kernels, "TUNE_GEMV_WARPS", (1,))
    calls = {}
    for top in (1, 2):
        n = [0]
        monkeypatch.setattr(bench_decode_kernels, "bench_rotated", lambda fn, sets, device, replays=10, n=n: (
            n.__setitem__(0, n[0] + 1), fn(*sets[0]) is not None and 1e-6)[1])
        bench_decode_kernels.tune_gemv(str(tmp_path / f"top{top}.json"), dev, torch.float32, weights=("float",),
                                       launch_top=top)
        calls[top] = n[0]
        assert json.loads((tmp_path / f"top{top}.json").read_text())["_meta"]["launch_top"] == top
    # one more tile's other launches (a persistent grid; chained too on sm90+), for gate/up and its glu twin
    assert calls[2] == calls[1] + 2 * (2 * len(modes) - 1)
    # rank: every candidate first timed plainly, or chained by PDL as a decode step launches it (a PDL card stood
    # in for; the kernel itself still launches plainly here); the launches then time the other way too
    from kernel.triton import _device

    timed = []
    real_gemv = gemv.gemv
    monkeypatch.setattr(gemv, "gemv", lambda *a, **k: (timed.append((len(k["config"]), k.get("pdl", False))),
                                                       real_gemv(*a, **k))[1])
    monkeypatch.setattr(bench_decode_kernels, "bench_rotated", lambda fn, sets, device, replays=10: (
        fn(*sets[0]), 1e-6)[1])
    monkeypatch.setattr(_device, "pdl_capable", lambda t: True)
    for rank in ("plain", "chained"):
        timed.clear()
        bench_decode_kernels.tune_gemv(str(tmp_path / f"{rank}.json"), dev, torch.float32, weights=("float",),
                                       launch_top=1, rank=rank)
        doc = json.loads((tmp_path / f"{rank}.json").read_text())
        assert doc["_meta"]["rank"] == rank
        assert set(doc["_meta"]["detail"][card]["fp32 32x128"]["launches"]) >= {"plain 0", "chained 0"}
        ranked = [pdl for n, pdl in timed if n == 3]  # tiles without launch fields: the ranking (and checks)
        assert (True in ranked) == (rank == "chained")
    with pytest.raises(ValueError, match="rank is 'plain' or 'chained', got 'fast'"):
        bench_decode_kernels.tune_gemv(str(tmp_path / "x.json"), dev, torch.float32, weights=("float",), rank="fast")
    monkeypatch.setattr(bench_decode_kernels, "TUNE_GEMV_BLOCK_K", (128,))
    # int8 entries record how their weights were converted while tuned (the tiles differ each way)
    monkeypatch.setenv(gemv.INT8_ENV, "cvt")
    monkeypatch.setattr(bench_decode_kernels, "MATRICES", [("gate_up", 32, 512)])  # 32+ int8 bytes a thread
    monkeypatch.setattr(bench_decode_kernels, "TUNE_GEMV_BLOCK_K", (512,))
    bench_decode_kernels.tune_gemv(str(tmp_path / "int8.json"), dev, torch.float32, weights=("int8",))
    detail = json.loads((tmp_path / "int8.json").read_text())["_meta"]["detail"][card]
    assert detail["int8 32x512"]["int8"] == "cvt" and detail["int8 32x512 glu"]["int8"] == "cvt"
