"""Component configs, one small frozen dataclass each, composed in :class:`RunConfig`.

``ModelConfig(d_model=512, n_heads=8, n_layers=8, d_ff=2048, vocab_size=32000, attn_impl="flash")`` works as in
the seed. Field ranges are in the types, cross-field rules in ``check()``; every failure is a ConfigError that
names the field path. Serialisation, schema versions and overrides live in :mod:`specs.io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from specs.errors import ConfigError
from specs.schema import ConfigBase

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True, kw_only=True)
class RopeScaling(ConfigBase):
    """RoPE frequency scaling (Hugging Face ``rope_scaling`` semantics)."""

    kind: ClassVar[str] = "RopeScaling"
    type: Literal["linear", "dynamic_ntk", "llama3"]
    factor: Annotated[float, Field(ge=1)]
    original_max_seq_len: PosInt | None = None
    low_freq_factor: PosFloat = 1.0
    high_freq_factor: PosFloat = 4.0

    def check(self) -> None:
        if self.type in ("llama3", "dynamic_ntk") and self.original_max_seq_len is None:
            self.fail("original_max_seq_len", f"required for rope scaling type {self.type!r}")
        if self.high_freq_factor <= self.low_freq_factor and self.type == "llama3":
            self.fail("high_freq_factor", "must be greater than low_freq_factor")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ConfigBase):
    """A decoder-only (or encoder) transformer. Llama and GPT-2 are both spelled with these fields."""

    kind: ClassVar[str] = "ModelConfig"
    d_model: PosInt
    n_heads: PosInt
    n_layers: PosInt
    d_ff: PosInt
    vocab_size: PosInt
    n_kv_heads: PosInt | None = None  # None: same as n_heads (MHA); 1: MQA; else GQA
    max_seq_len: PosInt = 2048
    arch: str = "transformer"  # plugin name in the lmstack.models entry-point group
    causal: bool = True  # False builds the bidirectional encoder
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: PosFloat = 1e-5
    norm_position: Literal["pre", "post"] = "pre"
    mlp: Literal["swiglu", "mlp"] = "swiglu"  # gated (Llama) or two-layer (GPT-2)
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"] = "silu"
    pos_encoding: Literal["rope", "alibi", "learned", "none"] = "rope"
    rope_theta: PosFloat = 10000.0
    rope_scaling: RopeScaling | None = None
    sliding_window: PosInt | None = None
    tie_embeddings: bool = False
    bias: bool = False  # biases on every linear layer (GPT-2) or none (Llama)
    dropout: Fraction = 0.0
    init: Literal["normal", "small", "mup"] = "normal"
    init_std: PosFloat = 0.02
    attn_impl: str = "auto"  # kernel registry name: auto | reference | sdpa | flash | triton | ...
    # the LM head + cross-entropy (kernel op linear_cross_entropy): auto | triton (fused, never materialises the
    # logits) | reference (chunked) | logits (materialised; what auto picks under torch.compile)
    loss_impl: str = "auto"

    # fields a run may set apart from the checkpoint whose weights it starts from (``TrainConfig.init_from``,
    # ``from_pretrained(config=...)``): how the network is trained, run or extended, not what its weights are
    # (``max_seq_len`` too, unless positions are learned: then it is a weight's shape)
    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("dropout", "init", "init_std", "attn_impl", "loss_impl", "max_seq_len",
                                             "rope_theta", "rope_scaling", "sliding_window", "arch")

    def network_mismatches(self, other: ModelConfig) -> list[tuple[str, object, object]]:
        """The fields (name, this value, ``other``'s) on which ``other`` describes a different network: one whose
        weights would not load into this one's, or would compute something else with them. Every field but
        ``RUN_FIELDS``; ``n_kv_heads`` as the number of KV heads (None is ``n_heads``)."""
        out: list[tuple[str, object, object]] = []
        for name in self.__dataclass_fields__:
            if name in self.RUN_FIELDS and not (name == "max_seq_len" and "learned" in (self.pos_encoding,
                                                                                      other.pos_encoding)):
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "n_kv_heads":
                mine, theirs = self.kv_heads, other.kv_heads
            if mine != theirs:
                out.append((name, mine, theirs))
        return out

    def check_same_network(self, other: ModelConfig, source: str) -> None:
        """ConfigError unless ``other`` (a run's model section) describes this network, read from ``source`` (a
        checkpoint), naming every field that differs (:meth:`network_mismatches`)."""
        diff = self.network_mismatches(other)
        if diff:
            raise ConfigError("model." + diff[0][0], f"describes another network than the checkpoint {source}: "
                              + "; ".join(f"model.{k} is {theirs!r} here, {mine!r} there" for k, mine, theirs in diff)
                              + f" (only {', '.join(self.RUN_FIELDS)} may differ; leave the rest out of the model "
                              "section to take the checkpoint's)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def check(self) -> None:
        if self.d_model % self.n_heads:
            self.fail("n_heads", f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            self.fail("n_kv_heads", f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.kv_heads}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            self.fail("d_model", f"rope needs an even head_dim, got d_model/n_heads={self.head_dim}")
        if self.rope_scaling is not None and self.pos_encoding != "rope":
            self.fail("rope_scaling", f"only applies when pos_encoding='rope', not {self.pos_encoding!r}")


@dataclass(frozen=True, kw_only=True)
class DataConfig(ConfigBase):
    """Where tokens come from and how they are batched. ``path='embedded'`` builds from local stdlib text."""

    kind: ClassVar[str] = "DataConfig"
    path: str = "embedded"
    dataset: str = "shards"  # plugin name in lmstack.datasets
    tokenizer: str = "byte"  # 'byte', 'bpe:<vocab>', a tokenizer.json / .model path, or a name in the HF cache
    seq_len: PosInt = 256
    batch_size: PosInt = 8
    num_workers: NonNegInt = 0
    shuffle: bool = True
    seed: int = 0
    pack: bool = True
    doc_mask: bool = False  # no attention across packed documents
    val_fraction: Fraction = 0.0


@dataclass(frozen=True, kw_only=True)
class LoraConfig(ConfigBase):
    """LoRA adapters to train instead of the whole model (Hu et al. 2021; PEFT's LoraConfig fields): rank ``r``,
    the update scaled by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), dropout on the adapters' input,
    and the Linear layers adapted (module-name suffixes). ``quantize_base: nf4`` is QLoRA (Dettmers et al. 2023):
    every Linear but the LM head is frozen as 4-bit NormalFloat first (bitsandbytes' layout; its absmaxes
    quantized again with ``double_quant``), and the adapters train on top in the compute dtype."""

    kind: ClassVar[str] = "LoraConfig"
    r: PosInt = 8
    alpha: PosFloat = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    use_rslora: bool = False
    quantize_base: Literal["none", "nf4"] = "none"
    double_quant: bool = True

    def check(self) -> None:
        if not self.targets or not all(t.strip() for t in self.targets):
            self.fail("targets", f"names the Linear layers to adapt, e.g. [q_proj, v_proj]; got {list(self.targets)}")


@dataclass(frozen=True, kw_only=True)
class PreferenceConfig(ConfigBase):
    """Preference optimisation on pairs of a chosen and a rejected completion of one prompt (``data.dataset:
    preference``; lmstack-rl). ``method`` names an ``lmstack.objectives`` plugin: ``dpo`` (Rafailov et al. 2023),
    ``orpo`` (Hong et al. 2024), ``cpo`` (Xu et al. 2024), ``simpo`` (Meng et al. 2024) or ``reward`` (a
    Bradley-Terry reward model, ``model.arch: reward``; Ouyang et al. 2022). Fields as TRL's configs name them:
    ``beta`` (DPO's KL weight; ORPO's odds-ratio weight, TRL's lambda; CPO's and SimPO's temperature),
    ``loss_type`` (DPO: sigmoid, hinge, ipo, robust, sigmoid_norm; CPO: sigmoid, hinge, ipo), ``label_smoothing``
    (the robust loss's flip rate; CPO's and SimPO's), ``sft_weight`` (RPO: this times the chosen completions'
    cross-entropy added, TRL's ``loss_type=[..., "sft"]``; CPO's ``cpo_alpha``), where the reference model comes
    from: ``copy`` (a frozen copy of the starting weights), ``adapters`` (the model with its LoRA adapters off, no
    copy: needs train.lora) or ``auto`` (adapters under train.lora, else copy), ``center_rewards`` (the reward
    model's ``center_rewards_coefficient``: this times the mean squared sum of a pair's rewards added, Eisenstein
    et al. 2023), ``simpo_gamma`` (SimPO's target reward margin), and KTO's ``desirable_weight`` and
    ``undesirable_weight``; ``precompute_reference`` (DPO; TRL's ``precompute_ref_log_probs``): the reference's
    log-probabilities of every pair are computed once before the first step and the reference copy is then
    freed, so steps skip its forward. ``kto`` (Ethayarajh et al. 2024) trains on single completions labelled
    desirable or not (``data.dataset: unpaired``), ``loss_type`` ``sigmoid`` (KTO's own, also ``kto``) or
    ``apo_zero_unpaired``. ``contrastive`` trains an embedding model (``model.arch: encoder``) on (query, positive)
    text pairs (``data.dataset: text_pairs``) by InfoNCE with in-batch negatives (and any hard negatives a record
    carries), its logits the cosine similarities over ``temperature`` (sentence-transformers'
    MultipleNegativesRankingLoss; its scale is 1 / temperature)."""

    kind: ClassVar[str] = "PreferenceConfig"
    method: str = "dpo"
    beta: PosFloat = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    sft_weight: NonNegFloat = 0.0
    reference: Literal["auto", "copy", "adapters"] = "auto"
    center_rewards: NonNegFloat = 0.0
    simpo_gamma: NonNegFloat = 0.5
    desirable_weight: PosFloat = 1.0
    undesirable_weight: PosFloat = 1.0
    precompute_reference: bool = False
    temperature: PosFloat = 0.05

    def check(self) -> None:
        if not self.method.strip():
            self.fail("method", "names an lmstack.objectives plugin, e.g. dpo or orpo")


@dataclass(frozen=True, kw_only=True)
class GRPOConfig(ConfigBase):
    """Online RL with group-relative advantages (GRPO: Shao et al. 2024, arXiv:2402.03300), as TRL's GRPOConfig
    names it (the ``lmstack.objectives`` plugin ``grpo`` of lmstack-rl; ``data.dataset: prompts``). Each step
    samples ``num_generations`` completions of up to ``max_completion_length`` tokens for every prompt with the
    policy (``temperature``, ``top_p``, ``top_k``), scores them with ``rewards`` (reward functions as
    ``package.module:function``, called as TRL calls them, or ``model:DIR`` for a reward model directory), each
    weighted by ``reward_weights``, and trains on the completions with advantages normalised within each prompt's
    group (``scale_rewards``: ``group``, ``batch`` or ``none``). ``loss_type``: ``dapo`` (token mean over the
    batch), ``grpo`` (token mean per sequence) or ``dr_grpo`` (over ``max_completion_length`` per sequence).
    ``beta`` > 0 adds the KL to the reference model (``reference`` as PreferenceConfig's). ``num_iterations``
    (TRL's, the paper's mu): optimizer steps on each generation; past the first the policy has moved, so each
    token's ratio to the sampling policy's probability is clipped to ``[1 - epsilon, 1 + epsilon_high]`` (PPO's
    clipped surrogate; ``epsilon_high`` defaults to ``epsilon``; DAPO's clip-higher sets it above), and with
    ``delta`` the unclipped ratio is also capped at ``delta`` (two-sided clipping). ``train.ckpt_every`` must then
    be a multiple of ``num_iterations``, so checkpoints fall between generations.
    ``sampler``: ``generate`` samples with the policy itself (the ``lmstack.generators`` plugin: serve's
    ``generate``); ``paged`` with a copy of it in the run's precision, synced after every optimizer step (LoRA
    merged), in serve's continuous-batching engine (the ``lmstack.samplers`` plugin ``paged``: CUDA-graph decode
    steps, as TRL samples with vLLM); ``auto``: ``paged`` on a CUDA device, else ``generate``. A ``paged``
    sampler's copy computes in another precision and other kernels than the training forward, so GRPO corrects
    each token by the ratio of the policy's probability to the copy's (TRL's ``vllm_importance_sampling_*``):
    ``importance_sampling`` ``token_truncate`` / ``sequence_truncate`` clip the per-token or per-completion ratio
    to [``importance_sampling_min``, ``importance_sampling_max``], ``token_mask`` / ``sequence_mask`` zero the
    ratios outside it, ``none`` skips it; ``auto`` (the default) is ``sequence_mask`` with ``paged`` (TRL's default
    with vLLM) and ``none`` otherwise.

    ``method: rloo`` trains with REINFORCE Leave-One-Out instead (Ahmadian et al. 2024, arXiv:2402.14740; TRL's
    RLOOTrainer, the plugin ``rloo``): each completion's advantage is its reward minus the mean of the other
    completions of its prompt (over the batch's mean and standard deviation with ``normalize_advantages``), the
    loss is the mean over completions of ``-A`` times the ratio of their summed log-probabilities, and ``beta``
    takes the summed log-ratio to the reference out of the reward instead of adding a KL term to the loss;
    ``loss_type`` and ``scale_rewards`` are GRPO's alone. (TRL's RLOOConfig defaults ``beta`` to 0.05; here it is
    0 unless set.)"""

    kind: ClassVar[str] = "GRPOConfig"
    rewards: tuple[str, ...] = ()
    reward_weights: tuple[float, ...] | None = None
    num_generations: Annotated[int, Field(ge=2)] = 8
    max_completion_length: PosInt = 256
    temperature: PosFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: NonNegInt = 0
    beta: NonNegFloat = 0.0
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = False
    reference: Literal["auto", "copy", "adapters"] = "auto"
    sampler: Literal["auto", "generate", "paged"] = "auto"
    method: Literal["grpo", "rloo"] = "grpo"
    importance_sampling: Literal["auto", "none", "token_truncate", "token_mask", "sequence_truncate",
                                 "sequence_mask"] = "auto"
    importance_sampling_max: PosFloat | None = 3.0
    importance_sampling_min: NonNegFloat | None = None
    num_iterations: PosInt = 1
    epsilon: Annotated[float, Field(gt=0, lt=1)] = 0.2
    epsilon_high: PosFloat | None = None
    delta: Annotated[float, Field(gt=1)] | None = None
    normalize_advantages: bool = False

    def check(self) -> None:
        if not self.rewards:
            self.fail("rewards", "names at least one reward: a function as package.module:function, or model:DIR")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            self.fail("reward_weights", f"gives {len(self.reward_weights)} weights for {len(self.rewards)} rewards")
        if self.method == "grpo" and self.normalize_advantages:
            self.fail("normalize_advantages", "is RLOO's (method: rloo); GRPO scales its advantages by "
                                              "scale_rewards")
        if self.method == "rloo" and self.importance_sampling not in ("auto", "none"):
            self.fail("importance_sampling", "corrects GRPO's sampled tokens (as TRL's GRPOTrainer with vLLM); RLOO "
                                             "has none: leave it 'auto'")
        if (self.importance_sampling_min is not None and self.importance_sampling_max is not None
                and self.importance_sampling_min >= self.importance_sampling_max):
            self.fail("importance_sampling_min", f"{self.importance_sampling_min} must be below "
                                                 f"importance_sampling_max={self.importance_sampling_max}")
        if self.method == "rloo" and self.delta is not None:
            self.fail("delta", "two-sided clipping is GRPO's; RLOO clips each completion's ratio to "
                               "[1 - epsilon, 1 + epsilon_high]")
        if self.method == "rloo" and (self.loss_type != "dapo" or self.scale_rewards != "group"):
            self.fail("loss_type" if self.loss_type != "dapo" else "scale_rewards",
                      "is GRPO's: RLOO's loss is the mean over completions and its advantages are leave-one-out "
                      "(normalize_advantages scales them); leave loss_type and scale_rewards unset")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ConfigBase):
    """Optimisation, schedule, precision and checkpointing for one run."""

    kind: ClassVar[str] = "TrainConfig"
    steps: PosInt = 1000
    lr: PosFloat = 3e-4
    min_lr_ratio: Fraction = 0.1
    optimizer: Literal["adamw", "sgd", "lion"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.1
    momentum: NonNegFloat = 0.9
    schedule: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    warmup_steps: NonNegInt = 100  # clamped to steps by the schedule
    decay_fraction: Fraction = 0.2  # WSD: share of steps spent decaying
    grad_accum: PosInt = 1
    grad_clip: NonNegFloat = 1.0  # 0 disables clipping
    precision: Precision = "fp32"
    compile: bool = False
    grad_ckpt: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    nan_policy: Literal["stop", "skip"] = "stop"
    log_every: PosInt = 10
    eval_every: NonNegInt = 0
    eval_steps: PosInt = 20
    ckpt_every: NonNegInt = 0  # 0: only at the end
    ckpt_final: bool = True  # False: fit() ends without a checkpoint (benchmarks); SIGTERM still saves one
    keep_last: PosInt = 3
    out_dir: str = "runs/default"
    resume: str | None = None  # 'auto' or a checkpoint path
    # a model directory whose weights start the run (fine-tuning, continued pre-training): lmstack
    # (save_pretrained, or a training checkpoint) or Hugging Face Llama / Mistral / GPT-2 (safetensors). The model
    # section must describe the same network (ModelConfig.network_mismatches); train.run fills what the config leaves
    # out of it, and data.tokenizer, from the directory
    init_from: str | None = None
    # train LoRA adapters (the lmstack.adapters plugin 'lora', lmstack-compress) with every other weight frozen
    lora: LoraConfig | None = None
    # preference optimisation (DPO, ORPO: the lmstack.objectives plugins of lmstack-rl) instead of next-token
    # cross-entropy; the data must be pairs (data.dataset: preference)
    preference: PreferenceConfig | None = None
    # online RL on prompts (GRPO: the lmstack.objectives plugin 'grpo' of lmstack-rl); data.dataset: prompts
    grpo: GRPOConfig | None = None
    # Trainer callbacks by name from the lmstack.callbacks entry-point group (e.g. 'governance', 'viz').
    # None: every installed one; (): none; names that are not installed fail with the list of valid ones.
    callbacks: tuple[str, ...] | None = None

    def check(self) -> None:
        if not all(0 <= b < 1 for b in self.betas):
            self.fail("betas", f"each beta must be in [0, 1), got {self.betas}")
        if self.preference is not None and self.grpo is not None:
            self.fail("grpo", "a run optimises one objective: set train.preference or train.grpo, not both")


@dataclass(frozen=True, kw_only=True)
class DistConfig(ConfigBase):
    """How training is spread over processes: applied from outside the model by ``dist.apply``."""

    kind: ClassVar[str] = "DistConfig"
    strategy: Literal["none", "DDP", "FSDP", "ZeRO1"] = "none"
    precision: Precision = "fp32"
    grad_ckpt: bool = False
    cpu_offload: bool = False
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    reshard_after_forward: bool = True
    # FSDP: consecutive blocks sharded as one unit (one all-gather / reduce-scatter and one set of FSDP hooks for
    # all of them). FSDP2 spends host time per unit per step (pytorch#173680); small models can be host-bound.
    # "auto": as many blocks per unit as fit in about 30M parameters, at least one (GPT-2 124M: 4; blocks of 30M
    # parameters or more, such as a 1B Llama's: one each).
    fsdp_unit_blocks: PosInt | Literal["auto"] = "auto"

    def check(self) -> None:
        if self.cpu_offload and self.strategy != "FSDP":
            self.fail("cpu_offload", f"needs strategy 'FSDP', got {self.strategy!r}")


# Backends are plugins (lmstack.viz_backends: csv, jsonl, tensorboard, wandb, or third-party); VizSession rejects
# unknown names with the list of installed ones.
VizBackend = Annotated[str, Field(min_length=1)]


@dataclass(frozen=True, kw_only=True)
class VizConfig(ConfigBase):
    """Logging backends (several at once), activation probes and profiler cadence."""

    kind: ClassVar[str] = "VizConfig"
    backend: tuple[VizBackend, ...] = ("csv",)
    log_dir: str | None = None  # None: <train.out_dir>/logs
    log_every: PosInt = 10
    profile_every_n_steps: NonNegInt = 0  # 0 disables profiling
    profile_steps: PosInt = 3
    probes: tuple[str, ...] = ()  # module-name glob patterns for activation probes
    histogram_every: NonNegInt = 0
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "lmstack"


@dataclass(frozen=True, kw_only=True)
class ExportConfig(ConfigBase):
    """A deployable artifact: ONNX (with KV cache), torch.export, TorchScript, TensorRT or GGUF (llama.cpp).
    ``quantize``: int8 weight-only (onnx, torch_export, torchscript; Q8_0 in gguf), fp8 (torch_export on a GPU),
    int4 (gguf alone: Q4_0)."""

    kind: ClassVar[str] = "ExportConfig"
    target: Literal["onnx", "torch_export", "torchscript", "tensorrt", "gguf"] = "onnx"
    opset: Annotated[int, Field(ge=14, le=23)] = 19
    quantize: Literal["none", "int8", "fp8", "int4"] = "none"
    dynamic_axes: bool = True
    outdir: str = "artifacts"
    with_cache: bool = True
    validate: bool = True
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    # Post-export hooks by name from the lmstack.export_hooks group (e.g. 'governance' writes SBOM, checksums,
    # model card). None: every installed one; (): none.
    hooks: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ConfigBase):
    """Evaluation tasks and batching."""

    kind: ClassVar[str] = "EvalConfig"
    tasks: tuple[str, ...] = ()
    batch_size: PosInt = 8
    max_length: PosInt | None = None
    limit: PosInt | None = None
    out: str | None = None


@dataclass(frozen=True, kw_only=True)
class ServeConfig(ConfigBase):
    """The OpenAI-compatible server and its continuous-batching engine."""

    kind: ClassVar[str] = "ServeConfig"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    api_key: str | None = None
    model_name: str | None = None
    max_batch_size: PosInt = 64
    block_size: PosInt = 16
    num_blocks: PosInt | None = None  # None: sized from max_batch_size * max_seq_len
    max_seq_len: PosInt | None = None  # None: the model's
    prefix_caching: bool = True
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: str = "auto"
    guard: str | None = None  # "NAME[:ARG]": an lmstack.guards plugin, e.g. "policy:builtin:default" (lmstack-safety)


@dataclass(frozen=True, kw_only=True)
class RunConfig(ConfigBase):
    """Everything one ``train.run`` needs. YAML sections are the field names."""

    kind: ClassVar[str] = "RunConfig"
    model: ModelConfig
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def check(self) -> None:
        if self.data.seq_len > self.model.max_seq_len:
            self.fail("data.seq_len", f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")


CONFIG_CLASSES: dict[str, type[ConfigBase]] = {
    c.kind: c
    for c in (
        ModelConfig,
        DataConfig,
        LoraConfig,
        PreferenceConfig,
        GRPOConfig,
        TrainConfig,
        DistConfig,
        VizConfig,
        ExportConfig,
        EvalConfig,
        ServeConfig,
        RunConfig,
    )
}
