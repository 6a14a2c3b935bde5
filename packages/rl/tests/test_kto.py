"""KTO (``train.preference.method: kto``, ``data.dataset: unpaired``): the examples tokenized as TRL 1.13's
KTOTrainer tokenizes them, and its loss and gradients from ``KTOTrainer._compute_loss`` on the same weights; a run
through ``python -m train.run`` that raises the reward margin; the data checks."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_run import scalars

from data.tokenizer.loading import load_tokenizer
from model.lm import TransformerLM
from rl.objectives import KTO, KTOModule
from rl.unpaired import UnpairedLoader, build_unpaired_dataloader, read_unpaired, tokenize_examples
from specs.config import PreferenceConfig
from specs.errors import ConfigError
from train.run import cli

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

EXAMPLES = [
    {"prompt": "hello world,", "completion": " how are you today?", "label": True},
    {"prompt": "the quick brown", "completion": " dog", "label": False},
    {"prompt": "preference data", "completion": " for dpo", "label": True},
    {"prompt": "a chosen answer", "completion": " and a rejected one", "label": False},
]


def _trl(hf_dirs, tmp_path, **args):
    policy_dir, ref_dir = hf_dirs
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(policy_dir)
    cfg = trl.KTOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(EXAMPLES), report_to=[],
                        use_cpu=True, bf16=False, **args)
    return trl.KTOTrainer(model=transformers.LlamaForCausalLM.from_pretrained(policy_dir),
                          ref_model=transformers.LlamaForCausalLM.from_pretrained(ref_dir), args=cfg,
                          train_dataset=datasets.Dataset.from_list(EXAMPLES), processing_class=tok)


def _batch(tok, examples):
    return next(iter(UnpairedLoader(examples, tok, batch_size=len(examples), seq_len=64, seed=0, shuffle=False,
                                    drop_last=True, epochs=1, split="train", source="test")))


def test_examples_tokenize_as_trls(hf_dirs, tmp_path):
    trainer = _trl(hf_dirs, tmp_path)
    tok = load_tokenizer(str(hf_dirs[0]))
    ours = [ex for r in EXAMPLES for ex in tokenize_examples(tok, r)]
    ds = trainer.train_dataset
    assert [e[0] for e in ours] == ds["prompt_ids"] and [e[1] for e in ours] == ds["completion_ids"]
    assert [e[2] for e in ours] == ds["label"]
    # the KL rows: each prompt with the previous example's completion, as TRL rotates them within a batch
    b = _batch(tok, ours)
    kl_rows = [b.input_ids[2 * i + 1][b.attention_mask[2 * i + 1].bool()].tolist() for i in range(4)]
    assert kl_rows == [(p + c)[:-1] for p, c in zip(ds["prompt_ids"], ds["KL_completion_ids"])]  # inputs: no last
    assert b.advantages[0::2].sum(-1).sign().tolist() == [1.0, -1.0, 1.0, -1.0] and (b.advantages[1::2] == 0).all()


def _trl_inputs(examples):
    """TRL's collated batch for ``examples`` (prompt ids, completion ids, label), built here from the token lists:
    prompt + completion right-padded, the completion mask over the completion's tokens, and the KL sequences with
    the completions rotated by one."""
    def part(pairs):
        T = max(len(p) + len(c) for p, c in pairs)
        ids, mask, comp = (torch.zeros(len(pairs), T, dtype=torch.long) for _ in range(3))
        for r, (p, c) in enumerate(pairs):
            ids[r, :len(p) + len(c)] = torch.tensor(p + c)
            mask[r, :len(p) + len(c)] = 1
            comp[r, len(p):len(p) + len(c)] = 1
        return ids, mask, comp

    ids, mask, comp = part([(p, c) for p, c, _ in examples])
    kl_ids, kl_mask, kl_comp = part([(p, examples[i - 1][1]) for i, (p, _, _) in enumerate(examples)])
    return {"input_ids": ids, "attention_mask": mask, "completion_mask": comp,
            "label": torch.tensor([e[2] for e in examples]), "KL_input_ids": kl_ids, "KL_attention_mask": kl_mask,
            "KL_completion_mask": kl_comp}


@pytest.mark.parametrize("loss_type,weights", [("kto", (1.0, 1.0)), ("kto", (1.3, 0.7)),
                                               ("apo_zero_unpaired", (1.0, 1.0))])
def test_kto_loss_and_gradients_match_trl(hf_dirs, tmp_path, loss_type, weights):
    trainer = _trl(hf_dirs, tmp_path, loss_type=loss_type, beta=0.3, desirable_weight=weights[0],
                   undesirable_weight=weights[1])
    tok = load_tokenizer(str(hf_dirs[0]))
    examples = [ex for r in EXAMPLES for ex in tokenize_examples(tok, r)]
    b = _batch(tok, examples)
    trainer.model.train()
    want = trainer._compute_loss(trainer.model, _trl_inputs(examples), False)
    want.backward()

    cfg = PreferenceConfig(method="kto", beta=0.3, loss_type=loss_type if loss_type != "kto" else "sigmoid",
                           desirable_weight=weights[0], undesirable_weight=weights[1])
    policy = TransformerLM.from_pretrained(hf_dirs[0])
    reference = TransformerLM.from_pretrained(hf_dirs[1]).eval().requires_grad_(False)
    loss, stats = KTOModule(policy, reference, cfg)(b.input_ids, b.labels, b.advantages,
                                                    attn_mask=b.attention_mask)
    loss.backward()
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
    assert stats["kl"].item() == pytest.approx(trainer._metrics["train"]["kl"][-1], abs=1e-5)
    if loss_type == "kto":
        assert stats["rewards/chosen"].item() == pytest.approx(trainer._metrics["train"]["rewards/chosen"][-1],
                                                               rel=1e-4, abs=1e-6)
    for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        g = trainer.model.get_parameter(name).grad
        assert g.abs().max() > 0
        torch.testing.assert_close(policy.get_parameter(name).grad, g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


def test_the_kl_term_moves_the_loss(hf_dirs):
    """A policy away from its reference has a KL estimate above 0, and with it the loss of KTO differs from APO's
    zero-anchored one on the same batch (both computed here from the log-ratios by the paper's formula)."""
    tok = load_tokenizer(str(hf_dirs[0]))
    examples = [ex for r in EXAMPLES for ex in tokenize_examples(tok, r)]
    b = _batch(tok, examples)
    policy = TransformerLM.from_pretrained(hf_dirs[0])
    reference = TransformerLM.from_pretrained(hf_dirs[1]).eval()
    cfg = PreferenceConfig(method="kto", beta=0.5)
    loss, stats = KTOModule(policy, reference, cfg)(b.input_ids, b.labels, b.advantages, attn_mask=b.attention_mask)
    from rl.losses import sequence_logps

    with torch.no_grad():
        lp = [sequence_logps(m(b.input_ids, attn_mask=b.attention_mask), b.labels)[0] for m in (policy, reference)]
    diff = lp[0] - lp[1]
    z = diff[1::2].mean().clamp(min=0)
    r, good = diff[0::2], torch.tensor([e[2] for e in examples])
    want = torch.where(good, 1 - torch.sigmoid(0.5 * (r - z)), 1 - torch.sigmoid(0.5 * (z - r))).mean()
    assert float(z) > 0 and stats["kl"].item() == pytest.approx(float(z), rel=1e-5)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-6)


def _run_config(tmp_path, init_from, data):
    doc = {"name": "kto",
           "data": {"dataset": "unpaired", "path": str(data), "seq_len": 48, "batch_size": 8, "pack": False},
           "train": {"steps": 12, "lr": 5e-3, "warmup_steps": 1, "log_every": 1, "eval_every": 0,
                     "init_from": str(init_from), "callbacks": [], "schedule": "constant", "weight_decay": 0.0,
                     "preference": {"method": "kto", "beta": 0.5}},
           "viz": {"backend": ["csv"], "log_every": 1}}
    path = tmp_path / "kto.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    path = tmp_path_factory.mktemp("unpaired") / "u.jsonl"
    rows = []
    for i in range(24):
        rows.append({"prompt": f"Is {i} even? ", "completion": "yes" if i % 2 == 0 else "no", "label": True})
        rows.append({"prompt": f"Is {i} even? ", "completion": "no" if i % 2 == 0 else "yes", "label": False})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_kto_run_separates_desirable_from_undesirable(hf_dirs, unpaired, tmp_path):
    out = tmp_path / "out"
    assert cli(["--config", _run_config(tmp_path, hf_dirs[0], unpaired), "--train.out_dir", str(out)]) == 0
    s = scalars(out)
    assert set(s) >= {"loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"}
    first = sum(s["rewards/margins"][i] for i in (1, 2)) / 2
    last = sum(s["rewards/margins"][i] for i in (11, 12)) / 2
    assert last > first + 0.5, (first, last)
    assert s["loss"][12] < s["loss"][1]
    # LoRA: the reference is the policy with its adapters off
    out2 = tmp_path / "lora"
    assert cli(["--config", _run_config(tmp_path, hf_dirs[0], unpaired), "--train.out_dir", str(out2),
                "--train.lora.r", "4", "--train.steps", "3"]) == 0
    assert scalars(out2)["kl"][1] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero: policy = reference


@pytest.mark.parametrize("args,field", [
    (["--data.dataset", "preference"], "data.dataset"),
    (["--train.preference.loss_type", "ipo"], "train.preference.loss_type"),
    (["--train.preference.sft_weight", "1.0"], "train.preference.sft_weight"),
    (["--train.preference.method", "dpo"], "data.dataset"),
    (["--data.batch_size", "1"], "data.batch_size"),
])
def test_bad_kto_configs_stop_before_any_work(hf_dirs, unpaired, tmp_path, capsys, args, field):
    assert cli(["--config", _run_config(tmp_path, hf_dirs[0], unpaired), *args, "--train.out_dir",
                str(tmp_path / "o")]) == 2
    assert field in capsys.readouterr().err


def test_unpaired_data(tmp_path):
    from data.tokenizer import ByteTokenizer

    f = tmp_path / "u.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "a", "completion": "b", "label": True},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}],
         "label": False},
        {"prompt_ids": [1, 2], "completion_ids": [3], "label": False},
        {"prompt": "p", "chosen": "c", "rejected": "r"}]))
    records = read_unpaired(f)
    assert len(records) == 4 and records[3][1]["chosen"] == "c"
    tok = ByteTokenizer()
    pair = tokenize_examples(tok, records[3][1])
    assert [e[2] for e in pair] == [True, False] and pair[0][0] == pair[1][0]
    loader = build_unpaired_dataloader(_text_only(tmp_path), batch_size=2, seq_len=16, tokenizer=tok, shuffle=False)
    b = next(iter(loader))
    assert b.input_ids.shape[0] == 4 and loader.state_dict()["kind"] == "unpaired"
    for bad, msg in ([{"prompt": "a", "completion": "b", "label": 1}, "label must be true or false"],
                     [{"prompt": "a", "completion": "b"}, "expected"],
                     [{"prompt": "a", "completion": [{"role": "assistant", "content": "x"}], "label": True},
                      "both be text or both message lists"],
                     [{"prompt_ids": [1], "completion_ids": [], "label": True}, "completion_ids is empty"]):
        f.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ConfigError, match=msg):
            read_unpaired(f)
    assert KTO(PreferenceConfig(method="kto")).units(torch.zeros(6, 3)).item() == 3


def _text_only(tmp_path):
    f = tmp_path / "text.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0}) + "\n"
                         for i in range(4)))
    return f
