"""User ids leave the database only as an HMAC-SHA256 of themselves under a secret key.

The key is an input: the callers at the edge (the component, the CLI) read it from
`HMAC_KEY_ENV`, a Kubernetes Secret on a cluster. Without a key, ids are dropped.
"""

from __future__ import annotations

import hmac

import pyarrow as pa
import pyarrow.compute as pc

HMAC_KEY_ENV = "FEEDBACK_HMAC_KEY"  # where the edges find the key; read there, never here


class Pseudonymizer:
    """HMAC-SHA256 of user ids; with no key, ids are dropped rather than exported."""

    def __init__(self, key: str | bytes | None, cache_size: int = 500_000) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        self._cache_size = cache_size
        self._known = pa.array([], pa.string())  # ids hashed so far, and their digests
        self._digests = pa.array([], pa.string())

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def digest(self, user_id: str) -> str:
        return hmac.digest(self._key, user_id.encode(), "sha256").hex()

    def apply(self, column: pa.ChunkedArray | pa.Array) -> pa.Array:
        if self._key is None:
            return pa.nulls(len(column), pa.string())
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        # Hash each distinct id once: users are far fewer than predictions. The lookup runs in
        # Arrow; only ids not seen before reach Python.
        encoded = pc.dictionary_encode(column)
        distinct = encoded.dictionary
        position = pc.index_in(distinct, value_set=self._known)
        missing = distinct.filter(pc.is_null(position))
        if len(missing):
            fresh = pa.array([self.digest(v) for v in missing.to_pylist()], pa.string())
            if len(self._known) + len(missing) > self._cache_size:
                # Bounded, whatever the number of users: keep only this batch's ids.
                digests = pc.replace_with_mask(pc.take(self._digests, position), pc.is_null(position), fresh)
                self._known, self._digests = distinct, digests
                return pc.take(digests, encoded.indices)
            self._known = pa.concat_arrays([self._known, missing])
            self._digests = pa.concat_arrays([self._digests, fresh])
            position = pc.index_in(distinct, value_set=self._known)
        return pc.take(pc.take(self._digests, position), encoded.indices)
