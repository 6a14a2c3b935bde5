"""Fan-out to csv, jsonl and tensorboard, read back with each format's own reader (TensorBoard's
EventAccumulator for the event files)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea

from specs.errors import ConfigError, PluginError
from specs.plugins import available
from specs.protocols import MetricsLogger, TrainerCallback
from viz.errors import VizError
from viz.readers import load_scalars, read_csv, read_jsonl
from viz.session import VizSession


def _tb(log_dir) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_backends_are_registered_plugins():
    assert {"csv", "jsonl", "tensorboard", "wandb"} <= set(available("lmstack.viz_backends"))


def test_session_meets_the_specs_protocols(tmp_path, viz_cfg):
    with VizSession(viz_cfg(backend=("csv",)), tmp_path) as viz:
        assert isinstance(viz, MetricsLogger)
        assert isinstance(viz, TrainerCallback)


def test_fan_out_to_three_backends_reads_back(tmp_path, viz_cfg):
    cfg = viz_cfg(backend=("csv", "jsonl", "tensorboard"))
    values = torch.arange(1000, dtype=torch.float32) / 10  # 0.0 .. 99.9
    with VizSession(cfg, tmp_path, config={"train": {"lr": 3e-4, "betas": (0.9, 0.95)}, "name": "t"}) as viz:
        for step in range(1, 6):
            viz.log_scalars(step, {"loss": 4.0 / step, "lr": torch.tensor(1e-3 * step)})
        viz.log_scalars(6, {"eval/loss": float("nan")})
        viz.log_text(5, "sample", "the quick brown fox")
        viz.log_histogram(5, "params/w", values, bins=10)

    rows = read_csv(tmp_path / "scalars.csv")
    assert [(s, t, v) for s, t, v, _ in rows if t == "loss"] == [(s, "loss", 4.0 / s) for s in range(1, 6)]
    assert math.isnan([v for _, t, v, _ in rows if t == "eval/loss"][0])
    assert json.loads((tmp_path / "hparams.json").read_text())["hparams"] == {
        "train.lr": 3e-4, "train.betas": "[0.9, 0.95]", "name": "t"}

    recs = read_jsonl(tmp_path / "metrics.jsonl")
    kinds = [r["type"] for r in recs]
    assert kinds.count("scalars") == 6 and kinds.count("text") == 1 and kinds.count("histogram") == 1
    hist = next(r for r in recs if r["type"] == "histogram")
    assert hist["n"] == 1000 and hist["min"] == 0.0 and hist["max"] == pytest.approx(99.9)
    assert sum(hist["counts"]) == 1000 and len(hist["edges"]) == 11
    assert next(r for r in recs if r["type"] == "scalars" and r["step"] == 6)["values"]["eval/loss"] == "nan"

    acc = _tb(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(s, pytest.approx(4.0 / s)) for s in range(1, 6)]
    assert acc.Scalars("lr")[-1].value == pytest.approx(5e-3)
    h = acc.Histograms("params/w")[0]
    assert h.step == 5 and h.histogram_value.num == 1000 and sum(h.histogram_value.bucket) == 1000
    assert h.histogram_value.max == pytest.approx(99.9, rel=1e-6)
    assert acc.Tensors("sample/text_summary")[0].tensor_proto.string_val == [b"the quick brown fox"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


def test_csv_is_long_format_so_new_metrics_mid_run_keep_one_header(tmp_path, viz_cfg):
    with VizSession(viz_cfg(backend=("csv",)), tmp_path) as viz:
        viz.log_scalars(1, {"loss": 1.0})
        viz.log_scalars(2, {"loss": 0.5, "grad_norm": 2.0})  # a new column would break a wide CSV
    lines = (tmp_path / "scalars.csv").read_text().splitlines()
    assert lines[0] == "step,tag,value,wall_time"
    assert sum(line.startswith("step,") for line in lines) == 1
    assert [r[:3] for r in read_csv(tmp_path / "scalars.csv")] == [(1, "loss", 1.0), (2, "loss", 0.5),
                                                                   (2, "grad_norm", 2.0)]


def test_resume_appends_and_later_rows_win(tmp_path, viz_cfg):
    cfg = viz_cfg(backend=("csv", "jsonl"))
    with VizSession(cfg, tmp_path) as viz:
        for s in range(1, 4):
            viz.log_scalars(s, {"loss": float(s)})
    with VizSession(cfg, tmp_path) as viz:  # resumed from a checkpoint at step 2
        viz.log_scalars(3, {"loss": 30.0})
        viz.log_scalars(4, {"loss": 40.0})
    (run,) = load_scalars(tmp_path)
    assert run.series["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 5


def test_reopening_repairs_a_cut_short_last_line(tmp_path, viz_cfg):
    cfg = viz_cfg(backend=("csv", "jsonl"))
    with VizSession(cfg, tmp_path) as viz:
        viz.log_scalars(1, {"loss": 1.0})
    with open(tmp_path / "scalars.csv", "a") as f:
        f.write("2,lo")  # what SIGKILL in the middle of a write leaves
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "scal')
    assert [r[0] for r in read_csv(tmp_path / "scalars.csv")] == [1]  # the reader tolerates it
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1
    with VizSession(cfg, tmp_path) as viz:
        viz.log_scalars(2, {"loss": 2.0})
    assert [r[:3] for r in read_csv(tmp_path / "scalars.csv")] == [(1, "loss", 1.0), (2, "loss", 2.0)]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_corruption_in_the_middle_is_an_error_with_the_line(tmp_path):
    (tmp_path / "scalars.csv").write_text("step,tag,value,wall_time\n1,loss,x,0\n2,loss,1.0,0\n")
    with pytest.raises(VizError, match=r"scalars.csv:2"):
        read_csv(tmp_path / "scalars.csv")


def test_a_foreign_file_is_never_appended_to(tmp_path, viz_cfg):
    (tmp_path / "scalars.csv").write_text("epoch,acc\n1,0.5\n")
    with pytest.raises(VizError, match="not this kind of log"):
        VizSession(viz_cfg(backend=("csv",)), tmp_path)
    assert (tmp_path / "scalars.csv").read_text() == "epoch,acc\n1,0.5\n"


def test_writes_are_buffered_until_flush_every(tmp_path, viz_cfg):
    viz = VizSession(viz_cfg(backend=("csv",)), tmp_path, flush_every=3, flush_secs=1e9)
    viz.log_scalars(1, {"a": 1})
    viz.log_scalars(2, {"a": 2})
    assert read_csv(tmp_path / "scalars.csv") == []
    viz.log_scalars(3, {"a": 3})
    assert [r[0] for r in read_csv(tmp_path / "scalars.csv")] == [1, 2, 3]
    viz.log_scalars(4, {"a": 4})
    viz.flush()
    assert len(read_csv(tmp_path / "scalars.csv")) == 4
    viz.close()
    viz.close()  # idempotent


def test_writes_flush_after_flush_secs(tmp_path, viz_cfg, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("viz.backends.linefile.time.monotonic", lambda: clock[0])
    viz = VizSession(viz_cfg(backend=("jsonl",)), tmp_path, flush_every=1000, flush_secs=5.0)
    viz.log_scalars(1, {"a": 1})
    assert read_jsonl(tmp_path / "metrics.jsonl") == []
    clock[0] += 6.0
    viz.log_scalars(2, {"a": 2})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    viz.close()


def test_unknown_backend_lists_the_valid_ones(tmp_path, viz_cfg):
    cfg = viz_cfg(backend=("csv",))
    object.__setattr__(cfg, "backend", ("csv", "tensorbord"))  # a name the specs Literal would one day allow
    with pytest.raises(PluginError, match=r"did you mean 'tensorboard'.*valid names: csv, jsonl, tensorboard"):
        VizSession(cfg, tmp_path)


def test_duplicate_backend_is_a_config_error(tmp_path, viz_cfg):
    with pytest.raises(ConfigError, match="viz.backend"):
        VizSession(viz_cfg(backend=("csv", "csv")), tmp_path)


@pytest.mark.parametrize(("values", "match"), [
    ({"loss": "low"}, "'loss' must be a number"),
    ({"loss": torch.ones(2)}, r"shape \(2,\)"),
    ({"lo\nss": 1.0}, "one-line"),
])
def test_bad_scalars_are_clear_errors(tmp_path, viz_cfg, values, match):
    with VizSession(viz_cfg(backend=("csv",)), tmp_path) as viz, pytest.raises(VizError, match=match):
        viz.log_scalars(1, values)


def test_histogram_of_only_nan_is_an_error(tmp_path, viz_cfg):
    with VizSession(viz_cfg(backend=("jsonl",)), tmp_path) as viz, pytest.raises(VizError, match="no finite"):
        viz.log_histogram(1, "w", torch.full((4,), float("nan")))


def test_only_rank_zero_writes(tmp_path, viz_cfg):
    with VizSession(viz_cfg(backend=("csv", "jsonl")), tmp_path / "r1", rank=1) as viz:
        viz.log_scalars(1, {"loss": 1.0})
        viz.on_step(None, 10, {"loss": 1.0})
    assert not (tmp_path / "r1").exists()


def test_default_log_dir(monkeypatch, tmp_path, viz_cfg):
    monkeypatch.chdir(tmp_path)
    with VizSession(viz_cfg(backend=("csv",))) as viz:
        assert viz.log_dir.as_posix() == "runs/viz"
    assert (tmp_path / "runs/viz/scalars.csv").exists()
    with VizSession(viz_cfg(backend=("csv",), log_dir=str(tmp_path / "cfgdir"))) as viz:
        assert viz.log_dir == tmp_path / "cfgdir"


def test_histogram_matches_numpy():
    np = pytest.importorskip("numpy")
    from viz.backends.base import Histogram

    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g, dtype=torch.float64)
    x[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    h = Histogram.of(x, bins=20)
    finite = x.numpy()[np.isfinite(x.numpy())]
    counts, edges = np.histogram(finite, bins=20, range=(finite.min(), finite.max()))
    assert h.counts == tuple(counts.astype(float)) and h.edges == pytest.approx(tuple(edges))
    assert (h.n, h.nonfinite) == (9997, 3)
    assert h.mean == pytest.approx(finite.mean()) and h.std == pytest.approx(finite.std())
    assert h.sum_squares == pytest.approx(float(finite @ finite))
