"""The related-story index: BM25 over headline+summary+body, entity overlap, recency, duplicates.

Pure and in memory. Every instance builds the same index from the same topic, so it answers the
same. Scoring is sparse and vectorised: postings are compact arrays per term, one query touches
only its rarest terms, and documents carry their BM25 weights precomputed. Near-duplicates are
MinHash signatures over word pairs, found through LSH bands.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from operator import itemgetter
from typing import cast

import numpy as np
import numpy.typing as npt

from services.enrichment import kernels
from services.enrichment.entities import FoundEntities, extract_entities
from services.enrichment.text import normalise, read_story
from shared.events import Article

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Signature = npt.NDArray[np.uint32]

NUM_PERM = 64
_BANDS = 8  # LSH: 8 bands of 8 rows finds pairs from an estimated Jaccard of about 0.7
_ROWS = NUM_PERM // _BANDS
_K1 = 1.2
_B = 0.75
_INDEXED_TERMS = 80
_RECENT_WITH_TERMS = 20_000
_NO_ORDER = np.empty(0, dtype=np.int64)  # `kernels.rank_links` without the uris' order
# A re-sent wire story repeats its opening; its first words are enough to know it.
_SHINGLED_WORDS = 250
_ENTITY_CHARS = 2000
# A teaser and a long article about one event share only a small part of the long one's weight;
# the geometric mean of both self-scores forgives that, but never below this share of the larger.
_LENGTH_MISMATCH_FLOOR = 0.7


@dataclass(frozen=True)
class IndexSettings:
    window_s: float = 7 * 24 * 3600.0
    capacity: int = 200_000
    query_terms: int = 40  # a query uses its rarest terms only: they carry the ranking
    entity_boost: float = 0.5  # score x (1 + boost x share of entities in common)
    half_life_s: float = 3 * 24 * 3600.0  # recency decay: an older story counts half after this
    duplicate_similarity: float = 0.7  # estimated Jaccard of word-pair shingles
    candidates: int = 50
    # A term held by more than this share of the earlier stories (and at least `common_floor`
    # of them) is too common to find an event by; it is not a query term.
    common_share: float = 0.02
    common_floor: int = 500
    average_length: float = 80.0  # BM25's average story length, in counted terms

    def __post_init__(self) -> None:
        if not 0 < self.query_terms <= kernels.PAIRWISE_BLOCK:
            raise ValueError(f"query_terms must be 1 to {kernels.PAIRWISE_BLOCK}")


@dataclass(frozen=True)
class Features:
    """What one story version contributes to the index (computed once, reused by the query)."""

    uri: str
    version: int
    headline: str
    url: str | None
    time: float  # when the story first appeared (epoch seconds): orders stories the same way
    term_counts: Mapping[str, int]  # most frequent first
    length: int
    distinct: int
    entities: FoundEntities
    entity_keys: frozenset[str]
    signature: Signature


@dataclass(frozen=True)
class Match:
    uri: str
    headline: str
    url: str | None
    score: float


@dataclass(frozen=True)
class Neighbours:
    related: list[Match]
    duplicate_of: str | None


@kernels.compiled
def _min_hashes(
    hashes: npt.NDArray[np.uint64], a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]
) -> Signature:
    """For each permutation (a, b), the least `(a*x + b) mod 2^64 >> 32` over the word pairs x."""
    mix, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(32)
    # A word pair: the first word's hash mixed into the high bits, the second's added.
    pairs = (hashes[:-1] * mix) ^ hashes[1:] if hashes.shape[0] > 1 else hashes
    signature = np.empty(a.shape[0], dtype=np.uint32)
    for p in range(a.shape[0]):
        lowest = np.uint64(0xFFFFFFFF)
        for i in range(pairs.shape[0]):
            lowest = min(lowest, (a[p] * pairs[i] + b[p]) >> shift)
        signature[p] = lowest
    return signature


class Shingler:
    """MinHash signatures with fixed permutations: every instance signs a text the same way.

    Word pairs are hashed once (crc32 of each `normalise`d word, mixed), then every permutation
    (a universal hash family: multiply, add, shift) is applied and the minimum kept, in one
    compiled loop.
    """

    def __init__(self) -> None:
        rng = np.random.RandomState(1)
        # Odd 64-bit multipliers and 64-bit offsets: h(x) = (a*x + b) mod 2^64 >> 32.
        a = (rng.randint(0, 2**63 - 1, NUM_PERM, dtype=np.uint64) << np.uint64(1)) | 1
        b = rng.randint(0, 2**63 - 1, NUM_PERM, dtype=np.uint64) << np.uint64(1)
        self._a = np.asarray(a, dtype=np.uint64)
        self._b = np.asarray(b, dtype=np.uint64)

    def signature(self, words: list[str]) -> Signature:
        """The signature of a story from its lower-cased words (`ReadStory.words`)."""
        seq = words[:_SHINGLED_WORDS]
        hashes = np.zeros(max(1, len(seq)), dtype=np.uint64)  # no words: signed as one hash, 0
        if seq:
            # `normalise` straightens apostrophes here and drops the "'s" in the compiled loop,
            # which hashes every word in one call, not one Python call a word.
            text = " ".join(seq).replace("\u2019", "'").encode()
            found = kernels.word_hashes(np.frombuffer(text, np.uint8), kernels.CRC32_TABLE, hashes)
            if found != len(seq):  # a word with a space in it: no word `words_of` finds
                hashes[:] = [zlib.crc32(normalise(word).encode()) for word in seq]
        return _min_hashes(hashes, self._a, self._b)


def features_of(article: Article, shingler: Shingler) -> Features:
    read = read_story(article)
    counts = Counter(read.terms)
    entities = extract_entities(read.text[:_ENTITY_CHARS])
    return Features(
        uri=article.uri,
        version=article.version,
        headline=article.headline,
        url=str(article.url) if article.url else None,
        time=(article.firstcreated or article.versioncreated).timestamp(),
        # The story's most frequent terms (headline and summary count twice, so they are in).
        # (`sorted` is stable, like `most_common`, and quicker on a few hundred terms.)
        term_counts=dict(sorted(counts.items(), key=itemgetter(1), reverse=True)[:_INDEXED_TERMS]),
        length=len(read.terms),
        distinct=len(counts),
        entities=entities,
        entity_keys=entities.keys,
        signature=shingler.signature(read.words),
    )


class _Bands:
    """LSH buckets of signature bands in one open-addressing table of numpy arrays.

    A band's key is a 64-bit mix of its rows (0 means empty); a bucket holding several stories
    takes several cells. Removed stories stay until `rebuild`: callers check who is alive.
    """

    _MIX = np.array([0x9E3779B97F4A7C15 + 2 * i for i in range(_ROWS)], dtype=np.uint64).reshape(
        1, _ROWS
    )

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._slots = np.zeros(capacity, dtype=np.int64)
        self._used = 0

    @classmethod
    def keys_of(cls, signatures: Signature) -> npt.NDArray[np.uint64]:
        """Band keys of one signature (shape (NUM_PERM,)) or many (shape (n, NUM_PERM))."""
        rows = signatures.reshape(-1, NUM_PERM)
        keys = np.zeros((len(rows), _BANDS), dtype=np.uint64)
        kernels.band_keys(rows, cls._MIX[0], keys)
        return keys

    def add(self, slot: int, signature: Signature) -> None:
        if 2 * (self._used + _BANDS) > len(self._keys):
            self._grow()
        kernels.band_add_story(self._keys, self._slots, signature, self._MIX[0], _BANDS, slot)
        self._used += _BANDS

    def candidates(self, signature: Signature) -> set[int]:
        keys = self.keys_of(signature)[0]
        found = np.zeros(64, dtype=np.int64)
        count = kernels.band_find(self._keys, self._slots, keys, found)
        if count > len(found):
            found = np.zeros(count, dtype=np.int64)
            kernels.band_find(self._keys, self._slots, keys, found)
        return set(found[:count].tolist())

    @classmethod
    def of(cls, slots: IntArray, signatures: Signature) -> _Bands:
        """Buckets holding only these stories (their signatures in the same order)."""
        capacity = 1 << 16
        while capacity < 4 * _BANDS * len(slots):
            capacity *= 2
        bands = cls(capacity)
        keys = cls.keys_of(signatures).reshape(-1)
        kernels.band_add(bands._keys, bands._slots, keys, np.repeat(slots, _BANDS))
        bands._used = len(keys)
        return bands

    def _grow(self) -> None:
        keys, slots = self._keys, self._slots
        used = np.flatnonzero(keys)
        self._keys = np.zeros(2 * len(keys), dtype=np.uint64)
        self._slots = np.zeros(2 * len(keys), dtype=np.int64)
        kernels.band_add(self._keys, self._slots, keys[used], slots[used])


class _Postings:
    """Every term's postings (story slot, BM25 weight) in slot order: blocks of two shared
    arrays, kept up by the compiled loops in `kernels`.
    """

    def __init__(self) -> None:
        self.start: IntArray = np.zeros(1024, dtype=np.int64)
        self.size: IntArray = np.zeros(1024, dtype=np.int64)
        self.capacity: IntArray = np.zeros(1024, dtype=np.int64)
        self.docs: npt.NDArray[np.int32] = np.zeros(1 << 16, dtype=np.int32)
        self.weights: npt.NDArray[np.float32] = np.zeros(1 << 16, dtype=np.float32)
        self.used = 0  # the arena's high-water mark
        self.terms = 0

    def new_term(self) -> int:
        term_id = self.terms
        if term_id == len(self.start):
            grow = len(self.start)
            self.start = np.concatenate([self.start, np.zeros(grow, dtype=np.int64)])
            self.size = np.concatenate([self.size, np.zeros(grow, dtype=np.int64)])
            self.capacity = np.concatenate([self.capacity, np.zeros(grow, dtype=np.int64)])
        self.terms += 1
        return term_id

    def add(self, slot: int, term_ids: IntArray, counts: FloatArray, norm: float) -> None:
        """Post `slot` under each term with its BM25 weight (from its count and length norm)."""
        while True:
            used = kernels.append_postings(
                self.start,
                self.size,
                self.capacity,
                self.docs,
                self.weights,
                self.used,
                term_ids,
                slot,
                counts,
                norm,
                _K1,
            )
            if used >= 0:
                self.used = used
                return
            self._repack(None, room=len(self.docs) + len(self.docs) // 2)

    def renumber(self, renumbered: IntArray) -> None:
        """Each story's postings under its new slot (`renumbered[slot]`, in the same order;
        -1: a removed story, dropped).
        """
        self._repack(renumbered, room=len(self.docs))

    def _repack(self, renumbered: IntArray | None, room: int) -> None:
        held = int(self.size[: self.terms].sum())
        length = max(room, held + held // 2 + 4 * self.terms + (1 << 16))
        docs = np.zeros(length, dtype=np.int32)
        weights = np.zeros(length, dtype=np.float32)
        if renumbered is None:  # the same slots: only the space moved blocks left behind goes
            renumbered = np.arange(int(self.docs[: self.used].max(initial=0)) + 1)
        self.used = kernels.repack(
            self.start,
            self.size,
            self.capacity,
            self.docs,
            self.weights,
            self.terms,
            renumbered,
            docs,
            weights,
        )
        self.docs, self.weights = docs, weights


class _EntityLists:
    """Each story's entity ids (sorted), by slot: `count[slot]` of them from `start[slot]` in
    one shared array, for the compiled ranking. A removed story's are empty.
    """

    def __init__(self) -> None:
        self.start: IntArray = np.zeros(1024, dtype=np.int64)
        self.count: IntArray = np.zeros(1024, dtype=np.int64)
        self.ids: IntArray = np.zeros(1 << 14, dtype=np.int64)
        self.used = 0

    def add(self, slot: int, ids: list[int]) -> None:
        if slot >= len(self.start):
            grow = max(slot + 1 - len(self.start), len(self.start))
            self.start = np.concatenate([self.start, np.zeros(grow, dtype=np.int64)])
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.int64)])
        if self.used + len(ids) > len(self.ids):
            room = max(self.used + len(ids), len(self.ids) + len(self.ids) // 2)
            self.ids = np.concatenate([self.ids, np.zeros(room - len(self.ids), np.int64)])
        self.start[slot], self.count[slot] = self.used, len(ids)
        self.ids[self.used : self.used + len(ids)] = ids
        self.used += len(ids)

    def clear(self, slot: int) -> None:
        self.count[slot] = 0

    def renumber(self, live: IntArray) -> None:
        """Keep only these slots' lists, renumbered 0, 1, ... in this order."""
        counts = self.count[live]
        total = int(counts.sum())
        ends = np.cumsum(counts)
        # Each kept id's old position: its list's old start plus its place in the list.
        old = np.repeat(self.start[live] - (ends - counts), counts) + np.arange(total)
        self.ids = np.concatenate([self.ids[old], np.zeros(max(1 << 14, total // 2), np.int64)])
        self.start[:] = 0
        self.count[:] = 0
        self.start[: len(live)] = ends - counts
        self.count[: len(live)] = counts
        self.used = total


class StoryIndex:
    """Recent live stories; `neighbours` ranks the ones an editor would link from a story.

    Stories are kept as columns (numpy arrays and plain lists indexed by slot), postings as
    compact arrays per term, and entities as interned ids: a few hundred bytes per story.
    """

    def __init__(self, settings: IndexSettings | None = None) -> None:
        self.settings = settings or IndexSettings()
        self.shingler = Shingler()
        self._reset()

    def _reset(self) -> None:
        self._terms: dict[str, int] = {}
        self._term_names: list[str] = []  # by term id
        self._postings = _Postings()
        self._slots: dict[str, int] = {}  # uri -> slot of its live version
        self._entity_ids: dict[str, int] = {}
        # Per slot; a removed story's uri is None.
        self._uris: list[str | None] = []
        self._headlines: list[str | None] = []
        self._urls: list[str | None] = []
        self._entities = _EntityLists()
        self._versions: IntArray = np.zeros(1024, dtype=np.int64)
        self._signatures: Signature = np.zeros((1024, NUM_PERM), dtype=np.uint32)
        self._times: FloatArray = np.zeros(1024)
        self._sizes: FloatArray = np.ones(1024)  # distinct terms of each story
        self._alive: npt.NDArray[np.bool_] = np.zeros(1024, dtype=bool)
        # Removed stories whose postings are still in the lists (until `_compact` sweeps them).
        self._stale: npt.NDArray[np.bool_] = np.zeros(1024, dtype=bool)
        self._dead = 0
        self._newest = -math.inf
        # The most recent stories' full features: enriching a story soon after it is read
        # reuses them, and its terms already numbered (a dict per story costs 4x more).
        self._recent: OrderedDict[str, _Held] = OrderedDict()
        self._by_age: list[tuple[float, int]] = []  # (first time, slot), dead ones left lazily
        self._bands = _Bands()
        # Per block of slots (`kernels.BLOCK`): the time range its stories were first seen in,
        # and its live and removed-but-listed stories; lookups skip through these.
        blocks = 1024 // kernels.BLOCK
        self._block_low: FloatArray = np.full(blocks, math.inf)
        self._block_high: FloatArray = np.full(blocks, -math.inf)
        self._block_alive: IntArray = np.zeros(blocks, dtype=np.int64)
        self._block_stale: IntArray = np.zeros(blocks, dtype=np.int64)
        # A lookup's working space, one entry per slot (`_earlier` and `_bm25` reuse it).
        self._sums: FloatArray = np.zeros(1024)
        self._kept: FloatArray = np.zeros(1024)
        self._touched: IntArray = np.zeros(1024, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, uri: str) -> bool:
        return uri in self._slots

    @property
    def slots(self) -> int:
        """Stories the columns hold: the live ones and those removed since the last sweep."""
        return len(self._uris)

    def features(self, article: Article) -> Features:
        """The indexed features of this exact version if held, else computed fresh."""
        slot = self._slots.get(article.uri)
        if slot is not None:
            held = self._recent.get(article.uri)
            if held is not None and held.features.version == article.version:
                return self.numbered(held.features, held.ids, held.counts)
            if self._versions[slot] == article.version:
                fresh = features_of(article, self.shingler)
                # Keeps the first time of a corrected story.
                return _with_time(fresh, float(self._times[slot]))
        return features_of(article, self.shingler)

    def term_ids(self, terms: Iterable[str], *, create: bool) -> IntArray:
        """Each term's id in this index, in order; -1 for a term it has not numbered unless
        `create` (the section classifier keeps its counts by these ids too).
        """
        if create:
            return np.array(list(map(self._term_id, terms)), dtype=np.int64)
        return np.fromiter(map(self._terms.get, terms, repeat(-1)), np.int64)

    def terms_of(self, features: Features, *, create: bool = True) -> tuple[IntArray, FloatArray]:
        """The story's terms' ids and their counts, most frequent first: held from indexing it
        when it is this version. A new term is numbered now if `create`, else its id is -1.
        """
        held = self._recent.get(features.uri)
        if held is not None and held.features.version == features.version:
            return held.ids, held.counts
        counts = features.term_counts
        if create or (isinstance(counts, NumberedCounts) and counts.names is self._term_names):
            return self._ids_and_counts(counts)
        return (
            self.term_ids(counts, create=False),
            np.fromiter(counts.values(), np.float64, len(counts)),
        )

    def numbered(self, features: Features, ids: IntArray, counts: FloatArray) -> Features:
        """The features with their term counts given as this index's term ids (`term_ids`),
        in the same order, and counts.
        """
        return with_changes(features, term_counts=NumberedCounts(self._term_names, ids, counts))

    # --- keeping it current -------------------------------------------------------------------

    def add(self, article: Article, features: Features | None = None) -> Features:
        """Index this version; a correction replaces the earlier one, keeping its first time."""
        previous = self._slots.get(article.uri)
        features = self.features(article) if features is None else features
        if previous is not None and self._times[previous] < features.time:
            features = _with_time(features, float(self._times[previous]))
        self.remove(article.uri)
        self._insert(features)
        return features

    def _insert(self, features: Features) -> None:
        if features.time < self._newest - self.settings.window_s - 3600.0:
            return  # older than the window: it would be evicted straight away
        slot = len(self._uris)
        self._ensure_slot(slot)
        self._uris.append(features.uri)
        self._headlines.append(features.headline)
        self._urls.append(features.url)
        self._entities.add(slot, [self._entity_id(key) for key in sorted(features.entity_keys)])
        self._versions[slot] = features.version
        self._signatures[slot] = features.signature
        self._slots[features.uri] = slot
        self._times[slot] = features.time
        self._alive[slot] = True
        block = slot // kernels.BLOCK
        self._block_low[block] = min(self._block_low[block], features.time)
        self._block_high[block] = max(self._block_high[block], features.time)
        self._block_alive[block] += 1
        heapq.heappush(self._by_age, (features.time, slot))
        self._newest = max(self._newest, features.time)
        self._sizes[slot] = max(1, features.distinct)
        norm = self._length_norm(features)
        term_ids, tf = self._ids_and_counts(features.term_counts)
        self._postings.add(slot, term_ids, tf, norm)
        self._recent[features.uri] = _Held(with_changes(features, term_counts={}), term_ids, tf)
        if len(self._recent) > _RECENT_WITH_TERMS:
            self._recent.popitem(last=False)
        self._bands.add(slot, features.signature)
        self._evict()

    def _ids_and_counts(self, term_counts: Mapping[str, int]) -> tuple[IntArray, FloatArray]:
        if isinstance(term_counts, NumberedCounts) and term_counts.names is self._term_names:
            return term_counts.ids, term_counts.counts
        terms = tuple(term_counts)
        known = list(map(self._terms.get, terms))
        if None in known:  # new terms are numbered in order, as they come
            number = self._term_id
            known = [number(term) if i is None else i for term, i in zip(terms, known, strict=True)]
        ids = cast(list[int], known)
        counts = np.fromiter(term_counts.values(), np.float64, len(terms))
        return np.array(ids, dtype=np.int64), counts

    def remove(self, uri: str) -> None:
        slot = self._slots.pop(uri, None)
        if slot is None:
            return
        self._alive[slot] = False
        self._stale[slot] = True
        self._block_alive[slot // kernels.BLOCK] -= 1
        self._block_stale[slot // kernels.BLOCK] += 1
        self._uris[slot] = self._headlines[slot] = self._urls[slot] = None
        self._entities.clear(slot)
        self._recent.pop(uri, None)
        self._dead += 1
        if self._dead > max(1024, len(self._uris) // 3):
            self._compact()

    # --- answering ----------------------------------------------------------------------------

    def neighbours(self, features: Features, limit: int, min_score: float) -> Neighbours:
        """Earlier live stories about the same events, best first, and the original it repeats.

        `features` are the story's (see `features`). Only stories that first appeared before
        this one count, so the answer does not depend on how far an instance has read past it.
        """
        me = self._slots.get(features.uri, -1)
        earlier = self._earlier(features)
        duplicates = self._duplicates(features, me, earlier)
        duplicate_of = min(duplicates, key=self._order_key, default=None)

        # The entity boost at most multiplies a score by (1 + boost) and the decay never raises
        # it: a story whose BM25 score is below this can never be linked, so it is no candidate.
        # (Exact: the top-`candidates` cut in `rank_links` keeps the same linkable stories.)
        floor = min_score / (1.0 + max(0.0, self.settings.entity_boost)) * (1.0 - 1e-9)
        candidates, base = self._bm25(features, earlier, floor)
        if candidates.size == 0:
            return Neighbours([], self._uri(duplicate_of))
        # The best few by score go on, with all tied with the last of them; then entity boost,
        # decay, best first, copies of one wire story as one link: one compiled pass
        # (`kernels.rank_links`).
        own = features.entity_keys
        known = (self._entity_ids.get(key, -1) for key in own)
        mine = np.fromiter((e for e in known if e >= 0), np.int64)
        entities = self._entities
        excluded = np.fromiter(duplicates, np.int64, len(duplicates))
        chosen = np.empty(limit, dtype=np.int64)
        scores = np.empty(limit)
        settings = self.settings
        ranking = (
            candidates, base, settings.candidates, self._times, features.time,
            settings.half_life_s, entities.start, entities.count, entities.ids,
            mine, len(own),
            settings.entity_boost, min_score, excluded, self._signatures,
            settings.duplicate_similarity,
        )  # fmt: skip
        taken = kernels.rank_links(*ranking, _NO_ORDER, chosen, scores)
        if taken < 0:  # stories that first appeared at once: their uris decide
            uris = [self._uris[slot] for slot in candidates.tolist()]
            uri_order = np.empty(len(uris), dtype=np.int64)
            uri_order[sorted(range(len(uris)), key=uris.__getitem__)] = np.arange(len(uris))
            taken = kernels.rank_links(*ranking, uri_order, chosen, scores)
        related = []
        for position, score in zip(chosen[:taken].tolist(), scores[:taken].tolist(), strict=True):
            slot = int(candidates[position])
            uri, headline = self._uris[slot], self._headlines[slot]
            assert uri is not None and headline is not None
            related.append(Match(uri, headline, self._urls[slot], round(score, 4)))
        return Neighbours(related, self._uri(duplicate_of))

    def _numbered_terms(self, features: Features) -> tuple[IntArray, FloatArray]:
        """The ids of the story's most frequent terms the index knows, most frequent first, and
        their counts (held from indexing it when it is this version).
        """
        wanted = 2 * self.settings.query_terms
        held = self._recent.get(features.uri)
        # Indexed from the same terms, most frequent first (as `features_of` keeps them).
        if held and held.features.version == features.version and len(held.ids) <= wanted:
            return held.ids, held.counts
        wanted = min(len(features.term_counts), wanted)
        frequent = sorted(features.term_counts.items(), key=itemgetter(1), reverse=True)[:wanted]
        known = [(self._terms.get(term), count) for term, count in frequent]
        pairs = [(term_id, count) for term_id, count in known if term_id is not None]
        ids = np.fromiter((term_id for term_id, _ in pairs), dtype=np.int64, count=len(pairs))
        counts = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
        return ids, counts

    def _length_norm(self, features: Features) -> float:
        # A fixed average length, not the index's: a story's weights must not depend on what else
        # an instance had read when it indexed it.
        return _K1 * (1 - _B + _B * features.length / self.settings.average_length)

    def _bm25(
        self, features: Features, earlier: _Earlier, floor: float = 0.0
    ) -> tuple[IntArray, FloatArray]:
        """BM25 of the earlier stories against this one, relative to this one's own score:
        the stories scored and their scores (only those scoring at least `floor`).

        The query is the story's most telling terms: frequent in it, rare among the earlier
        stories. Rarity is the document frequency among the stories before this one only (see
        `_Earlier`), for choosing the query terms as for weighing them: two instances that read
        different amounts past this story, in different orders, choose the same terms and score
        it alike. Terms in more than a small share of the earlier stories say nothing about an
        event and are skipped. Scores are divided by both stories' own scores (the other's
        estimated from its size); a long article and its short teaser are not punished below a
        floor. One compiled pass (`kernels.score_earlier`).
        """
        ids, counts = self._numbered_terms(features)
        settings = self.settings
        common = max(settings.common_floor, int(earlier.stories * settings.common_share))
        postings = self._postings
        return kernels.score_earlier(
            postings.start,
            postings.size,
            postings.docs,
            postings.weights,
            ids,
            counts,
            *earlier.rule,
            earlier.first,
            earlier.end,
            earlier.last,
            earlier.holes,
            earlier.stories,
            common,
            settings.query_terms,
            self._length_norm(features),
            _K1,
            floor,
            _LENGTH_MISMATCH_FLOOR,
            self._sizes,
            max(1, features.distinct),
            self._sums,
            self._touched,
            self._kept,
        )

    def _duplicates(self, features: Features, me: int, earlier: _Earlier) -> set[int]:
        found = set()
        for slot in self._bands.candidates(features.signature):
            if slot == me or not earlier.holds(slot):
                continue
            if (
                _jaccard(features.signature, self._signatures[slot])
                >= self.settings.duplicate_similarity
            ):
                found.add(slot)
        return found

    def _earlier(self, features: Features) -> _Earlier:
        """Which stories count as earlier than this one (see `_Earlier`). Removed stories keep
        their times, also once `_compact` has swept them out of the postings: they never count.
        """
        size = len(self._uris)
        tied = self._touched  # free working space until `_bm25`
        same = kernels.same_time(
            self._times, self._alive, size, self._block_low, self._block_high, features.time, tied
        )
        tied_earlier = np.array(
            [slot for slot in tied[:same].tolist() if cast(str, self._uris[slot]) < features.uri],
            dtype=np.int64,
        )
        since = features.time - self.settings.window_s
        stories, first, end, last, holes = kernels.earlier_pass(
            self._times,
            self._alive,
            self._stale,
            size,
            self._block_low,
            self._block_high,
            self._block_alive,
            self._block_stale,
            features.time,
            since,
            tied_earlier,
        )
        return _Earlier(
            self._times,
            self._alive,
            features.time,
            since,
            tied_earlier,
            stories,
            first,
            end,
            last,
            holes,
        )

    def _order_key(self, slot: int) -> tuple[float, str]:
        uri = self._uris[slot]
        assert uri is not None
        return (float(self._times[slot]), uri)

    def _uri(self, slot: int | None) -> str | None:
        return self._uris[slot] if slot is not None else None

    # --- housekeeping -------------------------------------------------------------------------

    def _term_id(self, term: str) -> int:
        term_id = self._terms.get(term)
        if term_id is None:
            term_id = self._terms[term] = self._postings.new_term()
            self._term_names.append(term)
        return term_id

    def _entity_id(self, key: str) -> int:
        entity_id = self._entity_ids.get(key)
        if entity_id is None:
            entity_id = self._entity_ids[key] = len(self._entity_ids)
        return entity_id

    def _ensure_slot(self, slot: int) -> None:
        if slot >= len(self._times):
            grow = len(self._times)
            self._times = np.concatenate([self._times, np.zeros(grow)])
            self._alive = np.concatenate([self._alive, np.zeros(grow, dtype=bool)])
            self._stale = np.concatenate([self._stale, np.zeros(grow, dtype=bool)])
            self._sizes = np.concatenate([self._sizes, np.ones(grow)])
            self._versions = np.concatenate([self._versions, np.zeros(grow, dtype=np.int64)])
            self._signatures = np.concatenate(
                [self._signatures, np.zeros((grow, NUM_PERM), dtype=np.uint32)]
            )
            self._sums = np.zeros(2 * grow)
            self._kept = np.zeros(2 * grow)
            self._touched = np.zeros(2 * grow, dtype=np.int64)
            blocks = len(self._block_low)
            self._block_low = np.concatenate([self._block_low, np.full(blocks, math.inf)])
            self._block_high = np.concatenate([self._block_high, np.full(blocks, -math.inf)])
            self._block_alive = np.concatenate([self._block_alive, np.zeros(blocks, np.int64)])
            self._block_stale = np.concatenate([self._block_stale, np.zeros(blocks, np.int64)])

    def _evict(self) -> None:
        """Stories past the window or beyond the capacity leave, oldest first.

        Eviction keeps an hour beyond the window: an instance that has read ahead must not drop
        a story a slower instance would still link.
        """
        oldest_allowed = self._newest - self.settings.window_s - 3600.0
        while self._by_age:
            time, slot = self._by_age[0]
            uri = self._uris[slot]
            if uri is None or not self._alive[slot]:
                heapq.heappop(self._by_age)
                continue
            if len(self._slots) <= self.settings.capacity and time >= oldest_allowed:
                return
            heapq.heappop(self._by_age)
            self.remove(uri)

    def _compact(self) -> None:
        """Renumber the live stories 0, 1, ... in the same order, dropping the removed ones
        (removals only mark them) from every column, the postings and the LSH buckets, so an
        instance's memory follows what it holds, not all it ever read.
        """
        size = len(self._uris)
        live = np.flatnonzero(self._alive[:size])
        count = len(live)
        renumbered = np.full(size, -1, dtype=np.int64)
        renumbered[live] = np.arange(count)
        self._postings.renumber(renumbered)
        kept = live.tolist()
        self._uris = [self._uris[slot] for slot in kept]
        self._headlines = [self._headlines[slot] for slot in kept]
        self._urls = [self._urls[slot] for slot in kept]
        self._entities.renumber(live)
        self._slots = {cast(str, uri): slot for slot, uri in enumerate(self._uris)}
        for column in (self._times, self._sizes, self._versions, self._signatures):
            column[:count] = column[live]
        self._alive[:] = False
        self._alive[:count] = True
        self._stale[:] = False
        self._by_age = [(time, slot) for slot, time in enumerate(self._times[:count].tolist())]
        heapq.heapify(self._by_age)
        kernels.block_summaries(
            self._times, count, self._block_low, self._block_high, self._block_alive
        )
        self._block_stale[:] = 0
        self._bands = _Bands.of(np.arange(count), self._signatures[:count])
        self._dead = 0


@dataclass(frozen=True)
class _Held:
    """A recently indexed story's features without their term counts, which are kept as its
    terms' ids and their counts, in the same order (the index names each id once).
    """

    features: Features
    ids: IntArray
    counts: FloatArray


class NumberedCounts(Mapping[str, int]):
    """A story's term counts given as an index's term ids (`names` names each id), read by name
    only if asked: indexing, classifying and enriching the story need only the ids.
    """

    def __init__(self, names: list[str], ids: IntArray, counts: FloatArray) -> None:
        self.names = names
        self.ids = ids
        self.counts = counts
        self._made: dict[str, int] | None = None

    def _dict(self) -> dict[str, int]:
        if self._made is None:
            terms = map(self.names.__getitem__, self.ids.tolist())
            self._made = dict(zip(terms, self.counts.astype(int).tolist(), strict=True))
        return self._made

    def __getitem__(self, term: str) -> int:
        return self._dict()[term]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Earlier:
    """Which stories count as earlier than the one being enriched: first seen before it (ties
    broken by uri), within the window, alive; how many there are; and the longest run of slots
    from the first earlier one that holds no live story that is not earlier (most of the index:
    an instance reads the story table about in time order).

    Removed stories do not end the run (corrections and withdrawals leave one behind every few
    stories): the run's `holes` are those whose postings are still listed, which the counts
    must then leave out.
    """

    times: FloatArray  # the index's, per slot
    alive: npt.NDArray[np.bool_]
    time: float  # the story's first time
    since: float  # the window's start
    tied_earlier: IntArray  # live stories first seen at `time` with an earlier uri, sorted
    stories: int
    first: int  # the first earlier slot (-1: none)
    end: int  # the run is [first, end)
    last: int  # the last earlier slot (past the run when the instance read ahead out of order)
    holes: int  # removed stories in the run whose postings are still listed

    @property
    def rule(self) -> tuple[FloatArray, npt.NDArray[np.bool_], float, float, IntArray]:
        """What `kernels.is_earlier` needs besides the slot."""
        return self.times, self.alive, self.time, self.since, self.tied_earlier

    def holds(self, slot: int) -> bool:
        return bool(kernels.is_earlier(slot, *self.rule))


def warm_up() -> None:
    """Compile every loop of `kernels` (or load them from numba's cache) on a throwaway index,
    so the first story after start-up does not wait for it.
    """
    index = StoryIndex()
    body = "<p>Ministers met in Geneva to agree the grain deal on Monday.</p>"
    for n in range(3):
        article = Article.model_validate(
            {
                "uri": f"urn:newsflow:warm-up:{n}",
                "headline": "Grain deal agreed in Geneva",
                "body_html": body,
                "provider": "newsflow",
                "versioncreated": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
            }
        )
        index.add(article)
        index.neighbours(index.features(article), 5, 0.0)
    index.remove("urn:newsflow:warm-up:0")
    index._compact()


def _with_time(features: Features, time: float) -> Features:
    return with_changes(features, time=time)


def with_changes(features: Features, **changes: object) -> Features:
    """A copy of `features` with these fields changed: what `dataclasses.replace` does, in a
    fifth of the time (it runs twice for every story).
    """
    assert changes.keys() <= features.__dict__.keys()
    copy = object.__new__(Features)
    copy.__dict__.update(features.__dict__, **changes)
    return copy


def _jaccard(a: Signature, b: Signature) -> float:
    return float(np.count_nonzero(a == b)) / len(a)
