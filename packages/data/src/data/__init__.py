"""lmstack data plane: tokenizers (data.tokenizer), token shards (data.shards, FORMAT.md), the streaming loader
(data.loader.build_dataloader) and the embedded corpus (data.embedded). Submodules are imported on use.
"""

__version__ = "0.3.0"
