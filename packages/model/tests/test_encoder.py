"""The bidirectional encoder: attention sees the future, padding changes nothing, pooling and the classifier head."""

from __future__ import annotations

import pytest
import torch

from model.encoder import TransformerEncoder
from model.heads import pool
from specs.errors import ConfigError, ShapeError
from specs.presets import preset

CFG = preset("llama-debug", causal=False, arch="encoder")


@pytest.fixture(scope="module")
def enc() -> TransformerEncoder:
    torch.manual_seed(0)
    return TransformerEncoder(CFG, num_labels=3).eval()


@torch.no_grad()
def test_bidirectional_every_position_sees_the_future(enc):
    x = torch.randint(0, 512, (1, 8))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 512
    assert not torch.allclose(enc(x)[0, 0], enc(y)[0, 0])  # the first token's state depends on the last token


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padding_changes_nothing(enc, side):
    real = torch.randint(0, 512, (1, 6))
    pad = torch.zeros(1, 3, dtype=torch.long)
    x = torch.cat([pad, real] if side == "left" else [real, pad], 1)
    mask = torch.cat([pad, torch.ones_like(real)] if side == "left" else [torch.ones_like(real), pad], 1)
    real_slice = slice(3, None) if side == "left" else slice(0, 6)
    # Real tokens never attend to padding, and default positions skip it, so the real states equal the unpadded run.
    torch.testing.assert_close(enc(x, mask)[0, real_slice], enc(real)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.classify(x, mask), enc.classify(real), atol=1e-5, rtol=0)


def test_pooling_methods():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    assert pool(h, mask, "mean")[:, 0].tolist() == [2.0, 4.5]
    assert pool(h, mask, "first")[:, 0].tolist() == [1.0, 4.0]
    assert pool(h, mask, "last")[:, 0].tolist() == [3.0, 5.0]
    assert pool(h, None, "mean")[:, 0].tolist() == [1.5, 5.5]
    with pytest.raises(ConfigError, match="valid: mean, first, last"):
        pool(h, mask, "max")


def test_embed_and_classify_shapes(enc):
    x = torch.randint(0, 512, (4, 5))
    e = enc.embed(x, normalize=True)
    assert e.shape == (4, 64) and torch.allclose(e.norm(dim=-1), torch.ones(4))
    assert enc.classify(x).shape == (4, 3)
    with pytest.raises(ConfigError, match="num_labels"):
        TransformerEncoder(CFG).classify(x)


def test_causal_config_is_refused():
    with pytest.raises(ConfigError, match="causal=False"):
        TransformerEncoder(preset("llama-debug"))


def test_save_and_load_keep_head_and_pooling(enc, tmp_path):
    enc.save_pretrained(tmp_path)
    back = TransformerEncoder.from_pretrained(tmp_path).eval()
    assert back.num_labels == 3 and back.pooling == "mean"
    x = torch.randint(0, 512, (2, 5))
    assert torch.equal(back.classify(x), enc.classify(x))


def test_out_of_range_ids_and_a_changed_encoder_are_refused(enc, tmp_path):
    with pytest.raises(ShapeError, match=r"input_ids: token id 512 is out of range; expected ids in \[0, 512\)"):
        enc(torch.tensor([[1, 512]]))
    changed = TransformerEncoder(CFG, num_labels=3)
    changed.head.score = torch.nn.Linear(64, 5)
    with pytest.raises(ConfigError, match=r"changed tensors 'head.score.weight' \(5, 64\) float \(fresh: \(3, 64\)"):
        changed.save_pretrained(tmp_path / "enc")
    assert list(tmp_path.iterdir()) == []
