"""Every mask against a brute-force Python loop over (query, key) pairs, on random inputs (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specs.errors import ConfigError, ShapeError
from tensor.masks import (
    attention_mask,
    causal_mask,
    document_mask,
    empty_rows,
    padding_mask,
    positions_from_padding,
    sliding_window_mask,
)


def brute(q_pos, k_pos, causal, valid, window, q_doc, k_doc):
    """Nested-loop reference: (B, 1, T, S) nested lists of bools."""
    out = []
    for b in range(len(q_pos)):
        rows = []
        for t, p in enumerate(q_pos[b]):
            row = []
            for s, j in enumerate(k_pos[b]):
                ok = True
                if causal and j > p:
                    ok = False
                if window is not None and (p - j >= window if causal else abs(p - j) >= window):
                    ok = False
                if q_doc is not None and q_doc[b][t] != k_doc[b][s]:
                    ok = False
                if valid is not None and not valid[b][s]:
                    ok = False
                row.append(ok)
            rows.append(row)
        out.append([rows])
    return out


@st.composite
def mask_inputs(draw):
    B, T, S = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 9))
    ints = lambda n, lo, hi: draw(st.lists(st.lists(st.integers(lo, hi), min_size=n, max_size=n), min_size=B,
                                           max_size=B))
    q_pos, k_pos = ints(T, 0, 12), ints(S, 0, 12)
    valid = draw(st.none() | st.just(ints(S, 0, 1)))
    window = draw(st.none() | st.integers(1, 6))
    docs = draw(st.booleans())
    q_doc, k_doc = (ints(T, 0, 2), ints(S, 0, 2)) if docs else (None, None)
    return q_pos, k_pos, draw(st.booleans()), valid, window, q_doc, k_doc


@settings(max_examples=150, deadline=None)
@given(mask_inputs())
def test_attention_mask_matches_brute_force(args):
    q_pos, k_pos, causal, valid, window, q_doc, k_doc = args
    t = lambda x: None if x is None else torch.tensor(x)
    got = attention_mask(t(q_pos), t(k_pos), causal=causal, k_valid_BS=t(valid), window=window,
                         q_doc_BT=t(q_doc), k_doc_BS=t(k_doc))
    assert got.dtype == torch.bool and got.shape == (len(q_pos), 1, len(q_pos[0]), len(k_pos[0]))
    assert got.tolist() == brute(q_pos, k_pos, causal, valid, window, q_doc, k_doc)


@settings(max_examples=80, deadline=None)
@given(T=st.integers(1, 9), extra=st.integers(0, 6), window=st.integers(1, 10), causal=st.booleans())
def test_causal_and_window_helpers_match_brute_force(T, extra, window, causal):
    S = T + extra
    q, k = [list(range(extra, S))], [list(range(S))]  # queries are the last T positions
    assert causal_mask(T, S).tolist() == brute(q, k, True, None, None, None, None)[0][0]
    assert sliding_window_mask(T, S, window=window, causal=causal).tolist() == \
        brute(q, k, causal, None, window, None, None)[0][0]


@settings(max_examples=80, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 3), min_size=6, max_size=6), min_size=1, max_size=3),
       causal=st.booleans())
def test_document_mask_matches_brute_force(docs, causal):
    pos = [list(range(6))] * len(docs)
    assert document_mask(torch.tensor(docs), causal=causal).tolist() == brute(pos, pos, causal, None, None, docs, docs)


@settings(max_examples=50, deadline=None)
@given(valid=st.lists(st.lists(st.integers(0, 1), min_size=5, max_size=5), min_size=1, max_size=3))
def test_padding_mask_and_positions(valid):
    m = torch.tensor(valid)
    assert padding_mask(m).tolist() == [[[[bool(v) for v in row]]] for row in valid]
    pos = positions_from_padding(m).tolist()
    for row, prow in zip(valid, pos):  # transformers generate(): cumsum - 1, padding slots get 1
        count = 0
        for v, p in zip(row, prow):
            assert p == (count if v else 1)
            count += v


def test_empty_rows_flags_rows_with_no_key():
    mask = attention_mask(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]]),
                          k_valid_BS=torch.tensor([[0, 1, 1]]))
    assert empty_rows(mask).view(-1).tolist() == [True, False, False]


def test_causal_mask_decode_row_sees_everything():
    assert causal_mask(1, 5).tolist() == [[True] * 5]


def test_bad_inputs():
    with pytest.raises(ConfigError, match="sliding_window"):
        sliding_window_mask(3, window=0)
    with pytest.raises(ShapeError, match="T=4 queries cannot exceed S=2"):
        causal_mask(4, 2)
    with pytest.raises(ShapeError, match="both q_doc_BT and k_doc_BS"):
        attention_mask(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long),
                       q_doc_BT=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="k_pos_BS"):
        attention_mask(torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
