"""Chat templates: render a list of messages into a prompt string with a Jinja template.

The environment mirrors Hugging Face ``transformers`` (``ImmutableSandboxedEnvironment`` with ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter and ``raise_exception``), so a template
from a model's ``tokenizer_config.json`` renders the same here as there. The default is ChatML
(https://github.com/openai/openai-python/blob/release-v0.28.0/chatml.md), the template transformers used as its
default: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from specs.errors import ConfigError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> Any:
    """Compile a chat template once (pure function of the string, hence cached)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError("tokenizer.chat_template", f"not a valid Jinja template: {exc}") from None


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                **kwargs: Any) -> str:
    """Render ``messages`` with ``template``; ``kwargs`` (bos_token, eos_token, tools, ...) reach the template."""
    import jinja2

    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ConfigError(f"messages[{i}]", "expected a mapping with 'role' and 'content'")
    try:
        return compile_template(template).render(messages=[dict(m) for m in messages],
                                                 add_generation_prompt=add_generation_prompt, **kwargs)
    except jinja2.TemplateError as exc:
        raise ConfigError("tokenizer.chat_template", f"rendering failed: {exc}") from None
