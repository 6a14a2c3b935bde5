"""Import a Hugging Face model directory into lmstack and generate; check the tokens against transformers.

    python examples/hf_import_generate.py                        # random-weight Llama and GPT-2 built locally
    python examples/hf_import_generate.py --model models/tinyllama --prompt "The capital of France is"

A Hugging Face model directory is ``config.json`` + ``model.safetensors`` (or sharded with
``model.safetensors.index.json``) + the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``).
``TransformerLM.from_pretrained(dir)`` reads the Llama / Mistral / GPT-2 ones directly (config fields mapped onto
``specs.config.ModelConfig``, weights renamed and, for GPT-2's Conv1D, transposed) and
``data.tokenizer.load_tokenizer(dir)`` reads the tokenizer. Nothing can be downloaded here, so by default this
builds the directories the way the hub's are made: a random-weight ``LlamaForCausalLM`` and ``GPT2LMHeadModel``
from small configs, saved with transformers' ``save_pretrained``, beside a byte-level BPE tokenizer trained on
local text and saved in the Hugging Face layout (``AutoTokenizer`` loads it). A directory downloaded from the hub
on a connected machine (``hf download TinyLlama/TinyLlama-1.1B-Chat-v1.0 --local-dir models/tinyllama``) goes
through exactly the same path with ``--model``.

For each directory the script greedy-decodes the prompt with ``serve.generate.generate`` on the imported model and
with transformers' own ``model.generate(do_sample=False)``, prints both and exits 1 if the token ids differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

from data.embedded import embedded_files
from data.tokenizer import load_tokenizer
from model.lm import TransformerLM
from serve.generate import generate
from specs.cli import run_cli


def local_tokenizer(directory: Path, vocab: int = 512) -> Any:
    """A byte-level BPE trained on a little stdlib text, saved in the Hugging Face layout into ``directory``."""
    texts = [f.path.read_text(encoding="utf-8", errors="replace") for f in embedded_files(400_000)]
    tok = load_tokenizer(f"bpe:{vocab}", texts=texts)
    tok.save(directory)  # tokenizer.json + tokenizer_config.json, beside whatever the directory holds
    return tok


def build_random_hf(kind: str, directory: Path, tok: Any, seed: int = 0) -> None:
    """A small random-weight transformers model of ``kind`` ('llama' or 'gpt2') saved into ``directory``.

    ``initializer_range`` is larger than the usual 0.02 so that random logits have clear winners: greedy decoding
    is then a sharp test (near-ties between the top two logits would make any rounding difference visible)."""
    torch.manual_seed(seed)
    special = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, **special, hidden_size=64, intermediate_size=176,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256, rope_theta=10000.0, initializer_range=0.2,
                                       tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, **special, n_embd=64, n_layer=2, n_head=4,
                                      n_positions=256, initializer_range=0.2)
        model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(directory)  # config.json + model.safetensors, as on the hub


def compare(directory: Path, prompt: str, new_tokens: int) -> bool:
    """Greedy-decode ``prompt`` with lmstack and with transformers from the same directory; True if equal."""
    tok = load_tokenizer(str(directory))
    ids = tok.encode(prompt)
    hf_ids = transformers.AutoTokenizer.from_pretrained(directory)(prompt, add_special_tokens=False)["input_ids"]
    if hf_ids != ids:
        print(f"  tokenizers disagree on the prompt: lmstack {ids}, transformers {hf_ids}")
        return False
    ours = TransformerLM.from_pretrained(directory).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    eos = tok.eos_id
    out = generate(ours, torch.tensor([ids]), max_new_tokens=new_tokens, eos_token_id=eos)  # greedy by default
    with torch.no_grad():
        ref = theirs.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=tok.pad_id if tok.pad_id is not None else eos)
        logit_diff = (ours(torch.tensor([ids])) - theirs(torch.tensor([ids])).logits).abs().max().item()
    a, b = out[0, len(ids):].tolist(), ref[0, len(ids):].tolist()
    cfg = ours.config
    print(f"{directory}: {type(theirs).__name__} -> TransformerLM ({cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.norm}, {cfg.mlp}, {cfg.pos_encoding}); max |logit diff| on the prompt {logit_diff:.2e}")
    print(f"  lmstack      : {a}\n  transformers : {b}\n  text (lmstack): {tok.decode(ids + a)!r}")
    print(f"  greedy tokens {'identical' if a == b else 'DIFFER'}")
    return a == b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python examples/hf_import_generate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, action="append", default=None,
                   help="a Hugging Face model directory (repeatable); default: build random Llama and GPT-2 ones")
    p.add_argument("--out", type=Path, default=Path("runs/examples/hf"), help="where the built directories go")
    p.add_argument("--prompt", default="def __init__(self")
    p.add_argument("--new-tokens", type=int, default=24)
    args = p.parse_args(argv)

    dirs = args.model
    if dirs is None:
        dirs = []
        for kind in ("llama", "gpt2"):
            d = args.out / kind
            tok = local_tokenizer(d)
            build_random_hf(kind, d, tok)
            dirs.append(d)
    results = [compare(d, args.prompt, args.new_tokens) for d in dirs]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
