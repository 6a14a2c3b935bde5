"""MinHash estimates against exact Jaccard, near-duplicate detection, Gopher rules, SPDX tagging."""

from __future__ import annotations

import random

import pytest
from license_expression import get_spdx_licensing

from corpus.dedup import NearDuplicateIndex, minhash, shingles
from corpus.licenses import header_license, identify_license_text, normalize_expression
from corpus.quality import QualityConfig, check_quality

WORDS = [f"w{i}" for i in range(3000)]


def _doc(rng: random.Random, n: int = 400) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_minhash_estimates_exact_jaccard(keep: float) -> None:
    from datasketch import LeanMinHash

    rng = random.Random(int(keep * 10))
    a = _doc(rng)
    b = [w if rng.random() < keep else rng.choice(WORDS) for w in a]
    sa, sb = shingles(" ".join(a)), shingles(" ".join(b))
    exact = len(sa & sb) / len(sa | sb)
    ma = LeanMinHash(seed=1, hashvalues=minhash(sa, 256), scheme="affine32")
    mb = LeanMinHash(seed=1, hashvalues=minhash(sb, 256), scheme="affine32")
    assert abs(ma.jaccard(mb) - exact) < 0.08, (ma.jaccard(mb), exact)


def test_shingles_are_word_5grams() -> None:
    assert shingles("The quick brown fox jumps over") == {b"the quick brown fox jumps", b"quick brown fox jumps over"}
    assert shingles("two words") == {b"two words"} and shingles("") == set()


def test_near_duplicate_index() -> None:
    rng = random.Random(0)
    base = _doc(rng, 600)
    edited = list(base)
    edited[300] = "changed"  # one word: ~99% of shingles shared
    other = _doc(rng, 600)
    idx = NearDuplicateIndex(threshold=0.8)
    sig = lambda words: minhash(shingles(" ".join(words)))
    assert idx.seen("a", sig(base)) is None
    assert idx.seen("b", sig(other)) is None
    assert idx.seen("c", sig(edited)) == "a"
    assert idx.seen("a", sig(_doc(rng, 600))) is None  # a repeated key is allowed


PROSE = ("The history of the city is long and full of change. It was founded by traders who came to the river "
         "to exchange goods with the people that lived in the hills. Over the centuries the town grew into a "
         "center of learning, and its library became known across the region for the quality of its "
         "collections and the care with which they were kept by generations of scholars.")


def test_gopher_rules() -> None:
    g = QualityConfig.gopher()
    assert check_quality(PROSE, g) is None
    assert check_quality("Too short to keep.", g) == "min_words"
    assert check_quality(PROSE + " #tag" * 40, g) == "max_hash_ratio"
    assert check_quality("\n".join(["- item one", "- item two", "- item three", PROSE]), g) is None
    names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    bullets = "\n".join(f"- a point about the city and the river called {n}" for n in names)
    assert check_quality(bullets, g) == "max_bullet_lines"
    assert check_quality((PROSE + "\n") * 3, g) == "max_dup_line_frac"
    assert check_quality(" ".join(["1234 5678"] * 40), g) in ("min_alpha_words", "max_dup_line_frac",
                                                              "min_stop_words", "max_top_2gram_char_frac")
    spam = "buy cheap pills now " * 30 + PROSE
    assert check_quality(spam, g).startswith(("max_top_", "max_dup_"))
    assert check_quality("", QualityConfig.none()) == "min_chars" and check_quality("x", QualityConfig.none()) is None


MIT = """Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal in the Software without restriction"""
APACHE = "                                 Apache License\n                           Version 2.0, January 2004"
BSD3 = ("Redistribution and use in source and binary forms, with or without modification, are permitted ... "
        "3. Neither the name of the copyright holder nor the names of its contributors may be used")


def test_license_detection_yields_valid_spdx() -> None:
    found = [identify_license_text(t) for t in (MIT, APACHE, BSD3)]
    assert found == ["MIT", "Apache-2.0", "BSD-3-Clause"]
    assert identify_license_text("All rights reserved.") == "NOASSERTION"
    assert header_license("#!/usr/bin/env python\n# SPDX-License-Identifier: apache-2.0 OR mit\n") == \
        "Apache-2.0 OR MIT"
    assert normalize_expression("not a license") is None
    licensing = get_spdx_licensing()  # independent check: every id we emit is a known SPDX key
    for spdx in found + ["PSF-2.0", "GPL-3.0-or-later", "CC-BY-4.0", "Unlicense"]:
        assert not licensing.validate(spdx).errors, spdx


def test_shingle_hashes_match_string_shingles() -> None:
    from corpus.dedup import shingle_hashes

    rng = random.Random(5)
    for n_words in (0, 3, 5, 6, 200):
        text = " ".join(rng.choice(WORDS[:50]) for _ in range(n_words))
        assert len(shingle_hashes(text)) == len(shingles(text))  # one hash per distinct 5-gram, no collisions
    a = " ".join(_doc(rng, 300))
    b = a.replace(a.split()[150], "zzz", 1)
    ea = len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))
    ha, hb = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    assert len(ha & hb) / len(ha | hb) == pytest.approx(ea)
