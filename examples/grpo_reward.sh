#!/usr/bin/env bash
# Online RL with GRPO and a reward function of your own, on a CPU in seconds.
#
#   examples/grpo_reward.sh [OUT]          (default OUT=runs/examples/grpo; run from the repo root)
#
# 1. A base model: cfgs/debug.yaml pre-trained for $STEPS steps on the embedded corpus. Any saved model works in
#    its place: an lmstack checkpoint or a Hugging Face Llama / Mistral / GPT-2 directory.
# 2. Prompts in JSONL ({"prompt": ...}): the first words of sentences from this repository's READMEs; an eighth are
#    held out (data.val_fraction). A reward function in a module of its own, written as TRL's are (keyword
#    arguments, one float a completion): the share of the completion's characters that are the letter e.
# 3. `python -m train.run` with no model section: `train.init_from` names the base, `train.lora` trains rank-8
#    adapters, and `train.grpo` samples 8 completions of up to 24 tokens a prompt with the policy, scores them and
#    trains on their group-normalised advantages. The reward and its held-out mean are logged.
# 4. The result: completions sampled by hand from the base and from the checkpoint (adapters merged) for the
#    held-out prompts, with the same seed: the tuned model's score higher.
# Environment: PYTHON (default python), STEPS (default 30), GRPO_STEPS (default 30).
set -euo pipefail
OUT=${1:-runs/examples/grpo}
PY=${PYTHON:-python}
STEPS=${STEPS:-30}
GRPO_STEPS=${GRPO_STEPS:-30}
rm -rf "$OUT"
mkdir -p "$OUT"

echo "==> 1. base model: cfgs/debug.yaml, $STEPS steps on the embedded corpus"
"$PY" -m train.run --config cfgs/debug.yaml --train.steps "$STEPS" --train.eval_every 0 --train.callbacks '' \
  --train.out_dir "$OUT/base" 2>"$OUT/base.log" || { cat "$OUT/base.log"; exit 1; }
BASE=$(ls -d "$OUT"/base/checkpoints/step_* | tail -n 1)
echo "    $BASE"

echo "==> 2. prompts from the READMEs, and a reward function"
"$PY" - "$OUT/prompts.jsonl" <<'PY'
import json, sys
from pathlib import Path

prompts = []
for readme in sorted(Path("packages").glob("*/README.md")):
    for line in readme.read_text().splitlines():
        words = line.split()
        if len(words) >= 8 and not line.startswith(("    ", "|", "#", ">", "`")):
            prompts.append(" ".join(words[:5]) + " ")
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts[:128])
print(f"    {min(len(prompts), 128)} prompts -> {sys.argv[1]}")
PY
cat > "$OUT/my_rewards.py" <<'PY'
def letter_e(completions, **kwargs):
    """The share of each completion's characters that are the letter e (TRL's reward-function signature)."""
    return [c.count("e") / max(len(c), 1) for c in completions]
PY
echo "    $OUT/my_rewards.py: letter_e"

echo "==> 3. GRPO with LoRA: no model section, train.init_from + train.lora + train.grpo"
cat > "$OUT/grpo.yaml" <<EOF
name: grpo-letter-e
data: {dataset: prompts, path: $OUT/prompts.jsonl, seq_len: 48, batch_size: 8, val_fraction: 0.125, pack: false}
train:
  init_from: $BASE
  lora: {r: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
  grpo: {rewards: ["my_rewards:letter_e"], num_generations: 8, max_completion_length: 24}
  steps: $GRPO_STEPS
  lr: 1.0e-2
  warmup_steps: 2
  weight_decay: 0.0
  eval_every: 10
  eval_steps: 2
  log_every: 5
  callbacks: []
  out_dir: $OUT/grpo
viz: {backend: [csv], log_every: 1}
EOF
PYTHONPATH="$OUT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m train.run --config "$OUT/grpo.yaml" 2>"$OUT/grpo.log" \
  || { cat "$OUT/grpo.log"; exit 1; }
TUNED=$(ls -d "$OUT"/grpo/checkpoints/step_* | tail -n 1)
echo "    $TUNED"

echo "==> 4. the result"
PYTHONPATH="$OUT${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$OUT" "$BASE" "$TUNED" <<'PY'
import csv, sys
from pathlib import Path

import torch

from model.lm import TransformerLM
from my_rewards import letter_e
from rl.prompts import build_prompt_dataloader
from serve.generate import generate

out, base, tuned = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
with open(out / "grpo" / "logs" / "scalars.csv", newline="") as f:
    rows = list(csv.DictReader(f))
reward = {int(r["step"]): float(r["value"]) for r in rows if r["tag"] == "reward"}
steps = sorted(reward)
early = sum(reward[s] for s in steps[:5]) / 5
late = sum(reward[s] for s in steps[-5:]) / 5
print(f"    training reward, mean of the first and last five steps: {early:.4f} -> {late:.4f}")
val = build_prompt_dataloader(out / "prompts.jsonl", batch_size=16, seq_len=48, tokenizer=str(base),
                              val_fraction=0.125, split="val", shuffle=False)
tok = val.load_tokenizer()
prompts = [p for p in next(iter(val)).ids for _ in range(8)]
score = {}
for name, d in (("base", base), ("tuned", tuned)):
    model = TransformerLM.from_pretrained(d).eval()
    res = generate(model, prompts, 24, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, temperature=1.0,
                   generator=torch.Generator().manual_seed(0), return_dict=True)
    texts = [tok.decode([t for t in c if t != tok.eos_id]) for c in res.tokens]
    score[name] = sum(letter_e(texts)) / len(texts)
print(f"    held-out prompts, {len(prompts)} completions sampled from each model: letter_e {score['base']:.4f} (base) -> "
      f"{score['tuned']:.4f} ({tuned.name}, adapters merged)")
sys.exit(0 if late > early and score["tuned"] > 1.2 * score["base"] else 1)
PY
