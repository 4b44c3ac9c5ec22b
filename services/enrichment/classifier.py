"""The section classifier: multinomial naive Bayes over log-scaled term counts, learning online.

A linear model over the same features TF-IDF uses; it trains from the labelled corpus at start-up
and from every story that arrives with a section the taxonomy knows. No I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
        rows = []
        amounts = []
        for term, count in _features(counts).items():
            row = self._vocabulary.get(term)
            if row is None:
                row = self._vocabulary[term] = len(self._vocabulary)
            rows.append(row)
            amounts.append(count * weight)
        if len(self._vocabulary) > len(self._counts):
            grown = np.zeros((max(len(self._vocabulary), 2 * len(self._counts)), len(self.classes)))
            grown[: len(self._counts)] = self._counts
            self._counts = grown
        self._counts[rows, column] += amounts
        self._totals[column] += sum(amounts)
        self._documents[column] += 1

    def predict(self, counts: Mapping[str, int]) -> Prediction | None:
        """The likeliest section and a calibrated confidence; None when no term is known."""
        features = _features(counts)
        known = [(self._vocabulary[t], w) for t, w in features.items() if t in self._vocabulary]
        if not known or not self.trained:
            return None
        rows = np.fromiter((r for r, _ in known), dtype=np.int64, count=len(known))
        weights = np.fromiter((w for _, w in known), dtype=np.float64, count=len(known))
        vocabulary = len(self._vocabulary)
        likelihood = np.log(self._counts[rows] + self._smoothing) - np.log(
            self._totals + self._smoothing * vocabulary
        )
        prior = np.log((self._documents + 1.0) / (self._documents.sum() + len(self.classes)))
        log_posterior = prior + weights @ likelihood
        # A section nothing was learned about has flat likelihoods that would beat real evidence.
        log_posterior[self._documents == 0] = -np.inf
        # Naive Bayes is overconfident on long texts (it multiplies dependent evidence); `temper`
        # > 0 divides by a power of the evidence size to soften that.
        scaled = log_posterior / max(1.0, float(weights.sum()) ** self._temper)
        probabilities = np.exp(scaled - scaled.max())
        probabilities /= probabilities.sum()
        best = int(np.argmax(probabilities))
        return Prediction(self.classes[best], float(probabilities[best]))


def _features(counts: Mapping[str, int]) -> dict[str, float]:
    return {t: 1.0 + math.log(c) for t, c in counts.items()}


def term_counts(terms: Iterable[str]) -> dict[str, int]:
    return dict(Counter(terms))
