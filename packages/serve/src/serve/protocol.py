"""Request schemas of the OpenAI-compatible API (completions, chat completions, tokenize) and their mapping to
SamplingParams.

Field names, defaults and ranges follow the OpenAI API reference (legacy completions: ``max_tokens`` 16,
``logprobs`` <= 5, ``echo``; chat: ``logprobs`` bool + ``top_logprobs`` <= 20, ``max_completion_tokens``). A few
vLLM extensions are accepted (``top_k``, ``min_p``, ``repetition_penalty``, ``stop_token_ids``, ``ignore_eos``,
``structured_outputs``). ``response_format`` (``json_object``, ``json_schema``) constrains decoding
(:mod:`serve.structured`).
Unknown fields are rejected (``extra="forbid"``), as OpenAI rejects them ("Unrecognized request argument").
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.sampling import SamplingParams, StructuredOutput

Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


def _invalid(param: str, message: str) -> PydanticCustomError:
    """A cross-field error that names ``param`` (``serve.http_errors.from_validation`` reads it from ctx)."""
    return PydanticCustomError("invalid_field", "{message}", {"param": param, "message": message})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class JSONSchemaFormat(_Strict):
    """OpenAI's ``response_format.json_schema``: a named JSON Schema the output must match."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: ``text``, ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _needs_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise _invalid("response_format", "response_format of type json_schema needs a json_schema object")
        return self


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs``: exactly one of a JSON Schema (an object or its JSON text), ``json_object``,
    a regular expression, a choice of strings, or an EBNF grammar."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    disable_any_whitespace: bool = False

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [k for k, v in (("json", self.json_), ("json_object", self.json_object), ("regex", self.regex),
                                ("choice", self.choice), ("grammar", self.grammar)) if v]
        if len(given) != 1:
            raise _invalid("structured_outputs", f"structured_outputs takes exactly one of json, json_object, regex, "
                                                 f"choice, grammar; got {', '.join(given) or 'none'}")
        if self.choice is not None and not all(self.choice):
            raise _invalid("structured_outputs", "structured_outputs.choice must hold non-empty strings")
        return self


class _Sampling(_Strict):
    model: str
    n: Annotated[int, Field(ge=1, le=128)] = 1
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None  # int64; choice i of n uses seed + i
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM extensions
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None  # vLLM's extension: regex, choice, grammar, ...

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if v == "" or (isinstance(v, list) and any(s == "" for s in v)):
            raise ValueError("stop sequences must be non-empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("logit_bias is not supported by this server")
        return v

    @model_validator(mode="after")
    def _stream_opts(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise _invalid("stream_options", "stream_options is only allowed when stream is true")
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise _invalid("structured_outputs", "give either response_format or structured_outputs, not both")
        return self

    def structured(self) -> StructuredOutput | None:
        """The constraint these fields ask for, or None (``response_format`` text or absent)."""
        rf, so = self.response_format, self.structured_outputs
        if so is not None:
            ws = not so.disable_any_whitespace
            if so.json_ is not None:
                text = so.json_ if isinstance(so.json_, str) else json.dumps(so.json_)
                return StructuredOutput(json=text, whitespace=ws)
            if so.json_object:
                return StructuredOutput(json='{"type": "object"}', whitespace=ws)
            return StructuredOutput(regex=so.regex, choice=tuple(so.choice or ()), grammar=so.grammar)
        if rf is None or rf.type == "text":
            return None
        # response_format's JSON is compact, as json.dumps writes it (", " and ": "): whitespace cannot run away
        if rf.type == "json_object":
            return StructuredOutput(json='{"type": "object"}', whitespace=False)
        schema = rf.json_schema.schema_ if rf.json_schema is not None else None
        return StructuredOutput(json=json.dumps(schema if schema is not None else {"type": "object"}),
                                whitespace=False)

    def sampling_params(self, max_new_tokens: int, *, seed_offset: int = 0, logprobs: int | None = None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=1.0 if self.temperature is None else float(self.temperature),
            top_p=1.0 if self.top_p is None else float(self.top_p),
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=None if self.seed is None else self.seed + seed_offset,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            structured=self.structured(),
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) == 0:
            raise ValueError("prompt must not be an empty list")
        return v

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise _invalid("best_of", "best_of different from n is not supported")
        if self.suffix:
            raise _invalid("suffix", "suffix is not supported")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # tool_calls etc. pass through to the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None  # required; null (an assistant turn with tool_calls) renders as ""
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _tool_call_turns(cls, data: Any) -> Any:
        """OpenAI requires ``content`` unless an assistant turn carries ``tool_calls`` (or ``function_call``)."""
        if (isinstance(data, dict) and "content" not in data and data.get("role") == "assistant"
                and (data.get("tool_calls") or data.get("function_call"))):
            return {**data, "content": None}
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        if isinstance(v, list):
            for part in v:
                if not (isinstance(part, dict) and part.get("type") == "text" and set(part) == {"type", "text"}):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError('only text parts ({"type": "text", "text": ...}) are supported; got a part of '
                                     f"type {kind!r}")
        return v

    def as_template_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out = {k: v for k, v in self.model_dump(exclude_none=True).items()}
        out["content"] = content or ""
        return out


class FunctionDef(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    add_generation_prompt: bool = True
    tools: list[ToolDef] | None = None  # serve.tools
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise _invalid("top_logprobs", "top_logprobs requires logprobs to be true")
        return self

    def tool_dicts(self) -> tuple[list[dict[str, Any]] | None, Any]:
        """(tools, tool_choice) as OpenAI sends them (what chat templates and serve.tools read)."""
        tools = [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, BaseModel) else self.tool_choice
        return tools, choice


class TokenizeRequest(_Strict):
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True
    model: str | None = None

    @model_validator(mode="after")
    def _one(self) -> TokenizeRequest:
        if self.prompt is None and self.messages is None:
            raise _invalid("prompt", "pass exactly one of prompt or messages; got neither")
        if self.prompt is not None and self.messages is not None:
            raise _invalid("messages", "pass exactly one of prompt or messages; got both")
        return self


class DetokenizeRequest(_Strict):
    tokens: list[int]
    model: str | None = None


class LoadLoRARequest(_Strict):
    """vLLM's ``POST /v1/load_lora_adapter`` body."""

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoRARequest(_Strict):
    """vLLM's ``POST /v1/unload_lora_adapter`` body (its ``lora_int_id`` is not used here)."""

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
