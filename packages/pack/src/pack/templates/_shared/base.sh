#!/usr/bin/env bash
# Sourced by run.sh: the base model this project tunes, linked as artifacts/base (its YAML's train.init_from).
# BASE (a directory or a source such as registry:NAME@production) is used as it is; without one, the stand-in
# base.yaml is trained into runs/base first (seconds on a CPU; STEPS overrides its train.steps). Uses $PY.
mkdir -p artifacts
if [ -z "${BASE:-}" ]; then
  echo "==> 1. no BASE given: training the stand-in base (base.yaml) into runs/base"
  rm -rf runs/base
  "$PY" -m train.run --config base.yaml ${STEPS:+--train.steps "$STEPS"} >artifacts/base.log 2>&1 || {
    cat artifacts/base.log; exit 1; }
  BASE=$(ls -d runs/base/checkpoints/step_* | tail -n 1)
else
  echo "==> 1. base model: $BASE"
fi
# a model source (registry:NAME@REF) as its local directory; artifacts/base -> it, as the project's YAML names
LOCAL=$("$PY" -c 'import sys; from specs.sources import local_path; print(local_path(sys.argv[1]).resolve())' "$BASE")
ln -sfn "$LOCAL" artifacts/base
echo "    artifacts/base -> $LOCAL"
