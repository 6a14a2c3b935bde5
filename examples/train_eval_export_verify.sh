#!/usr/bin/env bash
# Train -> eval -> export ONNX (int8) -> governance verify: the release path of one model, end to end.
#
#   examples/train_eval_export_verify.sh [OUT]        (default OUT=runs/examples/release; run from the repo root)
#
# 1. train:   python -m train.run --config cfgs/debug.yaml (the embedded stdlib corpus, byte tokenizer, 2 layers);
#             every checkpoint gets RECEIPT.json + LINEAGE.dot from the governance trainer callback.
# 2. eval:    held-out perplexity of the last checkpoint on the split the run held out (eval.metrics.perplexity),
#             then lm-evaluation-harness (python -m eval.harness) on eval's bundled lmstack_tiny_text task.
# 3. keys:    an Ed25519 signing key (python -m governance keygen); LMSTACK_SIGNING_KEY makes the hooks sign.
# 4. export:  export.exporter.export(...) to ONNX with a KV cache, int8 weights, validated with onnxruntime; the
#             governance export hook writes SBOM.spdx.json, RECEIPT.json, LINEAGE.dot, MODEL_CARD.md/.json and a
#             signed CHECKSUMS.sha256.
# 5. verify:  python -m governance verify, the CI gate (exit 0 only if every file is present, hashed and signed),
#             then the same checks with the standard tools: sha256sum -c and openssl pkeyutl -verify.
# Environment: PYTHON (default python), STEPS (default 30, the config's), TORCHRUN (default torchrun).
set -euo pipefail
OUT=${1:-runs/examples/release}
PY=${PYTHON:-python}
TORCHRUN=${TORCHRUN:-torchrun}
STEPS=${STEPS:-30}

echo "==> 1. train ($STEPS steps) into $OUT/run"
"$TORCHRUN" --nproc_per_node=1 -m train.run --config cfgs/debug.yaml \
  --train.out_dir "$OUT/run" --train.steps "$STEPS" --train.eval_every "$STEPS" --train.ckpt_every "$STEPS"
CKPT=$(ls -d "$OUT"/run/checkpoints/step_* | tail -n 1)
echo "    last checkpoint: $CKPT ($(ls "$CKPT" | tr '\n' ' '))"

echo "==> 2. eval"
"$PY" examples/eval_perplexity.py "$CKPT" --out "$OUT/eval.json"
# The same checkpoint through lm-evaluation-harness (the lmstack model adapter), on eval's bundled offline task.
TASKS_DIR=$("$PY" -c 'import eval.tasks as t; print(t.TASKS_DIR)')
"$PY" -m eval.harness run --model lmstack --model_args "pretrained=$CKPT" --tasks lmstack_tiny_text --device cpu \
  --include_path "$TASKS_DIR" --output_path "$OUT/lm_eval" 2>"$OUT/lm_eval.log" | grep '|' || {
  cat "$OUT/lm_eval.log"; exit 1; }

echo "==> 3. signing key"
"$PY" -m governance keygen --out "$OUT/keys" --force
export LMSTACK_SIGNING_KEY="$OUT/keys/ed25519.key"

echo "==> 4. export ONNX + int8"
rm -rf "$OUT/artifacts"
"$PY" examples/export_onnx_int8.py "$CKPT" --outdir "$OUT/artifacts"

echo "==> 5. verify"
"$PY" -m governance verify "$OUT/artifacts/model.onnx" --pubkey "$OUT/keys/ed25519.pub.pem"
(cd "$OUT/artifacts" && sha256sum --quiet -c CHECKSUMS.sha256 && echo "sha256sum -c: OK")
if command -v openssl >/dev/null; then
  openssl pkeyutl -verify -pubin -inkey "$OUT/keys/ed25519.pub.pem" -rawin \
    -in "$OUT/artifacts/CHECKSUMS.sha256" -sigfile "$OUT/artifacts/CHECKSUMS.sha256.sig"
fi
echo "==> release artifacts in $OUT/artifacts"
