"""Vector and keyword indexes over chunk ids. The SQL store owns the chunks; indexes are rebuildable caches."""

from ragapp.indexes.bm25_index import Bm25Index, KeywordIndexError
from ragapp.indexes.faiss_index import FaissIndex, IndexFileError

__all__ = ["Bm25Index", "FaissIndex", "IndexFileError", "KeywordIndexError"]
