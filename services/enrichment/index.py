"""The related-story index: BM25 over headline+summary+body, entity overlap, recency, duplicates.

Pure and in memory. Every instance builds the same index from the same topic, so it answers the
same. Scoring is sparse and vectorised: postings are numpy arrays per term, one query touches
only its rarest terms, and documents carry their BM25 weights precomputed.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from datasketch import MinHash, MinHashLSH

from services.enrichment.entities import FoundEntities, extract_entities
from services.enrichment.text import full_text, story_text, tokens, words
from shared.events import Article

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

NUM_PERM = 64
_K1 = 1.2
_B = 0.75
_SHINGLE = 2
_INDEXED_TERMS = 80
_RECENT_WITH_TERMS = 20_000
_SHINGLED_CHARS = 1500
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
    average_length: float = 80.0  # BM25's average story length, in counted terms


@dataclass(frozen=True)
class Features:
    """What one story version contributes to the index (computed once, reused by the query)."""

    uri: str
    version: int
    headline: str
    url: str | None
    time: float  # when the story first appeared (epoch seconds): orders stories the same way
    term_counts: dict[str, int]
    length: int
    distinct: int
    entities: FoundEntities
    entity_keys: frozenset[str]
    signature: npt.NDArray[np.uint32]


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


class _Postings:
    """One term's stories and weights; appends go to a list, flushed to numpy in blocks."""

    __slots__ = ("_docs", "_pending_docs", "_pending_weights", "_size", "_weights")

    def __init__(self) -> None:
        self._docs: IntArray = np.zeros(0, dtype=np.int64)
        self._weights: FloatArray = np.zeros(0)
        self._size = 0
        self._pending_docs: list[int] = []
        self._pending_weights: list[float] = []

    def append(self, doc: int, weight: float) -> None:
        self._pending_docs.append(doc)
        self._pending_weights.append(weight)
        if len(self._pending_docs) >= 64:
            self._flush()

    @property
    def size(self) -> int:
        return self._size + len(self._pending_docs)

    def arrays(self) -> tuple[IntArray, FloatArray]:
        if self._pending_docs:
            self._flush()
        return self._docs[: self._size], self._weights[: self._size]

    def keep(self, alive: npt.NDArray[np.bool_]) -> int:
        docs, weights = self.arrays()
        mask = alive[docs]
        self._docs, self._weights = docs[mask].copy(), weights[mask].copy()
        self._size = len(self._docs)
        return self._size

    def _flush(self) -> None:
        end = self._size + len(self._pending_docs)
        if end > len(self._docs):
            capacity = max(end, 2 * len(self._docs))
            self._docs = np.resize(self._docs, capacity)
            self._weights = np.resize(self._weights, capacity)
        self._docs[self._size : end] = self._pending_docs
        self._weights[self._size : end] = self._pending_weights
        self._size = end
        self._pending_docs.clear()
        self._pending_weights.clear()


class Shingler:
    """MinHash signatures with fixed permutations: every instance signs a text the same way."""

    def __init__(self) -> None:
        self.permutations = MinHash(num_perm=NUM_PERM, seed=1).permutations

    def signature(self, text: str) -> npt.NDArray[np.uint32]:
        # A re-sent wire story repeats its opening; the first words are enough to know it.
        seq = words(text[:_SHINGLED_CHARS])
        shingles = {" ".join(seq[i : i + _SHINGLE]) for i in range(max(1, len(seq) - 1))}
        minhash = MinHash(
            num_perm=NUM_PERM, permutations=self.permutations, scheme="affine32", hashfunc=_crc32
        )
        minhash.update_batch([s.encode() for s in shingles])
        return np.asarray(minhash.hashvalues, dtype=np.uint32)


def features_of(article: Article, shingler: Shingler) -> Features:
    counts = Counter(tokens(story_text(article)))
    text = full_text(article)
    entities = extract_entities(text[:_ENTITY_CHARS])
    return Features(
        uri=article.uri,
        version=article.version,
        headline=article.headline,
        url=str(article.url) if article.url else None,
        time=(article.firstcreated or article.versioncreated).timestamp(),
        # The story's most frequent terms (headline and summary count twice, so they are in).
        term_counts=dict(counts.most_common(_INDEXED_TERMS)),
        length=sum(counts.values()),
        distinct=len(counts),
        entities=entities,
        entity_keys=entities.keys,
        signature=shingler.signature(text),
    )


class StoryIndex:
    """Recent live stories; `neighbours` ranks the ones an editor would link from a story."""

    def __init__(self, settings: IndexSettings | None = None) -> None:
        self.settings = settings or IndexSettings()
        self.shingler = Shingler()
        self._reset()

    def _reset(self) -> None:
        self._terms: dict[str, int] = {}
        self._postings: list[_Postings] = []
        # Postings per term, dead ones included: only a cheap guess at how common a term is.
        self._postings_per_term: IntArray = np.zeros(1024, dtype=np.int64)
        self._slots: dict[str, int] = {}  # uri -> slot of its live version
        self._features: list[Features | None] = []
        self._times: FloatArray = np.zeros(1024)
        self._sizes: FloatArray = np.ones(1024)  # distinct terms of each story
        self._alive: npt.NDArray[np.bool_] = np.zeros(1024, dtype=bool)
        self._dead = 0
        self._newest = -math.inf
        self._recent: OrderedDict[str, Features] = OrderedDict()
        self._by_age: list[tuple[float, int]] = []  # (first time, slot), dead ones left lazily
        self._lsh = MinHashLSH(threshold=self.settings.duplicate_similarity, num_perm=NUM_PERM)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, uri: str) -> bool:
        return uri in self._slots

    def features(self, article: Article) -> Features:
        """The indexed features of this exact version if held, else computed fresh."""
        slot = self._slots.get(article.uri)
        if slot is not None:
            held = self._recent.get(article.uri)
            if held is not None and held.version == article.version:
                return held
            slim = self._features[slot]
            if slim is not None and slim.version == article.version:
                fresh = features_of(article, self.shingler)
                return _with_time(fresh, slim.time)  # keeps the first time of a corrected story
        return features_of(article, self.shingler)

    # --- keeping it current -------------------------------------------------------------------

    def add(self, article: Article) -> Features:
        """Index this version; a correction replaces the earlier one, keeping its first time."""
        previous = self._slots.get(article.uri)
        held = self._features[previous] if previous is not None else None
        features = self.features(article)
        if held is not None and held.time < features.time:
            features = _with_time(features, held.time)
        self.remove(article.uri)
        self._insert(features)
        return features

    def _insert(self, features: Features) -> None:
        if features.time < self._newest - self.settings.window_s - 3600.0:
            return  # older than the window: it would be evicted straight away
        slot = len(self._features)
        self._ensure_slot(slot)
        # Term counts are only needed again to enrich this very version, which happens soon after
        # it is read: keep them for the most recent stories only (they are most of the memory).
        self._features.append(replace(features, term_counts={}))
        self._recent[features.uri] = features
        if len(self._recent) > _RECENT_WITH_TERMS:
            self._recent.popitem(last=False)
        self._slots[features.uri] = slot
        self._times[slot] = features.time
        self._alive[slot] = True
        heapq.heappush(self._by_age, (features.time, slot))
        self._newest = max(self._newest, features.time)
        self._sizes[slot] = max(1, features.distinct)
        norm = self._length_norm(features)
        ids = []
        for term, count in features.term_counts.items():
            term_id = self._term_id(term)
            ids.append(term_id)
            self._postings[term_id].append(slot, count * (_K1 + 1) / (count + norm))
        self._postings_per_term[ids] += 1
        self._lsh.insert(_lsh_key(slot), _as_minhash(features.signature, self.shingler))
        self._evict()

    def remove(self, uri: str) -> None:
        slot = self._slots.pop(uri, None)
        if slot is None:
            return
        features = self._features[slot]
        assert features is not None
        self._alive[slot] = False
        self._features[slot] = None
        self._recent.pop(uri, None)
        self._lsh.remove(_lsh_key(slot))
        self._dead += 1
        if self._dead > max(1024, len(self._features) // 3):
            self._compact()

    # --- answering ----------------------------------------------------------------------------

    def neighbours(self, article: Article, limit: int, min_score: float) -> Neighbours:
        """Earlier live stories about the same events, best first, and the original it repeats.

        Only stories that first appeared before this one count, so the answer does not depend on
        how far an instance has read past it.
        """
        features = self.features(article)
        me = self._slots.get(article.uri, -1)
        earlier = self._earlier_mask(features)
        duplicates = self._duplicates(features, me, earlier)
        duplicate_of = min(duplicates, key=self._order_key, default=None)

        scores, candidates = self._bm25(features, earlier)
        if candidates.size == 0:
            return Neighbours([], self._uri(duplicate_of))
        base = scores[candidates]
        if candidates.size > self.settings.candidates:
            top = np.argpartition(-base, self.settings.candidates)[: self.settings.candidates]
            candidates, base = candidates[top], base[top]

        entities = features.entity_keys
        ranked: list[tuple[float, int]] = []
        for slot, score in zip(candidates.tolist(), base.tolist(), strict=True):
            if slot in duplicates:
                continue
            other = self._features[slot]
            assert other is not None
            if entities and (theirs := other.entity_keys):
                shared = len(entities & theirs) / min(len(entities), len(theirs))
                score *= 1.0 + self.settings.entity_boost * shared
            age = max(0.0, features.time - other.time)
            score *= 0.5 ** (age / self.settings.half_life_s)
            if score >= min_score:
                ranked.append((min(score, 1.0), slot))
        ranked.sort(key=lambda pair: (-pair[0], self._order_key(pair[1])))

        chosen: list[tuple[float, int]] = []
        for score, slot in ranked:
            # Two copies of one wire story are one link, to the first copy, at the better score.
            copy_of = next(
                (i for i, (_, c) in enumerate(chosen) if self._same_story(slot, c)), None
            )
            if copy_of is not None:
                kept_score, kept = chosen[copy_of]
                if self._order_key(slot) < self._order_key(kept):
                    chosen[copy_of] = (kept_score, slot)
            elif len(chosen) < limit:
                chosen.append((score, slot))
        related = []
        for score, slot in chosen:
            other = self._features[slot]
            assert other is not None
            related.append(Match(other.uri, other.headline, other.url, round(score, 4)))
        return Neighbours(related, self._uri(duplicate_of))

    def _query_terms(self, features: Features) -> list[tuple[int, int]]:
        """The story's most telling terms (term id, count): frequent in it, rare in the index.

        Rarity is read in whole powers of two of the index's size over the term's postings, so
        a few stories more or less read by an instance do not change which terms are chosen.
        Terms in more than 2% of a large index say nothing about an event and are skipped.
        """
        total = float(len(self._features)) + 1.0
        common = max(500.0, total / 50)
        frequent = heapq.nlargest(
            2 * self.settings.query_terms, features.term_counts.items(), key=lambda tc: tc[1]
        )
        known = [(self._terms.get(term), count) for term, count in frequent]
        pairs = [(term_id, count) for term_id, count in known if term_id is not None]
        if not pairs:
            return []
        ids = np.fromiter((t for t, _ in pairs), dtype=np.int64, count=len(pairs))
        counts = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
        sizes = self._postings_per_term[ids].astype(np.float64)
        rarity = np.floor(np.log2(total / (sizes + 1.0)))
        weight = np.where(sizes > common, -1.0, rarity * (1.0 + np.log(counts)))
        # Stable: equal weights keep the story's own term order.
        order = np.argsort(-weight, kind="stable")[: self.settings.query_terms]
        return [pairs[i] for i in order.tolist() if weight[i] >= 0]

    def _length_norm(self, features: Features) -> float:
        # A fixed average length, not the index's: a story's weights must not depend on what else
        # an instance had read when it indexed it.
        return _K1 * (1 - _B + _B * features.length / self.settings.average_length)

    def _bm25(
        self, features: Features, earlier: npt.NDArray[np.bool_]
    ) -> tuple[FloatArray, IntArray]:
        """BM25 of the earlier stories against this one, relative to this one's own score.

        Document frequencies count earlier stories only, and the query terms are chosen without
        looking at the index: two instances that read different amounts past this story score
        it alike. Scores are divided by both stories' own scores (the other's estimated from its
        size); a long article and its short teaser are not punished below a floor.
        """
        selected = self._query_terms(features)
        stories = float(np.count_nonzero(earlier)) + 1.0
        norm = self._length_norm(features)
        if not selected:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        postings = [self._postings[term_id].arrays() for term_id, _ in selected]
        lengths = np.fromiter((len(d) for d, _ in postings), dtype=np.int64, count=len(postings))
        docs = np.concatenate([d for d, _ in postings])
        weights = np.concatenate([w for _, w in postings])
        term_of = np.repeat(np.arange(len(selected)), lengths)
        mask = earlier[docs]
        docs, weights, term_of = docs[mask], weights[mask], term_of[mask]
        df = np.bincount(term_of, minlength=len(selected)) + 1.0
        idf = np.log(1.0 + (stories - df + 0.5) / (df + 0.5))
        counts = np.fromiter((c for _, c in selected), dtype=np.float64, count=len(selected))
        own = float((idf * counts * (_K1 + 1) / (counts + norm)).sum())
        scores: FloatArray = np.asarray(
            np.bincount(docs, weights=idf[term_of] * weights, minlength=len(self._features)),
            dtype=np.float64,
        )
        candidates = np.flatnonzero(scores)
        if candidates.size == 0 or own <= 0:
            return scores, candidates
        theirs = own * self._sizes[candidates] / max(1, features.distinct)
        scores[candidates] /= np.maximum(
            np.sqrt(own * theirs), _LENGTH_MISMATCH_FLOOR * np.maximum(own, theirs)
        )
        return scores, candidates

    def _duplicates(self, features: Features, me: int, earlier: npt.NDArray[np.bool_]) -> set[int]:
        found = set()
        for key in self._lsh.query(_as_minhash(features.signature, self.shingler)):
            slot = int(key)
            if slot == me or not self._alive[slot] or not earlier[slot]:
                continue
            other = self._features[slot]
            assert other is not None
            if _jaccard(features.signature, other.signature) >= self.settings.duplicate_similarity:
                found.add(slot)
        return found

    def _same_story(self, a: int, b: int) -> bool:
        fa, fb = self._features[a], self._features[b]
        assert fa is not None and fb is not None
        return _jaccard(fa.signature, fb.signature) >= self.settings.duplicate_similarity

    def _earlier_mask(self, features: Features) -> npt.NDArray[np.bool_]:
        size = len(self._features)
        times = self._times[:size]
        earlier = (times < features.time) & (times >= features.time - self.settings.window_s)
        ties = np.flatnonzero(times == features.time)
        for slot in ties.tolist():
            other = self._features[slot]
            if other is not None and other.uri < features.uri:
                earlier[slot] = True
        return earlier & self._alive[:size]

    def _order_key(self, slot: int) -> tuple[float, str]:
        features = self._features[slot]
        assert features is not None
        return (features.time, features.uri)

    def _uri(self, slot: int | None) -> str | None:
        if slot is None:
            return None
        features = self._features[slot]
        return features.uri if features is not None else None

    # --- housekeeping -------------------------------------------------------------------------

    def _term_id(self, term: str) -> int:
        term_id = self._terms.get(term)
        if term_id is None:
            term_id = self._terms[term] = len(self._postings)
            self._postings.append(_Postings())
            if term_id >= len(self._postings_per_term):
                self._postings_per_term = np.concatenate(
                    [self._postings_per_term, np.zeros(term_id + 1, dtype=np.int64)]
                )
        return term_id

    def _ensure_slot(self, slot: int) -> None:
        if slot >= len(self._times):
            grow = len(self._times)
            self._times = np.concatenate([self._times, np.zeros(grow)])
            self._alive = np.concatenate([self._alive, np.zeros(grow, dtype=bool)])
            self._sizes = np.concatenate([self._sizes, np.ones(grow)])

    def _evict(self) -> None:
        """Stories past the window or beyond the capacity leave, oldest first.

        Eviction keeps an hour beyond the window: an instance that has read ahead must not drop
        a story a slower instance would still link.
        """
        oldest_allowed = self._newest - self.settings.window_s - 3600.0
        while self._by_age:
            time, slot = self._by_age[0]
            features = self._features[slot]
            if features is None or not self._alive[slot]:
                heapq.heappop(self._by_age)
                continue
            if len(self._slots) <= self.settings.capacity and time >= oldest_allowed:
                return
            heapq.heappop(self._by_age)
            self.remove(features.uri)

    def _compact(self) -> None:
        """Drop dead stories from the postings (removals only mark them)."""
        for term_id, postings in enumerate(self._postings):
            self._postings_per_term[term_id] = postings.keep(self._alive)
        self._dead = 0


def _with_time(features: Features, time: float) -> Features:
    return replace(features, time=time)


def _lsh_key(slot: int) -> str:
    return str(slot)


def _crc32(data: bytes) -> int:
    return zlib.crc32(data)


def _as_minhash(signature: npt.NDArray[np.uint32], shingler: Shingler) -> MinHash:
    return MinHash(
        num_perm=NUM_PERM,
        hashvalues=signature,
        permutations=shingler.permutations,
        scheme="affine32",
    )


def _jaccard(a: npt.NDArray[np.uint32], b: npt.NDArray[np.uint32]) -> float:
    return float(np.count_nonzero(a == b)) / len(a)
