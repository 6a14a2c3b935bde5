"""``train.lora``: a run that trains LoRA adapters alone (through lmstack-compress's ``lmstack.adapters`` plugin),
from ``python -m train.run``: frozen weights stay bitwise, checkpoints load merged through ``from_pretrained``
and hold a PEFT adapter directory that PEFT loads onto the transformers model, and resuming is exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_init_from import QUIET, _finetune_yaml
from test_run import DEBUG, losses

from model.lm import TransformerLM
from train.run import cli

pytest.importorskip("compress")
LORA = ["--train.lora.r", "4", "--train.lora.alpha", "8", "--train.lora.targets", "q_proj,v_proj,down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A briefly trained debug model's last checkpoint."""
    out = tmp_path_factory.mktemp("base")
    assert cli(["--config", DEBUG, *QUIET, "--train.steps", "6", "--train.out_dir", str(out)]) == 0
    return out / "checkpoints" / "step_00000006"


def test_a_lora_run_trains_the_adapters_and_its_checkpoints_load_merged(base, tmp_path):
    from compress import load_adapter, merge_lora

    cfg = _finetune_yaml(tmp_path / "ft.yaml", base, train={"lr": 1e-2, "steps": 4, "ckpt_every": 2,
                                                            "weight_decay": 0.0})
    out = tmp_path / "ft"
    assert cli(["--config", cfg, *LORA, "--train.out_dir", str(out)]) == 0
    last = out / "checkpoints" / "step_00000004"
    adapter = json.loads((last / "adapter" / "adapter_config.json").read_text())
    assert (adapter["peft_type"], adapter["r"], adapter["lora_alpha"]) == ("LORA", 4, 8.0)
    assert adapter["target_modules"] == ["down_proj", "q_proj", "v_proj"] and adapter["base_model_name_or_path"]
    saved, start = load_file(str(last / "model.safetensors")), load_file(str(base / "model.safetensors"))
    frozen = [k for k in saved if ".lora_" not in k]
    assert len(frozen) == len(start)  # every base tensor, adapted ones as <m>.base_layer.weight
    for k in frozen:
        assert torch.equal(saved[k], start[k.replace(".base_layer.", ".")]), k  # frozen: bitwise
    assert any(saved[k].abs().max() > 0 for k in saved if k.endswith(".lora_B.weight"))  # the adapters trained
    merged = TransformerLM.from_pretrained(last).eval()  # what serve, eval and export load
    by_hand = TransformerLM.from_pretrained(base).eval()
    assert load_adapter(by_hand, last / "adapter") == 6
    ids = torch.randint(0, 259, (2, 19))
    with torch.no_grad():
        want = by_hand(ids)
        assert (want - TransformerLM.from_pretrained(base)(ids)).abs().max() > 1e-3
        torch.testing.assert_close(merged(ids), want, rtol=1e-5, atol=1e-5)
        merge_lora(by_hand)
        torch.testing.assert_close(merged(ids), by_hand(ids), rtol=0, atol=0)  # the same fp32 sums


def test_a_lora_run_resumes_exactly(base, tmp_path):
    cfg = _finetune_yaml(tmp_path / "ft.yaml", base, train={"lr": 1e-2, "steps": 4, "schedule": "constant",
                                                            "deterministic": True})
    full, split = tmp_path / "full", tmp_path / "split"
    assert cli(["--config", cfg, *LORA, "--train.out_dir", str(full)]) == 0
    assert cli(["--config", cfg, *LORA, "--train.steps", "2", "--train.out_dir", str(split)]) == 0
    assert cli(["--config", cfg, *LORA, "--train.out_dir", str(split), "--resume", "auto"]) == 0
    a, b = losses(full), losses(split)
    assert sorted(b) == [1, 2, 3, 4] and [a[s] for s in range(1, 5)] == [b[s] for s in range(1, 5)]


def test_a_qlora_run_keeps_a_4bit_base_loads_merged_and_resumes_exactly(base, tmp_path):
    """``train.lora.quantize_base: nf4``: the checkpoint holds the frozen base as 4-bit groups (a fraction of the
    bytes), unchanged by training; ``from_pretrained`` gives the model the run computed (dequantized base plus the
    adapters, as ``compress.merged_state_dict``); a split run resumes to the same losses."""
    from compress import merged_state_dict
    from compress.lora import LORA as PLUGIN
    from specs.config import LoraConfig

    cfg = _finetune_yaml(tmp_path / "ft.yaml", base, train={"lr": 1e-2, "steps": 4, "schedule": "constant",
                                                            "deterministic": True, "weight_decay": 0.0})
    qlora = [*LORA, "--train.lora.quantize_base", "nf4"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert cli(["--config", cfg, *qlora, "--train.out_dir", str(full)]) == 0
    last = full / "checkpoints" / "step_00000004"
    saved, start = load_file(str(last / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert saved["model.layers.0.self_attn.q_proj.base_layer.nf4_data"].dtype == torch.uint8
    assert "model.layers.0.self_attn.o_proj.nf4_data" in saved and "lm_head.weight" in saved  # the head stays
    size = sum(t.numel() * t.element_size() for t in saved.values())
    assert size < 0.45 * sum(t.numel() * t.element_size() for t in start.values())  # embeddings stay fp32
    # the same model by hand: the base checkpoint quantized as the run quantized it, its adapters from the run
    by_hand = TransformerLM.from_pretrained(base)
    PLUGIN.apply(by_hand, LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), quantize_base="nf4"))
    frozen = {k: v for k, v in by_hand.state_dict().items() if ".lora_" not in k}
    assert sorted(frozen) == sorted(k for k in saved if ".lora_" not in k)
    for k, v in frozen.items():
        assert torch.equal(saved[k], v), k  # frozen: bitwise, the 4-bit bytes included
    by_hand.load_state_dict(saved)
    merged = TransformerLM.from_pretrained(last).eval()
    plain = TransformerLM.from_pretrained(base).eval()
    plain.load_state_dict(merged_state_dict(by_hand))
    ids = torch.randint(0, 259, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), plain(ids), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(ids), by_hand.eval()(ids), rtol=1e-5, atol=1e-5)
    assert cli(["--config", cfg, *qlora, "--train.steps", "2", "--train.out_dir", str(split)]) == 0
    assert cli(["--config", cfg, *qlora, "--train.out_dir", str(split), "--resume", "auto"]) == 0
    a, b = losses(full), losses(split)
    assert [a[s] for s in range(1, 5)] == [b[s] for s in range(1, 5)]


def test_peft_loads_a_lora_runs_adapter_onto_the_transformers_model(tmp_path):
    """From a transformers LlamaForCausalLM directory: the run's adapter/ loads into peft.PeftModel on that model
    and gives the logits of the run's checkpoint through from_pretrained."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      initializer_range=0.2, tie_word_embeddings=False)
    src = tmp_path / "hf"
    transformers.LlamaForCausalLM(hf_cfg).save_pretrained(src)
    cfg = _finetune_yaml(tmp_path / "ft.yaml", src, data={"tokenizer": "byte"}, train={"lr": 1e-2, "steps": 3})
    assert cli(["--config", cfg, *LORA, "--train.out_dir", str(tmp_path / "ft")]) == 0
    last = tmp_path / "ft" / "checkpoints" / "step_00000003"
    theirs = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(src), last / "adapter")
    ids = torch.randint(0, 320, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(TransformerLM.from_pretrained(last).eval()(ids), theirs.eval()(ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_bad_lora_settings_are_config_errors_before_any_work(base, tmp_path, capsys):
    """A bad rank at load time, targets matching no Linear in preflight (tried on a meta-device model): exit 2,
    named, before the output directory or the data exist."""
    out = tmp_path / "never"
    run = ["--config", DEBUG, *QUIET, "--train.out_dir", str(out), "--train.init_from", str(base)]
    assert cli([*run, "--train.lora.r", "0"]) == 2
    assert "train.lora.r" in capsys.readouterr().err
    assert cli([*run, "--train.lora.targets", "query"]) == 2
    err = capsys.readouterr().err
    assert "lora.targets" in err and "matches no nn.Linear" in err and "q_proj" in err and "Traceback" not in err
    assert cli([*run, "--train.lora.quantize_base", "nf3"]) == 2
    assert "train.lora.quantize_base" in capsys.readouterr().err
    assert not out.exists()


def test_supervised_fine_tuning_on_chat_data(base, tmp_path):
    """data.dataset chat (data's SFT loader: assistant turns are the targets) with init_from and LoRA: the loss on
    the answers falls and the tokenizer is the base checkpoint's."""
    convs = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                           {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]} for i in range(24)]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in convs) + "\n")
    cfg = _finetune_yaml(tmp_path / "sft.yaml", base, data={"dataset": "chat", "path": str(tmp_path / "chat.jsonl"),
                                                            "pack": False, "seq_len": 96, "batch_size": 8},
                         train={"lr": 1e-2, "steps": 12, "schedule": "constant", "weight_decay": 0.0})
    out = tmp_path / "sft"
    assert cli(["--config", cfg, *LORA, "--train.out_dir", str(out)]) == 0
    lossy = losses(out)
    assert sorted(lossy) == list(range(1, 13)) and lossy[12] < lossy[1] - 0.1, lossy
    md = json.loads((out / "checkpoints" / "step_00000012" / "metadata.json").read_text())
    assert md["tokenizer"]["spec"] == str(base)
    # packed (data.pack with doc_mask): all 24 conversations in one batch either way, so the first step's loss (the
    # base model's: LoRA's B starts at zero) on the same targets is the same, from fewer rows
    from data.sft import build_chat_dataloader

    short = tmp_path / "short.jsonl"  # ~64 tokens each under ChatML: two to a 128-token row
    short.write_text("".join(json.dumps({"prompt": f"{i % 10}?", "completion": f"{i % 7}"}) + "\n" for i in range(24)))
    rows = len(build_chat_dataloader(short, 1, 128, tokenizer=str(base), pack=True, doc_mask=True))
    assert rows == 12
    firsts = []
    for name, extra in (("one", ["--data.batch_size", "24"]),
                        ("packed", ["--data.batch_size", str(rows), "--data.pack", "true", "--data.doc_mask", "true"])):
        assert cli(["--config", cfg, *LORA, "--train.out_dir", str(tmp_path / name), "--train.steps", "1",
                    "--data.seq_len", "128", "--data.path", str(short), *extra]) == 0
        firsts.append(losses(tmp_path / name)[1])
    assert firsts[1] == pytest.approx(firsts[0], rel=1e-5)
