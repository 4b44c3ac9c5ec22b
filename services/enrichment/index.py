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
from array import array
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import repeat
from operator import itemgetter
from typing import cast

import numpy as np
import numpy.typing as npt

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


class Shingler:
    """MinHash signatures with fixed permutations: every instance signs a text the same way.

    Word pairs are hashed once (crc32 of each word, mixed), then all permutations are applied
    as one numpy multiply-add-shift (a universal hash family) and the minimum taken per row.
    """

    def __init__(self) -> None:
        rng = np.random.RandomState(1)
        # Odd 64-bit multipliers and 64-bit offsets: h(x) = (a*x + b) mod 2^64 >> 32.
        self._a = (rng.randint(0, 2**63 - 1, NUM_PERM, dtype=np.uint64) << np.uint64(1)) | 1
        self._b = rng.randint(0, 2**63 - 1, NUM_PERM, dtype=np.uint64) << np.uint64(1)
        self._a = self._a.reshape(NUM_PERM, 1)
        self._b = self._b.reshape(NUM_PERM, 1)
        self._word_hashes: dict[str, int] = {}

    def signature(self, words: list[str]) -> Signature:
        """The signature of a story from its lower-cased words (`ReadStory.words`)."""
        cache = self._word_hashes
        if len(cache) > 500_000:
            cache.clear()
        seq = words[:_SHINGLED_WORDS]
        hashes = list(map(cache.get, seq))
        if None in hashes:
            for i, h in enumerate(hashes):
                if h is None:
                    word = seq[i]
                    hashes[i] = cache[word] = zlib.crc32(normalise(word).encode())
        w = np.asarray(hashes or [0], dtype=np.uint64)
        if len(w) > 1:
            # A word pair: the first word's hash mixed into the high bits, the second's added.
            w = (w[:-1] * np.uint64(0x9E3779B97F4A7C15)) ^ w[1:]
        rows = self._a * w
        rows += self._b
        rows >>= np.uint64(32)
        return np.asarray(rows.min(axis=1), dtype=np.uint32)


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
        bands = signatures.reshape(-1, _BANDS, _ROWS).astype(np.uint64)
        keys = (bands * cls._MIX).sum(axis=2, dtype=np.uint64)
        keys ^= np.arange(1, _BANDS + 1, dtype=np.uint64) << np.uint64(58)
        keys[keys == 0] = 1
        return np.asarray(keys, dtype=np.uint64)

    def add(self, slot: int, signature: Signature) -> None:
        if 2 * (self._used + _BANDS) > len(self._keys):
            self._grow()
        mask = len(self._keys) - 1
        table = self._keys
        for key in self.keys_of(signature)[0].tolist():
            cell = key & mask
            while table[cell]:
                cell = (cell + 1) & mask
            table[cell] = key
            self._slots[cell] = slot
        self._used += _BANDS

    def candidates(self, signature: Signature) -> set[int]:
        mask = len(self._keys) - 1
        table = self._keys
        found: set[int] = set()
        for key in self.keys_of(signature)[0].tolist():
            cell = key & mask
            while stored := int(table[cell]):
                if stored == key:
                    found.add(int(self._slots[cell]))
                cell = (cell + 1) & mask
        return found

    @classmethod
    def of(cls, slots: IntArray, signatures: Signature) -> _Bands:
        """Buckets holding only these stories (their signatures in the same order)."""
        capacity = 1 << 16
        while capacity < 4 * _BANDS * len(slots):
            capacity *= 2
        bands = cls(capacity)
        for slot, signature in zip(slots.tolist(), signatures, strict=True):
            bands.add(slot, signature)
        return bands

    def _grow(self) -> None:
        keys, slots = self._keys, self._slots
        used = np.flatnonzero(keys)
        self._keys = np.zeros(2 * len(keys), dtype=np.uint64)
        self._slots = np.zeros(2 * len(keys), dtype=np.int64)
        mask = len(self._keys) - 1
        for key, slot in zip(keys[used].tolist(), slots[used].tolist(), strict=True):
            cell = key & mask
            while self._keys[cell]:
                cell = (cell + 1) & mask
            self._keys[cell] = key
            self._slots[cell] = slot


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
        self._postings_docs: list[array[int]] = []
        self._postings_weights: list[array[float]] = []
        self._slots: dict[str, int] = {}  # uri -> slot of its live version
        self._entity_ids: dict[str, int] = {}
        # Per slot; a removed story's uri is None.
        self._uris: list[str | None] = []
        self._headlines: list[str | None] = []
        self._urls: list[str | None] = []
        self._entities: list[tuple[int, ...]] = []
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
        # reuses them. Term counts are kept as two tuples (a dict per story costs 4x more).
        self._recent: OrderedDict[str, tuple[Features, tuple[str, ...], tuple[int, ...]]] = (
            OrderedDict()
        )
        self._by_age: list[tuple[float, int]] = []  # (first time, slot), dead ones left lazily
        self._bands = _Bands()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, uri: str) -> bool:
        return uri in self._slots

    def features(self, article: Article) -> Features:
        """The indexed features of this exact version if held, else computed fresh."""
        slot = self._slots.get(article.uri)
        if slot is not None:
            held = self._recent.get(article.uri)
            if held is not None and held[0].version == article.version:
                features, terms, counts = held
                return replace(features, term_counts=dict(zip(terms, counts, strict=True)))
            if self._versions[slot] == article.version:
                fresh = features_of(article, self.shingler)
                # Keeps the first time of a corrected story.
                return _with_time(fresh, float(self._times[slot]))
        return features_of(article, self.shingler)

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
        self._entities.append(tuple(self._entity_id(key) for key in sorted(features.entity_keys)))
        self._versions[slot] = features.version
        self._signatures[slot] = features.signature
        terms = tuple(features.term_counts)
        counts = tuple(features.term_counts.values())
        self._recent[features.uri] = (replace(features, term_counts={}), terms, counts)
        if len(self._recent) > _RECENT_WITH_TERMS:
            self._recent.popitem(last=False)
        self._slots[features.uri] = slot
        self._times[slot] = features.time
        self._alive[slot] = True
        heapq.heappush(self._by_age, (features.time, slot))
        self._newest = max(self._newest, features.time)
        self._sizes[slot] = max(1, features.distinct)
        norm = self._length_norm(features)
        known = list(map(self._terms.get, terms))
        ids = cast(list[int], known) if None not in known else list(map(self._term_id, terms))
        # BM25 term weights, computed as `count * (k1 + 1) / (count + norm)` in float64 like
        # Python would; the appends run as C-level `map`s (one posting per term).
        tf = np.array(counts, dtype=np.float64)
        term_weights = (tf * (_K1 + 1) / (tf + norm)).tolist()
        _drain(map(_APPEND, map(self._postings_docs.__getitem__, ids), repeat(slot)))
        _drain(map(_APPEND, map(self._postings_weights.__getitem__, ids), term_weights))
        self._bands.add(slot, features.signature)
        self._evict()

    def remove(self, uri: str) -> None:
        slot = self._slots.pop(uri, None)
        if slot is None:
            return
        self._alive[slot] = False
        self._stale[slot] = True
        self._uris[slot] = self._headlines[slot] = self._urls[slot] = None
        self._entities[slot] = ()
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
        # (Exact: the top-`candidates` cut below keeps the same linkable stories either way.)
        floor = min_score / (1.0 + max(0.0, self.settings.entity_boost)) * (1.0 - 1e-9)
        candidates, base = self._bm25(features, earlier, floor)
        if candidates.size == 0:
            return Neighbours([], self._uri(duplicate_of))
        if candidates.size > self.settings.candidates:
            # The best few by score; all stories tied with the last one stay (whatever order
            # an instance indexed them in, the same stories go on).
            cut = np.partition(base, base.size - self.settings.candidates)[
                base.size - self.settings.candidates
            ]
            keep = base >= cut
            candidates, base = candidates[keep], base[keep]

        ages = np.maximum(0.0, features.time - self._times[candidates])
        decays = 0.5 ** (ages / self.settings.half_life_s)
        mine = {self._entity_ids.get(key, -1) for key in features.entity_keys}
        own_entities = len(features.entity_keys)
        boost = self.settings.entity_boost
        ranked: list[tuple[float, int]] = []
        for slot, score, decay in zip(
            candidates.tolist(), base.tolist(), decays.tolist(), strict=True
        ):
            if slot in duplicates:
                continue
            if own_entities and (theirs := self._entities[slot]):
                shared = sum(1 for e in theirs if e in mine) / min(own_entities, len(theirs))
                score *= 1.0 + boost * shared
            score *= decay
            if score >= min_score:
                ranked.append((min(score, 1.0), slot))
        ranked.sort(key=lambda pair: (-pair[0], self._order_key(pair[1])))

        # Two copies of one wire story are one link, to the first copy, at the better score.
        # (Each chosen story's copies among all the ranked ones are found in one numpy pass.)
        signatures = self._signatures[np.array([slot for _, slot in ranked], dtype=np.int64)]
        chosen: list[tuple[float, int]] = []  # score, position in `ranked`
        copies: list[list[bool]] = []  # per chosen story: which ranked stories are copies of it
        for i, (score, slot) in enumerate(ranked):
            copy_of = next((n for n, of_it in enumerate(copies) if of_it[i]), None)
            if copy_of is not None:
                kept_score, kept = chosen[copy_of]
                if self._order_key(slot) < self._order_key(ranked[kept][1]):
                    chosen[copy_of] = (kept_score, i)
                    copies[copy_of] = self._copies(signatures, i)
            elif len(chosen) < limit:
                chosen.append((score, i))
                copies.append(self._copies(signatures, i))
        related = []
        for score, position in chosen:
            slot = ranked[position][1]
            uri, headline = self._uris[slot], self._headlines[slot]
            assert uri is not None and headline is not None
            related.append(Match(uri, headline, self._urls[slot], round(score, 4)))
        return Neighbours(related, self._uri(duplicate_of))

    def _query_terms(self, features: Features, earlier: _Earlier) -> _Query:
        """The story's most telling terms: frequent in it, rare among the earlier stories.

        Rarity is the document frequency among the stories before this one only (see
        `_Earlier`), so an instance that has read past this story chooses the same terms and
        weighs them alike. Terms in more than a small share of the earlier stories say nothing
        about an event and are skipped.
        """
        frequent = sorted(features.term_counts.items(), key=itemgetter(1), reverse=True)[
            : 2 * self.settings.query_terms
        ]
        known = [(self._terms.get(term), count) for term, count in frequent]
        pairs = [(term_id, count) for term_id, count in known if term_id is not None]
        if not pairs or not earlier.stories:
            return _Query.empty()
        common = max(self.settings.common_floor, int(earlier.stories * self.settings.common_share))
        ids = [term_id for term_id, _ in pairs]
        df, starts, stops = self._earlier_frequencies(ids, earlier, common)
        counts = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
        rarity = np.log((earlier.stories + 1.0) / (df + 1.0))
        weight = np.where(df > common, -1.0, rarity * (1.0 + np.log(counts)))
        # Stable: equal weights keep the story's own term order.
        order = [
            i
            for i in np.argsort(-weight, kind="stable")[: self.settings.query_terms].tolist()
            if weight[i] >= 0
        ]
        return _Query(
            np.array([ids[i] for i in order], dtype=np.int64),
            counts[order],
            df[order],
            [starts[i] for i in order],
            [stops[i] for i in order],
        )

    def _earlier_frequencies(
        self, ids: list[int], earlier: _Earlier, common: int
    ) -> tuple[FloatArray, list[int], list[int]]:
        """How many earlier stories hold each term (exactly up to `common`, above it some
        number above `common`), and where each term's postings that may be earlier start and
        stop.

        Postings are in slot order: those inside the run of earlier slots are counted by two
        binary searches. No slot before the run is earlier (the run starts at the first
        earlier slot); slots past it (stories read about the same time as this one or after it)
        are looked up one by one, only up to the last earlier one (usually there is none: an
        instance reads the table about in time order) and only for terms the run has not
        already shown to be common. When removed stories in the run still have postings
        (`holes`), a term with more than `common` + `holes` postings in the run is common all
        the same; the others' postings are looked up one by one.
        """
        first, end = earlier.run
        holes = earlier.holes
        look_past = earlier.late.size > 0
        past_end = int(earlier.late[-1]) + 1 if look_past else end
        counted: list[int] = []
        starts: list[int] = []
        stops: list[int] = []
        rest: list[npt.NDArray[np.int32]] = []
        owners: list[int] = []
        all_postings = self._postings_docs
        for i, term_id in enumerate(ids):
            postings = all_postings[term_id]
            size = len(postings)
            start = bisect_left(postings, first) if first else 0
            known = start + common + holes
            if known < size and postings[known] < end:
                # More than `common` earlier postings inside the run: a common term, no need to
                # count on.
                counted.append(common + 1)
                starts.append(start)
                stops.append(start)
                continue
            stop = size if not size or postings[-1] < end else bisect_left(postings, end, start)
            starts.append(start)
            if holes:
                if look_past and stop < size:
                    stop = bisect_left(postings, past_end, stop)
                if stop > start:
                    rest.append(np.frombuffer(postings, dtype=np.int32)[start:stop])
                    owners.append(i)
                counted.append(0)
                stops.append(stop)
                continue
            counted.append(stop - start)
            if look_past and stop - start <= common and stop < size:
                past = bisect_left(postings, past_end, stop)
                if past > stop:
                    rest.append(np.frombuffer(postings, dtype=np.int32)[stop:past])
                    owners.append(i)
                stop = past
            stops.append(stop)
        df = np.array(counted, dtype=np.float64)
        if rest:
            lengths = np.fromiter(map(len, rest), dtype=np.int64, count=len(rest))
            slots = np.concatenate(rest, dtype=np.int64)
            owner = np.repeat(np.array(owners, dtype=np.int64), lengths)
            df += np.bincount(owner, weights=earlier.of(slots), minlength=len(ids))
        return df, starts, stops

    def _length_norm(self, features: Features) -> float:
        # A fixed average length, not the index's: a story's weights must not depend on what else
        # an instance had read when it indexed it.
        return _K1 * (1 - _B + _B * features.length / self.settings.average_length)

    def _bm25(
        self, features: Features, earlier: _Earlier, floor: float = 0.0
    ) -> tuple[IntArray, FloatArray]:
        """BM25 of the earlier stories against this one, relative to this one's own score:
        the stories scored and their scores.

        Document frequencies count earlier stories only, for choosing the query terms as for
        weighing them: two instances that read different amounts past this story, in different
        orders, score it alike. Scores are divided by both stories' own scores (the other's
        estimated from its size); a long article and its short teaser are not punished below a
        floor. Only stories scoring at least `floor` are returned.
        """
        query = self._query_terms(features, earlier)
        none = np.zeros(0, dtype=np.int64), np.zeros(0)
        if not len(query.terms):
            return none
        norm = self._length_norm(features)
        selected = query.terms.tolist()
        all_docs, all_weights = self._postings_docs, self._postings_weights
        # Each term's postings from the earlier run on, up to the last earlier story (usually the
        # run's end): nothing before or after can be earlier.
        spans = list(zip(selected, query.starts, query.stops, strict=True))
        lengths = np.fromiter((b - a for _, a, b in spans), dtype=np.int64, count=len(spans))
        docs = np.concatenate(
            [np.frombuffer(all_docs[t], dtype=np.int32)[a:b] for t, a, b in spans],
            dtype=np.int64,  # gathers index faster with the platform's own integers
        )
        weights = np.concatenate(
            [np.frombuffer(all_weights[t], dtype=np.float32)[a:b] for t, a, b in spans]
        )
        # Stories past the run that are not earlier, and removed ones in it, are weighed zero
        # rather than cut out.
        mask = earlier.of(docs) if earlier.late.size or earlier.holes else None
        slots = int(earlier.late[-1]) + 1 if earlier.late.size else earlier.run[1]
        df = query.frequencies + 1.0
        idf = np.log(1.0 + (earlier.stories + 1.0 - df + 0.5) / (df + 0.5))
        counts = query.counts
        own = float((idf * counts * (_K1 + 1) / (counts + norm)).sum())
        if own <= 0:
            return none
        # Sum per story over the whole slot range (cheaper than sorting the postings). Every
        # weight and idf is positive: the earlier stories hit are the ones with a sum.
        contributions = np.repeat(idf, lengths)
        contributions *= weights
        if mask is not None:
            contributions *= mask
        summed = np.bincount(docs, weights=contributions, minlength=slots)
        # A score is the sum divided by at least the floor share of this story's own score, so a
        # sum below `floor` times that cannot reach `floor` (a float array's own nonzero is 4x
        # slower than a bool array's).
        least = floor * _LENGTH_MISMATCH_FLOOR * own
        candidates = np.flatnonzero(summed >= least if least > 0 else summed > 0)
        if candidates.size == 0:
            return none
        scores: FloatArray = np.asarray(summed[candidates], dtype=np.float64)
        theirs = own * self._sizes[candidates] / max(1, features.distinct)
        scores /= np.maximum(
            np.sqrt(own * theirs), _LENGTH_MISMATCH_FLOOR * np.maximum(own, theirs)
        )
        if floor > 0:
            keep = scores >= floor
            candidates, scores = candidates[keep], scores[keep]
        return candidates, scores

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

    def _copies(self, signatures: Signature, i: int) -> list[bool]:
        """Which of these stories are copies of the `i`th (`_jaccard` of their signatures at
        least the duplicate similarity, computed the same way for all of them at once).
        """
        equal = np.count_nonzero(signatures == signatures[i], axis=1)
        return cast(list[bool], (equal / NUM_PERM >= self.settings.duplicate_similarity).tolist())

    def _earlier(self, features: Features) -> _Earlier:
        size = len(self._uris)
        times = self._times[:size]
        alive = self._alive[:size]
        since = features.time - self.settings.window_s
        earlier = times < features.time
        # Usually no story is out of the window. Removed stories keep their times, also once
        # `_compact` has swept them out of the postings: they never count.
        if self._by_age and self._by_age[0][0] < since:
            earlier &= times >= since
        earlier &= alive
        for slot in np.flatnonzero(times == features.time).tolist():
            if alive[slot] and (uri := self._uris[slot]) is not None and uri < features.uri:
                earlier[slot] = True
        return _Earlier.of_mask(earlier, alive, self._stale[:size])

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
            term_id = self._terms[term] = len(self._postings_docs)
            self._postings_docs.append(array("i"))
            self._postings_weights.append(array("f"))
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
        """Drop dead stories from the postings and the LSH buckets (removals only mark them)."""
        alive = self._alive
        for term_id, docs in enumerate(self._postings_docs):
            slots = np.frombuffer(docs, dtype=np.int32)
            keep = alive[slots]
            kept = int(np.count_nonzero(keep))
            if kept < len(slots):
                weights = np.frombuffer(self._postings_weights[term_id], dtype=np.float32)
                self._postings_docs[term_id] = array("i", slots[keep].tobytes())
                self._postings_weights[term_id] = array("f", weights[keep].tobytes())
            del slots
        live = np.flatnonzero(alive[: len(self._uris)])
        self._bands = _Bands.of(live, self._signatures[live])
        self._stale[:] = False
        self._dead = 0


@dataclass(frozen=True)
class _Query:
    """The terms a story is looked up by, its counts of them and their earlier frequencies."""

    terms: IntArray
    counts: FloatArray
    frequencies: FloatArray
    # Where each term's postings that may be earlier start and stop: the run, then up to the last
    # earlier story past it.
    starts: list[int]
    stops: list[int]

    @classmethod
    def empty(cls) -> _Query:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), [], [])


@dataclass(frozen=True)
class _Earlier:
    """Which stories count as earlier than the one being enriched: first seen before it (ties
    broken by uri), within the window, alive; how many there are; and the longest run of slots
    from the first earlier one that holds no live story that is not earlier (most of the index:
    an instance reads the story table about in time order).

    Removed stories do not end the run (corrections and withdrawals leave one behind every few
    stories): the run's `holes` are those whose postings are still in the lists, which the
    counts must then leave out.
    """

    mask: npt.NDArray[np.bool_]  # per slot
    stories: int
    run: tuple[int, int]  # [first, end) slots: earlier ones and removed ones
    holes: int  # removed stories in the run that still have postings (usually few or none)
    late: IntArray  # the earlier slots past the run (usually none)

    @classmethod
    def of_mask(
        cls,
        mask: npt.NDArray[np.bool_],
        alive: npt.NDArray[np.bool_],
        stale: npt.NDArray[np.bool_],
    ) -> _Earlier:
        first = int(np.argmax(mask)) if mask.size else 0  # the first earlier slot
        if not mask.size or not mask[first]:
            return cls(mask, 0, (0, 0), 0, np.zeros(0, dtype=np.int64))
        # The first live story after `first` that is not earlier ends the run (none: the end).
        blocking = alive[first:] & ~mask[first:]
        gap = int(np.argmax(blocking))
        end = first + (gap if blocking[gap] else blocking.size)
        # Nothing before `first` is earlier: only the slots from `end` on need looking at.
        late = np.flatnonzero(mask[end:]) + end
        in_run = int(np.count_nonzero(mask[first:end]))
        holes = int(np.count_nonzero(stale[first:end]))
        return cls(mask, in_run + late.size, (first, end), holes, late)

    def of(self, slots: IntArray) -> npt.NDArray[np.bool_]:
        return np.asarray(self.mask[slots], dtype=bool)

    def holds(self, slot: int) -> bool:
        return slot < self.mask.size and bool(self.mask[slot])


_APPEND = array.append


def _drain(calls: Iterator[None]) -> None:
    deque(calls, maxlen=0)


def _with_time(features: Features, time: float) -> Features:
    return replace(features, time=time)


def _jaccard(a: Signature, b: Signature) -> float:
    return float(np.count_nonzero(a == b)) / len(a)
