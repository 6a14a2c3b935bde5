"""4-bit NormalFloat (NF4) weights, as QLoRA stores a frozen base model (Dettmers et al. 2023, "QLoRA: Efficient
Finetuning of Quantized LLMs", arXiv:2305.14314), in bitsandbytes' layout, so the bytes equal what
``bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=...)`` gives.

- Blocks of ``blocksize`` (64) consecutive values of the flattened weight share one absmax; each value is the index
  of the nearest of the 16 NF4 levels (:data:`NF4_CODE`, the quantiles of N(0, 1) scaled to [-1, 1]) to
  ``value / absmax``, two indices a byte, the first in the high nibble. A last partial block has its own absmax.
- Double quantization (``double_quant``, bitsandbytes' ``compress_statistics``): the absmaxes, less their mean
  (the *offset*), are quantized again to 8 bits in blocks of 256 with the signed dynamic map (Dettmers 2016,
  arXiv:1511.04561; :func:`dynamic_map`), one fp32 scale a block: 0.127 bits a weight instead of 0.5.

A quantized weight is a dict of tensors whose keys are the suffixes of its state_dict entries (:data:`KEYS`), so
a module holding one as buffers saves it under ``<module>.nf4_data`` etc. (safetensors, nothing pickled), and
:func:`dequantize_state` turns any state_dict holding such groups back into plain ``<module>.weight`` entries
(the model package's ``from_pretrained`` reads a QLoRA run's checkpoint through it).

:func:`from_bitsandbytes` reads the same bytes as a Hugging Face checkpoint saved with bitsandbytes' 4-bit
quantization names them (``<m>.weight`` packed, ``<m>.weight.absmax``, ``.quant_map``, ``.nested_absmax``,
``.nested_quant_map`` and the JSON ``.quant_state.bitsandbytes__nf4``; the "-bnb-4bit" repositories).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping

import torch

from specs.errors import ConfigError, ShapeError

# QLoRA's Appendix E; bitsandbytes' table (the same floats)
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023,
            1.0)
BLOCKSIZE = 64
ABSMAX_BLOCKSIZE = 256  # the absmaxes' blocks under double quantization
# state_dict suffixes: the packed indices (uint8), the absmaxes (fp32, or uint8 codes under double quantization),
# their blocks' scales and their offset (double quantization only), the weight's shape (int64)
KEYS = ("nf4_data", "nf4_absmax", "nf4_absmax_scale", "nf4_absmax_offset", "nf4_shape")


@functools.cache
def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> tuple[float, ...]:
    """The 8-bit dynamic quantization map (sorted): a dynamic exponent and a fraction whose bits shrink as the
    exponent grows, bitsandbytes' ``create_dynamic_map``."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed else \
            2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32, device="cpu")
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional > 0:
        bounds = torch.linspace(0.1, 1, additional + 1, dtype=torch.float32, device="cpu")
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return tuple(sorted(data))


def _code(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _blockwise(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values scaled by their block's absmax into [-1, 1], the absmaxes); a last partial block its own."""
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].reshape(-1, blocksize)
    absmax = blocks.abs().max(dim=-1)[0]
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if n > full:
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    return scaled, absmax


def _nearest(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The index of the nearest level of the sorted ``code`` (a tie goes to the lower one)."""
    return torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True).to(torch.uint8)


def _scale_blocks(values: torch.Tensor, scales: torch.Tensor, blocksize: int) -> torch.Tensor:
    n = values.numel()
    full = n - n % blocksize
    out = (values[:full].reshape(-1, blocksize) * scales[:full // blocksize].view(-1, 1)).reshape(-1)
    return torch.cat([out, values[full:] * scales[-1]]) if n > full else out


def quantize_nf4(weight: torch.Tensor, *, blocksize: int = BLOCKSIZE, double_quant: bool = True
                 ) -> dict[str, torch.Tensor]:
    """``weight`` (any float tensor) as NF4: the dict of :data:`KEYS` (without the absmax scale and offset when
    ``double_quant`` is off), on the weight's device."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.numel() == 0:
        raise ShapeError(f"quantize_nf4 takes a non-empty float tensor, got "
                         f"{type(weight).__name__ if not isinstance(weight, torch.Tensor) else weight.dtype}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
        raise ConfigError("nf4.blocksize", f"expected an even int >= 2 (values sharing one absmax), got {blocksize!r}")
    if weight.device.type != "meta" and not torch.isfinite(weight).all():  # (meta: a preflight's shapes only)
        raise ShapeError("quantize_nf4: the weight holds inf or NaN, which 4 bits cannot represent")
    scaled, absmax = _blockwise(weight.detach().reshape(-1).float(), blocksize)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = _nearest(scaled, _code(NF4_CODE, weight.device))
    out = {"nf4_data": (q[::2] << 4) | q[1::2],
           "nf4_shape": torch.tensor(tuple(weight.shape), dtype=torch.int64, device=weight.device)}
    if double_quant:
        offset = absmax.mean()
        scaled2, scales = _blockwise(absmax - offset, ABSMAX_BLOCKSIZE)
        out.update(nf4_absmax=_nearest(scaled2, _code(dynamic_map(), weight.device)), nf4_absmax_scale=scales,
                   nf4_absmax_offset=offset.reshape(1))  # (1,): DCP writes 0-d tensors as zeros
    else:
        out["nf4_absmax"] = absmax
    return out


def absmax_of(q: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 absmax of every block (decoded from 8 bits under double quantization)."""
    absmax = q["nf4_absmax"]
    if absmax.dtype == torch.uint8:
        codes = _code(dynamic_map(), absmax.device)[absmax.long()]
        return _scale_blocks(codes, q["nf4_absmax_scale"], ABSMAX_BLOCKSIZE) + q["nf4_absmax_offset"]
    return absmax.float()


def dequantize_nf4(q: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, *,
                   shape: tuple[int, ...] | None = None, blocksize: int | None = None) -> torch.Tensor:
    """The weight :func:`quantize_nf4` stored, in ``dtype`` (computed in fp32, as bitsandbytes does). ``shape``,
    when the caller knows it, saves reading ``nf4_shape`` (a device sync on a GPU); ``blocksize`` (the state does not
    name it) is the first of 64, 32, 128, ... that gives as many blocks as there are absmaxes, unless given."""
    missing = [k for k in ("nf4_data", "nf4_absmax") + (("nf4_shape",) if shape is None else ()) if k not in q]
    if missing:
        raise ShapeError(f"an NF4 weight needs {', '.join(missing)}; got {sorted(q)}")
    if shape is None:
        shape = tuple(int(s) for s in q["nf4_shape"].tolist())
    n = math.prod(shape)
    data = q["nf4_data"].reshape(-1)
    absmax = absmax_of(q)
    blocksize = blocksize or _blocksize(n, absmax.numel())
    if data.numel() != (n + 1) // 2:
        raise ShapeError(f"an NF4 weight of shape {shape} holds {(n + 1) // 2} bytes; got {data.numel()}")
    idx = torch.stack([data >> 4, data & 0xF], dim=-1).reshape(-1)[:n].long()
    values = _code(NF4_CODE, data.device)[idx]
    return _scale_blocks(values, absmax, blocksize).reshape(shape).to(dtype)


def _blocksize(n: int, blocks: int) -> int:
    """The block size that gives ``blocks`` absmaxes for ``n`` values (the stored state does not name it)."""
    for size in (BLOCKSIZE, 32, 128, 256, 512, 1024, 2048, 4096, 16, 8, 4, 2):
        if -(-n // size) == blocks:
            return size
    raise ShapeError(f"an NF4 weight of {n} values with {blocks} absmaxes matches no block size")


def dequantize_state(state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
                     ) -> dict[str, torch.Tensor]:
    """``state`` with every NF4 group (``<p>.nf4_data``, ``<p>.nf4_absmax``, ...) replaced by ``<p>.weight``
    dequantized to ``dtype``; other entries as they are. A state without NF4 groups comes back as a plain copy."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".nf4_data") or k == "nf4_data"]:
        prefix = key[:-len("nf4_data")]
        group = {k: out.pop(prefix + k) for k in KEYS if prefix + k in out}
        out[prefix + "weight"] = dequantize_nf4(group, dtype)
    return out


BNB_STATE = ".weight.quant_state.bitsandbytes__"  # the JSON tensor that marks a bitsandbytes 4-bit weight


def from_bitsandbytes(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.dtype]]:
    """``state`` with every bitsandbytes 4-bit weight group (see the module docstring) as this module's group
    (``<m>.nf4_data``, ...), and the dtype each was quantized from (``<m>`` -> its JSON's ``dtype``). Other entries
    are kept. ShapeError for what these bytes cannot be: FP4 (``quant_type`` fp4), code books other than NF4's and
    the dynamic map, nested blocks other than 256, a group without its tensors."""
    out = dict(state)
    dtypes: dict[str, torch.dtype] = {}
    for key in [k for k in state if BNB_STATE in k]:
        m = key[:key.index(BNB_STATE)]
        kind = key[key.index(BNB_STATE) + len(BNB_STATE):]
        try:
            meta = json.loads(bytes(state[key].cpu().numpy().astype("uint8")).decode("utf-8"))
            shape, blocksize = [int(v) for v in meta["shape"]], int(meta["blocksize"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ShapeError(f"{m}: its bitsandbytes quant state ({key}) is not the JSON bitsandbytes writes (with "
                             f"shape and blocksize): {type(exc).__name__}: {exc}") from None
        if kind != "nf4" or meta.get("quant_type") != "nf4":
            raise ShapeError(f"{m}: a bitsandbytes {meta.get('quant_type') or kind} weight; only NF4 (QLoRA's "
                             "quant_type nf4) reads as these bytes")
        base = f"{m}.weight"
        need = [base, f"{base}.absmax", f"{base}.quant_map"] + (
            [f"{base}.nested_absmax", f"{base}.nested_quant_map"] if "nested_offset" in meta else [])
        missing = [k for k in need if k not in state]
        if missing:
            raise ShapeError(f"{m}: a bitsandbytes 4-bit weight without {', '.join(missing)}")
        if not torch.allclose(state[f"{base}.quant_map"].float().cpu(), torch.tensor(NF4_CODE), rtol=0, atol=1e-7):
            raise ShapeError(f"{m}: its quant_map is not NF4's sixteen levels")
        data = state[base].contiguous()  # (bitsandbytes' quant_storage may hold the bytes as another dtype)
        group = {"nf4_data": (data if data.dtype == torch.uint8 else data.view(torch.uint8)).reshape(-1),
                 "nf4_absmax": state[f"{base}.absmax"],
                 "nf4_shape": torch.tensor(shape, dtype=torch.int64)}
        if "nested_offset" in meta:
            if int(meta.get("nested_blocksize", 0)) != ABSMAX_BLOCKSIZE or not torch.allclose(
                    state[f"{base}.nested_quant_map"].float().cpu(), torch.tensor(dynamic_map()), rtol=0, atol=1e-7):
                raise ShapeError(f"{m}: nested quantization other than the dynamic map in blocks of "
                                 f"{ABSMAX_BLOCKSIZE} (nested_blocksize {meta.get('nested_blocksize')})")
            group.update(nf4_absmax_scale=state[f"{base}.nested_absmax"].float(),
                         nf4_absmax_offset=torch.tensor([float(meta["nested_offset"])]))
        n, blocks = math.prod(shape), group["nf4_absmax"].numel()
        if blocksize < 2 or -(-n // blocksize) != blocks:
            raise ShapeError(f"{m}: {blocks} absmaxes for {n} values in blocks of {blocksize}")
        for k in (*need, key):
            out.pop(k)
        out.update({f"{m}.{k}": v for k, v in group.items()})
        dtypes[m] = getattr(torch, str(meta.get("dtype", "float32")))
    return out, dtypes
