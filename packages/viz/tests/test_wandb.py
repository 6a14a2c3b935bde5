"""The wandb backend: an offline run whose records we read back from the .wandb file, and the error when
wandb is missing. The reader below is an independent implementation of the LevelDB log format wandb writes
(":W&B" header, 32 KiB blocks of CRC-framed records, each a wandb_internal_pb2.Record)."""

from __future__ import annotations

import json
import struct
import sys
import time

import pytest

from specs.errors import ConfigError
from viz.session import VizSession

wandb = pytest.importorskip("wandb")  # in the test extra; the error-path test below needs no wandb


def read_wandb_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < 7:
        return []
    assert data[:4] == b":W&B"
    block, pos, out, parts = 32768, 7, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # trailer too small for a header: skip to the next block
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            break
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        parts.append(payload)
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def test_offline_run_records_what_was_logged(tmp_path, viz_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = viz_cfg(backend=("wandb",), project="viz-test")
    assert cfg.wandb_mode == "offline"
    with VizSession(cfg, tmp_path, config={"train": {"lr": 0.01}}) as viz:
        viz.log_scalars(1, {"loss": 2.5})
        viz.log_scalars(2, {"loss": 1.5, "lr": 0.01})
        viz.log_histogram(2, "params/w", [0.0, 1.0, 1.0, 2.0], bins=4)
        viz.log_hparams({"extra": 1}, {"best_loss": 1.5})
        run_dir = viz.backends["wandb"].run_dir
    assert run_dir.name.startswith("offline-run-") and run_dir.parent == tmp_path / "wandb"
    (wfile,) = run_dir.glob("run-*.wandb")
    # wandb-core writes the transaction log from its own process and finish() can return before the write
    # reaches the file (wandb/wandb#9525); it lands within a moment, ending with the run's exit record.
    deadline = time.monotonic() + 30
    records = read_wandb_records(wfile)
    while "exit" not in [r.WhichOneof("record_type") for r in records]:
        assert time.monotonic() < deadline, "the offline run's .wandb file never got its exit record"
        time.sleep(0.1)
        records = read_wandb_records(wfile)
    history = [{tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h[("_step",)], h[("loss",)]) for h in history] == [(1, 2.5), (2, 1.5)]
    assert history[1][("lr",)] == 0.01 and history[1][("params/w", "_type")] == "histogram"
    # values [0, 1, 1, 2] in 4 equal buckets over [0, 2]
    assert history[1][("params/w", "values")] == [1, 0, 2, 1]
    assert history[1][("params/w", "bins")] == [0, 0.5, 1, 1.5, 2]
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    assert config["train.lr"] == 0.01 and config["extra"] == 1
    summary = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    assert summary["best_loss"] == 1.5


def test_missing_wandb_is_a_clear_error(tmp_path, viz_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the wandb package.*pip install 'lmstack-viz\[wandb\]'"):
        VizSession(viz_cfg(backend=("csv", "wandb")), tmp_path)
