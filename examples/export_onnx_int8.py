"""The seed's quickstart snippet 2, runnable: export ONNX + int8 post-training quantization for a server.

    python examples/export_onnx_int8.py                                   # a random-weight debug model
    python examples/export_onnx_int8.py runs/x/checkpoints/step_00000030 --outdir artifacts/
    python -m governance verify artifacts/model.onnx                      # the release gate

The heart of it is the seed's three lines::

    from data.tokenizer import load_tokenizer
from export.exporter import export
    from specs.export import ExportConfig
    out = export(model, ExportConfig(target="onnx", opset=19, quantize="int8", dynamic_axes=True,
                                     outdir="artifacts/"), vocab_size=32000, d_model=cfg.d_model)
    print("artifact:", out)  # artifacts/model.onnx + modelcard.json

Here ``model`` is loaded from a checkpoint (or built from the ``llama-debug`` preset), and ``vocab_size`` /
``d_model`` are the model's own (export checks them). The artifact is a decoder graph with a KV cache
(``past_key_values.*`` in, ``present.*`` out) that export reloads with onnxruntime and compares with PyTorch
before publishing; the int8 weights' logit and perplexity change is recorded in ``modelcard.json``. Passing the
checkpoint's ``metadata.json`` lets the installed governance hook write SBOM.spdx.json, RECEIPT.json,
LINEAGE.dot, MODEL_CARD.md/.json and CHECKSUMS.sha256 (signed when ``LMSTACK_SIGNING_KEY`` names a key).
Finally the script runs the artifact itself with onnxruntime, greedy-decoding a few tokens through the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from data.tokenizer import load_tokenizer
from export.exporter import export
from model.lm import TransformerLM
from specs.cli import run_cli
from specs.export import ExportConfig
from specs.presets import preset


def onnx_greedy(path: Path, prompt: list[int], new_tokens: int, n_layers: int) -> list[int]:
    """Greedy decoding with the exported graph alone: prefill the prompt, then one token per call via the cache."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past_inputs = {i.name: i for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
    feeds: dict[str, np.ndarray] = {}
    for name, info in past_inputs.items():  # an empty cache: (B=1, KVH, 0, Dh)
        feeds[name] = np.zeros((1, info.shape[1], 0, info.shape[3]), dtype=np.float32)
    ids, out = list(prompt), []
    step_ids = ids
    for _ in range(new_tokens):
        past = feeds["past_key_values.0.key"].shape[2]
        feeds["input_ids"] = np.array([step_ids], dtype=np.int64)
        feeds["position_ids"] = np.arange(past, past + len(step_ids), dtype=np.int64)[None]
        feeds["attention_mask"] = np.ones((1, past + len(step_ids)), dtype=np.int64)
        logits, *present = sess.run(None, feeds)
        for layer in range(n_layers):
            feeds[f"past_key_values.{layer}.key"] = present[2 * layer]
            feeds[f"past_key_values.{layer}.value"] = present[2 * layer + 1]
        token = int(logits[0, -1].argmax())
        out.append(token)
        step_ids = [token]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python examples/export_onnx_int8.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", type=Path, default=None,
                   help="checkpoint directory (default: a random-weight llama-debug model)")
    p.add_argument("--outdir", default="artifacts/", help="where model.onnx, modelcard.json and governance files go")
    p.add_argument("--quantize", default="int8", choices=["none", "int8"], help="post-training quantization")
    p.add_argument("--opset", type=int, default=19)
    args = p.parse_args(argv)

    metadata, tok = None, None
    if args.checkpoint is None:
        torch.manual_seed(0)
        model = TransformerLM(preset("llama-debug"))
    else:
        model = TransformerLM.from_pretrained(args.checkpoint)
        md = args.checkpoint / "metadata.json"  # training provenance: lineage, receipt and model card use it
        metadata = json.loads(md.read_text()) if md.is_file() else None
        if (args.checkpoint / "tokenizer_config.json").is_file():
            tok = load_tokenizer(str(args.checkpoint))
    cfg = model.config

    out = export(model, ExportConfig(target="onnx", opset=args.opset, quantize=args.quantize, dynamic_axes=True,
                                     outdir=args.outdir), vocab_size=cfg.vocab_size, d_model=cfg.d_model,
                 source=args.checkpoint, metadata=metadata)
    print("artifact:", out)  # artifacts/model.onnx + modelcard.json
    meta = out.card.metadata
    print(f"parity with PyTorch: max |logit diff| {meta['parity']['max_abs_diff']:.2e} (atol {meta['parity']['atol']})")
    if "quantization" in meta:
        q = meta["quantization"]
        print(f"int8: perplexity {q['perplexity_reference']:.3f} -> {q['perplexity_artifact']:.3f} on "
              f"{q['perplexity_tokens']} tokens; mean |logit change| {q['logit_mean_abs_change']:.2e}")
    print("files:", ", ".join(sorted(f.name for f in Path(out.outdir).iterdir() if f.is_file())))
    print("hooks:", ", ".join(out.hooks) or "none")

    prompt = tok.encode("def __init__(self") if tok is not None else [1, 2, 3, 4]
    onnx_tokens = onnx_greedy(out.path, prompt, 8, cfg.n_layers)
    with torch.no_grad():  # the same greedy decode in PyTorch, for comparison (int8 may flip a near-tie)
        ids = torch.tensor([prompt])
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    torch_tokens = ids[0, len(prompt):].tolist()
    print(f"onnxruntime greedy: {onnx_tokens}\npytorch greedy:     {torch_tokens}")
    if tok is not None:
        print(f"as text: {tok.decode(prompt + onnx_tokens)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
