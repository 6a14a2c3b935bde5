"""Every example in examples/ and the root example.py, run as a user runs them (a subprocess from the repo root)
with tiny configs, asserting on what they really produce: files, exit codes, parsed HTTP responses, equal losses.

Each runs with OMP_NUM_THREADS=1: the models are tiny, and on a shared 2-core machine one thread per process avoids
OpenMP threads spinning against other processes (which can make a step 100x slower).
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd: list[str], *, timeout: float = 180, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
                "PYTHON": sys.executable, "TORCHRUN": str(BIN / "torchrun"), "PYTHONUNBUFFERED": "1",
                **(env or {})}
    full_env.pop("LMSTACK_SIGNING_KEY", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                    f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


def scalars(path: Path, tag: str) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["tag"] == tag}


@pytest.fixture(scope="module")
def quick_example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("example")
    return out, run([sys.executable, "example.py", "--quick", "--out", str(out)], timeout=120)


def test_example_quick_trains_evaluates_generates_and_saves(quick_example):
    out, proc = quick_example
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] - 0.5, summary["history"]  # the loss visibly falls
    assert 1 < summary["val_ppl"] < 512  # better than a uniform guess over the bpe:512 vocabulary
    assert summary["generated"].startswith(summary["prompt"]) and len(summary["generated"]) > len(summary["prompt"])
    for line in ("held-out: loss", "generated from", "saved:", f"step   40/40 | loss {summary['final_loss']:.3f}"):
        assert line in proc.stdout
    from data.tokenizer import load_tokenizer
    from model.lm import TransformerLM

    model = TransformerLM.from_pretrained(out / "model")  # sha256 of every file checked against the model card
    tok = load_tokenizer(str(out / "model"))
    assert model.config.vocab_size >= tok.vocab_size == 512
    assert scalars(out / "logs" / "scalars.csv", "loss")  # curves for python -m viz plot


def test_example_rejects_bad_steps():
    proc = run([sys.executable, "example.py", "--steps", "0"], check=False, timeout=60)
    assert proc.returncode == 2 and "--steps must be a positive integer" in proc.stderr


def test_train_eval_export_verify(tmp_path):
    out = tmp_path / "release"
    proc = run(["bash", "examples/train_eval_export_verify.sh", str(out)], env={"STEPS": "10"}, timeout=240)
    assert "verify: all checks passed" in proc.stdout and "sha256sum -c: OK" in proc.stdout
    # eval on the held-out split reproduces the trainer's own eval at the same step
    ev = json.loads((out / "eval.json").read_text())
    logged = scalars(out / "run" / "logs" / "scalars.csv", "eval/loss")
    assert ev["step"] == 10 and ev["loss"] == pytest.approx(logged[10], abs=1e-5)
    harness = json.loads(next((out / "lm_eval").rglob("results_*.json")).read_text())["results"]
    # byte tokenizer, 320 ids: a uniform guess scores log2(320) = 8.32 bits per byte; 10 steps already beat it
    assert 0 < harness["lmstack_tiny_text"]["bits_per_byte,none"] < 8.3
    art = out / "artifacts"
    for name in ("model.onnx", "modelcard.json", "SBOM.spdx.json", "RECEIPT.json", "MODEL_CARD.md", "MODEL_CARD.json",
                 "CHECKSUMS.sha256", "CHECKSUMS.sha256.sig"):
        assert (art / name).is_file(), name
    card = json.loads((art / "modelcard.json").read_text())
    assert card["metadata"]["quantization"]["perplexity_rel_change"] < 0.05
    assert card["lineage"][0]["kind"] == "checkpoint"
    pub = str(out / "keys" / "ed25519.pub.pem")
    verify = [sys.executable, "-m", "governance", "verify", str(art / "model.onnx"), "--pubkey", pub]
    assert run(verify, check=False).returncode == 0
    data = bytearray((art / "model.onnx").read_bytes())  # the gate must catch a tampered artifact
    data[len(data) // 2] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(data))
    bad = run(verify, check=False)
    assert bad.returncode != 0 and "model.onnx" in bad.stdout + bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sse_events(text: str, marker: str) -> list[dict]:
    """The JSON events of the SSE stream printed after ``marker``, up to its ``data: [DONE]``."""
    events, started = [], False
    for line in text[text.index(marker):].splitlines():
        if line == "data: [DONE]":
            return events
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            started = True
    raise AssertionError(f"no [DONE] after {marker!r} (started={started})")


def test_serve_and_query_with_curl(quick_example, tmp_path):
    model_dir, _ = quick_example
    port = _free_port()
    proc = run(["bash", "examples/serve_and_query.sh", str(model_dir / "model")],
               env={"PORT": str(port), "OUT": str(tmp_path / "serve")}, timeout=180)
    lines = proc.stdout.splitlines()
    models = json.loads(lines[lines.index("==> GET /v1/models") + 1])
    assert models["data"][0]["id"] == "tiny"
    greedy = json.loads(lines[lines.index("==> POST /v1/completions (greedy)") + 1])
    assert greedy["object"] == "text_completion" and greedy["usage"]["completion_tokens"] == 16
    assert greedy["choices"][0]["finish_reason"] == "length" and greedy["choices"][0]["text"]
    completion = _sse_events(proc.stdout, "==> POST /v1/completions (streaming")
    assert {e["object"] for e in completion} == {"text_completion"}
    assert len(completion) == 8 and completion[-1]["choices"][0]["finish_reason"] == "length"
    chat = _sse_events(proc.stdout, "==> POST /v1/chat/completions")
    assert chat[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chat[-1]["choices"] == [] and chat[-1]["usage"]["completion_tokens"] == 8
    assert "lmstack:num_requests_running" in proc.stdout
    with socket.socket() as s:  # the script stopped its server
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_resume_continues_identically(tmp_path):
    out = tmp_path / "resume"
    proc = run(["bash", "examples/resume_from_checkpoint.sh", str(out)], env={"STEPS": "16"}, timeout=180)
    assert "identical: losses after the resume and final weights" in proc.stdout
    ref = scalars(out / "reference" / "logs" / "scalars.csv", "loss")
    res = scalars(out / "resumed" / "logs" / "scalars.csv", "loss")
    assert sorted(res) == list(range(9, 17))  # the resumed run did steps 9..16 only
    assert all(res[s] == ref[s] for s in res)


def test_lora_finetuning_story(tmp_path):
    """examples/finetune_lora.sh: a base checkpoint, LoRA on other text through train.init_from + train.lora with
    no model section; held-out loss falls, frozen weights stay bitwise, and the checkpoint loads merged."""
    from safetensors.torch import load_file

    from model.lm import TransformerLM

    out = tmp_path / "ft"
    proc = run(["bash", "examples/finetune_lora.sh", str(out)], env={"STEPS": "16", "FT_STEPS": "16"}, timeout=240)
    assert "frozen weights bit-identical to the base: True" in proc.stdout
    assert "the model section came from the base checkpoint: True" in proc.stdout
    ev = scalars(out / "finetune" / "logs" / "scalars.csv", "eval/loss")
    assert sorted(ev) == list(range(1, 17)) and ev[16] < ev[1]
    tuned = out / "finetune" / "checkpoints" / "step_00000016"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tuned / "adapter").iterdir()}
    assert any(k.endswith(".lora_B.weight") for k in load_file(str(tuned / "model.safetensors")))
    assert TransformerLM.from_pretrained(tuned).config.d_model == 64


def test_dpo_alignment_story(tmp_path):
    """examples/align_dpo.sh: DPO with LoRA from a base checkpoint on README-derived pairs teaches a style the base
    lacks; the held-out pairs flip from the rejected to the chosen completion, checked from the checkpoint."""
    out = tmp_path / "dpo"
    proc = run(["bash", "examples/align_dpo.sh", str(out)], env={"STEPS": "16", "DPO_STEPS": "20"}, timeout=240)
    line = next(x for x in proc.stdout.splitlines() if "likelier than the rejected" in x)
    base, tuned = (int(n) for n in re.findall(r"(\d+) of \d+", line))
    total = int(re.findall(r"of (\d+)", line)[0])
    assert total >= 32 and base < total / 2 < tuned
    acc = scalars(out / "dpo" / "logs" / "scalars.csv", "eval/rewards/accuracies")
    assert sorted(acc) == [5, 10, 15, 20] and acc[20] > 0.9
    cfg = (out / "dpo" / "config.yaml").read_text()
    assert "method: dpo" in cfg and "d_model: 64" in cfg  # the model section came from the base
    assert (out / "dpo" / "checkpoints" / "step_00000020" / "adapter" / "adapter_config.json").is_file()


def test_grpo_reward_story(tmp_path):
    """examples/grpo_reward.sh: GRPO with LoRA and a reward function of the user's own module raises the reward, on
    the training prompts and, sampled by hand from the checkpoint, on held-out ones."""
    out = tmp_path / "grpo"
    proc = run(["bash", "examples/grpo_reward.sh", str(out)], timeout=240)
    line = next(x for x in proc.stdout.splitlines() if "held-out prompts" in x)
    base, tuned = (float(v) for v in re.findall(r"letter_e ([0-9.]+) \(base\) -> ([0-9.]+)", line)[0])
    assert tuned > 1.2 * base
    reward = scalars(out / "grpo" / "logs" / "scalars.csv", "reward")
    assert sorted(reward) == list(range(1, 31))
    ev = scalars(out / "grpo" / "logs" / "scalars.csv", "eval/rewards/letter_e/mean")
    assert sorted(ev) == [10, 20, 30]
    assert "grpo:" in (out / "grpo" / "config.yaml").read_text()


def test_hf_import_matches_transformers_greedy(tmp_path):
    proc = run([sys.executable, "examples/hf_import_generate.py", "--out", str(tmp_path), "--new-tokens", "12"])
    assert proc.stdout.count("greedy tokens identical") == 2
    ours = [json.loads(line.split(":", 1)[1]) for line in proc.stdout.splitlines() if "lmstack      :" in line]
    theirs = [json.loads(line.split(":", 1)[1]) for line in proc.stdout.splitlines() if "transformers :" in line]
    assert len(ours) == len(theirs) == 2 and ours == theirs and all(len(t) == 12 for t in ours)
    for kind in ("llama", "gpt2"):  # the hub layout, written by transformers itself
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / kind).iterdir()}


@pytest.mark.dist
def test_fsdp_two_cpu_ranks(tmp_path):
    out = tmp_path / "fsdp"
    proc = run(["bash", "examples/fsdp_torchrun.sh", str(out)], env={"STEPS": "10"}, timeout=240)
    assert "FSDP matches the single-process run" in proc.stdout
    assert "2 rank(s) on cpu, strategy FSDP" in proc.stdout
    ckpt = out / "fsdp" / "checkpoints" / "step_00000010"
    for rank in (0, 1):  # both ranks reached the final checkpoint and wrote their own state
        assert (ckpt / "rng" / f"rank_{rank:05d}.json").is_file()
        assert (ckpt / "data" / f"rank_{rank:05d}.json").is_file()
    assert len(list((ckpt / "optimizer").glob("shard-*.safetensors"))) == 2
    assert sorted(p.name for p in out.glob("torchrun/*/attempt_0/*")) == ["0", "1"]


def test_export_snippet_onnxruntime_greedy_matches_pytorch(tmp_path):
    proc = run([sys.executable, "examples/export_onnx_int8.py", "--outdir", str(tmp_path), "--quantize", "none"])
    assert "artifact:" in proc.stdout and (tmp_path / "model.onnx").is_file()
    line = {ln.split(":")[0].strip(): ln.split(":", 1)[1] for ln in proc.stdout.splitlines() if "greedy:" in ln}
    assert json.loads(line["onnxruntime greedy"]) == json.loads(line["pytorch greedy"])
    assert run([sys.executable, "-m", "governance", "verify", str(tmp_path / "model.onnx")],
               check=False).returncode == 0


def test_instrumented_generation_logs_serving_metrics(quick_example, tmp_path):
    model_dir, _ = quick_example
    logs = tmp_path / "logs"
    run([sys.executable, "examples/instrument_generate.py", str(model_dir / "model"), "--out", str(logs),
         "--max-new-tokens", "16"])
    csv_path = logs / "scalars.csv"
    assert sorted(scalars(csv_path, "serve/ttft_ms")) == [1, 2, 3, 4]
    assert set(scalars(csv_path, "serve/new_tokens").values()) == {16.0}
    records = [json.loads(x) for x in (logs / "metrics.jsonl").read_text().splitlines()[1:]]
    latencies = [json.loads(r["text"]) for r in records if r.get("type") == "text"]
    assert len(latencies) == 4 and all(len(x) == 16 for x in latencies)


def test_experiment_runner_writes_table_and_plot(tmp_path):
    out = tmp_path / "pe"
    run([sys.executable, "experiments/pos_encoding/run.py", "--steps", "4", "--variants", "rope", "alibi",
         "--eval-windows", "4", "--out", str(out), "--corpus-dir", str(tmp_path / "corpus")], timeout=180)
    rows = [ln for ln in (out / "results.md").read_text().splitlines() if ln.startswith("| rope") or
            ln.startswith("| alibi")]
    assert len(rows) == 2
    results = json.loads((out / "results.json").read_text())["results"]
    assert [len(r["losses"]) for r in results] == [4, 4] and all(len(r["loss_by_position"]) == 256 for r in results)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step cfgs/debug.yaml checkpoint whose context (1,024 tokens) holds a retrieval or red-team prompt."""
    out = tmp_path_factory.mktemp("chat_model")
    run([sys.executable, "-m", "train.run", "--config", "cfgs/debug.yaml", "--train.out_dir", str(out),
         "--train.steps", "3", "--train.eval_every", "0", "--train.ckpt_every", "0", "--model.max_seq_len", "1024"])
    return next((out / "checkpoints").glob("step_*"))


def test_rag_index_eval_and_grounded_answer(chat_model, tmp_path):
    proc = run(["bash", "examples/rag_qa.sh", str(chat_model)],
               env={"PORT": str(_free_port()), "OUT": str(tmp_path / "rag")}, timeout=180)
    out = proc.stdout
    assert re.search(r"indexed \d+ documents as \d+ chunks", out)
    top = out.split("==> python -m rag query\n")[1].splitlines()[0]
    assert "packages/registry/README.md#" in top  # the registry's README answers "sign ... and promote"
    report = json.loads(out.split("==> python -m rag eval\n")[1].split("==> ")[0])
    assert report["queries"] == 2 and report["mean"]["mrr"] == 1.0
    answer = json.loads(out.split("==> python -m rag ask\n")[1])
    assert isinstance(answer["answer"], str) and len(answer["sources"]) == 3
    assert all(s["doc_id"].endswith("README.md") for s in answer["sources"])


def test_redteam_a_served_model(chat_model, tmp_path):
    out = tmp_path / "rt"
    proc = run(["bash", "examples/redteam_serve.sh", str(chat_model), "builtin:injection", "builtin:over_refusal"],
               env={"PORT": str(_free_port()), "OUT": str(out), "MAX_TOKENS": "8"}, timeout=180)
    for name in ("injection", "over_refusal"):
        report = json.loads((out / f"{name}.json").read_text())
        assert report["errors"] == 0 and report["overall"]["n"] == 20  # every case reached the server and back
        assert report["target"].endswith("/v1/chat/completions")
        assert all(isinstance(c["output"], str) and c["error"] is None for c in report["cases"])
        assert f"wrote {out / name}.json" in proc.stdout and (out / f"{name}.md").read_text().startswith("# Red-team")


def test_structured_outputs_and_tool_calls(chat_model, tmp_path):
    proc = run(["bash", "examples/structured_tools.sh", str(chat_model)],
               env={"PORT": str(_free_port()), "OUT": str(tmp_path / "st")}, timeout=180)
    out = proc.stdout
    ticket = json.loads(out.split("==> response_format=Ticket\n")[1].splitlines()[0])
    assert ticket["priority"] in ("low", "high", "urgent") and ticket["component"] in ("auth", "billing", "search")
    assert isinstance(ticket["needs_human"], bool)
    assert re.fullmatch("[A-Z]{3}-[0-9]{4}", out.split("==> structured_outputs regex [A-Z]{3}-[0-9]{4}\n")[1]
                        .splitlines()[0])
    named = json.loads(out.split("==> tool_choice named get_weather\n")[1].splitlines()[0])
    assert named["name"] == "get_weather" and named["finish_reason"] == "stop"
    assert named["arguments"]["city"] in ("Paris", "Oslo", "Lima") and named["arguments"]["unit"] in ("C", "F")
    picked = json.loads(out.split("==> tool_choice required\n")[1].splitlines()[0])
    assert picked["name"] in ("get_weather", "get_time") and picked["finish_reason"] == "tool_calls"


def test_registry_to_production_serving(tmp_path):
    run([sys.executable, "-m", "train.run", "--config", "cfgs/debug.yaml", "--train.out_dir", str(tmp_path / "run"),
         "--train.steps", "4", "--train.eval_every", "0", "--train.ckpt_every", "2"])
    out = tmp_path / "reg"
    proc = run(["bash", "examples/registry_serve.sh", str(tmp_path / "run")],
               env={"PORT": str(_free_port()), "OUT": str(out)}, timeout=180)
    assert "registered tiny v1" in proc.stdout and "registered tiny v2" in proc.stdout
    assert "tiny v2 is now in production" in proc.stdout
    body = json.loads(proc.stdout.split("==> POST /v1/completions\n")[1].splitlines()[0])
    assert body["model"] == "tiny" and body["usage"]["completion_tokens"] == 8
    served = out / "registry" / "checkouts"
    (ckpt,) = served.iterdir()  # production (v2) was checked out, verified, and served from there
    assert (ckpt / "model.safetensors").read_bytes() == (
        tmp_path / "run" / "checkpoints" / "step_00000004" / "model.safetensors").read_bytes()
    refused = run([sys.executable, "-m", "serve", "--model", "registry:tiny@1", "--port", "0"], check=False,
                  env={"LMSTACK_REGISTRY": str(out / "registry"), "LMSTACK_REGISTRY_PUBKEY": "trusted"})
    assert refused.returncode == 2 and "no signature envelope" in refused.stderr  # v1 was never signed
