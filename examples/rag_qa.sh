#!/usr/bin/env bash
# Retrieval-augmented answers end to end: index documents, search them, measure the retrieval against relevance
# judgments, then answer a question with a served model that sees the retrieved sources and cites them.
#
#   examples/rag_qa.sh MODEL_DIR [DOCS...]      (run from the repo root)
#
# MODEL_DIR: any lmstack or Hugging Face Llama/GPT-2 directory with a tokenizer, served by python -m serve (its
# context must hold the sources: MAX_SOURCE_CHARS cuts them). DOCS: files, directories or .jsonl collections;
# default: every package README of this repository. Environment: PYTHON (default python), PORT (default 8124),
# OUT (default runs/examples/rag), MAX_SOURCE_CHARS (default 600).
set -euo pipefail
PY=${PYTHON:-python}
PORT=${PORT:-8124}
OUT=${OUT:-runs/examples/rag}
URL="http://127.0.0.1:$PORT"
MODEL=${1:?usage: examples/rag_qa.sh MODEL_DIR [DOCS...]}
shift
if [ $# -gt 0 ]; then DOCS=("$@"); else DOCS=(packages/*/README.md); fi
mkdir -p "$OUT"

echo "==> python -m rag build (${#DOCS[@]} document paths)"
"$PY" -m rag build --docs "${DOCS[@]}" --out "$OUT/index" --chunk-size 800 --chunk-overlap 100 --overwrite

echo "==> python -m rag query"
"$PY" -m rag query "$OUT/index" "sign a model version and promote it to production" -k 3

echo "==> python -m rag eval"
printf 'q1\tsign a model version and promote it to production\nq2\treciprocal rank fusion of BM25 and vectors\n' \
  >"$OUT/queries.tsv"
printf 'q1 0 packages/registry/README.md 1\nq2 0 packages/rag/README.md 1\n' >"$OUT/qrels.txt"
"$PY" -m rag eval "$OUT/index" --queries "$OUT/queries.tsv" --qrels "$OUT/qrels.txt" --measures mrr ndcg@10 --json

echo "==> python -m serve --model $MODEL --port $PORT"
# shellcheck source=examples/serve_bg.sh
source "$(dirname "$0")/serve_bg.sh"
start_server "$MODEL" "$PORT" "$OUT/server.log" --max-batch-size 2

echo "==> python -m rag ask"
"$PY" -m rag ask "$OUT/index" "How do I sign a model version?" --url "$URL" --model tiny -k 3 --max-tokens 24 \
  --max-source-chars "${MAX_SOURCE_CHARS:-600}" --json
