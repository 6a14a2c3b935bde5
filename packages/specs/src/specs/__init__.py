"""lmstack contracts: versioned configs, TensorSpec, Batch, Protocols, ModelCard and the plugin resolver.

Torch-free: depends on pydantic and pyyaml only.
"""

from specs.batch import IGNORE_INDEX, Batch
from specs.config import (
    DataConfig,
    DistConfig,
    EvalConfig,
    ExportConfig,
    GRPOConfig,
    LoraConfig,
    ModelConfig,
    PreferenceConfig,
    RopeScaling,
    RunConfig,
    ServeConfig,
    TrainConfig,
    VizConfig,
)
from specs.errors import CacheFullError, ConfigError, LmstackError, PluginError, ShapeError
from specs.io import config_from_dict, dump_config, dumps_config, load_config
from specs.migrations import SCHEMA_VERSION
from specs.modelcard import IntegrityError, ModelCard
from specs.plugins import resolve
from specs.presets import preset
from specs.protocols import KVCache, LanguageModel, MetricsLogger, PagedKVCache, Tokenizer, TrainerCallback
from specs.tensor_spec import TensorSpec

__version__ = "0.12.1"

__all__ = [
    "IGNORE_INDEX",
    "SCHEMA_VERSION",
    "Batch",
    "CacheFullError",
    "ConfigError",
    "DataConfig",
    "DistConfig",
    "EvalConfig",
    "ExportConfig",
    "GRPOConfig",
    "LoraConfig",
    "IntegrityError",
    "KVCache",
    "LanguageModel",
    "LmstackError",
    "MetricsLogger",
    "ModelCard",
    "ModelConfig",
    "PagedKVCache",
    "PreferenceConfig",
    "PluginError",
    "RopeScaling",
    "RunConfig",
    "ServeConfig",
    "ShapeError",
    "TensorSpec",
    "Tokenizer",
    "TrainConfig",
    "TrainerCallback",
    "VizConfig",
    "config_from_dict",
    "dump_config",
    "dumps_config",
    "load_config",
    "preset",
    "resolve",
]
