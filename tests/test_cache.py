"""The audio-embedding cache: content keys over the whole clip, a byte bound, LRU order, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from naturelm_core.cache import AudioEmbeddingCache, content_key


def _embedding(value: float, rows: int = 29, width: int = 8) -> torch.Tensor:
    return torch.full((rows, width), value, dtype=torch.float32)


def test_clips_sharing_first_middle_and_last_thousand_samples_get_different_entries():
    rng = np.random.default_rng(0)
    clip_a = rng.uniform(-1, 1, 160_000).astype(np.float32)
    clip_b = clip_a.copy()
    middle = len(clip_a) // 2
    # Differ only between the regions upstream sampled (first, middle and last 1000 samples).
    clip_b[5_000:6_000] = rng.uniform(-1, 1, 1_000).astype(np.float32)
    assert np.array_equal(clip_a[:1000], clip_b[:1000])
    assert np.array_equal(clip_a[middle - 500 : middle + 500], clip_b[middle - 500 : middle + 500])
    assert np.array_equal(clip_a[-1000:], clip_b[-1000:])

    cache = AudioEmbeddingCache(max_bytes=1 << 20)
    key_a, key_b = content_key(clip_a), content_key(clip_b)
    assert key_a != key_b
    cache.put(key_a, _embedding(1.0))
    cache.put(key_b, _embedding(2.0))
    assert len(cache) == 2
    assert torch.equal(cache.get(key_a), _embedding(1.0))
    assert torch.equal(cache.get(key_b), _embedding(2.0))


def test_single_sample_change_dtype_shape_and_window_params_change_the_key():
    clip = np.linspace(-1, 1, 16_000, dtype=np.float32)
    changed = clip.copy()
    changed[8_000] = np.nextafter(changed[8_000], np.float32(2))
    assert content_key(clip) == content_key(clip.copy())
    assert content_key(clip) == content_key(torch.from_numpy(clip))
    assert content_key(clip) != content_key(changed)
    assert content_key(clip) != content_key(clip.astype(np.float64))
    assert content_key(clip) != content_key(clip.reshape(2, -1))
    assert content_key(clip, window_s=10.0, hop_s=10.0) != content_key(clip, window_s=10.0, hop_s=5.0)
    assert content_key(clip, window_s=10.0, hop_s=10.0) == content_key(clip, hop_s=10.0, window_s=10.0)


def test_lru_eviction_is_bounded_by_bytes():
    entry_bytes = _embedding(0.0).numel() * 4
    cache = AudioEmbeddingCache(max_bytes=3 * entry_bytes)
    for name in "abc":
        cache.put(name, _embedding(ord(name)))
    assert cache.nbytes == 3 * entry_bytes
    assert cache.get("a") is not None  # a becomes most recent; b is now the oldest
    cache.put("d", _embedding(4.0))
    assert "b" not in cache
    assert all(name in cache for name in "acd")
    assert cache.nbytes == 3 * entry_bytes

    cache.put("big", _embedding(5.0, rows=29 * 2))  # two entries' worth: evicts the two oldest (c, a)
    assert [name for name in "acd" if name in cache] == ["d"]
    assert cache.nbytes == 3 * entry_bytes

    cache.put("huge", _embedding(6.0, rows=29 * 4))  # larger than the whole cache: not stored
    assert "huge" not in cache
    assert cache.nbytes <= cache.max_bytes


def test_replacing_a_key_and_views_are_accounted_honestly():
    cache = AudioEmbeddingCache(max_bytes=1 << 20)
    batch = torch.zeros(4, 29, 8)
    cache.put("row0", batch[0])
    stored = cache.get("row0")
    assert stored.untyped_storage().nbytes() == 29 * 8 * 4  # a copy, not the whole batch kept alive
    cache.put("row0", _embedding(1.0, rows=10))
    assert cache.nbytes == 10 * 8 * 4
    assert len(cache) == 1


def test_hit_and_miss_counters():
    cache = AudioEmbeddingCache(max_bytes=1 << 20)
    assert cache.get("x") is None
    cache.put("x", _embedding(1.0))
    cache.get("x")
    cache.get("x")
    assert (cache.hits, cache.misses) == (2, 1)


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        AudioEmbeddingCache(-1)


def test_concurrent_puts_and_gets_keep_the_byte_bound_and_accounting():
    entry_bytes = _embedding(0.0).numel() * 4
    cache = AudioEmbeddingCache(max_bytes=10 * entry_bytes)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(300):
                key = f"k{(offset + i) % 25}"
                if cache.get(key) is None:
                    cache.put(key, _embedding(float(i)))
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.hits + cache.misses == 8 * 300
    assert cache.nbytes == len(cache) * entry_bytes <= cache.max_bytes


def test_window_keys_hash_an_array_once_and_never_confuse_two_arrays(monkeypatch):
    import naturelm_core.cache as cache_module
    from naturelm_core.cache import WindowKeys

    calls: list[int] = []
    original = cache_module.content_key
    monkeypatch.setattr(cache_module, "content_key", lambda w, **p: calls.append(1) or original(w, **p))
    keys = WindowKeys(max_entries=2)
    first = np.arange(100, dtype=np.float32)
    assert keys.key(first) == keys.key(first) == original(first)
    assert len(calls) == 1
    same_content = first.copy()
    assert keys.key(same_content) == original(first)  # another array, hashed itself, same content key
    for value in range(5):  # arrays that die and may reuse an id: each gets its own content's key
        fresh = np.full(100, value, dtype=np.float32)
        assert keys.key(fresh) == original(fresh)
    assert len(keys._entries) <= 2
