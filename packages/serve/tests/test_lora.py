"""Per-request LoRA adapters (``serve.lora``, ``--enable-lora``): every request's tokens equal generate() on the model
with its own adapter applied (lmstack-compress's LoRALinear), however requests mix, wait for a slot, or share a
prompt; the server routes the ``model`` field to adapters, lists them, and loads and unloads them at run time."""

from __future__ import annotations

import copy

import pytest
import torch

from model.lm import TransformerLM
from serve.engine import Engine
from serve.generate import generate
from serve.sampling import SamplingParams
from specs.config import ServeConfig
from specs.errors import ConfigError
from specs.presets import preset

compress = pytest.importorskip("compress")

# name -> (r, alpha, targets)
ADAPTERS = {"sql": (4, 8, ["q_proj", "v_proj", "down_proj"]),
            "poet": (2, 4, ["k_proj", "o_proj", "gate_proj", "up_proj"]),
            "wide": (8, 8, ["q_proj", "v_proj", "up_proj"])}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny checkpoint with a byte tokenizer, three adapters trained on it elsewhere, and each adapted model."""
    from data.tokenizer import load_tokenizer

    d = tmp_path_factory.mktemp("loras")
    torch.manual_seed(0)
    TransformerLM(preset("llama-debug", vocab_size=300, init_std=0.2)).save_pretrained(d / "base")
    load_tokenizer("byte").save(d / "base")
    tuned = {}
    for k, (name, (r, alpha, targets)) in enumerate(ADAPTERS.items()):
        m = TransformerLM.from_pretrained(d / "base").eval()
        compress.apply_lora(m, r=r, alpha=alpha, targets=targets)
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for layer in compress.lora.lora_layers(m).values():
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.4)
        compress.save_adapter(m, d / name)
        tuned[name] = m
    tuned[None] = TransformerLM.from_pretrained(d / "base").eval()
    return d, tuned


def _engine(d, **kw):
    kw.setdefault("max_loras", 2)
    engine = Engine(TransformerLM.from_pretrained(d / "base").eval(), None,
                    ServeConfig(max_batch_size=4, block_size=4, num_blocks=96), **kw)
    for name in ADAPTERS:
        engine.add_adapter(name, str(d / name))
    return engine


def _run(engine, jobs):
    """jobs: (prompt, max_new, adapter) -> each request's outputs."""
    outs: dict[str, list] = {}
    for i, (prompt, n, adapter) in enumerate(jobs):
        engine.submit(prompt, SamplingParams(max_new_tokens=n, ignore_eos=True), request_id=f"r{i}", adapter=adapter,
                      on_output=lambda out, i=i: outs.setdefault(f"r{i}", []).append(out))
    engine.run_until_done()
    return [outs[f"r{i}"] for i in range(len(jobs))]


def _want(tuned, prompt, n, adapter):
    return generate(tuned[adapter], [prompt], max_new_tokens=n, ignore_eos=True)[0, len(prompt):].tolist()


@pytest.mark.parametrize("graphs", [None, False])  # fixed-shape decode views (CUDA graphs on a GPU), or eager
def test_mixed_adapters_give_each_adapted_models_tokens(served, graphs):
    d, tuned = served
    engine = _engine(d, decode_graphs=graphs)  # 2 slots for 3 adapters: some requests wait for a slot
    g = torch.Generator().manual_seed(1)
    names = ["sql", None, "poet", "wide", "sql", None, "wide", "poet"]
    jobs = [(torch.randint(3, 300, (3 + i,), generator=g).tolist(), 4 + i % 3, a) for i, a in enumerate(names)]
    results = _run(engine, jobs)
    distinct = {tuple(_want(tuned, jobs[0][0], jobs[0][1], a)) for a in tuned}
    assert len(distinct) == 4  # every adapter changes the greedy tokens, so the checks below can fail
    for (prompt, n, adapter), outs in zip(jobs, results):
        assert [t for o in outs for t in o.token_ids] == _want(tuned, prompt, n, adapter), adapter
        assert outs[-1].finish_reason == "length"
    assert engine.cache.num_free_blocks() == 96
    assert engine.adapters._users == [0, 0] and len(engine.adapters.resident()) == 2


def test_a_shared_prompt_is_cached_per_adapter(served):
    d, tuned = served
    engine = _engine(d)
    prompt = list(range(40, 53))  # three full blocks of 4
    first, base, again, other = (_run(engine, [(prompt, 3, a)])[0] for a in ("sql", None, "sql", "poet"))
    assert [o[0].num_cached_tokens for o in (first, base, again, other)] == [0, 0, 12, 0]
    for outs, a in ((first, "sql"), (base, None), (again, "sql"), (other, "poet")):
        assert [t for o in outs for t in o.token_ids] == _want(tuned, prompt, 3, a)


def test_adapters_are_registered_checked_and_removed(served, tmp_path):
    d, tuned = served
    engine = _engine(d, max_loras=1)
    assert engine.adapters.names() == ["poet", "sql", "wide"]
    with pytest.raises(ConfigError, match="no LoRA adapter named 'nope'; loaded: "):
        engine.submit([1, 2], SamplingParams(max_new_tokens=1), on_output=print, adapter="nope")
    with pytest.raises(ConfigError, match="loaded already"):
        engine.add_adapter("sql", str(d / "sql"))
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        engine.add_adapter("empty", str(tmp_path))
    with pytest.raises(ConfigError, match="serves no LoRA adapters; build it with max_loras >= 1"):
        Engine(TransformerLM.from_pretrained(d / "base").eval(), None).submit(
            [1], SamplingParams(max_new_tokens=1), on_output=print, adapter="sql")
    # a waiting request whose adapter is removed fails; the running one finishes with its adapter
    outs: dict[str, list] = {}
    for rid, a in (("run", "sql"), ("wait", "poet")):
        engine.submit([5, 6, 7], SamplingParams(max_new_tokens=3, ignore_eos=True), request_id=rid, adapter=a,
                      on_output=lambda out, rid=rid: outs.setdefault(rid, []).append(out))
    engine.step()  # "run" takes the only slot; "wait" waits for it
    engine.remove_adapter("poet")
    engine.run_until_done()
    assert [t for o in outs["run"] for t in o.token_ids] == _want(tuned, [5, 6, 7], 3, "sql")
    assert outs["wait"][-1].finish_reason == "error" and "'poet' was unloaded" in str(outs["wait"][-1].error)
    assert "poet" not in engine.adapters.names()


def test_ranks_above_the_maximum_are_refused(served):
    d, _ = served
    engine = Engine(TransformerLM.from_pretrained(d / "base").eval(), None, max_loras=1, max_lora_rank=4)
    with pytest.raises(ConfigError, match="rank 8, above this server's max LoRA rank 4"):
        engine.add_adapter("wide", str(d / "wide"))
    narrow = Engine(TransformerLM.from_pretrained(d / "base").eval(), None, max_loras=1, lora_targets=["q_proj"])
    with pytest.raises(ConfigError, match="not among the layers wrapped for LoRA"):
        narrow.add_adapter("sql", str(d / "sql"))


def test_offline_batches_take_an_adapter_per_request(served):
    from serve.offline import run_requests

    d, tuned = served
    prompts = [[7, 8, 9], [10, 11], [12, 13, 14, 15]]
    names = ["poet", None, "sql"]
    res = run_requests(TransformerLM.from_pretrained(d / "base").eval(), prompts, 5, max_batch_size=3, block_size=4,
                       adapters={n: str(d / n) for n in ("sql", "poet")}, request_adapters=names, max_loras=1)
    for p, a, r in zip(prompts, names, res):
        assert r["token_ids"] == _want(tuned, p, 5, a)
    with pytest.raises(ConfigError, match="request_adapters: has 1 entries for 3 prompts"):
        run_requests(tuned[None], prompts, 2, max_batch_size=2, adapters={"sql": str(d / "sql")},
                     request_adapters=["sql"])


def test_the_server_routes_models_to_adapters(served, monkeypatch):
    """``--lora-modules``: /v1/models lists each adapter under the base model; a request's ``model`` picks its
    adapter (greedy tokens equal generate() on that adapted model); runtime loading and unloading."""
    import uvicorn
    from fastapi.testclient import TestClient

    from serve.__main__ import main

    d, tuned = served
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    assert main(["--model", str(d / "base"), "--lora-modules", f"sql={d / 'sql'}",
                 f'{{"name": "poet", "path": "{d / "poet"}"}}', "--max-loras", "2", "--port", "0", "--device", "cpu",
                 "--allow-runtime-lora-updating"]) == 0
    prompt = [104, 105, 32, 116]
    with TestClient(apps[0]) as client:
        cards = client.get("/v1/models").json()["data"]
        assert [(c["id"], c["parent"]) for c in cards] == [("base", None), ("sql", "base"), ("poet", "base")]
        assert cards[1]["root"] == str(d / "sql")

        def complete(model):
            r = client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 6,
                                                     "temperature": 0, "ignore_eos": True})
            return r.status_code, r.json()

        tok = apps[0].state.engine.tokenizer
        for model, adapter in (("sql", "sql"), ("base", None), ("poet", "poet")):
            status, body = complete(model)
            assert status == 200 and body["model"] == model
            assert body["choices"][0]["text"] == tok.decode(_want(tuned, prompt, 6, adapter)), model
        status, body = complete("wide")
        assert status == 404 and "'wide' does not exist; this server serves 'base', 'poet', 'sql'" in \
            body["error"]["message"]
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "wide", "lora_path": str(d / "wide")})
        assert r.status_code == 200 and "wide" in r.text
        status, body = complete("wide")
        assert status == 200 and body["choices"][0]["text"] == tok.decode(_want(tuned, prompt, 6, "wide"))
        chat = client.post("/v1/chat/completions", json={"model": "wide", "max_tokens": 3,
                                                         "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200 and chat.json()["model"] == "wide"
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "wide", "lora_path": str(d / "wide")})
        assert r.status_code == 400 and "loaded already" in r.json()["error"]["message"]
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "base", "lora_path": str(d / "wide")})
        assert r.status_code == 400 and "base model's name" in r.json()["error"]["message"]
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "wide"}).status_code == 200
        assert complete("wide")[0] == 404
        r = client.post("/v1/unload_lora_adapter", json={"lora_name": "wide"})
        assert r.status_code == 404 and "cannot be found" in r.json()["error"]["message"]


def test_cli_refuses_bad_lora_flags_before_the_model_loads(served, tmp_path, capsys, monkeypatch):
    import uvicorn

    from serve.__main__ import main, parse_lora_modules

    d, _ = served
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert parse_lora_modules(["a=/x", '{"name": "b", "path": "/y", "base_model_name": "m"}']) == [("a", "/x"),
                                                                                                    ("b", "/y")]
    for argv, want in ((["--lora-modules", "noequals"], "expected NAME=PATH"),
                       (["--lora-modules", "a=/x", "a=/y"], "'a' is given twice"),
                       (["--lora-modules", f"e={tmp_path}"], "no adapter_config.json"),
                       (["--allow-runtime-lora-updating"], "needs --enable-lora"),
                       (["--lora-modules", f"wide={d / 'wide'}", "--max-lora-rank", "4"], "max LoRA rank 4"),
                       (["--lora-modules", f"base={d / 'sql'}"], "base model's served name")):
        assert main(["--model", str(d / "base"), "--port", "0", "--device", "cpu", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, (argv, err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_decode_graphs_serve_mixed_adapters_on_cuda(served, dtype):
    """The captured graphs hold the LoRA term; rows change adapters between replays by the static masks alone."""
    d, tuned = served
    engine = Engine(TransformerLM.from_pretrained(d / "base").to("cuda", dtype).eval(), None,
                    ServeConfig(max_batch_size=4, block_size=4, num_blocks=96), max_loras=2, decode_graphs=True)
    assert engine.graphs is not None and engine.graphs.graphs  # captured, not eager views
    for name in ADAPTERS:
        engine.add_adapter(name, str(d / name))
    g = torch.Generator().manual_seed(2)
    names = ["sql", None, "poet", "wide", "sql", None, "wide", "poet"]
    jobs = [(torch.randint(3, 300, (3 + i,), generator=g).tolist(), 6, a) for i, a in enumerate(names)]
    results = _run(engine, jobs)
    agree = []
    for (prompt, n, adapter), outs in zip(jobs, results):
        ref = copy.deepcopy(tuned[adapter]).to("cuda", dtype)
        want = generate(ref, [prompt], max_new_tokens=n, ignore_eos=True)[0, len(prompt):].tolist()
        got = [t for o in outs for t in o.token_ids]
        agree.append(got == want)
        if dtype == torch.float32:
            assert got == want, adapter
    assert sum(agree) >= 6  # bf16: a near-tie may flip a greedy token between the two paths
