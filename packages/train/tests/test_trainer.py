"""Trainer unit tests on the tiny stand-in model: steps, accumulation, precision, NaN policy, metrics, callbacks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from train_testing import Recorder, TinyLM, TokenLoader

from specs.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from specs.errors import ConfigError, PluginError
from train import Trainer, TrainingError
from train.loss import as_batch


def tcfg(tmp_path, **kw) -> TrainConfig:
    base = dict(steps=6, lr=1e-2, warmup_steps=0, log_every=1, callbacks=(), out_dir=str(tmp_path / "run"),
                device="cpu", schedule="constant")
    return TrainConfig(**{**base, **kw})


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_step_returns_float_and_loss_decreases(tiny, tmp_path):
    trainer = Trainer(tiny, tcfg(tmp_path, steps=30), TokenLoader())
    batch = TokenLoader().batch(0)
    losses = [trainer.step(batch) for _ in range(30)]
    assert all(isinstance(x, float) for x in losses)
    assert losses[-1] < 0.5 * losses[0]  # overfits one batch
    assert trainer.global_step == 30 and trainer.tokens_seen == 30 * 8 * 16


def test_seed_signature_accepts_model_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = TinyLM()
    trainer = Trainer(model, model.config, TokenLoader())
    assert trainer.cfg == TrainConfig() and trainer.dist_cfg.strategy == "none"
    assert isinstance(trainer.step(TokenLoader().batch(0)), float)
    with pytest.raises(ConfigError, match="RunConfig, TrainConfig or ModelConfig"):
        Trainer(model, {"steps": 3}, TokenLoader())


def test_grad_accumulation_equals_one_big_step(tmp_path):
    batch = TokenLoader().batch(0)
    # mask some targets unevenly so token weighting matters
    labels = batch.labels.clone()
    labels[0, :10] = -100
    batch = as_batch({"input_ids": batch.input_ids, "labels": labels})
    results = []
    for accum in (1, 2, 4):
        torch.manual_seed(0)
        model = TinyLM()
        trainer = Trainer(model, tcfg(tmp_path, grad_accum=accum, optimizer="sgd", momentum=0.0), None)
        loss = trainer.step(batch)
        results.append((loss, params_of(model)))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        for k in params:
            torch.testing.assert_close(params[k], results[0][1][k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.grad_accum"):
        Trainer(TinyLM(), tcfg(tmp_path, grad_accum=3), None).step(batch)


def test_model_without_loss_method_uses_logits_and_cross_entropy(tmp_path):
    torch.manual_seed(0)
    a = TinyLM()
    b = copy.deepcopy(a)
    b.loss = None
    batch = TokenLoader().batch(0)
    la = Trainer(a, tcfg(tmp_path), None).step(batch)
    lb = Trainer(b, tcfg(tmp_path), None).step(batch)
    assert la == pytest.approx(lb, rel=1e-6)
    assert la == pytest.approx(math.log(64), rel=0.2)  # untrained: near uniform over the vocabulary


def test_batch_forms_and_default_labels():
    ids = torch.arange(12).view(2, 6)
    b = as_batch(ids)
    assert b.labels[:, :-1].tolist() == ids[:, 1:].tolist() and (b.labels[:, -1] == -100).all()
    assert as_batch((ids, ids)).labels is ids
    with pytest.raises(TypeError, match="specs.batch.Batch"):
        as_batch("text")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_on_cpu(tmp_path, precision):
    torch.manual_seed(0)
    trainer = Trainer(TinyLM(), tcfg(tmp_path, precision=precision, steps=8), TokenLoader())
    batch = TokenLoader().batch(0)
    losses = [trainer.step(batch) for _ in range(8)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert (trainer.scaler is not None) == (precision == "fp16")
    if precision == "fp16":
        trainer.fit(steps=9)
        assert trainer.last_metrics["loss_scale"] > 0


def test_activation_checkpointing_gives_identical_gradients(tmp_path):
    batch = TokenLoader().batch(0)
    out = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = TinyLM()
        trainer = Trainer(model, tcfg(tmp_path, grad_ckpt=ckpt, optimizer="sgd", momentum=0.0), None)
        out.append((trainer.step(batch), params_of(model)))
        wrapped = any("CheckpointWrapper" in type(m).__name__ for m in model.modules())
        assert wrapped == ckpt
    assert out[0][0] == out[1][0]
    for k in out[0][1]:
        assert torch.equal(out[0][1][k], out[1][1][k]), k


def test_compile_option_compiles_the_model(tmp_path, monkeypatch):
    # aot_eager traces forward and backward through dynamo/AOTAutograd like inductor does, without the minutes of
    # cold C++ compilation inductor needs on this machine.
    import functools

    import dist.strategies

    monkeypatch.setattr(dist.strategies, "compile_whole",
                        functools.partial(dist.strategies.compile_whole, backend="aot_eager"))
    torch.manual_seed(0)
    model = TinyLM(n_layers=1)
    trainer = Trainer(model, tcfg(tmp_path, compile=True), None)
    assert getattr(trainer.model, "_compiled_call_impl", None) is not None  # alone: one graph, loss head included
    assert math.isfinite(trainer.step(TokenLoader().batch(0)))


@pytest.mark.parametrize("strategy", ["none", "DDP", "FSDP"])
def test_compiled_model_traces_as_one_graph(tmp_path, monkeypatch, strategy):
    # The model picks kernels through kernel.resolve; a choice first made while dynamo traces is a graph break that
    # stays in the compiled code (a GPT-2 block became 6 graphs). The trainer's eager warm-up call prevents that.
    # none compiles the whole model, DDP and FSDP each block (one graph shared by the blocks: they run the same code).
    import functools

    import dist.strategies
    from kernel.registry import default_registry
    from model.lm import TransformerLM
    from specs.config import DistConfig
    from specs.presets import preset

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    for name in ("compile_whole", "compile_blocks"):
        monkeypatch.setattr(dist.strategies, name, functools.partial(getattr(dist.strategies, name), backend=backend))
    torch._dynamo.reset()
    default_registry.cache_clear()  # no kernel choice made by an earlier test
    mcfg = preset("gpt2-debug", vocab_size=64, max_seq_len=16)
    batch = TokenLoader().batch(0)
    if strategy != "none":
        dist.init(DistConfig(strategy=strategy), "cpu")  # one rank, in process
    try:
        torch.manual_seed(0)
        data = DataConfig(batch_size=8, seq_len=16)
        run = RunConfig(model=mcfg, data=data, train=tcfg(tmp_path, compile=True), dist=DistConfig(strategy=strategy))
        trainer = Trainer(TransformerLM(mcfg), run, None)
        losses = [trainer.step(batch) for _ in range(2)]
        assert len(graphs) == 1, [len(g.graph.nodes) for g in graphs]
        torch.manual_seed(0)
        eager = Trainer(TransformerLM(mcfg), RunConfig(model=mcfg, data=data, train=tcfg(tmp_path),
                                                       dist=DistConfig(strategy=strategy)), None)
        want = [eager.step(batch) for _ in range(2)]
        # per block the compiled graph runs the eager kernels: the same numbers; whole, the loss head's kernel
        # under compile is another (materialised logits + cross-entropy, kernel.registry.COMPILE_PREFERENCE)
        assert losses == (want if strategy != "none" else pytest.approx(want, rel=1e-5))
    finally:
        dist.destroy()


def test_nan_stop_names_the_step(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    trainer = Trainer(model, tcfg(tmp_path, log_every=2), TokenLoader())
    trainer.step(TokenLoader().batch(0))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="step 2"):
        trainer.step(TokenLoader().batch(1))
    # fit(): the flag stays on the device until the next log step, then stops before any checkpoint is written
    torch.manual_seed(0)
    model = TinyLM()
    trainer = Trainer(model, tcfg(tmp_path / "b", log_every=4, steps=8), TokenLoader())
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf") * 0
    with pytest.raises(TrainingError, match="non-finite .* step 1"):
        trainer.fit()
    ckpts = tmp_path / "b" / "run" / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir())


def test_nan_skip_leaves_weights_untouched(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    trainer = Trainer(model, tcfg(tmp_path, nan_policy="skip"), None)
    good = TokenLoader().batch(0)
    trainer.step(good)
    before = params_of(model)
    bad_ids = good.input_ids.clone()
    hook = model.emb.register_forward_hook(lambda m, i, o: o * float("nan"))
    loss = trainer.step(bad_ids)
    hook.remove()
    assert math.isnan(loss) and trainer.skipped_steps == 1 and trainer.global_step == 2
    after = params_of(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert math.isfinite(trainer.step(good))


def test_metrics_and_callbacks(tmp_path):
    rec = Recorder()
    torch.manual_seed(0)
    run = RunConfig(model=TinyLM().config, train=tcfg(tmp_path, steps=6, log_every=2, eval_every=3, eval_steps=2,
                                                      ckpt_every=4),
                    data=DataConfig(batch_size=8, seq_len=16))
    trainer = Trainer(TinyLM(), run, TokenLoader(), callbacks=[rec], eval_dataloader=TokenLoader(seed=7))
    metrics = trainer.fit()
    assert [s for s, _ in rec.steps] == [1, 2, 3, 4, 5, 6]  # on_step every step ...
    logged = {s: m for s, m in rec.steps if m}
    assert sorted(logged) == [2, 4, 6]  # ... with numbers on log steps (log_every=2; viz.log_every=10)
    for m in logged.values():
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"} <= set(m)
        assert m["tokens_per_s"] > 0 and m["grad_norm"] > 0 and "mfu" not in m  # CPU: MFU unknown
    assert metrics["mfu"] is None and metrics["lr"] == pytest.approx(1e-2)
    assert [s for s, _ in rec.evals] == [3, 6]
    assert trainer.evaluate() == trainer.evaluate()  # the same batches each time (the loader is rewound)
    assert rec.evals[0][1]["ppl"] == pytest.approx(math.exp(rec.evals[0][1]["loss"]))
    assert [p.rsplit("_", 1)[1] for p in rec.checkpoints] == ["00000004", "00000006"] and rec.ended == 1


def test_mfu_with_a_known_peak(tmp_path, monkeypatch):
    monkeypatch.setattr("train.trainer.peak_flops", lambda device: 1e9)
    torch.manual_seed(0)
    trainer = Trainer(TinyLM(), tcfg(tmp_path, steps=2), TokenLoader())
    m = trainer.fit()
    from train.flops import flops_per_token, matmul_params

    expected = flops_per_token(matmul_params(trainer.module), 2, 32, 16) * m["tokens_per_s"] / 1e9
    assert m["mfu"] == pytest.approx(expected)


def test_unknown_callback_plugin_lists_valid_names(tmp_path):
    with pytest.raises(PluginError, match="valid names"):
        Trainer(TinyLM(), tcfg(tmp_path, callbacks=("no-such-callback",)), None)


def test_cpu_offload_needs_fsdp():
    with pytest.raises(ConfigError, match="cpu_offload"):
        RunConfig(model=ModelConfig(d_model=8, n_heads=2, n_layers=1, d_ff=8, vocab_size=8),
                  dist={"cpu_offload": True})


def test_fit_does_not_overwrite_an_earlier_runs_checkpoints(tmp_path):
    torch.manual_seed(0)
    Trainer(TinyLM(), tcfg(tmp_path, steps=4, ckpt_every=2), TokenLoader()).fit()
    root = tmp_path / "run" / "checkpoints"
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert {p.name for p in root.iterdir()} == {"step_00000002", "step_00000004"}
    again = Trainer(TinyLM(), tcfg(tmp_path, steps=2), TokenLoader())  # a new run, the same out_dir
    with pytest.raises(ConfigError, match=r"holds checkpoints of an earlier run \(newest step_00000004\)"):
        again.fit()
    with pytest.raises(ConfigError, match="earlier run"):
        again.save_checkpoint()
    assert again.global_step == 0  # refused before any step
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    cont = Trainer(TinyLM(), tcfg(tmp_path, steps=6), TokenLoader())
    cont.resume("auto")  # continuing the run is what its checkpoints are for
    cont.fit()
    assert cont.global_step == 6 and (root / "step_00000006").is_dir()


def test_out_dir_that_is_a_file_fails_before_any_step(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    trainer = Trainer(TinyLM(), tcfg(tmp_path), TokenLoader())
    with pytest.raises(ConfigError, match="train.out_dir: cannot write checkpoints under"):
        trainer.fit()
    assert trainer.global_step == 0 and (tmp_path / "run").read_text() == "not a directory"


def test_token_ids_past_the_vocabulary_are_named(tmp_path):
    from specs.errors import ShapeError

    trainer = Trainer(TinyLM(vocab=64), tcfg(tmp_path), TokenLoader())
    ids = torch.randint(0, 64, (2, 8))
    with pytest.raises(ShapeError, match=r"batch input_ids: ids must lie in \[0, 64\).*got 64\.\.70"):
        trainer.step(torch.cat([ids, torch.tensor([[64], [70]])], 1))
    labels = ids.clone()
    labels[0, 0] = -1  # scored as token 0 by a kernel that clamps; -100 (IGNORE_INDEX) is allowed
    with pytest.raises(ShapeError, match=r"batch labels: .* or be -100; got -1\.\.-1"):
        trainer.step({"input_ids": ids, "labels": labels})
    labels[0, 0] = -100
    assert math.isfinite(trainer.step({"input_ids": ids, "labels": labels}))
    with pytest.raises(ShapeError, match="expected integer token ids"):
        trainer.step(ids.float())
    assert trainer.global_step == 1


def test_data_vocabulary_larger_than_the_model_is_refused_up_front(tmp_path):
    class Tok:
        vocab_size = 300

    with pytest.raises(ConfigError, match=r"model.vocab_size: 64 is smaller than the tokenizer's vocabulary \(300"):
        Trainer(TinyLM(vocab=64), tcfg(tmp_path), TokenLoader(), tokenizer=Tok())
    loader = TokenLoader()
    loader.shards = Tok()  # a shard loader's ShardSet (data.loader.ShardLoader.shards) has vocab_size too
    with pytest.raises(ConfigError, match=r"64 is smaller than the dataloader's shards' vocabulary \(300 ids\)"):
        Trainer(TinyLM(vocab=64), tcfg(tmp_path), loader)
