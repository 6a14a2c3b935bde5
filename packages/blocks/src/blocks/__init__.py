"""lmstack blocks: norms, feed-forward sublayers and transformer blocks with pre-/post-norm residual wiring."""

from blocks.block import GPTBlock, LlamaBlock, TransformerBlock, make_block
from blocks.mlp import MLP, SwiGLU, make_mlp
from blocks.norms import LayerNorm, RMSNorm, make_norm

__version__ = "0.7.0"

__all__ = ["MLP", "GPTBlock", "LayerNorm", "LlamaBlock", "RMSNorm", "SwiGLU", "TransformerBlock", "make_block",
           "make_mlp", "make_norm"]
