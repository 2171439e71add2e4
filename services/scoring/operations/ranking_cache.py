"""The serialised figures of recently asked rankings, so that a peer group of thousands is
not read and serialised again on every `GET /rankings` (issue 11: 3,474 communities with a
year of weekly inspections took ≈ 250 ms of one core per request).

Each figure is kept as its JSON text under its row id, with the row's PostgreSQL `xmin` (the
id of the transaction that wrote that version of the row). A read lists the group's ids and
`xmin`s in rank order, a cheap index scan of narrow columns, and loads and serialises only
rows whose `xmin` is not the one cached: any update of a row writes a new version with a new
`xmin`, so a cached figure is served only while it is exactly the stored one (nothing to
invalidate, whichever code path wrote the row). Databases without `xmin` get no cache.

Whole answers are kept too, under a fingerprint of the group's rows (each id and `xmin`, in
rank order): while the database's fingerprint of the group is the one an answer was made
from, the answer is the same text, and a read costs one statement that returns one row.

One cache per stack (a service container holds it), bounded by `max_rows` figures over all
groups and `max_documents` answers, least recently asked evicted first. No nameko imports.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Hashable, Iterable

GroupKey = Hashable
Version = str


class RankingCache:
    def __init__(self, max_rows: int = 50_000, max_documents: int = 16):
        self.max_rows = max(0, int(max_rows))
        self.max_documents = max(0, int(max_documents)) if self.max_rows else 0
        self._groups: OrderedDict[GroupKey, dict[int, tuple[Version, str]]] = OrderedDict()
        self._documents: OrderedDict[Hashable, tuple[str, str]] = OrderedDict()
        self._rows = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._rows

    def figures(self, group: GroupKey, listing: Iterable[tuple[int, Version | None]],
                load: Callable[[list[int]], dict[int, str]]) -> dict[int, str]:
        """The JSON text of each listed row (id, version): cached where the version matches,
        otherwise from `load(ids)`, which must return every id it is given. A row without a
        version (no `xmin` on this database) is always loaded."""
        listing = list(listing)
        cached = self._groups.get(group, {})
        out: dict[int, str] = {}
        missing: list[int] = []
        for row_id, version in listing:
            entry = cached.get(row_id)
            if version is not None and entry is not None and entry[0] == version:
                out[row_id] = entry[1]
            else:
                missing.append(row_id)
        self.hits += len(out)
        self.misses += len(missing)
        if missing:
            loaded = load(missing)
            out.update((row_id, loaded[row_id]) for row_id in missing)
        versions = [(row_id, version) for row_id, version in listing if version is not None]
        if self.max_rows and versions and len(versions) <= self.max_rows:
            # The group as just read: rows gone from it (re-scored away) are forgotten with it.
            self._store(group, {row_id: (version, out[row_id]) for row_id, version in versions})
        return out

    @staticmethod
    def fingerprint(listing: Iterable[tuple[int, Version | None]]) -> str | None:
        """md5 of "id:version,id:version,…" in the listing's order: what PostgreSQL computes as
        md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY …)) for the same rows.
        None if a row has no version."""
        parts = []
        for row_id, version in listing:
            if version is None:
                return None
            parts.append(f"{row_id}:{version}")
        return hashlib.md5(",".join(parts).encode()).hexdigest()

    def document(self, key: Hashable, fingerprint: str | None) -> str | None:
        """The answer kept under `key` if it was made from rows with this fingerprint."""
        kept = self._documents.get(key)
        if fingerprint is None or kept is None or kept[0] != fingerprint:
            return None
        self._documents.move_to_end(key)
        return kept[1]

    def keep_document(self, key: Hashable, fingerprint: str | None, text: str) -> None:
        if fingerprint is None or not self.max_documents:
            return
        self._documents.pop(key, None)
        self._documents[key] = (fingerprint, text)
        while len(self._documents) > self.max_documents:
            self._documents.popitem(last=False)

    def _store(self, group: GroupKey, entries: dict[int, tuple[Version, str]]) -> None:
        old = self._groups.pop(group, None)
        self._rows -= len(old) if old else 0
        self._groups[group] = entries
        self._rows += len(entries)
        while self._rows > self.max_rows and len(self._groups) > 1:
            _, evicted = self._groups.popitem(last=False)
            self._rows -= len(evicted)


__all__ = ["RankingCache"]
