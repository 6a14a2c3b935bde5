"""Turning API inputs into token ids: text prompts (special-token text maps to its id, as Hugging Face tokenizers
do) and chat messages through the tokenizer's chat template."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from specs.errors import ConfigError


class PromptEncoder:
    """Encodes text with ``tokenizer`` (a specs Tokenizer), mapping the text of BOS/EOS/PAD to their ids."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        specials: dict[str, int] = {}
        for tid in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id):
            if tid is not None:
                text = tokenizer.decode([tid], skip_special_tokens=False)
                if text:
                    specials[text] = int(tid)
        self.specials = specials
        self._split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")") \
            if specials else None
        # Tokenizers that know more special tokens in text (HF added tokens such as <|im_start|>) say so.
        self._encode_text = getattr(tokenizer, "encode_chat_text", None) or tokenizer.encode

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids: list[int] = []
        if add_bos:
            if self.tokenizer.bos_id is None:
                raise ConfigError("add_special_tokens", "this tokenizer has no BOS token to add")
            ids.append(int(self.tokenizer.bos_id))
        pieces = self._split.split(text) if self._split is not None else [text]
        for piece in pieces:
            if not piece:
                continue
            if piece in self.specials:
                ids.append(self.specials[piece])
            else:
                ids.extend(int(t) for t in self._encode_text(piece))
        return ids

    def chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
             tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids of the rendered chat prompt; ``tools`` (OpenAI's function tools) reach the template as its
        ``tools`` variable, as in Hugging Face's ``apply_chat_template``."""
        apply = getattr(self.tokenizer, "apply_chat_template", None)
        if apply is None:
            raise ConfigError("messages", "this model's tokenizer has no chat template; use /v1/completions")
        extra = {"tools": list(tools)} if tools else {}
        try:
            text = apply(list(messages), add_generation_prompt=add_generation_prompt, tokenize=False, **extra)
        except ConfigError:
            raise
        except Exception as exc:  # a template's raise_exception(...) or a Jinja error names the problem
            raise ConfigError("messages", f"the chat template rejected these messages: {exc}") from None
        return self.encode(text)
