"""Request schemas of the OpenAI-compatible API (completions, chat completions, tokenize) and their mapping to
SamplingParams.

Field names, defaults and ranges follow the OpenAI API reference (legacy completions: ``max_tokens`` 16,
``logprobs`` <= 5, ``echo``; chat: ``logprobs`` bool + ``top_logprobs`` <= 20, ``max_completion_tokens``). A few
vLLM extensions are accepted (``top_k``, ``min_p``, ``repetition_penalty``, ``stop_token_ids``, ``ignore_eos``).
Unknown fields are rejected (``extra="forbid"``), as OpenAI rejects them ("Unrecognized request argument").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.sampling import SamplingParams

Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


def _invalid(param: str, message: str) -> PydanticCustomError:
    """A cross-field error that names ``param`` (``serve.http_errors.from_validation`` reads it from ctx)."""
    return PydanticCustomError("invalid_field", "{message}", {"param": param, "message": message})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


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
        return self

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


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise _invalid("top_logprobs", "top_logprobs requires logprobs to be true")
        return self


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
