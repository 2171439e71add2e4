"""The cache of serialised ranking figures: a figure is served from it only while its row's
version is the one it was serialised from."""
from __future__ import annotations

import hashlib

from services.scoring.operations.ranking_cache import RankingCache


class Loader:
    def __init__(self, texts: dict[int, str]):
        self.texts, self.asked = texts, []

    def __call__(self, ids):
        self.asked.append(list(ids))
        return {i: self.texts[i] for i in ids}


def test_an_unchanged_row_is_served_from_the_cache_and_a_changed_one_is_loaded_again():
    cache, load = RankingCache(), Loader({1: "a", 2: "b", 3: "c"})
    assert cache.figures("g", [(1, "100"), (2, "100"), (3, "101")], load) == {1: "a", 2: "b", 3: "c"}
    load.texts[2] = "b2"
    assert cache.figures("g", [(1, "100"), (2, "107"), (3, "101")], load) == {1: "a", 2: "b2", 3: "c"}
    assert load.asked == [[1, 2, 3], [2]]
    assert (cache.hits, cache.misses) == (2, 4)


def test_a_row_gone_from_the_group_is_forgotten_and_groups_are_apart():
    cache, load = RankingCache(), Loader({1: "a", 2: "b"})
    cache.figures("g", [(1, "5"), (2, "5")], load)
    cache.figures("g", [(1, "5")], load)
    assert len(cache) == 1
    cache.figures("other", [(2, "5")], load)  # the same id and version in another group
    assert load.asked == [[1, 2], [2]]


def test_rows_without_a_version_are_always_loaded_and_never_kept():
    cache, load = RankingCache(), Loader({1: "a"})
    cache.figures("g", [(1, None)], load)
    cache.figures("g", [(1, None)], load)
    assert load.asked == [[1], [1]] and len(cache) == 0


def test_the_least_recently_asked_group_goes_first_when_the_cache_is_full():
    cache, load = RankingCache(max_rows=4), Loader({i: str(i) for i in range(10)})
    cache.figures("old", [(1, "v"), (2, "v")], load)
    cache.figures("kept", [(3, "v"), (4, "v")], load)
    cache.figures("old", [(1, "v"), (2, "v")], load)  # asked again: now the most recent
    cache.figures("new", [(5, "v"), (6, "v")], load)
    assert len(cache) == 4
    load.asked.clear()
    cache.figures("old", [(1, "v"), (2, "v")], load)
    cache.figures("kept", [(3, "v"), (4, "v")], load)
    assert load.asked == [[3, 4]]  # "kept" was evicted, "old" was not


def test_a_group_larger_than_the_cache_or_a_cache_of_size_zero_keeps_nothing():
    for cache in (RankingCache(max_rows=2), RankingCache(max_rows=0)):
        load = Loader({1: "a", 2: "b", 3: "c"})
        assert cache.figures("g", [(1, "v"), (2, "v"), (3, "v")], load) == {1: "a", 2: "b", 3: "c"}
        assert len(cache) == 0


def test_a_kept_answer_is_given_only_for_the_fingerprint_it_was_made_from():
    cache = RankingCache(max_documents=2)
    made_from = RankingCache.fingerprint([(1, "100"), (2, "101")])
    assert made_from == hashlib.md5(b"1:100,2:101").hexdigest()  # as PostgreSQL's md5(string_agg(...))
    assert RankingCache.fingerprint([(2, "101"), (1, "100")]) != made_from  # the order is part of it
    assert RankingCache.fingerprint([(1, "100"), (2, None)]) is None
    cache.keep_document("k", made_from, "{answer}")
    assert cache.document("k", made_from) == "{answer}"
    assert cache.document("k", RankingCache.fingerprint([(1, "100"), (2, "107")])) is None
    assert cache.document("k", None) is None and cache.document("other", made_from) is None
    cache.keep_document("k2", made_from, "2")
    cache.document("k", made_from)  # asked: now the most recent
    cache.keep_document("k3", made_from, "3")
    assert cache.document("k2", made_from) is None and cache.document("k", made_from) == "{answer}"


def test_a_cache_of_size_zero_keeps_no_answer_either():
    cache = RankingCache(max_rows=0)
    cache.keep_document("k", "f", "text")
    assert cache.document("k", "f") is None
