"""benchmarks/bench_lora.py runs as written (a tiny shape, on the CPU), and its two models, lmstack + compress and
transformers + PEFT with the same weights and adapters, give the same first loss in fp32."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_lora_models_agree_in_fp32(tmp_path):
    import bench_lora

    doc = bench_lora.main(["--preset", "llama-debug", "--batch", "2", "--seq", "32", "--r", "4", "--steps", "1",
                           "--warmup", "0", "--rounds", "1", "--out", str(tmp_path / "lora.json")])
    ours, theirs = doc["results"]["lmstack"], doc["results"]["transformers+peft"]
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], rel=1e-5)
    assert ours["trainable_params"] == theirs["trainable_params"] > 0
    assert (tmp_path / "lora.json").is_file() and doc["speedup"] > 0


def test_bench_qlora_quantizes_both_bases_alike(tmp_path):
    """--qlora: lmstack's nf4_ and transformers + bitsandbytes' 4-bit load of the same weights: the same first loss
    (to the rounding of their double quantizations), the same adapters, both bases a fraction of their fp32 bytes."""
    pytest.importorskip("bitsandbytes")
    import bench_lora

    args = ["--preset", "llama-debug", "--batch", "2", "--seq", "32", "--r", "4", "--steps", "1", "--warmup", "0",
            "--rounds", "1"]
    doc = bench_lora.main([*args, "--qlora"])
    full = bench_lora.main(args)["results"]["lmstack"]["weights_gib"]
    ours, theirs = doc["results"]["lmstack"], doc["results"]["transformers+peft"]
    assert doc["bench"] == "qlora_step"
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], rel=1e-3)
    assert ours["trainable_params"] == theirs["trainable_params"] > 0
    # (the debug shape's bytes are mostly its full-precision embeddings and head: a 4-bit base saves under half)
    assert ours["weights_gib"] < 0.7 * full and theirs["weights_gib"] < 0.7 * full
    assert ours["weights_gib"] == pytest.approx(theirs["weights_gib"], rel=0.15)
