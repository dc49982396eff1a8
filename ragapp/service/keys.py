"""API keys: random secrets shown once, stored as SHA-256 hashes, each scoped to collections or admin.

The secrets are 256 random bits, so a plain SHA-256 is enough (a slow password hash protects guessable
secrets; these are not). Keys are revoked, never deleted: once a workspace has had a key, every request
needs one.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from ragapp.errors import UsageError
from ragapp.service.names import invisible_character
from ragapp.store import ApiKeyRow, Store, utcnow

KEY_PREFIX = "rag_"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    collections: tuple[str, ...]
    admin: bool
    created_at: datetime
    revoked: bool

    def can_read(self, collection: str) -> bool:
        return self.admin or collection in self.collections

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "collections": list(self.collections),
            "admin": self.admin,
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "revoked": self.revoked,
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id, row.name, row.prefix, tuple(row.collections), row.admin, row.created_at, row.revoked_at is not None
    )


class KeyStore:
    def __init__(self, store: Store):
        self.store = store

    def create(self, collections: Sequence[str] = (), admin: bool = False, name: str = "") -> tuple[str, ApiKey]:
        """A new key: (the secret, to hand over once, and its record)."""
        problem = invisible_character(name)
        if problem is not None:
            raise UsageError(f"key name {name!r} {problem}: a name that displays differently misleads `keys list`")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            name=name, prefix=secret[:12], key_hash=_hash(secret), collections=sorted(set(collections)), admin=admin
        )
        with self.store.session() as s:
            s.add(row)
            s.commit()
            return secret, _key(row)

    def verify(self, secret: str) -> ApiKey | None:
        """The live key with this secret, or None."""
        with self.store.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == _hash(secret)))
        return _key(row) if row is not None and row.revoked_at is None else None

    def required(self) -> bool:
        """Whether requests need a key: yes as soon as any key was ever created."""
        with self.store.session() as s:
            return bool(s.scalar(select(func.count()).select_from(ApiKeyRow)))

    def list(self) -> list[ApiKey]:
        with self.store.session() as s:
            return [_key(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def forget_collection(self, collection: str) -> builtins.list[int]:  # `list` here is the method above
        """Take a deleted collection out of every live key's scope; the ids of the keys this changed.

        A key that read only that collection is revoked (its record keeps the name); a key that read others
        keeps those. So a collection created later under the same name is readable by no old key.
        """
        changed = []
        with self.store.session() as s:
            for row in s.scalars(select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))):
                if collection not in row.collections:
                    continue
                left = [c for c in row.collections if c != collection]
                if left or row.admin:
                    row.collections = left
                else:
                    row.revoked_at = utcnow()
                changed.append(row.id)
            s.commit()
        return changed

    def revoke(self, key_id: int) -> bool:
        """Revoke a key; False when there is no such key (revoking twice is fine)."""
        with self.store.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                s.commit()
            return True
