"""The engine's graph decode path (fixed-shape views over the paged cache), run eagerly on the CPU: same tokens as
the plain paged path, padding rows harmless, fallback for models that need masks."""

from __future__ import annotations

import copy

import pytest
import torch

from model.lm import TransformerLM
from serve.engine import Engine
from serve.graphs import batch_sizes
from serve.sampling import SamplingParams
from specs.config import ServeConfig
from specs.errors import ConfigError
from specs.presets import preset


def _run(model, prompts, n, **kw):
    eng = Engine(model, config=ServeConfig(max_batch_size=kw.pop("max_batch_size", 8), block_size=4), **kw)
    outs: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        outs[f"r{i}"] = []
        eng.submit(p, SamplingParams(max_new_tokens=n, temperature=0.0), request_id=f"r{i}",
                   on_output=lambda o: outs[o.request_id].extend(o.token_ids))
    eng.run_until_done()
    return eng, [outs[f"r{i}"] for i in range(len(prompts))]


def test_batch_sizes_cover_every_count():
    assert batch_sizes(1) == [1] and batch_sizes(6) == [1, 2, 4, 6] and batch_sizes(8) == [1, 2, 4, 8]


@pytest.mark.parametrize("name", ["llama-debug", "gpt2-debug"])
def test_view_decode_gives_the_plain_paged_tokens(name):
    torch.manual_seed(0)
    model = TransformerLM(preset(name)).eval()
    g = torch.Generator().manual_seed(1)
    # different lengths, more requests than rows (some wait and join later), a shared prefix (cached blocks)
    prompts = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 7)]
    prompts.append(prompts[1][:8] + [4, 2])
    eng, got = _run(model, prompts, 6, max_batch_size=3, decode_graphs=True)
    assert eng.graphs is not None and eng.graphs.sizes == [1, 2, 3]
    _, want = _run(model, prompts, 6, max_batch_size=3, decode_graphs=False)
    assert got == want and all(len(t) == 6 for t in got)
    assert eng.cache.num_free_blocks() == eng.num_blocks  # every block back; the scratch block is not counted


def test_models_that_need_masks_decode_eagerly():
    model = TransformerLM(preset("llama-debug", sliding_window=4)).eval()
    eng, got = _run(model, [[1, 2, 3, 4, 5, 6]], 4)
    assert eng.graphs is None and len(got[0]) == 4
    with pytest.raises(ConfigError, match="need a mask"):
        Engine(model, config=ServeConfig(max_batch_size=2, block_size=4), decode_graphs=True)


SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="programmatic dependent launch needs a CUDA device of compute capability 9.0+")
def test_pdl_decode_gives_the_tokens_of_the_plain_loop():
    """PDL changes when kernels start, not what they compute; a race (a kernel reading before its producer is done)
    would show as different tokens. Inductor's PDL (pdl=True): the compiled CUDA-graph loop in fp32 (greedy ties
    are rare there) against the same loop without it. The skinny matmul's PDL twin: eager bf16 decoding, where
    every other kernel is the same, against the plain skinny matmul."""
    from serve.fast import FastGenerator

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).to("cuda").eval()
    prompt = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(4)).to("cuda")
    torch._dynamo.reset()
    want = FastGenerator(copy.deepcopy(model), 2, 64, pdl=False).generate(prompt, 48)
    torch._dynamo.reset()
    got = FastGenerator(copy.deepcopy(model), 2, 64, pdl=True).generate(prompt, 48)
    assert torch.equal(got, want)
    hopper = torch.cuda.get_device_capability() >= (9, 0)
    assert FastGenerator(copy.deepcopy(model), 2, 64).pdl is hopper  # the default, "auto"
    half = model.to(torch.bfloat16)
    want = FastGenerator(copy.deepcopy(half), 2, 64, compile=None, linear_impl="triton_skinny").generate(prompt, 48)
    got = FastGenerator(copy.deepcopy(half), 2, 64, compile=None, linear_impl="triton_skinny_pdl").generate(prompt, 48)
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="programmatic dependent launch needs a CUDA device of compute capability 9.0+")
def test_pdl_chained_gemv_decode_gives_the_tokens_of_the_plain_gemv(tmp_path, monkeypatch):
    """One row through the gemv kernel (every projection of the model in this card's table): chained by PDL (the
    first weight block loaded before the wait for the kernel before) against launched plainly, eager bf16, where
    every other kernel is the same; a read of x before its producer finished would change tokens."""
    import json

    from kernel.triton import gemv
    from serve.fast import FastGenerator

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).to("cuda", torch.bfloat16).eval()
    prompt = torch.randint(0, 500, (1, 7), generator=torch.Generator().manual_seed(5)).to("cuda")
    plain = FastGenerator(copy.deepcopy(model), 1, 64, compile=None, linear_impl="triton_skinny")
    shapes = {gemv.tile_key(*m.weight.shape, m.weight.dtype) for m in plain.model.modules()
              if isinstance(m, torch.nn.Linear)}
    table = tmp_path / "gemv.json"
    table.write_text(json.dumps({torch.cuda.get_device_name(): {k: [2, 256, 4, 1] for k in shapes}}))
    monkeypatch.setenv(gemv.TILES_ENV, str(table))
    calls = []
    real = torch.ops.lmstack.gemv_pdl
    monkeypatch.setattr(torch.ops.lmstack, "gemv_pdl", lambda *a: calls.append(1) or real(*a), raising=False)
    want = plain.generate(prompt, 48)
    got = FastGenerator(copy.deepcopy(model), 1, 64, compile=None, linear_impl="triton_skinny_pdl").generate(prompt,
                                                                                                              48)
    assert calls and torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not SM90, reason="programmatic dependent launch needs a CUDA device of compute capability 9.0+")
def test_pdl_attention_decode_gives_the_tokens_of_the_plain_attention(tmp_path, monkeypatch):
    """Decode attention launched with PDL (``triton_pdl``) loads its first block of cached keys and values before
    it waits for the PDL-chained q/k/v gemv, and reads q and the new key and value after: compiled CUDA-graph bf16
    decoding with it against the plain attention kernels, every other kernel the same, over four slot splits (the
    rows pass 128 slots); a read of the gemv's outputs before it finished would change tokens."""
    import json

    from kernel.triton import gemv
    from serve.fast import FastGenerator

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).to("cuda", torch.bfloat16).eval()
    prompt = torch.randint(0, 500, (1, 100), generator=torch.Generator().manual_seed(7)).to("cuda")
    shapes = {gemv.tile_key(*m.weight.shape, m.weight.dtype) for m in model.modules()
              if isinstance(m, torch.nn.Linear)}
    table = tmp_path / "gemv.json"
    table.write_text(json.dumps({torch.cuda.get_device_name(): {k: [2, 256, 4, 1] for k in shapes}}))
    monkeypatch.setenv(gemv.TILES_ENV, str(table))
    torch._dynamo.reset()
    want = FastGenerator(copy.deepcopy(model), 1, 256, decode_attention="triton").generate(prompt, 100)
    torch._dynamo.reset()
    got = FastGenerator(copy.deepcopy(model), 1, 256, decode_attention="triton_pdl").generate(prompt, 100)
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_fast_generator_captures_its_step_with_its_state_in_static_buffers():
    """FastGenerator's step reads and writes its token, output row and column index in place: under
    reduce-overhead inductor captures it as a CUDA graph (no cudagraph skip for the mutated buffers) and the
    replayed tokens are those of the same compiled step run without graphs, twice over (the buffers reset between
    calls)."""
    from torch._dynamo.utils import counters

    from serve.fast import FastGenerator

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).to("cuda").eval()
    prompt = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(6)).to("cuda")
    torch._dynamo.reset()
    want = FastGenerator(copy.deepcopy(model), 2, 64, compile="default").generate(prompt, 40)
    torch._dynamo.reset()
    counters.clear()
    gen = FastGenerator(copy.deepcopy(model), 2, 64)
    assert torch.equal(gen.generate(prompt, 40), want) and torch.equal(gen.generate(prompt, 40), want)
    assert counters["inductor"]["cudagraph_skips"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_captured_graph_decode_on_cuda_gives_the_eager_tokens():
    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).to("cuda").eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 7)]
    eng, got = _run(model, prompts, 8, max_batch_size=4, decode_graphs=True)
    assert eng.graphs is not None and sorted(eng.graphs.graphs) == [1, 2, 4]  # captured
    _, want = _run(model, prompts, 8, max_batch_size=4, decode_graphs=False)
    assert got == want


def test_fast_generator_routes_linears_through_the_registry():
    from serve.fast import FastGenerator, RegistryLinear, route_linears
    from specs.errors import PluginError

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    prompt = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(3))
    want = FastGenerator(model, 2, 16, compile=None).generate(prompt, 6)
    keys = sorted(model.state_dict())
    # routing alone keeps the model saveable (folding the norms, the default where routed, would not: below)
    routed = FastGenerator(model, 2, 16, compile=None, linear_impl="reference", fold_norms=False)
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    assert any(isinstance(m, RegistryLinear) for m in model.modules()) and sorted(model.state_dict()) == keys
    # the op's workspace for summing a split K in one kernel only under $LMSTACK_SPLIT_COMBINE=last
    assert all(m.split_counters is None for m in model.modules() if isinstance(m, RegistryLinear))
    assert torch.equal(routed.generate(prompt, 6), want)
    untouched = TransformerLM(preset("llama-debug"))
    with pytest.raises(PluginError, match="triton_skinny"):
        FastGenerator(untouched, 1, 8, compile=None, linear_impl="nope")
    assert hasattr(untouched.model.layers[0].self_attn, "q_proj")  # a bad name changes nothing
    with pytest.MonkeyPatch.context() as mp:  # asked for: one zeroed counter per 16 output columns, not saved
        mp.setenv("LMSTACK_SPLIT_COMBINE", "last")
        route_linears(untouched, "reference")
    layers = [m for m in untouched.modules() if isinstance(m, RegistryLinear)]
    assert layers and all(m.split_counters.dtype == torch.int32 and not m.split_counters.any()
                          and m.split_counters.shape == (-(-m.out_features // 16),) for m in layers)
    assert not any("split_counters" in k for k in untouched.state_dict())
    # the default "auto": routed only when the registry's choice is not F.linear (here, on CPU, it is)
    plain = TransformerLM(preset("llama-debug"))
    FastGenerator(plain, 1, 8, compile=None)
    assert not any(isinstance(m, RegistryLinear) for m in plain.modules())


@pytest.mark.parametrize("linear_impl", [None, "reference"])
def test_fast_generator_with_folded_norms_decodes_the_same_tokens(linear_impl):
    """fold_norms=True (norm weights in the projections; routed Linears take rms_eps/residual as op keywords,
    plain ones get the same arithmetic around them): the greedy tokens of the plain model, in fp32."""
    from model.lm import TransformerLM
    from serve.fast import FastGenerator
    from specs.presets import preset

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    prompt = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(3))
    want = FastGenerator(model, 2, 16, compile=None).generate(prompt, 8)
    folded = TransformerLM(preset("llama-debug")).eval()
    folded.load_state_dict(model.state_dict())
    got = FastGenerator(folded, 2, 16, compile=None, linear_impl=linear_impl, fold_norms=True).generate(prompt, 8)
    assert all(layer.norms_folded for layer in folded.model.layers)
    assert torch.equal(got, want)
    with pytest.raises(ConfigError, match="needs a model with fold_norms"):
        FastGenerator(torch.nn.Linear(2, 2), 1, 8, compile=None, fold_norms=True)


def test_fast_generator_folds_norms_by_default_only_where_the_routed_matmul_takes_them():
    """fold_norms="auto": folded when the Linears are routed through the registry (here its reference linear, which
    takes rms_eps and the residual as the CUDA skinny matmul does) and the model can fold; left alone with plain
    Linears (CPU's auto choice), a GPT-2 model, or quantized projections. The tokens are the plain model's."""
    from model.lm import TransformerLM
    from serve.fast import FastGenerator
    from specs.presets import preset

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3))
    plain = TransformerLM(preset("llama-debug")).eval()
    plain.load_state_dict(model.state_dict())
    gen = FastGenerator(plain, 1, 16, compile=None)  # CPU: F.linear, so nothing to fold into
    assert gen.fold_norms is False and not any(layer.norms_folded for layer in plain.model.layers)
    want = gen.generate(prompt, 6)
    routed = TransformerLM(preset("llama-debug")).eval()
    routed.load_state_dict(model.state_dict())
    gen = FastGenerator(routed, 1, 16, compile=None, linear_impl="reference")
    assert gen.fold_norms is True and all(layer.norms_folded for layer in routed.model.layers)
    assert torch.equal(gen.generate(prompt, 6), want)
    gpt = TransformerLM(preset("gpt2-debug")).eval()
    assert FastGenerator(gpt, 1, 16, compile=None, linear_impl="reference").fold_norms is False
    quant = TransformerLM(preset("llama-debug")).eval()
    proj = quant.model.layers[0].self_attn.q_proj
    proj.weight = torch.nn.Parameter(proj.weight.to(torch.int8), requires_grad=False)  # as a quantizer leaves it
    assert FastGenerator(quant, 1, 16, compile=None, fuse=False, linear_impl="reference").fold_norms is False
    with pytest.raises(ConfigError, match="fold_norms must be True, False or 'auto'"):
        FastGenerator(TransformerLM(preset("llama-debug")), 1, 8, compile=None, fold_norms="yes")


def test_fast_generator_chains_one_row_matmuls_by_pdl_where_the_kernel_says_so(monkeypatch):
    """linear_impl="auto" with PDL on and one row: the registry's PDL twin where ``kernel.one_row_pdl_linear``
    names it for the device (a card whose gemv table chains some shape); the plain choice at batch 2, with PDL off,
    or where the hint names nothing."""
    import serve.fast as fast
    from model.lm import TransformerLM
    from specs.presets import preset

    monkeypatch.setattr(fast, "auto_linear_impl", lambda model: "triton_skinny")
    hint = ["triton_skinny_pdl"]
    monkeypatch.setattr(fast, "one_row_pdl_linear", lambda device: hint[0])

    def impls(batch, pdl):
        model = TransformerLM(preset("llama-debug")).eval()
        fast.FastGenerator(model, batch, 8, compile="default", pdl=pdl)
        return {m.impl for m in model.modules() if isinstance(m, fast.RegistryLinear)}

    assert impls(1, True) == {"triton_skinny_pdl"}
    assert impls(2, True) == {"triton_skinny"}
    assert impls(1, False) == {"triton_skinny"}
    hint[0] = None
    assert impls(1, True) == {"triton_skinny"}


def test_fast_generator_fuses_the_swiglu_into_the_gate_up_projection_when_told_to(monkeypatch):
    """fuse_swiglu=True (the default): routed gate/up projections return silu(gate) * up themselves (glu="silu");
    the tokens are those of fuse_swiglu=False, where the MLP applies it; unrouted Linears report it off; a non-bool
    is refused."""
    import kernel.reference as kref
    from kernel import default_registry
    from serve.fast import FastGenerator, RegistryLinear

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3))
    seen = []
    real = kref.linear
    monkeypatch.setattr(kref, "linear", lambda *a, **k: seen.append(k.get("glu")) or real(*a, **k))
    default_registry().cache_clear()  # resolve anew, through the patched reference
    try:
        off = copy.deepcopy(model)
        plain = FastGenerator(off, 1, 16, compile=None, linear_impl="reference", fuse_swiglu=False)
        want = plain.generate(prompt, 6)
        assert not plain.fuse_swiglu and "silu" not in seen
        assert not any(m.accepts_glu for m in off.modules() if isinstance(m, RegistryLinear))
        seen.clear()
        gen = FastGenerator(copy.deepcopy(model), 1, 16, compile=None, linear_impl="reference")
        assert gen.fuse_swiglu and torch.equal(gen.generate(prompt, 6), want)
        assert seen.count("silu") == 6 * len(model.model.layers)  # the prefill and five steps, every layer
        assert not FastGenerator(copy.deepcopy(model), 1, 16, compile=None, linear_impl=None).fuse_swiglu
        untouched = copy.deepcopy(model)
        with pytest.raises(ConfigError, match="fuse_swiglu must be True or False"):
            FastGenerator(untouched, 1, 16, compile=None, fuse_swiglu="auto")
        assert not any(isinstance(m, RegistryLinear) for m in untouched.modules())  # refused before any change
        assert not hasattr(untouched.model.layers[0].mlp, "gate_up_proj")
    finally:
        default_registry().cache_clear()


def test_fast_generator_chains_int8_layers_with_the_linears(monkeypatch):
    """Quantized layers follow the same hint: the int8 PDL twin at one row with PDL, the registry's choice else."""
    import serve.fast as fast
    from compress import Int8WeightOnlyLinear, quantize_

    monkeypatch.setattr(fast, "one_row_pdl_linear", lambda device: "triton_skinny_pdl")
    model = TransformerLM(preset("llama-debug")).eval()
    model.fuse_projections()
    quantize_(model)
    fast.FastGenerator(model, 1, 8, compile="default", pdl=True)
    impls = {m.impl for m in model.modules() if isinstance(m, Int8WeightOnlyLinear)}
    assert impls == {"triton_skinny_pdl"}
    fast.FastGenerator(model, 2, 8, compile="default", pdl=True)  # a later generator decides again
    assert {m.impl for m in model.modules() if isinstance(m, Int8WeightOnlyLinear)} == {"auto"}


def test_fast_generator_puts_attention_in_the_pdl_chain_where_the_matmuls_are_chained(monkeypatch):
    """decode_attention="auto" (the default): "triton_pdl" where the Linears are chained by PDL (what a batch-1
    generator on an sm90 card with a chaining gemv table gets; faked here, nothing runs) and every layer would
    decode with the Triton kernels; the model's own choice elsewhere; a name wins."""
    import serve.fast as fast

    monkeypatch.setattr(fast, "one_row_pdl_linear", lambda device: "triton_skinny_pdl")
    monkeypatch.setattr(fast, "auto_linear_impl", lambda model: "triton_skinny")
    make = lambda attn="triton": TransformerLM(preset("llama-debug", attn_impl=attn)).eval()
    model = make()
    gen = fast.FastGenerator(model, 1, 16, compile="default", pdl=True)
    assert gen.decode_attention == "triton_pdl"
    assert {layer.self_attn.decode_impl for layer in model.model.layers} == {"triton_pdl"}
    assert fast.FastGenerator(make(), 2, 16, compile="default", pdl=True).decode_attention is None  # no chain
    assert fast.FastGenerator(make(), 1, 16, compile="default", pdl=False).decode_attention is None
    assert fast.FastGenerator(make(), 1, 16, compile="default", pdl=True,
                              linear_impl="triton_skinny").decode_attention is None  # not the chained twin
    assert fast.FastGenerator(make("sdpa"), 1, 16, compile="default", pdl=True).decode_attention is None
    # "auto" layers: the registry's choice for the device (the reference on a CPU), so their own
    assert fast.FastGenerator(make("auto"), 1, 16, compile="default", pdl=True).decode_attention is None
    assert fast.FastGenerator(make(), 1, 16, compile="default", pdl=True,
                              decode_attention="triton").decode_attention == "triton"


def test_fast_generator_names_the_decode_attention_of_every_layer(monkeypatch):
    """decode_attention=NAME: every attention layer's decode steps resolve that implementation (here the reference,
    counted), with the plain tokens; a later generator with None gives the layers back their own; a bad name fails
    before the model is touched."""
    import kernel.reference as kref
    from kernel import default_registry
    from serve.fast import FastGenerator
    from specs.errors import PluginError

    torch.manual_seed(0)
    model = TransformerLM(preset("llama-debug")).eval()
    prompt = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(3))
    want = FastGenerator(copy.deepcopy(model), 1, 16, compile=None).generate(prompt, 6)
    calls = []
    real = kref.decode_attention
    monkeypatch.setattr(kref, "decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    default_registry().cache_clear()
    try:
        named = copy.deepcopy(model)
        gen = FastGenerator(named, 1, 16, compile=None, decode_attention="reference")
        assert gen.decode_attention == "reference"
        assert {layer.self_attn.decode_impl for layer in named.model.layers} == {"reference"}
        assert torch.equal(gen.generate(prompt, 6), want) and len(calls) == 5 * len(named.model.layers)
        FastGenerator(named, 1, 16, compile=None)
        assert {layer.self_attn.decode_impl for layer in named.model.layers} == {None}
        with pytest.raises(PluginError, match="nope"):
            FastGenerator(copy.deepcopy(model), 1, 16, compile=None, decode_attention="nope")
    finally:
        default_registry().cache_clear()
