"""An lm-evaluation-harness model for lmstack checkpoints, registered as ``lmstack``.

    import eval.lm_eval_adapter                       # registers "lmstack" with lm_eval's model registry
    lm_eval.simple_evaluate(model="lmstack", model_args="pretrained=runs/x/step_1000,batch_size=8", tasks=[...])
    python -m eval.harness run --model lmstack --model_args pretrained=DIR --tasks hellaswag --device cpu

Semantics follow lm-eval's ``HFLM`` (Gao et al., "A framework for few-shot language model evaluation"): requests are
tokenized by :class:`lm_eval.api.model.TemplateLM` (trailing context spaces move to the continuation, an empty
context becomes ``prefix_token_id``: BOS, else EOS), scored by :func:`eval.loglik.loglikelihood` (left truncation to
``max_length``), rolling log-likelihood uses disjoint windows of ``max_length`` tokens, and ``generate_until``
decodes greedily (or samples when the task asks) with the ``until`` strings as stop strings, through the
``lmstack.generators`` plugin. Scores do not depend on ``batch_size``: padding is on the right, where causal
attention never reads it, and generation runs one request at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (registers lm_eval's own models first; its registry skips that once non-empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from eval.loading import generator, load_model, load_tokenizer, merge_adapter
from eval.loglik import loglikelihood, rolling_windows
from specs.errors import ConfigError


@register_model("lmstack")
class LmstackLM(TemplateLM):
    """``pretrained``: checkpoint directory or preset name; ``tokenizer``: spec (default: the checkpoint's);
    ``peft``: a LoRA adapter directory merged into the model's weights (as lm-eval's ``hf`` model takes it)."""

    def __init__(self, pretrained: Any = None, tokenizer: Any = None, *, peft: str | None = None,
                 batch_size: int | str = 8,
                 max_length: int | None = None, device: str = "auto", dtype: str = "auto", max_gen_toks: int = 256,
                 add_bos_token: bool = False, prefix_token_id: int | None = None, generator_name: str = "default",
                 max_batch_size: int | None = None, **unused: Any):
        # max_batch_size: lm_eval passes it to every model; batches here are exactly batch_size.
        super().__init__()
        if unused:
            raise ConfigError(next(iter(unused)), "unknown lmstack model argument; valid: pretrained, tokenizer, "
                              "peft, batch_size, max_length, device, dtype, max_gen_toks, add_bos_token, "
                              "prefix_token_id, generator_name")
        if pretrained is None:
            raise ConfigError("pretrained", "required: a checkpoint directory or a preset name")
        by_name = isinstance(pretrained, (str, os.PathLike))
        self.model = load_model(pretrained, device=device, dtype=dtype) if by_name else pretrained
        if peft:
            merge_adapter(self.model, peft)
        if tokenizer is None and by_name:
            tokenizer = pretrained
        if tokenizer is None:
            raise ConfigError("tokenizer", "required when pretrained is a model object")
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        if str(batch_size).startswith("auto"):
            raise ConfigError("batch_size", "'auto' is not supported; pass an integer")
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or self.model.config.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = bool(add_bos_token)
        self._prefix = prefix_token_id
        self._generator_name = generator_name

    # --- TemplateLM hooks ------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_id
        if eos is None:
            raise ConfigError("tokenizer", "has no EOS token; lm-eval needs one (or pass prefix_token_id)")
        return int(eos)

    @property
    def prefix_token_id(self) -> int:
        if self._prefix is not None:
            return int(self._prefix)
        bos = self.tokenizer.bos_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "spec", type(self.tokenizer).__name__))

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        add_bos = self.add_bos_token if add_special_tokens is None else bool(add_special_tokens and self.add_bos_token)
        return list(self.tokenizer.encode(string, add_bos=add_bos))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = loglikelihood(self.model, pairs, max_length=self.max_length, batch_size=self.batch_size)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    # --- the three request types -----------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, (string,) in enumerate(req.args for req in requests):
            for w in rolling_windows(self.tok_encode(string), self.prefix_token_id, self.max_length, context_len=1):
                windows.append(w)
                owner.append(i)
        scores = loglikelihood(self.model, windows, max_length=self.max_length, batch_size=self.batch_size)
        totals = [0.0] * len(requests)
        for i, (s, _) in zip(owner, scores):
            totals[i] += s
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        generate = generator(self._generator_name)
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
            if eos_text and eos_text not in until:
                until.append(eos_text)
            max_new = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", self.max_gen_toks)))
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 0.0)) if do_sample else 0.0
            sampling = {k: kw.pop(k) for k in ("top_p", "top_k", "min_p", "seed") if k in kw}
            if kw:
                raise ConfigError(f"gen_kwargs.{next(iter(kw))}", "not supported by the lmstack adapter")
            ids = self.tok_encode(context)[-(self.max_length - max_new):] if max_new < self.max_length else []
            if not ids:
                ids = [self.prefix_token_id]
            res = generate(self.model, [ids], max_new, tokenizer=self.tokenizer, eos_token_id=self.eot_token_id,
                           stop=until, temperature=temperature, return_dict=True, **sampling)
            text = res.texts[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

