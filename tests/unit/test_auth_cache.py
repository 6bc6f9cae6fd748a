"""The bounded, ageing LRU behind the verified-key cache."""

from spoa_agent.cache import TtlLru


def test_hit_miss_and_age() -> None:
    cache: TtlLru[bytes, str] = TtlLru(max_size=10, max_age=5.0)
    cache.put(b"a", "A", now=100.0)
    assert cache.get(b"a", now=104.9) == "A"
    assert cache.get(b"a", now=105.1) is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache) == 0


def test_size_bound_evicts_least_recently_used() -> None:
    cache: TtlLru[bytes, int] = TtlLru(max_size=3, max_age=60.0)
    for i in range(3):
        cache.put(bytes([i]), i, now=0.0)
    cache.get(b"\x00", now=1.0)  # 0 is now the most recent
    cache.put(b"\x03", 3, now=1.0)
    assert cache.get(b"\x01", now=1.0) is None
    assert [cache.get(bytes([i]), now=1.0) for i in (0, 2, 3)] == [0, 2, 3]
    assert len(cache) == 3


def test_drop_where() -> None:
    cache: TtlLru[bytes, str] = TtlLru(max_size=10, max_age=60.0)
    for name in ("k1", "k1", "k2"):
        cache.put(name.encode() + bytes([len(cache)]), name, now=0.0)
    assert cache.drop_where(lambda v: v == "k1") == 2
    assert len(cache) == 1
