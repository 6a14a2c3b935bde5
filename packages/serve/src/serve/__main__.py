"""``python -m serve --model DIR [--host 127.0.0.1 --port 8000 --api-key KEY]``: the OpenAI-compatible server.

Loads the checkpoint in DIR (lmstack or Hugging Face Llama/GPT-2) and the tokenizer saved beside it (or
``--tokenizer SPEC``), starts the continuous-batching engine and serves /v1/completions, /v1/chat/completions,
/v1/models, /tokenize, /health and /metrics with uvicorn. Binds 127.0.0.1 unless told otherwise. The API key may
also come from the LMSTACK_API_KEY environment variable (keeps it out of the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from specs.cli import run_cli
from specs.config import ServeConfig
from specs.errors import ConfigError
from specs.sources import local_path, source_name


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (lmstack or Hugging Face Llama/GPT-2), or a "
                   "source such as registry:NAME@production (lmstack-registry)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter directory (PEFT's files) merged into --model's "
                                                   "weights at load; the served name defaults to its directory's")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec or path (default: the one saved in --model)")
    p.add_argument("--host", default=d.host, help="interface to bind; 0.0.0.0 exposes the server to the network")
    p.add_argument("--port", type=int, default=d.port, help="TCP port (0 picks a free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set LMSTACK_API_KEY)")
    p.add_argument("--model-name", default=None, help="name clients use in 'model' (default: the directory name)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="requests decoded together")
    p.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV-cache block")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="KV-cache blocks (default: max-batch-size full-length sequences)")
    p.add_argument("--max-seq-len", type=int, default=None, help="context limit (default and most: the model's)")
    p.add_argument("--no-prefix-caching", action="store_true", help="do not share cached prompt prefixes")
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--guard", default=None, help="guardrails: NAME[:ARG] of an lmstack.guards plugin, e.g. "
                   "policy:builtin:default (lmstack-safety's policies) or policy:my_policy.yaml")
    p.add_argument("--tool-call-parser", default=None, help="read the model's own tool calls for tool_choice auto "
                   "(vLLM's flag): hermes (<tool_call> JSON blocks: Hermes, Qwen 2.5), or an lmstack.tool_parsers "
                   "plugin")
    lora = p.add_argument_group("LoRA adapters per request (vLLM's flags)")
    lora.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters beside the base model; a "
                      "request picks one by its name in 'model' (implied by --lora-modules)")
    lora.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                      help="adapters to serve (PEFT's files), as NAME=PATH or JSON {\"name\": ..., \"path\": ...}")
    lora.add_argument("--max-loras", type=int, default=1, help="adapters in one batch (adapter slots on the device)")
    lora.add_argument("--max-lora-rank", type=int, default=16, help="the largest adapter rank served")
    lora.add_argument("--lora-target-modules", nargs="+", default=None, metavar="NAME",
                      help="the layers adapters may adapt (default: q/k/v/o_proj and gate/up/down_proj); fewer "
                      "layers make every step cheaper")
    lora.add_argument("--allow-runtime-lora-updating", action="store_true",
                      help="add POST /v1/load_lora_adapter and /v1/unload_lora_adapter (they read server paths: "
                      "enable only for trusted clients)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def check_bind(host: str, port: int) -> None:
    """Fail before the model loads (it can take minutes) when uvicorn could not listen on ``host:port``: a host
    that does not resolve to this machine, or a port another process holds. A port that frees up or is taken in
    between is then uvicorn's to report."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError("serve.host", f"{host!r} does not resolve ({exc.strerror}); expected an address of this "
                                        "machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(address)
        except OSError as exc:
            raise ConfigError("serve.port", f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another "
                                            "--port (0 picks a free one) or --host") from None


def parse_lora_modules(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` or vLLM's JSON form ``{"name": ..., "path": ...}`` -> (name, path) pairs (ConfigError naming
    the bad one)."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        if spec.lstrip().startswith("{"):
            try:
                obj = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise ConfigError("--lora-modules", f"{spec!r} is not valid JSON: {exc}") from None
            name, path = (obj.get("name"), obj.get("path")) if isinstance(obj, dict) else (None, None)
        else:
            name, _, path = spec.partition("=")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ConfigError("--lora-modules", f"{spec!r}: expected NAME=PATH or {{\"name\": ..., \"path\": ...}}")
        if name in (n for n, _ in pairs):
            raise ConfigError("--lora-modules", f"the name {name!r} is given twice")
        pairs.append((name, path))
    return pairs


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    loras = parse_lora_modules(args.lora_modules)
    enable_lora = args.enable_lora or bool(loras)
    if args.allow_runtime_lora_updating and not enable_lora:
        raise ConfigError("--allow-runtime-lora-updating", "needs --enable-lora (adapter slots to load into)")
    cfg = ServeConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("LMSTACK_API_KEY"),
                      model_name=args.model_name, max_batch_size=args.max_batch_size, block_size=args.block_size,
                      num_blocks=args.num_blocks, max_seq_len=args.max_seq_len,
                      prefix_caching=not args.no_prefix_caching, dtype=args.dtype, device=args.device,
                      guard=args.guard)
    check_bind(cfg.host, cfg.port)
    import uvicorn

    from serve.engine import Engine
    from serve.guarding import load_guard
    from serve.loading import check_adapter, load_model, load_tokenizer, merge_adapter
    from serve.server import build_app

    guard = load_guard(cfg.guard)  # before the model loads: a bad policy fails in seconds
    if args.tool_call_parser:
        from serve.tools import tool_parser

        tool_parser(args.tool_call_parser)  # an unknown parser fails before the model loads too
    if args.adapter is not None:
        check_adapter(args.adapter)
    for _, path in loras:  # a missing or unsupported adapter fails before the model loads
        check_adapter(path)
    model_dir = local_path(args.model)  # a directory, or a source such as registry:NAME@production
    model = load_model(model_dir, device=cfg.device, dtype=cfg.dtype)
    if args.adapter is not None:
        print(f"merged the LoRA adapter {args.adapter} into {merge_adapter(model, args.adapter)} layers",
              file=sys.stderr)
    try:
        tokenizer = load_tokenizer(args.tokenizer or model_dir)
    except ConfigError as exc:
        raise ConfigError("tokenizer", f"no tokenizer for {args.model} ({exc}); pass --tokenizer SPEC "
                                       "(e.g. 'byte' or a tokenizer.json path)") from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError("tokenizer", f"vocab_size {tokenizer.vocab_size} exceeds the model's "
                                       f"{model.config.vocab_size}")
    engine = Engine(model, tokenizer, cfg, max_loras=args.max_loras if enable_lora else 0,
                    max_lora_rank=args.max_lora_rank, lora_targets=args.lora_target_modules)
    name = cfg.model_name or (Path(args.adapter).resolve().name if args.adapter else source_name(args.model))
    for lora_name, path in loras:
        if lora_name == name:
            raise ConfigError("--lora-modules", f"{lora_name!r} is the base model's served name; choose another")
        engine.add_adapter(lora_name, path)
    app = build_app(engine, tokenizer, model_name=name, api_key=cfg.api_key, guard=guard,
                    tool_parser=args.tool_call_parser, runtime_lora=args.allow_runtime_lora_updating)
    print(f"serving {name!r} on http://{cfg.host}:{cfg.port} ({engine.num_blocks} KV blocks of {cfg.block_size})"
          + (f", guarded by {guard.name}" if guard is not None else "")
          + (f", LoRA adapters {[n for n, _ in loras]} in {args.max_loras} slots" if enable_lora else ""),
          file=sys.stderr)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
