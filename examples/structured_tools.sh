#!/usr/bin/env bash
# Structured outputs and tool calls from a served model, through the official openai client: a JSON object that a
# pydantic model parses, text that matches a regex, a forced call to one function, and a call the model picks from
# two. Every output keeps to its schema or pattern, whatever the weights: decoding is constrained (serve 0.18).
#
#   examples/structured_tools.sh MODEL_DIR            (run from the repo root; needs `pip install openai`)
#
# MODEL_DIR: any lmstack or Hugging Face Llama/GPT-2 directory with a tokenizer. Environment: PYTHON (default
# python), PORT (default 8126), OUT (default runs/examples/structured).
set -euo pipefail
PY=${PYTHON:-python}
PORT=${PORT:-8126}
OUT=${OUT:-runs/examples/structured}
MODEL=${1:?usage: examples/structured_tools.sh MODEL_DIR}
mkdir -p "$OUT"

echo "==> python -m serve --model $MODEL --port $PORT --tool-call-parser hermes"
# shellcheck source=examples/serve_bg.sh
source "$(dirname "$0")/serve_bg.sh"
start_server "$MODEL" "$PORT" "$OUT/server.log" --max-batch-size 4 --tool-call-parser hermes

"$PY" - "$PORT" <<'PY'
import json
import sys
from typing import Literal

import openai
from pydantic import BaseModel

client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="none")
ask = [{"role": "user", "content": "The login page returns 500 since the deploy. Triage it."}]


class Ticket(BaseModel):  # response_format=Ticket: the SDK sends its strict JSON Schema and parses the reply
    priority: Literal["low", "high", "urgent"]
    component: Literal["auth", "billing", "search"]
    needs_human: bool


r = client.chat.completions.parse(model="tiny", messages=ask, response_format=Ticket, max_tokens=80)
print("==> response_format=Ticket")
print(r.choices[0].message.parsed.model_dump_json())

r = client.completions.create(model="tiny", prompt="Ticket id:", max_tokens=16,
                              extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{4}"}})
print("==> structured_outputs regex [A-Z]{3}-[0-9]{4}")
print(r.choices[0].text)

weather = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                          "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}, "unit": {"enum": ["C", "F"]}}}}}
clock = {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
         "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                        "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}}}}}
q = [{"role": "user", "content": "Is it raining in Oslo?"}]
for label, choice in (("named get_weather", {"type": "function", "function": {"name": "get_weather"}}),
                      ("required", "required")):
    r = client.chat.completions.create(model="tiny", messages=q, tools=[weather, clock], tool_choice=choice,
                                       parallel_tool_calls=False, max_tokens=80)
    print(f"==> tool_choice {label}")
    for call in r.choices[0].message.tool_calls:
        print(json.dumps({"name": call.function.name, "arguments": json.loads(call.function.arguments),
                          "finish_reason": r.choices[0].finish_reason}))
PY
