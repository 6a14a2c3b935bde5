"""The recursive splitter: LangChain's chunks exactly, with exact offsets where LangChain's are guessed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.chunk import Document, RecursiveSplitter, chunk_documents, token_length

WORDS = st.sampled_from(["alpha", "be", "c", "delta\n", "e\n\n", "  ", "fox.", "hello world", "\n", "x" * 25, "é"])
TEXTS = st.lists(st.tuples(WORDS, st.sampled_from(["", " ", " ", "\n"])), max_size=60).map(
    lambda parts: "".join(a + b for a, b in parts))
SEPARATORS = st.sampled_from([("\n\n", "\n", " ", ""), ("\n\n", "\n", " "), ("\n", ".")])


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, size=st.integers(1, 40), overlap_frac=st.floats(0, 0.99), seps=SEPARATORS)
def test_chunks_are_langchains(text, size, overlap_frac, seps):
    overlap = int(overlap_frac * size)
    ours = RecursiveSplitter(chunk_size=size, chunk_overlap=overlap, separators=seps).split(text)
    ref = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, separators=list(seps)).split_text(text)
    # LangChain appends a piece it cannot split further without stripping it (whitespace-only chunks, even):
    # our chunks are always stripped and never empty, which is the only difference.
    assert [text[a:b] for a, b in ours] == [c.strip() for c in ref if c.strip()]
    assert all(a < b and not text[a].isspace() and not text[b - 1].isspace() for a, b in ours)
    assert [a for a, _ in ours] == sorted(a for a, _ in ours)
    if seps[-1] == "":  # single characters always fit, so every chunk does
        assert all(b - a <= size for a, b in ours)


def test_offsets_are_exact_in_repeating_text():
    text = "one two three four. " * 6
    ours = RecursiveSplitter(chunk_size=24, chunk_overlap=12).split(text)
    docs = RecursiveCharacterTextSplitter(chunk_size=24, chunk_overlap=12, add_start_index=True).create_documents(
        [text])
    assert [text[a:b] for a, b in ours] == [d.page_content for d in docs]
    # the passage repeats, so a chunk's text occurs at many offsets; ours is the span the split produced
    starts = [a for a, _ in ours]
    assert starts == sorted(set(starts))
    assert all(text[d.metadata["start_index"]:].startswith(d.page_content) for d in docs)


def test_token_lengths_bound_chunks():
    from data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    text = "naïve café déjà vu " * 40  # multi-byte characters: tokens and characters differ
    spans = RecursiveSplitter(chunk_size=50, chunk_overlap=10, length=token_length(tok)).split(text)
    assert max(len(tok.encode(text[a:b])) for a, b in spans) <= 50
    assert max(b - a for a, b in spans) < 50  # fewer characters than bytes


def test_chunk_documents_keep_provenance():
    docs = [Document("a.md", "x " * 300, {"lang": "en"}), Document("b.md", "short")]
    chunks = chunk_documents(docs, chunk_size=100, chunk_overlap=20)
    assert [c.id for c in chunks if c.doc_id == "b.md"] == ["b.md#0"]
    for c in chunks:
        src = next(d for d in docs if d.id == c.doc_id)
        assert src.text[c.start:c.end] == c.text and c.metadata == src.metadata
    assert [c.index for c in chunks if c.doc_id == "a.md"] == list(range(sum(c.doc_id == "a.md" for c in chunks)))


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk_size": 0}, "chunk_size must be at least 1"),
    ({"chunk_size": 10, "chunk_overlap": 10}, r"chunk_overlap must be in \[0, chunk_size=10\)"),
    ({"chunk_size": 10, "separators": ()}, "separators must name"),
])
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecursiveSplitter(**kwargs)


def test_duplicate_document_ids_are_refused():
    with pytest.raises(ValueError, match="'a' appears twice"):
        chunk_documents([Document("a", "x"), Document("a", "y")], chunk_size=10, chunk_overlap=0)
