"""lmstack model: TransformerLM, the bidirectional encoder, the reward model, heads, checkpoint I/O and Hugging
Face interop.

Import the submodules (``from model.lm import TransformerLM``); nothing heavy happens at import.
"""

__version__ = "0.10.0"
