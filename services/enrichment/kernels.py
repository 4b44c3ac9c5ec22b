"""The related-story index's inner loops, compiled to machine code by numba. Pure; no I/O.

Postings live in two shared arrays (`docs`: story slots, `weights`: BM25 term weights), each
term's in one block of them (`start`, `size`, `capacity` per term id), in slot order. A block
that fills up moves to the end with half as much room again; `repack` drops removed stories and
the space blocks left behind.

A lookup reads only these arrays: which stories are earlier than the one being enriched
(`earlier_pass`), how many earlier stories hold each term (`frequencies`), and the BM25 sums of
the earlier stories (`accumulate`, then `collect`); `score_earlier` runs the last three, with the
choice of query terms between them, as one call. Sums are added in the same order as a numpy
`bincount` over the concatenated postings would, so scores are the same to the last bit.

Two loops of reading a story live here too: `word_hashes` (the words' hashes a MinHash signature
starts from) and `capitalised_runs` (where entities' candidate names are, in ASCII text).

Compiled on first use and cached next to this file (numba's `cache=True`; see `compiled`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numba import njit

F = TypeVar("F", bound=Callable[..., Any])

IntArray = npt.NDArray[np.int64]
SlotArray = npt.NDArray[np.int32]
WeightArray = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
UIntArray = npt.NDArray[np.uint64]


uncached: list[str] = []  # loops compiled at every start: numba found nowhere to cache them


def compiled(function: F) -> F:
    """`function` compiled by numba on its first call; same signature, same results.

    Compiled code is cached next to the source, else in `NUMBA_CACHE_DIR` or the user's cache
    directory; where none is writable (a read-only install, no home) it is compiled at each
    start instead (a few seconds) rather than failing the import.
    """
    try:
        return cast(F, njit(cache=True, nogil=True)(function))
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        uncached.append(function.__name__)
        return cast(F, njit(nogil=True)(function))


@compiled
def grown(capacity: int) -> int:
    """A block's room once it moves: half as much again, at least 4."""
    return max(4, capacity + capacity // 2)


@compiled
def append_postings(
    start: IntArray,
    size: IntArray,
    capacity: IntArray,
    docs: SlotArray,
    weights: WeightArray,
    used: int,
    term_ids: IntArray,
    slot: int,
    counts: FloatArray,
    norm: float,
    k1: float,
) -> int:
    """Append `slot` to each term's postings with its BM25 weight, `count * (k1 + 1) / (count
    + norm)` in float64 kept as float32; the arena's new high-water mark, or -1 (and nothing
    changed) when the arena has no room for the blocks that must move.
    """
    need = 0
    for i in range(term_ids.size):
        term = term_ids[i]
        if size[term] == capacity[term]:
            need += grown(capacity[term])
    if used + need > docs.size:
        return -1
    for i in range(term_ids.size):
        term = term_ids[i]
        held = size[term]
        if held == capacity[term]:
            moved = grown(held)
            old = start[term]
            for j in range(held):
                docs[used + j] = docs[old + j]
                weights[used + j] = weights[old + j]
            start[term] = used
            capacity[term] = moved
            used += moved
        docs[start[term] + held] = slot
        count = counts[i]
        weights[start[term] + held] = np.float32(count * (k1 + 1) / (count + norm))
        size[term] = held + 1
    return used


@compiled
def repack(
    start: IntArray,
    size: IntArray,
    capacity: IntArray,
    docs: SlotArray,
    weights: WeightArray,
    terms: int,
    renumbered: IntArray,
    new_docs: SlotArray,
    new_weights: WeightArray,
) -> int:
    """Copy every term's postings into the new arrays, each story under its new slot
    (`renumbered[slot]`, in the same order; -1: dropped), each block with room to grow by half;
    returns the new high-water mark. `new_docs` must hold 1.5 times the postings kept and 4
    more per term.
    """
    used = 0
    for term in range(terms):
        old = start[term]
        kept = 0
        for j in range(size[term]):
            slot = renumbered[docs[old + j]]
            if slot >= 0:
                new_docs[used + kept] = slot
                new_weights[used + kept] = weights[old + j]
                kept += 1
        start[term] = used
        size[term] = kept
        capacity[term] = grown(kept)
        used += capacity[term]
    return used


BLOCK = 512  # slots per block of the block summaries `earlier_pass` skips through


@compiled
def is_earlier(
    slot: int,
    times: FloatArray,
    alive: BoolArray,
    time: float,
    since: float,
    tied_earlier: IntArray,
) -> bool:
    """Whether the story in `slot` is earlier: alive, first seen in [since, time), or at `time`
    exactly and listed in `tied_earlier` (sorted; same time, earlier uri).
    """
    if not alive[slot]:
        return False
    at = times[slot]
    if since <= at < time:
        return True
    if at != time or tied_earlier.size == 0:
        return False
    at_or_after = first_from(tied_earlier, 0, tied_earlier.size, slot)
    return at_or_after < tied_earlier.size and tied_earlier[at_or_after] == slot


@compiled
def first_from(slots: SlotArray | IntArray, low: int, high: int, bound: int) -> int:
    """The first position in [low, high) whose slot is `bound` or more (`slots` ascending
    there: a term's postings, or a sorted list of slots); `high` if none is.
    """
    while low < high:
        mid = (low + high) // 2
        if slots[mid] < bound:
            low = mid + 1
        else:
            high = mid
    return low


@compiled
def block_summaries(
    times: FloatArray, slots: int, low: FloatArray, high: FloatArray, alive: IntArray
) -> None:
    """The summaries `earlier_pass` reads, for slots [0, slots) all live (after a renumbering)."""
    low[:] = np.inf
    high[:] = -np.inf
    alive[:] = 0
    for slot in range(slots):
        block = slot // BLOCK
        low[block] = min(low[block], times[slot])
        high[block] = max(high[block], times[slot])
        alive[block] += 1


@compiled
def same_time(
    times: FloatArray,
    alive: BoolArray,
    slots: int,
    block_low: FloatArray,
    block_high: FloatArray,
    time: float,
    out: IntArray,
) -> int:
    """The live stories that first appeared at exactly `time`, into `out` in slot order; how
    many. Only blocks whose time range holds `time` are read.
    """
    found = 0
    for block in range((slots + BLOCK - 1) // BLOCK):
        if block_low[block] <= time <= block_high[block]:
            for slot in range(block * BLOCK, min(slots, (block + 1) * BLOCK)):
                if alive[slot] and times[slot] == time:
                    out[found] = slot
                    found += 1
    return found


@compiled
def earlier_pass(
    times: FloatArray,
    alive: BoolArray,
    stale: BoolArray,
    slots: int,
    block_low: FloatArray,
    block_high: FloatArray,
    block_alive: IntArray,
    block_stale: IntArray,
    time: float,
    since: float,
    tied_earlier: IntArray,
) -> tuple[int, int, int, int, int]:
    """The stories earlier than `time` (see `is_earlier`): (how many, the first earlier slot,
    the end of the run from it that holds no live story that is not earlier, the last earlier
    slot, removed stories in that run whose postings are still listed). No earlier story:
    (0, -1, 0, -1, 0).

    Reads block summaries (per block of slots: the time range its stories were first seen in,
    its live and its removed-but-listed stories) and only the blocks they cannot settle: about
    in time order, as an instance reads the table, that is a block or two.
    """
    count = 0
    first = -1
    last_block = -1
    end = slots
    holes = 0
    in_run = False
    for block in range((slots + BLOCK - 1) // BLOCK):
        low = block * BLOCK
        high = min(slots, low + BLOCK)
        if block_alive[block] == 0:
            if in_run:
                holes += block_stale[block]
            continue
        if first >= 0 and since <= block_low[block] and block_high[block] < time:
            # Every live story in it is earlier (a run goes on through it).
            count += block_alive[block]
            last_block = block
            if in_run:
                holes += block_stale[block]
            continue
        if not in_run and (block_high[block] < since or block_low[block] > time):
            continue  # nothing earlier in it, and no run for a live story to end
        for slot in range(low, high):
            if is_earlier(slot, times, alive, time, since, tied_earlier):
                count += 1
                last_block = block
                if first < 0:
                    first = slot
                    in_run = True
            elif in_run:
                if alive[slot]:
                    end = slot
                    in_run = False
                elif stale[slot]:
                    holes += 1
    if first < 0:
        return 0, -1, 0, -1, 0
    last = -1
    for slot in range(min(slots, (last_block + 1) * BLOCK) - 1, last_block * BLOCK - 1, -1):
        if is_earlier(slot, times, alive, time, since, tied_earlier):
            last = slot
            break
    return count, first, end, last, holes


@compiled
def frequencies(
    start: IntArray,
    size: IntArray,
    docs: SlotArray,
    term_ids: IntArray,
    times: FloatArray,
    alive: BoolArray,
    time: float,
    since: float,
    tied_earlier: IntArray,
    first: int,
    end: int,
    last: int,
    holes: int,
    common: int,
    df: FloatArray,
    spans: IntArray,
) -> None:
    """How many earlier stories hold each term: exact up to `common`, and above it some number
    above `common`. `spans[i]` gets where term i's postings that may be earlier begin and end
    (relative to its block; empty for a common term).

    Postings in the run [first, end) are earlier unless removed: when a term has `common` +
    `holes` + 1 postings inside the run, it is common without counting on; with no hole, a
    term's postings in the run are all counted without reading them.
    """
    for i in range(term_ids.size):
        term = term_ids[i]
        base = start[term]
        held = size[term]
        lo = first_from(docs, base, base + held, first) - base  # the first posting in the run
        known = lo + common + holes
        if known < held and docs[base + known] < end:
            df[i] = common + 1
            spans[i, 0] = lo
            spans[i, 1] = lo
            continue
        counted = 0
        stop = lo
        if holes == 0:
            # No removed story in the run: each of its postings is a live, earlier story, so
            # they are counted by finding where the run ends.
            stop = first_from(docs, base + lo, base + held, min(end, last + 1)) - base
            counted = stop - lo
        # In the run, every live story is earlier (a loop of its own, with no call in it).
        while stop < held:
            slot = docs[base + stop]
            if slot >= end or slot > last:
                break
            if alive[slot]:
                counted += 1
            stop += 1
        while stop < held:
            slot = docs[base + stop]
            if slot > last:
                break
            if is_earlier(slot, times, alive, time, since, tied_earlier):
                counted += 1
            stop += 1
        df[i] = counted
        spans[i, 0] = lo
        spans[i, 1] = stop


@compiled
def accumulate(
    start: IntArray,
    docs: SlotArray,
    weights: WeightArray,
    term_ids: IntArray,
    spans: IntArray,
    idf: FloatArray,
    times: FloatArray,
    alive: BoolArray,
    time: float,
    since: float,
    tied_earlier: IntArray,
    end: int,
    holes: int,
    sums: FloatArray,
    touched: IntArray,
) -> int:
    """Add each earlier story's BM25 contributions into `sums` (zero on entry for every slot),
    term by term in the query's order and slot order within a term (postings from the run's
    start on; see `earlier_pass`); the stories touched go to `touched`, and how many is
    returned. `collect` reads them and zeroes `sums` again.
    """
    found = 0
    for i in range(term_ids.size):
        base = start[term_ids[i]]
        rarity = idf[i]
        low = base + spans[i, 0]
        high = base + spans[i, 1]
        # Postings are in slot order: those in the run [first, end) come first, and there every
        # live story is earlier (a loop of its own, with no call in it, runs faster).
        run_end = first_from(docs, low, high, end)
        if holes == 0:  # no removed story in the run: every posting in it is live
            for j in range(low, run_end):
                slot = docs[j]
                summed = sums[slot]
                if summed == 0.0:
                    touched[found] = slot
                    found += 1
                sums[slot] = summed + rarity * np.float64(weights[j])
        else:
            for j in range(low, run_end):
                slot = docs[j]
                if alive[slot]:
                    summed = sums[slot]
                    if summed == 0.0:
                        touched[found] = slot
                        found += 1
                    sums[slot] = summed + rarity * np.float64(weights[j])
        for j in range(run_end, high):
            slot = docs[j]
            if is_earlier(slot, times, alive, time, since, tied_earlier):
                summed = sums[slot]
                if summed == 0.0:
                    touched[found] = slot
                    found += 1
                sums[slot] = summed + rarity * np.float64(weights[j])
    return found


@compiled
def collect(
    sums: FloatArray,
    touched: IntArray,
    found: int,
    least: float,
    slots_out: IntArray,
    sums_out: FloatArray,
) -> int:
    """The touched stories whose sum reaches `least` (above zero when `least` is 0), with their
    sums, in the order touched; zeroes `sums` for the next lookup. Returns how many.
    `slots_out` may be `touched` itself (each is written after it is read).
    """
    kept = 0
    for i in range(found):
        slot = touched[i]
        summed = sums[slot]
        sums[slot] = 0.0
        if summed >= least if least > 0 else summed > 0:
            slots_out[kept] = slot
            sums_out[kept] = summed
            kept += 1
    return kept


# numpy sums up to this many values as eight running sums (more: in halves, recursively).
PAIRWISE_BLOCK = 128


@compiled
def pairwise_sum(values: FloatArray, count: int) -> float:
    """The sum of `values[:count]` (at most `PAIRWISE_BLOCK`), added in the same order as
    numpy's `sum` adds them, so the result is the same to the last bit. (Not recursive: numba's
    cache does not keep recursive functions safely.)
    """
    if count > PAIRWISE_BLOCK:
        raise ValueError("pairwise_sum: too many values")
    total = 0.0
    if count < 8:
        for i in range(count):
            total += values[i]
        return total
    r: FloatArray = values[:8].copy()
    i = 8
    while i < count - count % 8:
        for k in range(8):
            r[k] += values[i + k]
        i += 8
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < count:
        total += values[i]
        i += 1
    return float(total)


@compiled
def score_earlier(
    start: IntArray,
    size: IntArray,
    docs: SlotArray,
    weights: WeightArray,
    term_ids: IntArray,
    counts: FloatArray,
    times: FloatArray,
    alive: BoolArray,
    time: float,
    since: float,
    tied_earlier: IntArray,
    first: int,
    end: int,
    last: int,
    holes: int,
    stories: int,
    common: int,
    query_terms: int,
    norm: float,
    k1: float,
    floor: float,
    mismatch_floor: float,
    sizes: FloatArray,
    distinct: int,
    sums: FloatArray,
    touched: IntArray,
    kept_sums: FloatArray,
) -> tuple[IntArray, FloatArray]:
    """A lookup's BM25 pass, whole: the earlier stories scoring at least `floor` against a
    story (its known terms `term_ids`, most frequent first, and their `counts`), in slot order,
    with their scores.

    The query is the story's `query_terms` most telling terms: rarity among the `stories`
    earlier ones times `1 + log(count)`, ties in the story's own order, none held by more than
    `common` earlier stories. A score is the BM25 sum over them divided by both stories' own
    scores (the other's estimated from its size, `sizes[slot]`, against this one's `distinct`
    terms), never by less than `mismatch_floor` of the larger. `sums`, `touched` and
    `kept_sums` are working space, one entry per slot (`sums` zero on entry and on return).
    """
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    n = term_ids.size
    if n == 0 or stories == 0:
        return empty
    df = np.zeros(n)
    spans = np.zeros((n, 2), dtype=np.int64)
    frequencies(
        start, size, docs, term_ids, times, alive, time, since, tied_earlier,
        first, end, last, holes, common, df, spans,
    )  # fmt: skip
    weight = np.empty(n)
    for i in range(n):
        rarity = np.log((stories + 1.0) / (df[i] + 1.0))
        weight[i] = -1.0 if df[i] > common else rarity * (1.0 + np.log(counts[i]))
    order = np.argsort(-weight, kind="mergesort")[:query_terms]  # stable: ties keep their order
    chosen = order[weight[order] >= 0]
    m = chosen.size
    if m == 0:
        return empty
    idf = np.empty(m)
    own_parts = np.empty(m)
    for k in range(m):
        i = chosen[k]
        held = df[i] + 1.0
        idf[k] = np.log(1.0 + (stories + 1.0 - held + 0.5) / (held + 0.5))
        count = counts[i]
        own_parts[k] = idf[k] * count * (k1 + 1) / (count + norm)
    own = pairwise_sum(own_parts, m)
    if own <= 0:
        return empty
    found = accumulate(
        start, docs, weights, term_ids[chosen], spans[chosen], idf, times, alive, time, since,
        tied_earlier, end, holes, sums, touched,
    )  # fmt: skip
    # Every weight and idf is positive: a score is the sum divided by at least the floor share
    # of this story's own score, so a sum below `floor` times that cannot reach `floor`.
    kept = collect(sums, touched, found, floor * mismatch_floor * own, touched, kept_sums)
    by_slot = np.argsort(touched[:kept])
    slots = touched[:kept][by_slot]
    scores = kept_sums[:kept][by_slot]
    for k in range(kept):
        theirs = own * sizes[slots[k]] / distinct
        scores[k] /= max(np.sqrt(own * theirs), mismatch_floor * max(own, theirs))
    if floor > 0:
        keep = scores >= floor
        return slots[keep], scores[keep]
    return slots, scores


# --- near-duplicate buckets: an open-addressing table of band keys (0: an empty cell) ---------


@compiled
def band_keys(signatures: npt.NDArray[np.uint32], mix: UIntArray, keys: UIntArray) -> None:
    """Each MinHash signature's (a row of `signatures`) LSH band keys, into the same row of
    `keys`: each band's rows mixed into 64 bits, never 0.
    """
    bands = keys.shape[1]
    rows = signatures.shape[1] // bands
    for story in range(signatures.shape[0]):
        for band in range(bands):
            key = np.uint64(0)
            for row in range(rows):
                key += np.uint64(signatures[story, band * rows + row]) * mix[row]
            key ^= np.uint64(band + 1) << np.uint64(58)
            keys[story, band] = key if key != np.uint64(0) else np.uint64(1)


@compiled
def band_add(table: UIntArray, owners: IntArray, keys: UIntArray, slots: IntArray) -> None:
    """File each `slots[i]` under `keys[i]` (the table must have that many free cells)."""
    mask = np.uint64(table.size - 1)
    for i in range(keys.size):
        key = keys[i]
        cell = key & mask
        while table[cell] != np.uint64(0):
            cell = (cell + np.uint64(1)) & mask
        table[cell] = key
        owners[cell] = slots[i]


@compiled
def band_add_story(
    table: UIntArray,
    owners: IntArray,
    signature: npt.NDArray[np.uint32],
    mix: UIntArray,
    bands: int,
    slot: int,
) -> None:
    """File one story (`slot`) under each of its signature's band keys (see `band_keys`)."""
    keys = np.zeros((1, bands), dtype=np.uint64)
    band_keys(signature.reshape(1, signature.size), mix, keys)
    band_add(table, owners, keys[0], np.full(bands, slot, dtype=np.int64))


@compiled
def band_find(table: UIntArray, owners: IntArray, keys: UIntArray, out: IntArray) -> int:
    """The slots filed under any of the keys, into `out` (repeats possible); how many there
    are, which may exceed `out`'s size (then only that many were written).
    """
    mask = np.uint64(table.size - 1)
    found = 0
    for key in keys:
        cell = key & mask
        while table[cell] != np.uint64(0):
            if table[cell] == key:
                if found < out.size:
                    out[found] = owners[cell]
                found += 1
            cell = (cell + np.uint64(1)) & mask
    return found


@compiled
def copies_of(
    signatures: npt.NDArray[np.uint32],
    slots: IntArray,
    story: int,
    similarity: float,
    out: BoolArray,
) -> None:
    """Which of the stories in `slots` (rows of `signatures`) are copies of the `story`th of
    them: the share of MinHash rows they have in common (estimated Jaccard) is at least
    `similarity`.
    """
    perms = signatures.shape[1]
    mine = slots[story]
    for other in range(slots.size):
        theirs = slots[other]
        equal = 0
        for row in range(perms):
            if signatures[theirs, row] == signatures[mine, row]:
                equal += 1
        out[other] = equal / perms >= similarity


@compiled
def _before(score: FloatArray, times: FloatArray, uri_order: IntArray, a: int, b: int) -> bool:
    """Whether candidate `a` ranks before `b`: the higher score, then the earlier first time,
    then the earlier uri (`uri_order`)."""
    if score[a] != score[b]:
        return bool(score[a] > score[b])
    return _before_in_time(times, uri_order, a, b)


@compiled
def rank_links(
    candidates: IntArray,
    base: FloatArray,
    most: int,
    slot_times: FloatArray,
    time: float,
    half_life: float,
    entity_start: IntArray,
    entity_count: IntArray,
    entity_ids: IntArray,
    mine: IntArray,
    own_entities: int,
    boost: float,
    min_score: float,
    excluded: IntArray,
    signatures: npt.NDArray[np.uint32],
    similarity: float,
    uri_order: IntArray,
    chosen: IntArray,
    scores: FloatArray,
) -> int:
    """The stories to link, best first: into `chosen` (positions in `candidates`) and
    `scores`, as many as they hold; returns how many, or -1 when two of the ranked stories
    first appeared at the same time and `uri_order` is empty (call again with it).

    Only the `most` best candidates by `base` go on, and all tied with the last of them (any
    instance keeps the same ones, whatever order it indexed them in). A candidate's BM25 score
    (`base`, relative) grows with the share of entities it has in common with the story
    (`mine`: the story's entity ids the index knows, of `own_entities`; a slot's are
    `entity_count[slot]` of `entity_ids` from `entity_start[slot]`): times (1 + `boost` x
    shared / the fewer of the two), then decays: halves for every `half_life` seconds it first
    appeared (`slot_times`) before `time`. Below `min_score` it is out, above 1 it counts as 1;
    the `excluded` slots (the story's own copies) are out.
    Best first: the higher score, then the earlier first time, then the earlier uri
    (`uri_order`: each candidate's rank by uri). Two copies of one wire story (`copies_of`)
    are one link, to the first copy, at the better score.
    """
    n = candidates.size
    cut = -np.inf
    if n > most:
        cut = np.partition(base, n - most)[n - most]
    ranked = np.empty(n, dtype=np.int64)
    score = np.empty(n)
    times = np.empty(n)  # per candidate: when it first appeared
    count = 0
    for c in range(n):
        slot = candidates[c]
        times[c] = slot_times[slot]
        if base[c] < cut:
            continue
        theirs = entity_count[slot]
        start = entity_start[slot]
        value = base[c]
        out = False
        for e in range(excluded.size):
            if excluded[e] == slot:
                out = True
        if not out:
            if own_entities and theirs:
                common = 0
                for e in range(start, start + theirs):
                    for m in range(mine.size):
                        if mine[m] == entity_ids[e]:
                            common += 1
                value *= 1.0 + boost * (common / min(own_entities, theirs))
            value *= 0.5 ** (max(0.0, time - times[c]) / half_life)
            if value >= min_score:
                ranked[count] = c
                score[c] = 1.0 if value > 1.0 else value
                count += 1
    if uri_order.size == 0:
        for i in range(count):
            for j in range(i + 1, count):
                if times[ranked[i]] == times[ranked[j]]:
                    return -1
    # Insertion sort: a few dozen candidates at most.
    for i in range(1, count):
        c = ranked[i]
        j = i - 1
        while j >= 0 and _before(score, times, uri_order, c, ranked[j]):
            ranked[j + 1] = ranked[j]
            j -= 1
        ranked[j + 1] = c

    slots = candidates[ranked[:count]]
    limit = chosen.size
    copies = np.zeros((limit, count), dtype=np.bool_)  # per chosen story: its copies' positions
    holder = np.full(count, -1, dtype=np.int64)  # per position: the first chosen it copies
    at = np.empty(limit, dtype=np.int64)  # per chosen story: its position among the ranked
    taken = 0
    for i in range(count):
        kept = holder[i]
        if kept >= 0:
            # A copy of a chosen story: the link goes to the copy that came first.
            if _before_in_time(times, uri_order, ranked[i], ranked[at[kept]]):
                at[kept] = i
                copies_of(signatures, slots, i, similarity, copies[kept])
                holder[:] = -1  # who holds what, afresh: the lower chosen story wins
                for k in range(taken - 1, -1, -1):
                    for p in range(count):
                        if copies[k, p]:
                            holder[p] = k
        elif taken < limit:
            at[taken] = i
            scores[taken] = score[ranked[i]]
            copies_of(signatures, slots, i, similarity, copies[taken])
            for p in range(count):
                if copies[taken, p] and holder[p] < 0:
                    holder[p] = taken
            taken += 1
    for k in range(taken):
        chosen[k] = ranked[at[k]]
    return taken


@compiled
def _before_in_time(times: FloatArray, uri_order: IntArray, a: int, b: int) -> bool:
    """Whether candidate `a` first appeared before `b` (the earlier uri when at once)."""
    if times[a] != times[b]:
        return bool(times[a] < times[b])
    return bool(uri_order[a] < uri_order[b])


def _crc32_table() -> npt.NDArray[np.int64]:
    """zlib's crc32 of each byte alone (reflected polynomial 0xEDB88320, no inversions)."""
    table = np.zeros(256, dtype=np.int64)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        table[byte] = crc
    return table


CRC32_TABLE = _crc32_table()


@compiled
def word_hashes(text: npt.NDArray[np.uint8], table: npt.NDArray[np.int64], out: UIntArray) -> int:
    """`zlib.crc32` of each word of `text` (UTF-8, words separated by single spaces) without a
    final "'s", into `out` (as many as it holds); returns how many words `text` has.
    `table` is `CRC32_TABLE`.
    """
    count = 0
    start = 0
    for end in range(text.size + 1):
        if end < text.size and text[end] != 32:
            continue
        stop = end
        if stop - start >= 2 and text[stop - 2] == 39 and text[stop - 1] == 115:  # "'s"
            stop -= 2
        crc = 0xFFFFFFFF
        for i in range(start, stop):
            crc = table[(crc ^ text[i]) & 0xFF] ^ (crc >> 8)
        if count < out.size:
            out[count] = crc ^ 0xFFFFFFFF
        count += 1
        start = end + 1
    return count


@compiled
def _in_name(c: int) -> bool:
    """An ASCII character a capitalised run goes on through: a letter, a digit or "_'-"."""
    return 97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c == 95 or c == 39 or c == 45


@compiled
def _after_blanks(text: npt.NDArray[np.uint8], i: int) -> int:
    while i < text.size and (text[i] == 32 or text[i] == 9):
        i += 1
    return i


@compiled
def capitalised_runs(
    text: npt.NDArray[np.uint8], connectors: IntArray, starts: IntArray, ends: IntArray
) -> int:
    """The spans `entities._CAPITALISED.finditer` finds in ASCII `text`, in order, into `starts`
    and `ends` (room for `text.size // 2 + 1`); returns how many. A run: a capital letter and
    the name characters after it, then again after spaces or tabs, and perhaps a connector
    word (`connectors`: its bytes as a little-endian number) and more spaces or tabs, for as
    long as a capital letter follows.
    """
    count = 0
    i = 0
    while i < text.size:
        if not 65 <= text[i] <= 90:
            i += 1
            continue
        start = i
        end = i + 1
        while True:
            while end < text.size and _in_name(text[end]):
                end += 1
            word = _after_blanks(text, end)
            if word == end or word == text.size:
                break
            # A connector: two or three lower-case letters, then a space or a tab.
            code = np.int64(0)
            letters = word
            while letters < text.size and letters - word < 4 and 97 <= text[letters] <= 122:
                code |= np.int64(text[letters]) << (8 * (letters - word))
                letters += 1
            if letters > word and _after_blanks(text, letters) > letters:
                for connector in connectors:
                    if code == connector:
                        word = _after_blanks(text, letters)
                        break
            if word < text.size and 65 <= text[word] <= 90:
                end = word + 1
            else:
                break
        starts[count] = start
        ends[count] = end
        count += 1
        i = end
    return count
