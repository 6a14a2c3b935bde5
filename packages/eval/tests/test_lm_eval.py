"""The lm-evaluation-harness adapter: bundled tasks run offline, scores do not depend on batch size, and lm_eval
through the adapter scores exactly as lm_eval's ``local-completions`` against lmstack's OpenAI server."""

from __future__ import annotations

import lm_eval
import pytest
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

import eval.lm_eval_adapter as adapter
from eval.tasks import TASK_NAMES, TASKS_DIR
from specs.errors import ConfigError

# The adapter reads at most MAX_LEN tokens per forward. local-completions keeps max_length - 1 tokens per request
# and rolls windows of max_length - 2, so MAX_LEN + 2 gives it the same windows.
MAX_LEN = 48
EOS = 1  # the BPE tokenizer's <|eos|>, the prefix token on both sides (lm-eval's remote tokenizer skips BOS id 0)


@pytest.fixture(scope="module")
def tasks():
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # skip indexing ~10k built-in YAMLs


def _scores(res):
    return {task: {k: v for k, v in metrics.items() if "," in k and "stderr" not in k}
            for task, metrics in res["results"].items()}


def _leaves(x):
    return [y for item in x for y in _leaves(item)] if isinstance(x, (list, tuple)) else [x]


def _run(model, tasks, **kw):
    return lm_eval.simple_evaluate(model=model, tasks=list(TASK_NAMES), task_manager=tasks, log_samples=True,
                                   random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
                                   **kw)


def test_registered_and_scores_independent_of_batch_size(tiny_lm, tokenizer, tasks):
    assert get_model("lmstack") is adapter.LmstackLM
    assert get_model("local-completions").__name__ == "LocalCompletionsAPI"  # lm_eval's own models still there
    results = []
    for bs in (1, 3, 8):
        lm = adapter.LmstackLM(pretrained=tiny_lm, tokenizer=tokenizer, batch_size=bs, max_length=MAX_LEN)
        results.append(_run(lm, tasks))
    base = _scores(results[0])
    assert set(base) == set(TASK_NAMES)
    assert 0 <= base["lmstack_tiny_mc"]["acc,none"] <= 1 and base["lmstack_tiny_text"]["bits_per_byte,none"] > 0
    for res in results[1:]:
        for task, metrics in _scores(res).items():
            for k, v in metrics.items():
                assert v == pytest.approx(base[task][k], rel=1e-5), (task, k)
        for task in ("lmstack_tiny_mc", "lmstack_tiny_text"):
            a = [s["resps"] for s in results[0]["samples"][task]]
            b = [s["resps"] for s in res["samples"][task]]
            assert [pytest.approx(x, abs=1e-4) if isinstance(x, float) else x for x in _leaves(a)] == _leaves(b)


def test_checkpoint_by_name_and_bad_arguments(checkpoint, tasks):
    lm = get_model("lmstack").create_from_arg_string(f"pretrained={checkpoint},batch_size=4,max_length={MAX_LEN}")
    res = lm_eval.simple_evaluate(model=lm, tasks=["lmstack_tiny_mc"], task_manager=tasks, log_samples=False)
    assert "acc,none" in res["results"]["lmstack_tiny_mc"]
    with pytest.raises(ConfigError, match="unknown lmstack model argument"):
        adapter.LmstackLM(pretrained=str(checkpoint), batchsize=3)


def test_a_peft_adapter_is_scored_merged(checkpoint, tiny_lm, tokenizer, tasks, tmp_path):
    """model_args peft=DIR (lm-eval's hf spelling): the adapter merged into the checkpoint's weights, scoring as
    the adapted model object does; a directory that is no adapter is a ConfigError."""
    import copy

    import torch

    compress = pytest.importorskip("compress")
    tuned = copy.deepcopy(tiny_lm)
    compress.apply_lora(tuned, r=4, targets=["q_proj", "v_proj"])
    with torch.no_grad():
        for layer in compress.lora.lora_layers(tuned).values():
            layer.lora_B.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    compress.save_adapter(tuned, tmp_path / "ad")
    by_args = get_model("lmstack").create_from_arg_string(
        f"pretrained={checkpoint},peft={tmp_path / 'ad'},batch_size=4,max_length={MAX_LEN}")
    assert not compress.lora.lora_layers(by_args.model)  # merged
    scores = [_scores(_run(lm, tasks)) for lm in (
        by_args, adapter.LmstackLM(pretrained=tuned.eval(), tokenizer=tokenizer, batch_size=4, max_length=MAX_LEN),
        adapter.LmstackLM(pretrained=tiny_lm, tokenizer=tokenizer, batch_size=4, max_length=MAX_LEN))]
    bpb = [s["lmstack_tiny_text"]["bits_per_byte,none"] for s in scores]
    assert bpb[0] == pytest.approx(bpb[1], rel=1e-4) and bpb[0] != pytest.approx(bpb[2], rel=1e-3), bpb
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        adapter.LmstackLM(pretrained=str(checkpoint), peft=str(tmp_path))


def test_generate_until_is_serves_greedy_generate(tiny_lm, tokenizer):
    from lm_eval.api.instance import Instance

    from serve.generate import generate

    lm = adapter.LmstackLM(pretrained=tiny_lm, tokenizer=tokenizer)
    ctx = "Q: What color is grass?\nA:"
    req = Instance("generate_until", {}, (ctx, {"until": ["e"], "max_gen_toks": 12}), 0)
    (text,) = lm.generate_until([req])
    ref = generate(tiny_lm, [tokenizer.encode(ctx)], 12, tokenizer=tokenizer, eos_token_id=tokenizer.eos_id,
                   stop=["e", "<|eos|>"], return_dict=True)
    assert text == ref.texts[0] and "e" not in text


def test_adapter_scores_equal_local_completions_against_the_server(checkpoint, server, tasks):
    """Done-when: the same lm_eval run through the adapter and through the server's completions endpoint."""
    direct = _run(adapter.LmstackLM(pretrained=str(checkpoint), batch_size=4, max_length=MAX_LEN,
                                    prefix_token_id=EOS), tasks)
    api = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"model": "tiny", "base_url": f"{server}/v1/completions", "tokenizer_backend": "remote",
                    "max_length": MAX_LEN + 2, "custom_prefix_token_id": EOS, "num_concurrent": 2,
                    "max_retries": 1, "batch_size": 2},
        tasks=list(TASK_NAMES), task_manager=tasks, log_samples=True, random_seed=0, numpy_random_seed=0,
        torch_random_seed=0, fewshot_random_seed=0)
    want, got = _scores(direct), _scores(api)
    assert set(got) == set(TASK_NAMES)
    for task in TASK_NAMES:
        for k, v in want[task].items():
            assert got[task][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (task, k, got[task][k], v)
    gens_direct = [s["resps"] for s in direct["samples"]["lmstack_tiny_qa"]]
    gens_api = [s["resps"] for s in api["samples"]["lmstack_tiny_qa"]]
    assert gens_direct == gens_api and any(r[0][0] for r in gens_direct)
