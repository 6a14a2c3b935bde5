"""lmstack governance: the supply-chain record of a model release.

``python -m governance sbom|sign|keygen|receipt|lineage|card|verify`` writes and checks an SPDX 2.3 SBOM, GNU
sha256sum checksums with a detached Ed25519 signature, an in-toto Statement receipt (DSSE-signed with a key),
a Graphviz lineage graph, a Hugging Face-style model card, and gates a release on all of them holding.
Train and export reach it through entry points (``governance.hooks``), never by import.
"""

__version__ = "0.1.1"
