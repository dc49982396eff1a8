"""Where documents come from. Each connector turns a source into `Document` objects."""

from ragapp.connectors.base import Document, FileProblem, ParseError, Section

__all__ = ["Document", "FileProblem", "ParseError", "Section"]
