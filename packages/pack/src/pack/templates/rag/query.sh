#!/usr/bin/env bash
# Search the index ./build.sh wrote and print the best chunks with their sources.
#
#   ./query.sh "what to do when the barometer falls" [-k 3] [--json]
# Environment: PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
QUESTION=${1:?usage: ./query.sh "QUESTION" [python -m rag query options]}
shift
"$PY" -m rag query artifacts/index "$QUESTION" -k 3 "$@"
