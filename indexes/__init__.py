"""Vector and keyword indexes over chunk ids. The SQL store owns the chunks; indexes are rebuildable caches."""

from indexes.faiss_index import FaissIndex, IndexFileError

__all__ = ["FaissIndex", "IndexFileError"]
