"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming that
ends with ``data: [DONE]``), ``GET /health``, ``GET /metrics`` (Prometheus text), ``POST /tokenize``,
``POST /detokenize`` and ``GET /tokenizer_info`` (vLLM's tokenizer endpoints, which lm-eval's ``local-completions``
uses as a remote tokenizer). With an API key every route but /health and /metrics needs
``Authorization: Bearer KEY``. Every error is OpenAI-style JSON (:mod:`serve.http_errors`). A client that goes away
mid-request has its request aborted, which frees its KV blocks. Bodies past ``max_body_bytes`` are refused (413), and
so is a request for more choices (prompts x n) than the engine can queue at once (400), before anything is tokenized.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serve import tools as tools_mod
from serve.async_engine import AsyncEngine, RequestStream, merge
from serve.engine import Engine, RequestOutput
from serve.errors import ModelNotFoundError
from serve.guarding import ChoiceGuards, checked, guard_tool_calls
from serve.http_errors import MAX_BODY_BYTES, APIError, from_lmstack, install_handlers, parse_json
from serve.metrics import ServerMetrics
from serve.openai_format import (
    TokenText,
    chat_body,
    chat_logprobs,
    completion_body,
    completion_logprobs,
    new_id,
    now,
    sse,
    usage,
)
from serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    LoadLoRARequest,
    TokenizeRequest,
    UnloadLoRARequest,
)
from serve.sampling import SamplingParams
from serve.tokens import PromptEncoder
from specs.protocols import TextGuard

OPEN_PATHS = ("/health", "/metrics")
ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/tokenizer_info",
          "/v1/load_lora_adapter", "/v1/unload_lora_adapter", *OPEN_PATHS)


class _Gate:
    """Pure-ASGI middleware: bearer-key check and request counting (works with streaming and disconnects)."""

    def __init__(self, app: Any, api_key: str | None, metrics: ServerMetrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ROUTES or path.startswith("/v1/models/") else "other"
        endpoint = "/v1/models" if endpoint.startswith("/v1/models/") else endpoint

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        if self.api_key and path not in OPEN_PATHS:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                msg = ("You didn't provide an API key. Pass it as 'Authorization: Bearer KEY'." if not auth
                       else "Incorrect API key provided.")
                await APIError(401, msg, code="invalid_api_key").response()(scope, receive, counted)
                return
        await self.app(scope, receive, counted)


class _Choice:
    """What one choice has accumulated (non-streaming responses)."""

    def __init__(self) -> None:
        self.text = ""
        self.logprobs: list[Any] = []
        self.finish_reason: str | None = None
        self.prompt_logprobs: list[Any] | None = None
        self.n_out = 0
        self.cached = 0

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.logprobs.extend(out.logprobs)
        self.n_out = out.num_output_tokens or self.n_out
        self.cached = out.num_cached_tokens
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finished:
            self.finish_reason = out.finish_reason


def build_app(engine: Engine, tokenizer: Any, *, model_name: str, api_key: str | None = None,
              max_body_bytes: int = MAX_BODY_BYTES, guard: TextGuard | None = None,
              tool_parser: str | None = None, runtime_lora: bool = False) -> FastAPI:
    """The ASGI app serving ``engine`` (started with the app, stopped at shutdown) under ``model_name``; request
    bodies larger than ``max_body_bytes`` get 413. ``guard`` checks prompts and responses (:mod:`serve.guarding`).
    ``tool_parser`` reads the model's own tool calls for ``tool_choice: auto`` (:mod:`serve.tools`: ``hermes``).
    An engine with LoRA slots also serves each adapter added to it under the adapter's name (the ``model`` field
    picks it); ``runtime_lora`` adds vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``."""
    parse_calls = tools_mod.tool_parser(tool_parser) if tool_parser else None
    aengine = AsyncEngine(engine)
    metrics = ServerMetrics(engine, model_name)
    encoder = PromptEncoder(tokenizer)
    tok_text = TokenText(tokenizer)
    created = now()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        aengine.start()
        try:
            yield
        finally:
            aengine.shutdown()

    app = FastAPI(title="lmstack serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_handlers(app)
    app.add_middleware(_Gate, api_key=api_key, metrics=metrics)
    app.state.engine, app.state.metrics = engine, metrics

    def check_model(name: str) -> str | None:
        """The LoRA adapter ``name`` asks for (None: the base model); 404 for a name not served here."""
        if name == model_name:
            return None
        if engine.adapters is not None and engine.adapters.get(name) is not None:
            return name
        served = [model_name, *(engine.adapters.names() if engine.adapters is not None else [])]
        raise ModelNotFoundError(f"The model '{name}' does not exist; this server serves "
                                 f"{', '.join(repr(n) for n in served)}")

    async def body(request: Request) -> Any:
        return await parse_json(request, max_body_bytes)

    def check_choices(n_prompts: int, n: int) -> None:
        """400 for more choices than the engine's waiting queue holds: such a request could never be taken, and
        a 429 would have clients retry it forever."""
        if n_prompts * n > engine.max_waiting:
            param = "n" if n > 1 else "prompt"
            what = f"{n_prompts} prompts x n={n}" if n_prompts > 1 else f"n={n}"
            raise APIError(400, f"{what} asks for {n_prompts * n} choices, but this server takes at most "
                                f"{engine.max_waiting} in one request; send fewer prompts or a smaller n",
                           param=param, code="invalid_value")

    def guarded_prompt(prompt: str | list[int], param: str) -> list[int]:
        """A completion prompt's ids, after the guard (a token prompt is checked as its text, re-encoded only
        when the guard changed that text)."""
        if isinstance(prompt, str):
            return encoder.encode(checked(guard, prompt, param))
        ids = [int(t) for t in prompt]
        if guard is None or not ids:
            return ids
        text = tokenizer.decode(ids)
        out = checked(guard, text, param)
        return ids if out == text else encoder.encode(out)

    def submit_all(plans: list[tuple[list[int], SamplingParams]], adapter: str | None) -> list[RequestStream]:
        for ids, params in plans:  # reject the whole request before any part of it starts
            engine.check_request(ids, params)
        streams: list[RequestStream] = []
        try:
            for ids, params in plans:
                streams.append(aengine.submit(ids, params, adapter=adapter))
        except BaseException:
            for s in streams:
                s.abort()
            raise
        return streams

    def observe(out: RequestOutput, clock: dict[int, float], i: int, start: float) -> None:
        t = time.monotonic()
        if out.token_ids:
            if i not in clock:
                metrics.ttft.observe(t - start)
            else:
                metrics.itl.observe(t - clock[i])
            clock[i] = t
        if out.finished:
            metrics.e2e.observe(t - start)

    def failure(out: RequestOutput) -> APIError:
        """The API error of a request that failed inside the engine."""
        return from_lmstack(out.error) if out.error is not None else APIError(500, "generation failed",
                                                                             type="server_error")

    def error_event(out: RequestOutput) -> str:
        """The SSE event that ends a stream whose request failed (the same error a non-streaming call gets)."""
        err = failure(out)
        return sse({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}})

    def raise_failed(out: RequestOutput) -> None:
        if out.finish_reason == "error":
            raise failure(out)

    async def run_all(request: Request, streams: list[RequestStream]) -> list[_Choice]:
        choices = [_Choice() for _ in streams]
        clock: dict[int, float] = {}
        start = time.monotonic()
        gens = [s.outputs(is_disconnected=request.is_disconnected) for s in streams]
        async with contextlib.aclosing(merge(gens)) as merged:
            async for i, out in merged:
                raise_failed(out)
                observe(out, clock, i, start)
                choices[i].add(out)
        if any(c.finish_reason is None for c in choices):
            raise APIError(499, "client closed the request", code="client_closed")
        return choices

    def stream(gen: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- completions --------------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = CompletionRequest.model_validate(await body(request))
        adapter = check_model(req.model)
        check_choices(len(req.prompts()), req.n)
        prompts = [guarded_prompt(p, f"prompt[{i}]" if len(req.prompts()) > 1 else "prompt")
                   for i, p in enumerate(req.prompts())]
        for i, ids in enumerate(prompts):
            if not ids:
                name = f"prompt[{i}]" if isinstance(req.prompt, list) else "prompt"  # a list of prompts
                raise APIError(400, f"{name} is empty; at least one token is needed", param="prompt",
                               code="invalid_value")
        prompt_lp = req.logprobs if req.echo and req.logprobs is not None else None
        plans = []
        for ids in prompts:
            max_new = req.max_tokens if req.max_tokens is not None else max(engine.max_seq_len - len(ids), 0)
            for j in range(req.n):
                plans.append((ids, req.sampling_params(max_new, seed_offset=j, logprobs=req.logprobs,
                                                       prompt_logprobs=prompt_lp)))
        streams = submit_all(plans, adapter)
        rid, t0 = new_id("cmpl"), now()
        prompt_of = [ids for ids in prompts for _ in range(req.n)]
        n_prompt = sum(len(p) for p in prompts)

        def lp_body(i: int, echo_ids: list[int] | None, prompt_lps: Any, out_lps: Any) -> Any:
            if req.logprobs is None:
                return None
            return completion_logprobs(tok_text, echo_ids, prompt_lps, out_lps)

        outs = ChoiceGuards(guard, len(streams))
        if not req.stream:
            results = await run_all(request, streams)
            choices = []
            for i, c in enumerate(results):
                echo_ids = prompt_of[i] if req.echo else None
                out_text, stopped = outs.text(i, c.text, True)
                text = (tokenizer.decode(prompt_of[i]) if req.echo else "") + out_text
                choices.append({"index": i, "text": text, "logprobs": lp_body(i, echo_ids, c.prompt_logprobs,
                                                                               c.logprobs),
                                "finish_reason": "content_filter" if stopped else c.finish_reason})
            use = usage(n_prompt, sum(c.n_out for c in results), sum(c.cached for c in results[::req.n]))
            return JSONResponse(completion_body(rid, req.model, t0, choices, use))

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            clock: dict[int, float] = {}
            start = time.monotonic()
            n_out = [0] * len(streams)
            echoed: set[int] = set()
            filtered: set[int] = set()
            try:
                async with contextlib.aclosing(merge([s.outputs() for s in streams])) as merged:
                    async for i, out in merged:
                        if i in filtered:
                            continue
                        if out.finish_reason == "error":
                            yield error_event(out)
                            break
                        observe(out, clock, i, start)
                        n_out[i] = out.num_output_tokens or n_out[i]
                        text, stopped = outs.text(i, out.text, out.finished)
                        echo_ids = None
                        if req.echo and i not in echoed:
                            echoed.add(i)
                            text = tokenizer.decode(prompt_of[i]) + text
                            echo_ids = prompt_of[i]
                        lps = lp_body(i, echo_ids, out.prompt_logprobs, out.logprobs)
                        if stopped:  # the guard ended this choice: no more of it is generated or sent
                            filtered.add(i)
                            streams[i].abort()
                        if text or lps or out.finished or stopped:
                            reason = "content_filter" if stopped else out.finish_reason if out.finished else None
                            choice = {"index": i, "text": text, "logprobs": lps, "finish_reason": reason}
                            yield sse(completion_body(rid, req.model, t0, [choice], None, chunk=True))
                if include_usage:
                    yield sse(completion_body(rid, req.model, t0, [], usage(n_prompt, sum(n_out)), chunk=True))
                yield sse("[DONE]")
            finally:
                for s in streams:
                    s.abort()

        return stream(events())

    # --- chat completions ---------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = ChatCompletionRequest.model_validate(await body(request))
        adapter = check_model(req.model)
        check_choices(1, req.n)
        messages = [m.as_template_dict() for m in req.messages]
        for k, m in enumerate(messages):
            m["content"] = checked(guard, m["content"], f"messages[{k}].content") if m["content"] else m["content"]
        tool_list, tool_choice = req.tool_dicts()
        tools = tools_mod.plan(tool_list, tool_choice, req.parallel_tool_calls, parse_calls)
        if tools.structured is not None and req.structured() is not None:
            raise APIError(400, "a tool_choice that calls a function constrains the output itself; drop "
                                "response_format / structured_outputs", param="tool_choice", code="invalid_value")
        ids = encoder.chat(messages, add_generation_prompt=req.add_generation_prompt, tools=tools.tools)
        max_new = req.max_completion_tokens or req.max_tokens or max(engine.max_seq_len - len(ids), 0)
        top_n = (req.top_logprobs or 0) if req.logprobs else None

        def params(j: int) -> SamplingParams:
            p = req.sampling_params(max_new, seed_offset=j, logprobs=top_n)
            return p.replace(structured=tools.structured) if tools.structured is not None else p

        streams = submit_all([(ids, params(j)) for j in range(req.n)], adapter)
        rid, t0 = new_id("chatcmpl"), now()

        outs = ChoiceGuards(guard, len(streams))
        if not req.stream:
            results = await run_all(request, streams)
            choices = []
            for i, c in enumerate(results):
                text, stopped = outs.text(i, c.text, True)
                message, called = tools.message(text) if tools.active and not stopped else (
                    {"role": "assistant", "content": text}, False)
                message, refused = guard_tool_calls(guard, message)
                choices.append({"index": i, "message": message,
                                "logprobs": chat_logprobs(tok_text, c.logprobs, top_n) if top_n is not None else None,
                                "finish_reason": "content_filter" if stopped or refused else
                                tools.finish_reason(c.finish_reason, called)})
            use = usage(len(ids), sum(c.n_out for c in results), results[0].cached)
            return JSONResponse(chat_body(rid, req.model, t0, choices, use))

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], use: dict[str, Any] | None = None) -> str:
            return sse(chat_body(rid, req.model, t0, choices, use, chunk=True, include_usage=include_usage))

        async def events() -> AsyncIterator[str]:
            clock: dict[int, float] = {}
            start = time.monotonic()
            n_out = [0] * len(streams)
            filtered: set[int] = set()
            held = [""] * len(streams)  # with tools: a choice's text, sent whole when it ends (serve.tools)
            autos = [tools.stream() for _ in streams]  # auto with a parser: content streams until a call begins
            try:
                for i in range(len(streams)):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}])
                async with contextlib.aclosing(merge([s.outputs() for s in streams])) as merged:
                    async for i, out in merged:
                        if i in filtered:
                            continue
                        if out.finish_reason == "error":
                            yield error_event(out)
                            break
                        observe(out, clock, i, start)
                        n_out[i] = out.num_output_tokens or n_out[i]
                        text, stopped = outs.text(i, out.text, out.finished)
                        lps = chat_logprobs(tok_text, out.logprobs, top_n) if top_n is not None and out.logprobs \
                            else None
                        if stopped:  # the guard ended this choice: no more of it is generated or sent
                            filtered.add(i)
                            streams[i].abort()
                        if tools.active and not stopped and autos[i] is not None:
                            content = autos[i].feed(text)
                            if content or lps:
                                yield chunk([{"index": i, "delta": {"content": content} if content else {},
                                              "logprobs": lps, "finish_reason": None}])
                            if out.finished:
                                message, called = tools.streamed_message(*autos[i].finish())
                                message, refused = guard_tool_calls(guard, message)
                                reason = "content_filter" if refused else tools.finish_reason(out.finish_reason, called)
                                yield chunk([{"index": i, "delta": tools_mod.stream_delta(message), "logprobs": None,
                                              "finish_reason": reason}])
                            continue
                        if tools.active and not stopped:
                            held[i] += text
                            if lps:
                                yield chunk([{"index": i, "delta": {}, "logprobs": lps, "finish_reason": None}])
                            if out.finished:
                                message, called = tools.message(held[i])
                                message, refused = guard_tool_calls(guard, message)
                                reason = "content_filter" if refused else tools.finish_reason(out.finish_reason, called)
                                yield chunk([{"index": i, "delta": tools_mod.stream_delta(message), "logprobs": None,
                                              "finish_reason": reason}])
                            continue
                        if text or lps or out.finished or stopped:
                            reason = "content_filter" if stopped else out.finish_reason if out.finished else None
                            yield chunk([{"index": i, "delta": {"content": text} if text else {}, "logprobs": lps,
                                          "finish_reason": reason}])
                if include_usage:
                    yield chunk([], usage(len(ids), sum(n_out)))
                yield sse("[DONE]")
            finally:
                for s in streams:
                    s.abort()

        return stream(events())

    # --- models, tokenizer, health, metrics -----------------------------------------------------------------
    def model_card(name: str | None = None) -> dict[str, Any]:
        """vLLM's model objects: the base model's ``root`` is its own name; an adapter's is its directory and its
        ``parent`` the base model."""
        lora = None if name is None or engine.adapters is None else engine.adapters.get(name)
        if lora is None:
            return {"id": model_name, "object": "model", "created": created, "owned_by": "lmstack",
                    "root": model_name, "parent": None, "max_model_len": engine.max_seq_len}
        return {"id": lora.name, "object": "model", "created": created, "owned_by": "lmstack", "root": lora.path,
                "parent": model_name, "max_model_len": engine.max_seq_len}

    @app.get("/v1/models")
    async def models() -> Any:
        names = [a.name for a in engine.adapters.listed()] if engine.adapters is not None else []
        return {"object": "list", "data": [model_card(), *(model_card(n) for n in names)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> Any:
        return model_card(check_model(name))

    if runtime_lora:
        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request) -> Any:
            req = LoadLoRARequest.model_validate(await body(request))
            if req.lora_name == model_name:
                raise APIError(400, f"'{req.lora_name}' is the base model's name; choose another lora_name",
                               param="lora_name", code="invalid_value")
            await asyncio.to_thread(engine.add_adapter, req.lora_name, req.lora_path)  # reads the files
            return Response(f"Success: LoRA adapter '{req.lora_name}' added successfully.", media_type="text/plain")

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: Request) -> Any:
            req = UnloadLoRARequest.model_validate(await body(request))
            if engine.adapters is None or engine.adapters.get(req.lora_name) is None:
                raise APIError(404, f"The LoRA adapter '{req.lora_name}' cannot be found.", param="lora_name",
                               code="not_found")
            engine.remove_adapter(req.lora_name)
            return Response(f"Success: LoRA adapter '{req.lora_name}' removed successfully.",
                            media_type="text/plain")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        req = TokenizeRequest.model_validate(await body(request))
        if req.model is not None:
            check_model(req.model)
        if req.messages is not None:
            ids = encoder.chat([m.as_template_dict() for m in req.messages],
                               add_generation_prompt=req.add_generation_prompt)
        else:
            ids = encoder.encode(req.prompt or "", add_bos=req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_seq_len}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        req = DetokenizeRequest.model_validate(await body(request))
        bad = [t for t in req.tokens if not 0 <= t < engine.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {engine.vocab_size})",
                           param="tokens", code="invalid_value")
        return {"prompt": tokenizer.decode(req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> Any:
        def text(tid: int | None) -> str | None:
            return None if tid is None else encoder.token_text(tid)

        return {"tokenizer_class": type(tokenizer).__name__, "eos_token": text(tokenizer.eos_id),
                "bos_token": text(tokenizer.bos_id), "pad_token": text(tokenizer.pad_id),
                "chat_template": getattr(tokenizer, "chat_template", None), "model_max_length": engine.max_seq_len,
                "vocab_size": tokenizer.vocab_size}

    @app.get("/health")
    async def health() -> Any:
        alive = engine.is_running()
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
