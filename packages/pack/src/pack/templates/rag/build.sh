#!/usr/bin/env bash
# Index docs/ (Markdown, text or JSONL) into artifacts/index: 800-character chunks with exact offsets, BM25 on
# stemmed terms. Then measure the retrieval against queries.tsv and qrels.txt (MRR, nDCG@10).
#
#   ./build.sh [DOCS...]        default: docs/
# Environment: PYTHON (default python), EMBEDDER (e.g. hf:models/bge-small: add dense vectors beside BM25).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
if [ $# -gt 0 ]; then DOCS=("$@"); else DOCS=(docs); fi
echo "==> python -m rag build --docs ${DOCS[*]}"
"$PY" -m rag build --docs "${DOCS[@]}" --out artifacts/index --chunk-size 800 --chunk-overlap 100 --overwrite \
  ${EMBEDDER:+--embedder "$EMBEDDER"}
echo "==> python -m rag eval (queries.tsv against qrels.txt)"
"$PY" -m rag eval artifacts/index --queries queries.tsv --qrels qrels.txt --measures mrr ndcg@10 --json
