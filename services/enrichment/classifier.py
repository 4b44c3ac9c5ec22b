"""The section classifier: multinomial naive Bayes over log-scaled term counts, learning online.

A linear model over the same features TF-IDF uses; it trains from the labelled corpus at start-up
and from every story that arrives with a section the taxonomy knows. No I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import cast

import numpy as np
import numpy.typing as npt

from services.enrichment.kernels import compiled

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Prediction:
    section_id: str
    confidence: float


class SectionClassifier:
    """Counts per (term, section); posterior computed on demand, so learning one story is cheap."""

    def __init__(
        self, classes: Sequence[str], *, smoothing: float = 0.5, temper: float = 0.0
    ) -> None:
        if not classes:
            raise ValueError("a classifier needs at least one section")
        self.classes = tuple(classes)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._smoothing = smoothing
        self._temper = temper
        self._vocabulary: dict[str, int] = {}
        self._counts: FloatArray = np.zeros((1024, len(self.classes)))
        self._totals: FloatArray = np.zeros(len(self.classes))
        self._documents: FloatArray = np.zeros(len(self.classes))

    @property
    def trained(self) -> bool:
        return bool(self._documents.sum())

    def learn(self, counts: Mapping[str, int], section_id: str, *, weight: float = 1.0) -> None:
        """Learn one story, given how often each term occurs in it."""
        column = self._class_index.get(section_id)
        if column is None:
            return  # e.g. the fallback section: nothing to learn about a topic
        vocabulary = self._vocabulary
        # A term not seen before takes the next row.
        rows = [vocabulary.setdefault(term, len(vocabulary)) for term in counts]
        amounts = [w * weight for w in _weights(counts)]
        if len(vocabulary) > len(self._counts):
            grown = np.zeros((max(len(vocabulary), 2 * len(self._counts)), len(self.classes)))
            grown[: len(self._counts)] = self._counts
            self._counts = grown
        self._counts[rows, column] += amounts
        self._totals[column] += sum(amounts)
        self._documents[column] += 1

    def predict(self, counts: Mapping[str, int]) -> Prediction | None:
        """The likeliest section and a calibrated confidence; None when no term is known."""
        # Row -1: a term never learned, which says nothing.
        rows = np.fromiter(map(self._vocabulary.get, counts, repeat(-1)), np.int64, len(counts))
        best, confidence = _posterior(
            self._counts,
            rows,
            np.array(_weights(counts)),
            self._totals,
            self._documents,
            self._smoothing,
            len(self._vocabulary),
            self._temper,
        )
        return None if best < 0 else Prediction(self.classes[best], confidence)


@compiled
def _posterior(
    counts: FloatArray,
    rows: npt.NDArray[np.int64],
    weights: FloatArray,
    totals: FloatArray,
    documents: FloatArray,
    smoothing: float,
    vocabulary: int,
    temper: float,
) -> tuple[int, float]:
    """The likeliest section's column and its probability, given a story's terms (their rows in
    `counts`, -1 if unknown) and their weights; column -1 when no term is known or nothing learned.
    """
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


# A term's weight is 1 + log(count); counts are small, so most weights are looked up.
_WEIGHTS = {count: 1.0 + math.log(count) for count in range(1, 1024)}


def _weights(counts: Mapping[str, int]) -> list[float]:
    weights = list(map(_WEIGHTS.get, counts.values()))
    if None in weights:
        return [1.0 + math.log(c) for c in counts.values()]
    return cast(list[float], weights)


def term_counts(terms: Iterable[str]) -> dict[str, int]:
    return dict(Counter(terms))
