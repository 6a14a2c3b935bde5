"""``python -m serve --adapter DIR``: a LoRA adapter (PEFT's files) merged into the served model at load, through
lmstack-compress's ``lmstack.adapters`` plugin, and a bad adapter directory refused before the model loads."""

from __future__ import annotations

import pytest
import torch

from model.lm import TransformerLM
from serve.generate import generate
from serve.loading import merge_adapter
from specs.errors import ConfigError
from specs.presets import preset

compress = pytest.importorskip("compress")


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny checkpoint with a byte tokenizer, and an adapter (random lora_B) trained on it elsewhere."""
    from data.tokenizer import load_tokenizer

    d = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    base = TransformerLM(preset("llama-debug", vocab_size=300, init_std=0.2)).eval()
    base.save_pretrained(d / "base")
    load_tokenizer("byte").save(d / "base")
    tuned = TransformerLM.from_pretrained(d / "base").eval()
    compress.apply_lora(tuned, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():
        for layer in compress.lora.lora_layers(tuned).values():
            layer.lora_B.weight.normal_(0, 0.3)
    compress.save_adapter(tuned, d / "my-adapter")
    return d / "base", d / "my-adapter", tuned


def test_merge_adapter_gives_the_adapted_models_outputs(base_and_adapter):
    base_dir, adapter_dir, tuned = base_and_adapter
    model = TransformerLM.from_pretrained(base_dir).eval()
    ids = torch.randint(0, 300, (2, 9))
    before = model(ids)
    assert merge_adapter(model, adapter_dir) == 6
    assert not compress.lora.lora_layers(model)  # merged: plain Linears again
    assert (model(ids) - before).abs().max() > 1e-3
    torch.testing.assert_close(model(ids), tuned(ids), rtol=1e-5, atol=1e-5)


def test_the_cli_serves_the_merged_model(base_and_adapter, monkeypatch):
    """The server's greedy completion is generate() on the adapted model; the served name is the adapter's."""
    import uvicorn
    from fastapi.testclient import TestClient

    from data.tokenizer import load_tokenizer
    from serve.__main__ import main

    base_dir, adapter_dir, tuned = base_and_adapter
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    assert main(["--model", str(base_dir), "--adapter", str(adapter_dir), "--port", "0", "--device", "cpu"]) == 0
    with TestClient(apps[0]) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["my-adapter"]
        body = client.post("/v1/completions", json={"model": "my-adapter", "prompt": [104, 105, 32, 116],
                                                   "max_tokens": 8, "temperature": 0, "ignore_eos": True}).json()
    want = generate(tuned, [[104, 105, 32, 116]], max_new_tokens=8, ignore_eos=True)[0, 4:].tolist()
    base_only = generate(TransformerLM.from_pretrained(base_dir).eval(), [[104, 105, 32, 116]], max_new_tokens=8,
                         ignore_eos=True)[0, 4:].tolist()
    assert want != base_only  # the adapter changes the greedy tokens, so the check below can fail
    text = load_tokenizer(str(base_dir)).decode(want)
    assert body["usage"]["completion_tokens"] == 8 and body["choices"][0]["text"] == text, (body, want)


def test_a_bad_adapter_directory_is_refused_before_the_model_loads(base_and_adapter, tmp_path, capsys):
    from serve.__main__ import main

    base_dir, _, _ = base_and_adapter
    assert main(["--model", str(tmp_path / "no-model"), "--adapter", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "adapter" in err and "no adapter_config.json" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        merge_adapter(TransformerLM.from_pretrained(base_dir), tmp_path)
