"""A graph-captured decode loop: one compiled step replayed per token, no host sync until the end (gpt-fast).

:class:`FastGenerator` owns a fixed-shape KV cache (``model.new_cache(..., kind="fixed")``: lengths on the device,
whole-buffer attention), prefills the prompt once, then runs a decode step compiled with ``torch.compile(...,
fullgraph=True)``; under the "reduce-overhead" mode on a GPU the generator captures that step in one CUDA graph of
its own and replays it per token (:data:`GRAPHS_ENV`), so launching a token costs one graph replay instead of
hundreds of kernel launches from Python, or torch's CUDA-graph trees' checks of every input. Greedy or temperature
sampling (Gumbel-max, so it needs no host-side random numbers) runs inside the step and tokens stay on the device.

This is the throughput path for batch decode of equal-length prompts (benchmarks, offline generation). Left padding,
stop strings, penalties and beams live in :func:`serve.generate.generate`.

Shape legend: B rows, T prompt tokens, N new tokens, V vocabulary.
"""

from __future__ import annotations

import os
import time
import types
from typing import Any

import torch
from torch import nn

from kernel import default_registry, one_row_pdl_linear, resolve
from kernel.reference import UnifiedParts, linear_split_counters, split_combine_in_kernel
from serve.decoder import last_logits
from specs.errors import ConfigError, ShapeError
from specs.tensor_spec import TOKENS

# How a "reduce-overhead" step is replayed on CUDA (for comparisons; read when a generator is made): "step" (the
# default) captures the compiled step in one torch.cuda.CUDAGraph of this generator's own and replays it per token,
# so a token costs a graph launch from Python and nothing else; "trees" leaves it to torch.compile's CUDA-graph trees
# (mode="reduce-overhead" itself), which check the step's inputs and guards in Python on every call
GRAPHS_ENV = "LMSTACK_DECODE_GRAPHS"
WARMUP_STEPS = 2  # compiled steps run before a capture: compile, autotune, first-call allocations


def _capture(fn: Any) -> Any:
    """``fn()`` captured as a CUDA graph (its allocations in the graph's private pool); returns the replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


class FastGenerator:
    """``FastGenerator(model, batch_size, max_seq_len).generate(prompt_BT, max_new_tokens) -> tokens (B, N)``.

    ``compile``: a ``torch.compile`` mode ("reduce-overhead" captures CUDA graphs: on CUDA with inductor, one graph
    of the step of this generator's own, ``own_graphs``; "default"; or None for eager).
    ``backend``: the torch.compile backend ("inductor"; "eager" checks the graph without generating code).
    ``fuse``: call ``model.fuse_projections()`` first (in place: one q/k/v and one gate/up GEMM per layer; outputs and
    ``state_dict`` keys are unchanged), when the model has it.
    ``linear_impl``: route the model's ``nn.Linear`` layers through the kernel registry's ``linear`` op with this
    implementation (e.g. "triton_skinny"), in place (:func:`route_linears`); None keeps ``F.linear``; "auto" (the
    default) routes them when the registry's choice for the model's device and dtype is not the ``F.linear``
    reference (on CUDA: the tuned skinny matmul, measured faster for a whole decode step than inductor's GEMVs;
    one row of a shape the card's gemv table has goes to the gemv kernel). At ``batch_size == 1`` with ``pdl`` on,
    "auto" routes them through ``triton_skinny_pdl`` where the card's gemv table chains some shape by PDL
    (:func:`kernel.one_row_pdl_linear`: each such matmul loads its first weights while the kernel before drains;
    the decode step's weights are frozen, which that needs), and int8 layers (``compress``) use the int8 twin the
    same way (their ``impl``, set by every generator: the registry's choice otherwise).
    ``fold_norms``: ``model.fold_norms()`` after fusing (in place, inference only: RMSNorm weights folded into the
    projections, which then normalise and add the residual themselves; the model can no longer be saved, so save it
    first or pass False). "auto" (the default) folds when the Linears are routed through the registry (whose matmul
    takes the norm and the residual in its prologue and epilogue: no norm or add kernels, +12% tokens/s at batch 1
    on an H200, docs/benchmarks.md) and the model can fold (``model.can_fold_norms()``: Llama-style layers, float
    projections); elsewhere it leaves the model as it is. True insists (ConfigError where it cannot fold).
    ``pdl``: compile with inductor's programmatic dependent launch (``triton.enable_pdl``; Hopper and later, CUDA
    only): each of inductor's kernels is launched while the one before it drains and waits for its results inside,
    which hides the launch gaps between the short kernels of a decode step (+7.5-10% tokens/s at batch 1 in three
    H200 runs, docs/benchmarks.md). "auto" (the default) turns it on when it can apply: the inductor backend, a compile
    mode, a torch whose inductor has the option, and a model on a CUDA device of compute capability 9.0 or later;
    True insists (ConfigError where it cannot apply); False turns it off. The registry's ``triton_skinny_pdl``
    linear does the same for the skinny matmul when asked for by name (``linear_impl="triton_skinny_pdl"``).
    ``fuse_swiglu``: True (the default) asks a SwiGLU MLP's fused gate/up projection (routed and int8 Linears,
    ``accepts_glu``) for ``silu(gate) * up`` directly: one row through the gemv kernel computes it in the epilogue,
    one kernel fewer per layer (+3.4% tokens/s for a 1.1B step at batch 1 on an H200, docs/benchmarks.md run X);
    elsewhere the op applies it after the matmul. False leaves the SwiGLU to the MLP. The ``fuse_swiglu``
    attribute says whether any projection was asked (False where no Linear is routed). (Applying it instead as the
    down projection loads its input measured slower: 1,084 against 1,134 tokens/s, run W.)
    ``decode_attention``: the kernel registry's ``decode_attention`` implementation for the decode steps' attention
    (each attention layer's ``decode_impl``; e.g. "triton_pdl": the Triton kernels launched with programmatic
    dependent launch, so a chain of PDL-launched matmuls runs through attention too, each split loading its first
    block of cached keys and values while the q/k/v projection drains); None keeps the model's own choice. "auto"
    (the default) takes "triton_pdl" where the Linears are chained by PDL (``linear_impl`` "auto" at batch 1, above)
    and the layers would decode with the Triton kernels anyway (+1.2% tokens/s for a 1.1B step at batch 1 on an
    H200, docs/benchmarks.md run AE); elsewhere the model's own choice. The ``decode_attention`` attribute says
    which (None: the model's).
    ``layer_kernel``: run each layer of a decode step as one kernel registry ``decode_layer`` call
    (``model.use_layer_kernel``; on CUDA one persistent Triton launch per layer: no kernel boundaries inside a
    layer). It applies to one-row generators (``batch_size == 1``) of folded Llama layers with fused projections.
    "auto" (the default) turns it on where it applies and the registry's choice is not the torch reference (CUDA
    with Triton); True insists, with the registry's choice (ConfigError where it cannot apply); an implementation
    name (e.g. "reference") insists on that one; False turns it off. The model's layers follow this generator's
    choice (an earlier generator's over the same model is replaced).
    ``unified``: decode attention without its combine kernel (the registry's ``decode_attention_unified``, kernel
    0.23): the slot splits of a head add their partials, against one shared softmax shift, to per-layer fp32
    accumulators kept with the cache (``FixedKVCache.use_unified``), and the output projection divides them as it
    reads them (routed and int8 Linears, ``accepts_att``; one row through the gemv kernel). "auto" (the default)
    turns it on where the steps' attention is ``triton_pdl`` (above), no layer kernel runs and the output
    projections have float weights (routed Linears): a 1.1B bf16 step at batch 1 on an H200 ran 1,462 tokens/s
    against 1,404-1,405 without, but int8 1,964-1,985 against 2,028-2,046 (docs/benchmarks.md runs CS-CV), so int8
    layers keep the combine kernel unless asked. Since ``triton_pdl`` is a one-row choice, "auto" is on at batch 1
    only (forced on at batch 32, bf16 ran 1.9% slower: run DA). True insists (on a model of two or more layers
    whose output projections accept it: routed or int8 Linears; ConfigError elsewhere), with the decode
    attention's implementation (``decode_attention``, else each layer's ``attn_impl``); False turns it off. The
    ``unified`` attribute says whether it is on.

    ``record_decode_time`` (an attribute, False by default): each ``generate`` then times its decode steps on the
    device's clock (CUDA events, no host sync), and ``last_decode_s`` gives the seconds.
    """

    def __init__(self, model: Any, batch_size: int, max_seq_len: int, *, compile: str | None = "reduce-overhead",
                 backend: str = "inductor", fuse: bool = True, linear_impl: str | None = "auto",
                 fold_norms: bool | str = "auto", pdl: bool | str = "auto", layer_kernel: bool | str = "auto",
                 fuse_swiglu: bool = True, decode_attention: str | None = "auto", unified: bool | str = "auto"):
        if batch_size <= 0 or max_seq_len <= 0:
            raise ConfigError("FastGenerator", f"batch_size and max_seq_len must be > 0, got {batch_size}, "
                              f"{max_seq_len}")
        if linear_impl not in (None, "auto"):
            default_registry().get("linear", linear_impl)  # a bad name fails before the model is touched
        if decode_attention not in (None, "auto"):
            default_registry().get("decode_attention", decode_attention)
            if unified is True:  # the unified op under the same name
                default_registry().get("decode_attention_unified", decode_attention)
        if not isinstance(fuse_swiglu, bool):  # (every argument is checked before the model is changed)
            raise ConfigError("FastGenerator", f"fuse_swiglu must be True or False, got {fuse_swiglu!r}")
        if pdl not in (True, False, "auto"):
            raise ConfigError("FastGenerator", f"pdl must be True, False or 'auto', got {pdl!r}")
        if unified not in (True, False, "auto"):
            raise ConfigError("FastGenerator", f"unified must be True, False or 'auto', got {unified!r}")
        if pdl == "auto":
            pdl = (compile is not None and backend == "inductor" and _inductor_has_pdl()
                   and _pdl_capable_device(model))
        if pdl and (compile is None or backend != "inductor"):
            raise ConfigError("FastGenerator", f"pdl=True is an inductor option: it needs backend='inductor' and a "
                                               f"compile mode, got backend={backend!r}, compile={compile!r}")
        if pdl and not _inductor_has_pdl():
            raise ConfigError("FastGenerator", f"pdl=True needs a torch whose inductor has triton.enable_pdl "
                                               f"(2.10 or later), this is {torch.__version__}")
        if fold_norms not in (True, False, "auto"):
            raise ConfigError("FastGenerator", f"fold_norms must be True, False or 'auto', got {fold_norms!r}")
        if layer_kernel not in (True, False, "auto"):
            if not isinstance(layer_kernel, str):
                raise ConfigError("FastGenerator", f"layer_kernel must be True, False, 'auto' or a decode_layer "
                                                   f"implementation name, got {layer_kernel!r}")
            default_registry().get("decode_layer", layer_kernel)  # a bad name fails before the model is touched
        if fold_norms is True and not hasattr(model, "fold_norms"):
            raise ConfigError("FastGenerator", f"fold_norms=True needs a model with fold_norms() (TransformerLM), "
                                               f"got {type(model).__name__}")
        if fuse and hasattr(model, "fuse_projections"):
            model.fuse_projections()
        chained = None  # one row, frozen weights, PDL: the registry's PDL twin where the card's table chains shapes
        if pdl and batch_size == 1 and linear_impl in ("auto", "triton_skinny_pdl"):
            p = next(iter(model.parameters()), None)
            chained = None if p is None else one_row_pdl_linear(p.device)
        if linear_impl == "auto":
            linear_impl = auto_linear_impl(model)
            if linear_impl == "triton_skinny" and chained:
                linear_impl = chained
        if decode_attention == "auto":  # attention in the PDL chain where the matmuls around it are chained
            decode_attention = ("triton_pdl" if chained is not None and linear_impl == chained
                                and FastGenerator._decodes_with_triton(model) else None)
        if fold_norms == "auto":  # only where the routed matmul fuses the norm; plain Linears would gain nothing
            fold_norms = FastGenerator.auto_fold_norms(model, linear_impl)
        if fold_norms:
            model.fold_norms()
        self.fold_norms = fold_norms
        if linear_impl is not None:
            route_linears(model, linear_impl)
        glu_capable = 0
        for m in model.modules():
            if hasattr(m, "accepts_glu"):  # the gate/up projections that can return silu(gate) * up themselves
                m.accepts_glu = fuse_swiglu
                glu_capable += 1
                if not isinstance(m, RegistryLinear) and isinstance(getattr(m, "impl", None), str):
                    m.impl = chained or "auto"  # int8 layers (compress): chained like the Linears, else "auto"
        self.fuse_swiglu = fuse_swiglu and glu_capable > 0
        for m in model.modules():  # the attention layers' decode steps (None: each layer's own attn_impl)
            if hasattr(m, "decode_impl"):
                m.decode_impl = decode_attention
        self.decode_attention = decode_attention
        self.layer_kernel = FastGenerator._layer_kernel(model, batch_size, layer_kernel)
        if hasattr(model, "use_layer_kernel"):  # the model decodes as this generator says (None turns it off)
            model.use_layer_kernel(self.layer_kernel)
        self.unified = FastGenerator._unified(model, unified, decode_attention, self.layer_kernel)
        for m in model.modules():  # the projections that can read a unified attention's accumulators
            if hasattr(m, "accepts_att"):
                m.accepts_att = self.unified
        self.model = model
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self.cache = model.new_cache(batch_size, max_seq_len, kind="fixed")
        if self.unified:
            self.cache.use_unified(next(m.n_heads for m in model.modules() if hasattr(m, "decode_impl")))
        # The step's own state, on the device at fixed addresses: it reads each row's last token from _tok, writes
        # its pick there and into column _at of _out, and advances _at. A captured step then has no inputs to
        # copy in and no output to copy out (greedy), so a token costs one graph replay and no other kernels.
        device = self.cache.device
        self._tok = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self._out = torch.zeros(batch_size, max_seq_len, dtype=torch.long, device=device)
        self._at = torch.zeros(1, dtype=torch.long, device=device)
        self._inv_temp = torch.zeros((), dtype=torch.float32, device=device)
        for t in (self._tok, self._out, self._at, self._inv_temp):
            torch._dynamo.mark_static_address(t)
        self.compile_mode, self.backend, self.pdl = compile, backend, pdl
        graphs = os.environ.get(GRAPHS_ENV, "") or "step"
        if graphs not in ("step", "trees"):
            raise ConfigError(GRAPHS_ENV, f"expected 'step' (one CUDA graph of the step, the default) or 'trees' "
                                          f"(torch.compile's CUDA-graph trees), got {graphs!r}")
        # whether this generator captures its compiled step itself (see GRAPHS_ENV): "reduce-overhead" with
        # inductor on CUDA, where that mode would otherwise take CUDA-graph trees
        self.own_graphs = (graphs == "step" and compile == "reduce-overhead" and backend == "inductor"
                           and device.type == "cuda")
        self._graphs: dict[bool, Any] = {}  # sampled (noise given) or greedy -> the captured step's replay
        self._warm = {False: 0, True: 0}
        self._noise: torch.Tensor | None = None  # the sampled graph's noise, at a fixed address
        self._step = self._decode_one
        self._compiled = False
        # record_decode_time: each generate times its decode steps (everything after the prompt's first pick) on
        # the device's own clock, read by last_decode_s; no host sync inside generate
        self.record_decode_time = False
        self._decode_clock: tuple[Any, Any] | None = None

    @staticmethod
    def auto_fold_norms(model: Any, linear_impl: str | None = "auto") -> bool:
        """What ``fold_norms="auto"`` decides for ``model``: True when its Linears are routed through the registry
        (``linear_impl``, "auto" resolved as the constructor does) and ``model.can_fold_norms()``. For a model to be
        quantized, ask before quantizing and fold then (the int8 layers take the folded norm too)."""
        if linear_impl == "auto":
            linear_impl = auto_linear_impl(model)
        return linear_impl is not None and bool(getattr(model, "can_fold_norms", lambda: False)())

    @staticmethod
    def _decodes_with_triton(model: Any) -> bool:
        """Whether every attention layer of ``model`` decodes with the registry's Triton ``decode_attention`` by its
        own choice (its ``attn_impl``: "triton", or "auto" where the registry picks "triton" for the model's device
        and dtype)."""
        p = next(iter(model.parameters()), None)
        impls = {getattr(m, "attn_impl", None) for m in model.modules() if hasattr(m, "decode_impl")}
        if p is None or not impls or not impls <= {"auto", "triton"}:
            return False
        return "auto" not in impls or default_registry().select("decode_attention", "auto", device=p.device,
                                                                 dtype=p.dtype).name == "triton"

    @staticmethod
    def _unified(model: Any, asked: bool | str, decode_attention: str | None, layer_kernel: str | None) -> bool:
        """Whether the decode steps use the unified decode attention (see ``unified``)."""
        if asked is False:
            return False
        attns = [m for m in model.modules() if hasattr(m, "decode_impl")]
        why = None
        if layer_kernel is not None:
            why = "the layer kernel runs each decode layer whole (layer_kernel=False to use unified)"
        elif len(attns) < 2:
            why = (f"each layer's call zeroes the next layer's accumulators: it needs two or more attention layers, "
                   f"the model has {len(attns)}")
        elif not all(hasattr(getattr(m, "o_proj", None), "accepts_att") for m in attns):
            why = ("the attention layers' output projections cannot read its accumulators (routed or int8 Linears "
                   "can: linear_impl)")
        if asked == "auto":  # measured faster with float output projections only (bf16 +4.1%, int8 -2.8%: CS-CV)
            return (why is None and decode_attention == "triton_pdl"
                    and all(isinstance(m.o_proj, RegistryLinear) for m in attns))
        if why is not None:
            raise ConfigError("unified", why)
        return True

    @staticmethod
    def _layer_kernel(model: Any, batch_size: int, asked: bool | str) -> str | None:
        """The ``decode_layer`` implementation the layers will use, or None (see ``layer_kernel``)."""
        if asked is False:
            return None
        why = None
        if batch_size != 1:
            why = f"the layer kernel decodes one row, this generator has batch_size={batch_size}"
        elif not hasattr(model, "use_layer_kernel"):
            why = f"{type(model).__name__} has no use_layer_kernel() (TransformerLM has)"
        else:
            why = model.layer_kernel_unsupported()
        if asked == "auto":
            if why is not None:
                return None
            p = next(iter(model.parameters()))
            name = default_registry().select("decode_layer", "auto", device=p.device, dtype=p.dtype).name
            return None if name == "reference" else name
        if why is not None:
            raise ConfigError("layer_kernel", why)
        return "auto" if asked is True else asked

    @torch.no_grad()
    def _decode_one(self, noise_BV: torch.Tensor | None) -> None:
        """One token per row: from ``_tok`` to ``_tok`` and column ``_at`` of ``_out`` (then ``_at`` + 1)."""
        logits_BV = self.model(self._tok, cache=self.cache)[:, -1].float()
        tok_B1 = _pick(logits_BV, self._inv_temp, noise_BV)
        self._tok.copy_(tok_B1)
        self._out.index_copy_(1, self._at, tok_B1)
        self._at.add_(1)

    def _ensure_compiled(self) -> None:
        if self._compiled or self.compile_mode is None:
            return
        kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False, "backend": self.backend}
        if self.backend == "inductor" and (self.pdl or self.own_graphs):
            # a mode's options plus PDL (torch takes a mode or options), without CUDA-graph trees where this
            # generator captures the step itself
            from torch._inductor import list_mode_options

            kwargs["options"] = {**list_mode_options(self.compile_mode)}
            if self.pdl:
                kwargs["options"]["triton.enable_pdl"] = True
            if self.own_graphs:
                kwargs["options"]["triton.cudagraphs"] = False
        elif self.backend == "inductor":
            kwargs["mode"] = self.compile_mode
        # A private copy of the step's code object: dynamo caches compiled graphs per code object (8 by default),
        # so generators of other batch sizes or models must not share, and evict, each other's entries.
        fn = FastGenerator._decode_one.__wrapped__  # under torch.no_grad's wrapper
        own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        self._step = torch.compile(types.MethodType(own, self), **kwargs)  # generate() runs under no_grad
        self._compiled = True

    @torch.no_grad()
    def generate(self, prompt_BT: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 seed: int | None = None) -> torch.Tensor:
        """New tokens (B, max_new_tokens) for equal-length prompts (B, T); greedy when ``temperature == 0``."""
        env = TOKENS.check(prompt_BT, "prompt_BT", B=self.batch_size)
        T = env["T"]
        if max_new_tokens <= 0:
            raise ConfigError("max_new_tokens", f"must be > 0, got {max_new_tokens}")
        if T + max_new_tokens > self.max_seq_len:
            raise ShapeError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds this generator's "
                             f"max_seq_len={self.max_seq_len}")
        if temperature < 0:
            raise ConfigError("temperature", f"must be >= 0, got {temperature}")
        device = self.cache.device
        gen = torch.Generator(device=device)
        gen.manual_seed(0 if seed is None else seed)
        self._inv_temp.fill_(0.0 if temperature == 0 else 1.0 / temperature)
        V = self.model.config.vocab_size

        def noise() -> torch.Tensor | None:
            if temperature == 0:
                return None
            return -torch.log(-torch.log(torch.rand(self.batch_size, V, device=device, generator=gen)
                                         .clamp_(1e-20, 1.0)))

        self.cache.reset()
        logits_BV = last_logits(self.model, prompt_BT.to(device), cache=self.cache)
        tok_B1 = _pick(logits_BV, self._inv_temp, noise())
        self._tok.copy_(tok_B1)
        self._out[:, :1].copy_(tok_B1)
        self._at.fill_(1)
        self._ensure_compiled()
        self._decode_clock = None
        start = self._clock() if self.record_decode_time and max_new_tokens > 1 else None
        for _ in range(1, max_new_tokens):
            if self.own_graphs:
                self._replay(noise())
                continue
            if self._compiled and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            self._step(noise())
        if start is not None:
            self._decode_clock = (start, self._clock())
        return self._out[:, :max_new_tokens].clone()

    def _clock(self) -> Any:
        """A point on the decode stream's timeline: a CUDA event recorded there (no sync), else the host clock once
        the device has finished what it was given (on the CPU, at once)."""
        device = self.cache.device
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(device))  # the cache's GPU, whichever is current
            return event
        if device.type != "cpu":
            getattr(torch, device.type).synchronize()
        return time.perf_counter()

    @property
    def last_decode_s(self) -> float | None:
        """Seconds the last ``generate`` spent on its decode steps (``max_new_tokens - 1`` of them, the prompt's
        prefill and first pick left out), when ``record_decode_time`` was set and it made more than one token, else
        None. On CUDA the time between two events on the stream: the steps' GPU time, with any wait for the host
        between them; reading it waits for the last step to finish. Benchmarks read this instead of subtracting a
        one-token call's time, whose prefill varies by milliseconds (``eval.bench decode``)."""
        if self._decode_clock is None:
            return None
        start, end = self._decode_clock
        if isinstance(start, float):
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def _replay(self, noise_BV: torch.Tensor | None) -> None:
        """One decode step through this generator's own CUDA graph of the compiled step (one for greedy steps, one
        for sampled ones): the first WARMUP_STEPS steps of each run the compiled step itself, the next captures it
        and every step from then on replays it. The graph holds the addresses of the weights, the cache and the
        step's buffers: changes in place (a new state_dict loaded) are seen, tensors replaced are not."""
        sampled = noise_BV is not None
        replay = self._graphs.get(sampled)
        if replay is None and self._warm[sampled] < WARMUP_STEPS:
            self._warm[sampled] += 1
            self._step(noise_BV)
            return
        if sampled:  # the graph reads its noise from one buffer
            if self._noise is None:
                self._noise = torch.empty_like(noise_BV)
            self._noise.copy_(noise_BV)
        if replay is None:
            noise = self._noise if sampled else None
            replay = self._graphs[sampled] = _capture(lambda: self._step(noise))
        replay()


def _pdl_capable_device(model: Any) -> bool:
    """True when the model's first parameter sits on a CUDA device of compute capability 9.0 (Hopper) or later."""
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if p is None or p.device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(p.device) >= (9, 0)


def _inductor_has_pdl() -> bool:
    from torch._inductor import config

    return hasattr(config.triton, "enable_pdl")


class RegistryLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is the kernel registry's ``linear`` op under a named implementation; it takes
    a folded RMSNorm's ``rms_eps`` and a ``residual`` too (``tensor.folded``), which the op fuses. Under
    ``$LMSTACK_SPLIT_COMBINE=last`` each keeps the op's ``split_counters`` workspace (a non-persistent buffer: not
    in ``state_dict``), with which a split-K matmul sums its splits in one kernel; else None (a second pass)."""

    impl: str = "auto"
    accepts_prologue = True
    # forward(x, glu="silu") returns silu(gate) * up of a fused gate/up weight; a SwiGLU MLP asks for it only when
    # this is True (FastGenerator(fuse_swiglu=True) sets it)
    accepts_glu = False
    # forward(x, att=parts) reads the input from a unified decode attention's accumulators (x = parts.x,
    # ``kernel.reference.UnifiedParts``); an attention layer asks only when this is True (FastGenerator's unified)
    accepts_att = False
    split_counters: torch.Tensor | None

    def forward(self, x: torch.Tensor, rms_eps: float | None = None,
                residual: torch.Tensor | None = None, glu: str | None = None,
                att: UnifiedParts | None = None) -> torch.Tensor:
        op = resolve("linear", self.impl, device=x.device, dtype=x.dtype if att is None else att.dtype,
                     backward=torch.is_grad_enabled())
        # keywords only when set: an implementation from a plugin may take fewer
        kw = {k: v for k, v in (("rms_eps", rms_eps), ("residual", residual), ("split_counters", self.split_counters),
                                ("glu", glu), ("att", att)) if v is not None}
        return op(x, self.weight, self.bias, **kw)


def auto_linear_impl(model: nn.Module) -> str | None:
    """The registry's inference choice for the ``linear`` op on ``model``'s device and dtype, or None when that is
    the ``F.linear`` reference (left as plain Linears, which torch.compile fuses with their neighbours)."""
    p = next(iter(model.parameters()), None)
    if p is None:
        return None
    name = default_registry().select("linear", "auto", device=p.device, dtype=p.dtype).name
    return None if name == "reference" else name


def route_linears(model: nn.Module, impl: str) -> int:
    """Make every plain ``nn.Linear`` of ``model`` call the registry's ``linear`` op as ``impl`` (in place: the class
    changes, parameters and state_dict keys do not); returns how many. Unknown names raise PluginError."""
    default_registry().get("linear", impl)  # fail early, naming the valid implementations
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = RegistryLinear
            m.impl = impl
            counters = linear_split_counters(m.out_features, m.weight.device) if split_combine_in_kernel() else None
            m.register_buffer("split_counters", counters, persistent=False)
            n += 1
    return n


def _pick(logits_BV: torch.Tensor, inv_temp: torch.Tensor, noise_BV: torch.Tensor | None) -> torch.Tensor:
    """Greedy argmax, or Gumbel-max sampling at temperature 1/inv_temp: argmax(logits/t + Gumbel noise)."""
    if noise_BV is None:
        return argmax_rows(logits_BV)
    return argmax_rows(logits_BV * inv_temp + noise_BV)


def argmax_rows(x_BV: torch.Tensor, chunks: int = 64) -> torch.Tensor:
    """``x_BV.argmax(-1, keepdim=True)`` (B, 1), the first index of the largest value (NaN counts as largest, as
    in torch), written as two reductions: the maximum of each of ``chunks`` slices of a row, then the best slice.
    Compiled, a one-row argmax over a vocabulary is one program looping over all V values; the slices spread the
    first pass over ``B x chunks`` programs (measured on an H200 only together with three other changes to the
    decode step, docs/benchmarks.md run Y1). Rows shorter than 64 x ``chunks`` take the plain argmax."""
    B, V = x_BV.shape
    if 64 * chunks > V:
        return x_BV.argmax(-1, keepdim=True)
    width = -(-V // chunks)
    x = torch.nn.functional.pad(x_BV, (0, width * chunks - V), value=float("-inf"))
    best_BC, at_BC = x.view(B, chunks, width).max(-1)  # first index of each slice's maximum
    c_B1 = best_BC.argmax(-1, keepdim=True)  # the first slice holding the row's maximum
    return at_BC.gather(-1, c_B1) + c_B1 * width
