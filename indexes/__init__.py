"""Vector and keyword indexes over chunk ids. The SQL store owns the chunks; indexes are rebuildable caches."""

from indexes.bm25_index import Bm25Index, KeywordIndexError
from indexes.faiss_index import FaissIndex, IndexFileError

__all__ = ["Bm25Index", "FaissIndex", "IndexFileError", "KeywordIndexError"]
