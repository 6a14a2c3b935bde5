"""lmstack-rag: retrieval bridges: chunkers, BM25 and vector indexes, hybrid search, embedding caches, grounded
prompts with citations, a retrieval tool spec, and trec_eval-exact retrieval metrics."""

from rag.cache import CachedEmbedder, EmbeddingCache
from rag.chunk import Chunk, Document, RecursiveSplitter, chunk_documents, token_length
from rag.dense import VectorIndex
from rag.docs import load_documents, read_queries
from rag.embed import Embedder, HFEmbedder, LmstackEmbedder, load_embedder
from rag.fusion import reciprocal_rank_fusion
from rag.index import Hit, RagIndex
from rag.metrics import evaluate, read_qrels, read_run, write_run
from rag.mining import MiningReport, mine_hard_negatives, read_pairs
from rag.prompt import Answer, ask, build_messages, chat, citations
from rag.rerank import CrossEncoderReranker
from rag.sparse import BM25Index, terms
from rag.tool import run_tool_call, search_tool

__version__ = "0.3.0"

__all__ = [
    "Answer", "BM25Index", "CachedEmbedder", "Chunk", "CrossEncoderReranker", "Document", "Embedder",
    "EmbeddingCache", "HFEmbedder", "Hit", "LmstackEmbedder", "MiningReport", "RagIndex", "RecursiveSplitter",
    "VectorIndex", "ask", "build_messages", "chat", "chunk_documents", "citations", "evaluate", "load_documents",
    "load_embedder", "mine_hard_negatives", "read_pairs", "read_qrels", "read_queries", "read_run",
    "reciprocal_rank_fusion", "run_tool_call", "search_tool", "terms", "token_length", "write_run",
]
