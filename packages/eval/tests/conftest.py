"""Shared fixtures: a tiny random TransformerLM, a small BPE tokenizer, and a checkpoint directory holding both."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
import torch

TEXT = ("The quick brown fox jumps over the lazy dog. Naïve café déjà vu — 東京 ✓. Question: Answer: " * 3 +
        "Serving language models means decoding tokens fast and freeing memory early.\n") * 20


def pytest_configure(config):
    # Tiny matmuls on a shared 2-core machine: one intra-op thread avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture
def fails_with(capsys):
    """``fails_with(argv, message, commands=SUBCOMMANDS)``: ``python -m eval.bench argv`` exits with status 2 (an
    ``error:`` line or an argparse usage error), ``message`` in its stderr, no traceback and no JSON printed; returns
    the stderr."""
    from eval.bench import SUBCOMMANDS
    from eval.bench.__main__ import main

    def check(argv, message, commands=SUBCOMMANDS):
        try:
            code = main(argv, commands)
        except SystemExit as exc:  # argparse rejected an option
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert message in err and "Traceback" not in err and out == "", (argv, err)
        return err

    return check


@pytest.fixture(scope="session")
def tokenizer():
    from data.tokenizer import train_bpe

    return train_bpe([TEXT], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def tiny_lm():
    from model.lm import TransformerLM
    from specs.presets import preset

    torch.manual_seed(0)
    return TransformerLM(preset("llama-debug", vocab_size=300, init_std=0.1)).eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_lm, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    tiny_lm.save_pretrained(root / "tiny")
    tokenizer.save(root / "tok")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "tiny" / f.name)
    return root / "tiny"


@pytest.fixture(scope="session")
def server(checkpoint):
    """Base URL of a live lmstack server (uvicorn in a thread) serving ``checkpoint`` as model 'tiny'."""
    import uvicorn

    from serve.engine import Engine
    from serve.loading import load_model, load_tokenizer
    from serve.server import build_app
    from specs.config import ServeConfig

    model = load_model(checkpoint, device="cpu", dtype="fp32")
    tok = load_tokenizer(checkpoint)
    app = build_app(Engine(model, tok, ServeConfig(max_batch_size=8, block_size=8, num_blocks=128)), tok,
                    model_name="tiny")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()
