"""``python -m registry`` end to end: every command through main(argv), exit codes, and one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import checkpoint, write_tree

from registry.__main__ import main


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMSTACK_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("LMSTACK_ACTOR", "ci")

    def run(*argv, code=0):
        rc = main([*map(str, argv)])
        out, err = capsys.readouterr()
        assert rc == code, (out, err)
        return out if code == 0 else err
    return run


def test_cli_end_to_end(cli, tmp_path):
    src = checkpoint(tmp_path / "ck", seed=1)
    assert "registered llama v1 (6 files" in cli("register", "llama", src, "--metadata", '{"eval": {"ppl": 12}}',
                                                 "--tag", "base")
    assert "llama v1 unchanged" in cli("register", "llama", src, "--metadata", '{"eval": {"ppl": 12}}', "--tag", "base")
    (tmp_path / "meta.json").write_text('{"eval": {"ppl": 30}}')
    doc = json.loads(cli("--json", "register", "llama", checkpoint(tmp_path / "ck2", seed=2), "--metadata",
                         f"@{tmp_path / 'meta.json'}", "--parent", "1"))
    assert doc["version"] == 2 and doc["parent"] == 1 and doc["creator"] == "ci"
    models = json.loads(cli("--json", "list"))
    assert [(m["name"], m["versions"], m["latest"]) for m in models] == [("llama", 2, 2)]
    assert "v2" in cli("list", "llama") and "config.json" in cli("show", "llama", "1")
    cli("keygen", tmp_path / "keys")
    assert "signed llama 1" in cli("sign", "llama", "1", "--key", tmp_path / "keys" / "ed25519.pem")
    pub = tmp_path / "keys" / "ed25519.pub.pem"
    assert "signature by" in cli("verify", "llama", "1", "--pubkey", pub)
    err = cli("promote", "llama", "2", "production", "--reason", "r", "--require", "eval.ppl<=20", code=2)
    assert err.startswith("error: ") and "eval.ppl = 30 is above the gate's maximum 20" in err and err.count("\n") == 1
    assert "v1 is now in production" in cli("promote", "llama", "1", "production", "--reason", "ok", "--require",
                                            "eval.ppl<=20", "--require-signature", "--pubkey", pub)
    cli("alias", "llama", "champion", "2")
    assert json.loads(cli("--json", "show", "llama", "champion"))["version"] == 2
    out = tmp_path / "out"
    assert "every file's sha256 verified" in cli("checkout", "llama", "production", out)
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (src / "tokenizer" / "tokenizer.json").read_bytes()
    assert "non-empty directory" in cli("checkout", "llama", "2", out, code=2)
    cli("checkout", "llama", "2", out, "--force")
    cli("alias", "llama", "champion", "--delete")
    plan = json.loads(cli("--json", "retention", "--keep-last", "0"))
    assert not plan["applied"] and [d["version"] for d in plan["delete"]] == [2]
    assert len(json.loads(cli("--json", "list", "llama"))) == 2  # a dry run deletes nothing
    assert "llama v2" in cli("retention", "llama", "--keep-last", "0", "--apply")
    assert json.loads(cli("--json", "gc"))["bytes_freed"] > 0
    events = json.loads(cli("--json", "history", "llama"))
    assert [e["action"] for e in events] == ["model.create", "version.register", "version.register", "version.sign",
                                             "version.stage", "alias.set", "alias.delete", "version.delete"]
    assert all(e["actor"] == "ci" for e in events)


def test_cli_user_errors(cli, tmp_path):
    assert "no registry at" in cli("list", code=2)
    cli("register", "m", write_tree(tmp_path / "a", {"w": "1"}))
    assert "unknown model 'x'; known models: m" in cli("show", "x", code=2)
    assert "unknown ref 'prod'" in cli("show", "m", "prod", code=2)
    assert "valid stages: none, staging, production, archived" in cli("promote", "m", "1", "prod", "--reason", "r",
                                                                        code=2)
    assert "expected KEY<=NUMBER" in cli("promote", "m", "1", "staging", "--reason", "r", "--require", "ppl<20", code=2)
    assert "retention: a policy needs keep_last or max_age_days" in cli("retention", code=2)
    assert "no such file or directory" in cli("register", "m", tmp_path / "missing", code=2)
    assert "sign needs --key" in cli("sign", "m", "1", code=2)


def test_module_runs_as_a_process(tmp_path):
    env = {"LMSTACK_REGISTRY": str(tmp_path / "reg"), "PATH": "/usr/bin:/bin"}
    write_tree(tmp_path / "a", {"w": "1"})
    ok = subprocess.run([sys.executable, "-m", "registry", "--json", "register", "m", str(tmp_path / "a")],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["version"] == 1
    bad = subprocess.run([sys.executable, "-m", "registry", "show", "nope"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr == "error: unknown model 'nope'; known models: m\n" and not bad.stdout
