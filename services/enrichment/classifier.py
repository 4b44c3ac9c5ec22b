"""The section classifier: multinomial naive Bayes over log-scaled term counts, learning online.

A linear model over the same features TF-IDF uses; it trains from the labelled corpus at start-up
and from every story that arrives with a section the taxonomy knows. No I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.enrichment.kernels import compiled

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Prediction:
    section_id: str
    confidence: float


class TermIds(Protocol):
    """Numbers terms: the classifier keeps its counts by these ids, so a caller that already
    holds a story's term ids (the index does) learns and predicts without looking up a string.
    """

    def term_ids(self, terms: Iterable[str], *, create: bool) -> IntArray:
        """Each term's id, in order; -1 for a term not yet numbered unless `create`."""
        ...


class OwnTermIds:
    """Terms numbered by the classifier itself, for one used on its own."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def term_ids(self, terms: Iterable[str], *, create: bool) -> IntArray:
        ids = self._ids
        if create:
            numbered = [ids.setdefault(term, len(ids)) for term in terms]
        else:
            numbered = [ids.get(term, -1) for term in terms]
        return np.array(numbered, dtype=np.int64)


class SectionClassifier:
    """Counts per (term, section); posterior computed on demand, so learning one story is cheap."""

    def __init__(
        self,
        classes: Sequence[str],
        *,
        smoothing: float = 0.5,
        temper: float = 0.0,
        terms: TermIds | None = None,
    ) -> None:
        """`terms` numbers the terms (by default the classifier does); learning and predicting
        by id (`learn_ids`, `predict_ids`) take ids from it.
        """
        if not classes:
            raise ValueError("a classifier needs at least one section")
        self.classes = tuple(classes)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._smoothing = smoothing
        self._temper = temper
        self._terms: TermIds = terms if terms is not None else OwnTermIds()
        # Per term id: its count in each section, and whether it was ever learned.
        self._counts: FloatArray = np.zeros((1024, len(self.classes)))
        self._learned: BoolArray = np.zeros(1024, dtype=bool)
        self._vocabulary = 0  # terms learned
        self._totals: FloatArray = np.zeros(len(self.classes))
        self._documents: FloatArray = np.zeros(len(self.classes))

    @property
    def trained(self) -> bool:
        return bool(self._documents.sum())

    def learn(self, counts: Mapping[str, int], section_id: str, *, weight: float = 1.0) -> None:
        """Learn one story, given how often each term occurs in it."""
        if section_id not in self._class_index:
            return
        ids = self._terms.term_ids(counts, create=True)
        amounts = np.fromiter(counts.values(), np.float64, len(counts))
        self.learn_ids(ids, amounts, section_id, weight=weight)

    def learn_ids(
        self, ids: IntArray, counts: FloatArray, section_id: str, *, weight: float = 1.0
    ) -> None:
        """Learn one story from its terms' ids (distinct, from `terms`) and counts."""
        column = self._class_index.get(section_id)
        if column is None:
            return  # e.g. the fallback section: nothing to learn about a topic
        learn = (ids, counts, _WEIGHTS, weight, column, self._totals)
        added = _learn(self._counts, self._learned, *learn)
        if added == _GROW:
            size = max(int(ids.max()) + 1, 2 * len(self._learned))
            grown = np.zeros((size, len(self.classes)))
            grown[: len(self._counts)] = self._counts
            self._counts = grown
            self._learned = np.concatenate(
                [self._learned, np.zeros(size - len(self._learned), dtype=bool)]
            )
            added = _learn(self._counts, self._learned, *learn)
        if added == _UNUSUAL_COUNTS:  # a count below 1 or past the table: weights computed here
            amounts = _weights(counts) * weight
            added = _learn(
                self._counts, self._learned, ids, amounts, _AS_GIVEN, 1.0, column, self._totals
            )
        self._vocabulary += added
        self._documents[column] += 1

    def predict(self, counts: Mapping[str, int]) -> Prediction | None:
        """The likeliest section and a calibrated confidence; None when no term is known."""
        ids = self._terms.term_ids(counts, create=False)
        return self.predict_ids(ids, np.fromiter(counts.values(), np.float64, len(counts)))

    def predict_ids(self, ids: IntArray, counts: FloatArray) -> Prediction | None:
        """`predict` from the story's terms' ids (-1: a term never numbered) and counts."""
        best, confidence = _posterior(
            self._counts,
            self._learned,
            ids,
            _weights(counts),
            self._totals,
            self._documents,
            self._smoothing,
            self._vocabulary,
            self._temper,
        )
        return None if best < 0 else Prediction(self.classes[best], confidence)


@compiled
def _posterior(
    counts: FloatArray,
    learned: BoolArray,
    ids: IntArray,
    weights: FloatArray,
    totals: FloatArray,
    documents: FloatArray,
    smoothing: float,
    vocabulary: int,
    temper: float,
) -> tuple[int, float]:
    """The likeliest section's column and its probability, given a story's terms (their rows in
    `counts`; a term never learned says nothing) and their weights; column -1 when no term is
    known or nothing learned.
    """
    rows = np.empty(ids.shape[0], dtype=np.int64)
    for i in range(ids.shape[0]):
        term = ids[i]
        rows[i] = term if 0 <= term < learned.shape[0] and learned[term] else -1
    sections = totals.shape[0]
    learned = documents.sum()
    known = rows >= 0
    if learned == 0 or not known.any():
        return -1, 0.0
    # Naive Bayes is overconfident on long texts (it multiplies dependent evidence); `temper`
    # > 0 divides by a power of the evidence size to soften that.
    scale = max(1.0, weights[known].sum() ** temper)
    log_posterior = np.empty(sections)
    for k in range(sections):
        if documents[k] == 0:
            # A section nothing was learned about has flat likelihoods that would beat evidence.
            log_posterior[k] = -np.inf
            continue
        denominator = np.log(totals[k] + smoothing * vocabulary)
        evidence = 0.0
        for i in range(rows.shape[0]):
            if rows[i] >= 0:
                evidence += weights[i] * (np.log(counts[rows[i], k] + smoothing) - denominator)
        prior = np.log((documents[k] + 1.0) / (learned + sections))
        log_posterior[k] = (prior + evidence) / scale
    probabilities = np.exp(log_posterior - log_posterior.max())
    probabilities /= probabilities.sum()
    best = int(np.argmax(probabilities))
    return best, float(probabilities[best])


# A term's weight is 1 + log(count); counts are small, so most weights are looked up (the same
# values as `math.log` gives, which numpy's vectorised log need not be to the last bit).
_WEIGHTS = np.array([0.0] + [1.0 + math.log(count) for count in range(1, 1024)])


_AS_GIVEN = np.empty(0)  # `_learn` with the weights themselves given, not counts
_GROW, _UNUSUAL_COUNTS = -1, -2


@compiled
def _learn(
    counts: FloatArray,
    learned: BoolArray,
    ids: IntArray,
    amounts: FloatArray,
    table: FloatArray,
    weight: float,
    column: int,
    totals: FloatArray,
) -> int:
    """Add one story's term weights (`table[count] * weight`, or `amounts` themselves when
    `table` is empty) to `column` of `counts` at rows `ids` (distinct), and their sum, added in
    order, to `totals[column]`; returns how many of the terms were never learned before. Changes
    nothing and returns `_GROW` when an id is past the arrays, `_UNUSUAL_COUNTS` when a count is
    below 1 or past the table.
    """
    for i in range(ids.size):  # every id first: a grown model is then learned as any other
        if ids[i] >= learned.size:
            return _GROW
    for i in range(ids.size if table.size else 0):
        if not 1 <= amounts[i] < table.size:
            return _UNUSUAL_COUNTS
    added = 0
    total = 0.0
    for i in range(ids.size):
        amount = table[np.int64(amounts[i])] * weight if table.size else amounts[i]
        term = ids[i]
        if not learned[term]:
            learned[term] = True
            added += 1
        counts[term, column] += amount
        total += amount
    totals[column] += total
    return added


def _weights(counts: FloatArray) -> FloatArray:
    if counts.size and (counts.min() < 1 or counts.max() >= len(_WEIGHTS)):
        return np.array([1.0 + math.log(c) for c in counts.tolist()])
    return _WEIGHTS[counts.astype(np.int64)]


def term_counts(terms: Iterable[str]) -> dict[str, int]:
    return dict(Counter(terms))
