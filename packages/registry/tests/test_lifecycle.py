"""Promotions and gates, aliases, the event log, retention plans, gc, concurrent and interrupted registers."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
from conftest import blob_count, write_tree

import registry.blobs
from registry import GateError, NotFoundError, Registry, RetentionPolicy
from specs.errors import ConfigError


def six_versions(reg, tmp_path, clock):
    """v1..v6 one day apart; v1 archived, v2 production, v4 aliased 'champion', v5 staging."""
    for i in range(1, 7):
        reg.register("m", write_tree(tmp_path / f"v{i}", {"w.bin": f"weights {i}", "config.json": "{}"}))
        clock.advance(days=1, seconds=0)
    reg.promote("m", 1, "production", reason="first")
    reg.promote("m", 2, "production", reason="better")  # archives v1
    reg.promote("m", 5, "staging", reason="candidate")
    reg.set_alias("m", "champion", 4)
    clock.advance(days=-1, seconds=0)  # now: v6's creation time, so version i is 6 - i days old


def test_promotion_lifecycle_archives_the_previous_production(reg, tmp_path):
    six_versions(reg, tmp_path, reg.clock)
    assert [v.stage for v in reg.list_versions("m")] == ["archived", "production", "none", "none", "staging", "none"]
    v = reg.promote("m", 6, "production", reason="rollout", actor="alice")
    assert v.stage == "production" and reg.get("m", "production").version == 6 and reg.get("m", 2).stage == "archived"
    reg.promote("m", 3, "production", reason="canary", archive_existing=False)
    assert {v.version for v in reg.list_versions("m") if v.stage == "production"} == {3, 6}
    assert reg.get("m", "production").version == 6  # the highest version in the stage
    reg.promote("m", 1, "production", reason="rollback")  # archived -> production is allowed (MLflow)
    assert [v.version for v in reg.list_versions("m") if v.stage == "production"] == [1]
    with pytest.raises(ValueError, match="unknown stage 'prod'; valid stages: none, staging, production, archived"):
        reg.promote("m", 1, "prod", reason="x")
    with pytest.raises(ValueError, match="non-empty reason"):
        reg.promote("m", 1, "staging", reason=" ")
    stage_events = [e for e in reg.history("m") if e.action == "version.stage"]
    rollout = next(e for e in stage_events if e.details.get("reason") == "rollout")
    d = rollout.details
    assert (rollout.actor, rollout.version, d["from"], d["to"], d["archived"]) == \
        ("alice", 6, "none", "production", [2])
    auto = next(e for e in stage_events if e.version == 2 and e.details["to"] == "archived")
    assert auto.details == {"from": "production", "to": "archived", "reason": "v6 promoted to production"}


def test_metadata_gates(reg, tmp_path):
    reg.register("m", write_tree(tmp_path / "a", {"w": "1"}), metadata={"eval": {"ppl": 25.0, "acc": 0.7}})
    reg.register("m", write_tree(tmp_path / "b", {"w": "2"}), metadata={"eval.ppl": 12.0, "eval": {"acc": "n/a"}})
    gate = {"eval.ppl": {"max": 20}}
    with pytest.raises(GateError, match=r"m v1 to production: metadata eval.ppl = 25 is above the gate's maximum 20"):
        reg.promote("m", 1, "production", reason="x", require_metadata=gate)
    assert reg.get("m", 1).stage == "none"
    assert reg.promote("m", 2, "production", reason="x", require_metadata=gate).stage == "production"
    with pytest.raises(GateError, match=r"metadata eval.acc = 0.7 is below the gate's minimum 0.8"):
        reg.promote("m", 1, "staging", reason="x", require_metadata={"eval.acc": {"min": 0.8}})
    with pytest.raises(GateError, match=r"metadata eval.acc = 'n/a' is not a number"):
        reg.promote("m", 2, "staging", reason="x", require_metadata={"eval.acc": {"min": 0.5}})
    with pytest.raises(GateError, match=r"metadata has no 'eval.loss'"):
        reg.promote("m", 1, "staging", reason="x", require_metadata={"eval.loss": {"max": 3}})
    with pytest.raises(ConfigError, match=r"require_metadata.eval.ppl.below: unknown bound"):
        reg.promote("m", 1, "staging", reason="x", require_metadata={"eval.ppl": {"below": 3}})
    with pytest.raises(ConfigError, match=r"require_metadata.eval.ppl.max: expected a finite number"):
        reg.promote("m", 1, "staging", reason="x", require_metadata={"eval.ppl": {"max": "20"}})
    assert [e.version for e in reg.history("m") if e.action == "version.stage"] == [2]  # refusals change nothing


def test_aliases_move_and_delete_with_events(reg, tmp_path):
    for i in range(2):
        reg.register("m", write_tree(tmp_path / str(i), {"w": str(i)}))
    reg.set_alias("m", "champion", 1, actor="bob")
    reg.set_alias("m", "champion", 2, actor="bob")
    assert reg.get("m", "champion").version == 2 and reg.get("m", 2).aliases == ("champion",)
    reg.delete_alias("m", "champion")
    with pytest.raises(NotFoundError, match="has no alias 'champion'; aliases: none"):
        reg.delete_alias("m", "champion")
    ev = [(e.action, e.version, e.details) for e in reg.history("m")]
    assert ev == [("model.create", None, {}),
                  ("version.register", 1, ev[1][2]), ("version.register", 2, ev[2][2]),
                  ("alias.set", 1, {"alias": "champion", "previous": None}),
                  ("alias.set", 2, {"alias": "champion", "previous": 1}),
                  ("alias.delete", 2, {"alias": "champion"})]
    assert ev[1][2]["files"] == 1 and ev[1][2]["source"] == str(tmp_path / "0") and ev[2][2]["parent"] is None
    times = [e.time for e in reg.history("m")]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)


CASES = [  # (policy, versions deleted); v1 archived, v2 production, v4 aliased, v5 staging; v6 is newest
    (dict(keep_last=2), {1, 3}),
    (dict(keep_last=0, keep_stages=()), {1, 3, 5, 6}),
    (dict(max_age_days=2.5), {1, 3}),
    (dict(keep_last=1, max_age_days=3.5), {1}),
    (dict(keep_last=10), set()),
    (dict(keep_last=1, keep_stages=("archived",), keep_aliased=False), {3, 5}),
]


@pytest.mark.parametrize(("policy", "deleted"), CASES)
def test_retention_table(reg, tmp_path, policy, deleted):
    six_versions(reg, tmp_path, reg.clock)
    plan = reg.plan_retention(policy)
    assert {d.version for d in plan.delete} == deleted
    assert {d.version for d in plan.keep} | deleted == set(range(1, 7))
    why = {d.version: d.reasons for d in plan.decisions}
    assert "in production (never deleted)" in why[2] and "aliased 'champion' (never deleted)" in why[4]
    applied = reg.apply_retention(RetentionPolicy(**policy), actor="janitor")
    assert applied.to_dict() == plan.to_dict()
    assert {v.version for v in reg.list_versions("m")} == set(range(1, 7)) - deleted
    assert reg.get("m", "production").version == 2 and reg.get("m", "champion").version == 4
    gone = [e for e in reg.history("m") if e.action == "version.delete"]
    assert {e.version for e in gone} == deleted and all(e.actor == "janitor" and e.details["reasons"] for e in gone)
    for v in deleted:
        with pytest.raises(NotFoundError, match=f"version {v} of 'm' was deleted at"):
            reg.get("m", v)


def test_retention_reasons_and_bad_policies(reg, tmp_path):
    six_versions(reg, tmp_path, reg.clock)
    d = {x.version: x for x in reg.plan_retention({"keep_last": 2, "max_age_days": 2.5}).decisions}
    assert d[3].delete and d[3].reasons == ("not among the newest 2 (keep_last)",
                                            "3.0 days old, at least 2.5 (max_age_days)",
                                            "stage none not in keep_stages")
    assert d[5].reasons == ("in staging (keep_stages)", "among the newest 2 (keep_last)",
                            "1.0 days old, younger than 2.5 (max_age_days)")
    for bad, path in [({}, "retention"), ({"keep_last": -1}, "retention.keep_last"),
                      ({"keep_last": 1, "keep_stages": ["prod"]}, "retention.keep_stages"),
                      ({"keep_last": 1, "keep": 3}, "retention.keep"),
                      ({"max_age_days": "old"}, "retention.max_age_days")]:
        with pytest.raises(ConfigError) as exc:
            reg.plan_retention(bad)
        assert exc.value.path == path


def test_gc_frees_exactly_the_unreferenced_bytes(reg, tmp_path):
    a, b, c = b"A" * 1000, b"B" * 2000, b"C" * 4000
    reg.register("m", write_tree(tmp_path / "1", {"a": a, "b": b}))
    reg.register("m", write_tree(tmp_path / "2", {"b": b, "c": c}))
    reg.register("n", write_tree(tmp_path / "3", {"x": a}))  # another model shares a's blob
    assert blob_count(reg) == 3 and reg.gc().bytes_freed == 0
    reg.apply_retention({"keep_last": 1}, "m")
    assert reg.gc().bytes_freed == 0  # v1's blobs a (model n) and b (v2) are still referenced
    reg.apply_retention({"keep_last": 0, "keep_stages": []}, "n")
    r = reg.gc(actor="ops")
    assert (r.bytes_freed, r.blobs_removed, blob_count(reg)) == (len(a), 1, 2)
    assert reg.history()[-1].action == "gc" and reg.history()[-1].details["bytes_freed"] == len(a)
    assert reg.verify("m", 2).version == 2


def _flaky_copy(fail_at):
    calls = {"n": 0}
    real = registry.blobs.copy_hashing

    def copy(src, dst, on_block=None):
        calls["n"] += 1
        if calls["n"] == fail_at:  # half a file reaches the temp file, then the copy dies
            data = src.read_bytes()
            dst.write_bytes(data[: len(data) // 2])
            raise OSError("disk full (simulated)")
        return real(src, dst, on_block)
    return copy


def test_interrupted_register_leaves_registry_consistent_and_gc_cleans(reg, tmp_path, monkeypatch):
    reg.register("m", write_tree(tmp_path / "ok", {"w": "keep me"}))
    before = blob_count(reg)
    src = write_tree(tmp_path / "big", {f"f{i}": bytes([i]) * (100 + i) for i in range(5)})
    monkeypatch.setattr(registry.blobs, "copy_hashing", _flaky_copy(fail_at=3))
    with pytest.raises(OSError, match="disk full"):
        reg.register("m", src)
    monkeypatch.undo()
    assert [v.version for v in reg.list_versions("m")] == [1] and reg.verify("m", 1)
    assert blob_count(reg) == before + 2 and list(reg.blobs.temps()) == []  # two whole orphans, no partial temp
    r = reg.gc()
    assert (r.blobs_removed, r.bytes_freed) == (2, 100 + 101) and blob_count(reg) == before
    assert reg.register("m", src).version == 2


def test_failed_index_transaction_rolls_back_and_gc_removes_its_manifest(reg, tmp_path, monkeypatch):
    import registry.store

    real = registry.store.log_event

    def failing(conn, time, actor, action, *rest):
        if action == "version.register":
            raise RuntimeError("crash inside the transaction")
        return real(conn, time, actor, action, *rest)
    monkeypatch.setattr(registry.store, "log_event", failing)
    with pytest.raises(RuntimeError, match="crash inside"):
        reg.register("m", write_tree(tmp_path / "a", {"w": "data"}))
    monkeypatch.undo()
    assert reg.list_models() == [] and (reg.root / "models" / "m" / "1" / "manifest.json").is_file()
    r = reg.gc()
    assert (r.blobs_removed, r.bytes_freed) == (1, 4) and not (reg.root / "models" / "m" / "1").exists()
    assert reg.register("m", tmp_path / "a").version == 1


def _killed_register(root, src):
    def die(src_, dst, on_block=None):
        dst.write_bytes(b"partial")
        os._exit(9)  # the process dies mid-copy: no cleanup runs
    registry.blobs.copy_hashing = die
    Registry(root).register("m", src)


def test_killed_register_leaves_a_temp_that_gc_removes(reg, tmp_path):
    src = write_tree(tmp_path / "src", {"w": "x" * 50})
    p = mp.get_context("fork").Process(target=_killed_register, args=(reg.root, src))
    p.start()
    p.join(30)
    assert p.exitcode == 9
    temps = list(reg.blobs.temps())
    assert len(temps) == 1 and f".{p.pid}." in temps[0].name
    assert reg.gc().temp_files_removed == 1 and list(reg.blobs.temps()) == []


def _register_many(root, src_root, worker, n, barrier):
    barrier.wait()
    with Registry(root) as r:
        for i in range(n):
            r.register("m", src_root / f"{worker}-{i}", actor=f"worker{worker}")


def test_concurrent_registrations_get_distinct_versions(reg, tmp_path):
    n = 6
    for w in range(2):
        for i in range(n):
            write_tree(tmp_path / "src" / f"{w}-{i}", {"w.bin": f"{w}/{i}", "shared": "same"})
    assert not (reg.root / "index.db").exists()  # the workers also race to create the index
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_register_many, args=(reg.root, tmp_path / "src", w, n, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    versions = reg.list_versions("m")
    assert [v.version for v in versions] == list(range(1, 2 * n + 1))
    assert len({v.content_digest for v in versions}) == 2 * n
    assert {v.creator for v in versions} == {"worker0", "worker1"}
    assert all(reg.verify("m", v.version) for v in versions)
