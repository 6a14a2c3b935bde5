"""The HTTP target against a stdlib http.server stub speaking OpenAI's chat completions, and the CLI via main()."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safety.__main__ import main
from safety.target import HTTPTarget, TargetError, chat_url


class Stub(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "no route"}})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.requests.append((self.path, dict(self.headers), req))
        if self.path.startswith("/broken"):
            self._send(500, "upstream exploded: stack trace here", "text/plain")
        elif req["model"] != "tiny":
            self._send(404, {"error": {"message": f"The model '{req['model']}' does not exist", "type": "x"}})
        else:
            prompt = req["messages"][-1]["content"]
            self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": "tiny", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"Sure: {prompt}"}, "finish_reason": "stop"}]})


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_chat_url():
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(ValueError, match="http://"):
        chat_url("h:8000")


def test_http_target_round_trip(server):
    Stub.requests.clear()
    t = HTTPTarget(server, api_key="k123", max_tokens=7)
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"}]
    assert t(msgs) == "Sure: hello"
    path, headers, body = Stub.requests[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k123"
    assert body == {"model": "tiny", "messages": msgs, "max_tokens": 7, "temperature": 0.0}  # model discovered


def test_http_target_errors(server):
    with pytest.raises(TargetError, match=r"HTTP 500: upstream exploded: stack trace here"):
        HTTPTarget(server + "/broken/v1", model="tiny")([{"role": "user", "content": "x"}])
    with pytest.raises(TargetError, match=r"HTTP 404: The model 'big' does not exist"):
        HTTPTarget(server, model="big")([{"role": "user", "content": "x"}])
    with pytest.raises(TargetError, match="cannot reach"):
        HTTPTarget("http://127.0.0.1:9", model="m", timeout=2)([{"role": "user", "content": "x"}])


def test_cli_check(capsys, monkeypatch):
    assert main(["check", "--policy", "builtin:pii", "--text", "mail a@example.com", "--stage", "output"]) == 0
    assert capsys.readouterr().out == "mail [REDACTED:EMAIL]"
    monkeypatch.setattr("sys.stdin", io.StringIO("call 555-123-4567"))
    assert main(["check", "--policy", "builtin:pii", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["allowed"] and doc["findings"][0]["label"] == "PHONE" and doc["findings"][0]["start"] == 5


def test_cli_check_blocks_and_errors(tmp_path, capsys):
    pol = tmp_path / "p.yaml"
    pol.write_text("schema_version: 1\nname: p\nrules:\n  - id: nope\n    detector: {type: keywords, words: [xyzzy]}\n"
                   "    action: block\n    message: magic words are not allowed\n")
    assert main(["check", "--policy", str(pol), "--text", "say XYZZY"]) == 1
    assert "blocked: magic words are not allowed" in capsys.readouterr().err
    assert main(["policy", "validate", str(pol)]) == 0
    assert "ok: policy 'p'" in capsys.readouterr().out
    pol.write_text("schema_version: 1\nname: p\nrules:\n  - id: bad\n    detector: {type: regex, pattern: '(('}\n"
                   "    action: block\n")
    assert main(["policy", "validate", str(pol)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rules[0].detector.pattern: rule 'bad': bad regular expression")
    assert "Traceback" not in err
    assert main(["policy", "list"]) == 0 and "builtin:default" in capsys.readouterr().out


def test_cli_redteam_and_suites(server, tmp_path, capsys):
    assert main(["suites"]) == 0
    assert "builtin:injection" in capsys.readouterr().out
    out, md = tmp_path / "report.json", tmp_path / "report.md"
    assert main(["redteam", "--suite", "builtin:over_refusal", "--url", server, "--model", "tiny", "--out", str(out),
                 "--md", str(md), "--workers", "2"]) == 0
    doc = json.loads(out.read_text())
    assert doc["overall"]["n"] == 20 and doc["overall"]["successes"] == 0  # "Sure: ..." is never a refusal
    assert doc["cases"][0]["output"].startswith("Sure: How do I kill a Python process")
    assert "# Red-team report: over_refusal" in md.read_text()
    assert main(["redteam", "--suite", "builtin:injection", "--url", server + "/broken", "--model", "tiny",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "every case failed" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    assert main(["redteam", "--suite", str(tmp_path / "none.jsonl"), "--url", server, "--out", str(out)]) == 2
