"""A realistic story stream for the benchmark: 3 KB articles, mixed sections, corrections, kills."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Literal

# Provider labels (the hint) with the taxonomy id enrichment files them under.
SECTIONS: dict[str, str] = {
    "International": "world",
    "Politics": "politics",
    "Business": "business",
    "Technology": "technology",
    "Science": "science",
    "Health": "health",
    "Sport": "sport",
    "Culture": "culture",
}

_VOCAB: dict[str, list[str]] = {
    "world": ["ceasefire", "embassy", "diplomat", "border", "refugees", "sanctions", "troops"],
    "politics": ["parliament", "coalition", "ballot", "senate", "mayor", "opposition", "bill"],
    "business": ["shares", "revenue", "investors", "inflation", "earnings", "merger", "tariffs"],
    "technology": ["software", "startup", "semiconductor", "smartphone", "platform", "robot"],
    "science": ["researchers", "telescope", "experiment", "species", "laboratory", "climate"],
    "health": ["hospital", "vaccine", "patients", "doctors", "clinic", "nurses", "treatment"],
    "sport": ["match", "season", "coach", "striker", "league", "goalkeeper", "tournament"],
    "culture": ["festival", "novel", "gallery", "orchestra", "premiere", "exhibition", "film"],
}
_FILLER_TEXT = (
    "the city officials said on Tuesday that the plan would take effect next month after a long "
    "debate in which residents raised questions about costs and timing while others welcomed it"
)
_FILLER = _FILLER_TEXT.split(" ")

_SYLLABLES = ["ka", "ro", "mi", "ten", "vel", "dor", "sa", "lin", "ost", "mar", "qu", "bre", "ni"]
_NAME_RNG = random.Random(1)
# Proper nouns (people, places, firms): a long tail, so stories share few rare terms, as in news.
NAMES = ["".join(_NAME_RNG.choice(_SYLLABLES) for _ in range(3)).capitalize() for _ in range(5000)]

Kind = Literal["publish", "correct", "withdraw"]


@dataclass(frozen=True)
class Item:
    """One request of the stream; `token` ties the webhooks it causes back to its send time."""

    kind: Kind
    uri: str
    section_id: str
    token: int
    body: bytes


def _paragraphs(rng: random.Random, section_id: str, size: int) -> str:
    words = _VOCAB[section_id]
    names = [NAMES[min(int(rng.paretovariate(0.6)) - 1, len(NAMES) - 1)] for _ in range(8)]
    out: list[str] = []
    length = 0
    while length < size:
        sentence = " ".join(
            rng.choice(_FILLER if roll < 0.7 else words if roll < 0.85 else names)
            for roll in (rng.random() for _ in range(18))
        )
        paragraph = f"<p>{sentence.capitalize()}.</p>"
        out.append(paragraph)
        length += len(paragraph)
    return "".join(out)


def article(
    rng: random.Random, uri: str, label: str, version: int, token: int
) -> dict[str, object]:
    section_id = SECTIONS[label]
    words = _VOCAB[section_id]
    return {
        "uri": uri,
        "version": version,
        "headline": f"{rng.choice(words).capitalize()} {rng.choice(_FILLER)} "
        f"{rng.choice(words)} as {rng.choice(words)} {rng.choice(_FILLER)}",
        "summary": " ".join(rng.choice(_FILLER + words) for _ in range(30)),
        "body_html": _paragraphs(rng, section_id, 2550),
        "byline": "Bench Desk",
        "provider": "bench",
        "section": label,
        "language": "en",
        "urgency": rng.randint(2, 6),
        "keywords": [f"bench-{token}", rng.choice(words)],
    }


def stream(count: int, run: str, seed: int = 8) -> list[Item]:
    """`count` requests: ~89% new stories, 10% corrections and 1% withdrawals of earlier ones.

    A correction or withdrawal follows its original by at least 300 requests, so the original has
    been acknowledged before it is sent even with many requests in flight.
    """
    rng = random.Random(seed)
    labels = list(SECTIONS)
    items: list[Item] = []
    published: list[tuple[str, str, int]] = []  # uri, label, version
    withdrawn: set[str] = set()
    for token in range(count):
        roll = rng.random()
        eligible = len(published) - 300
        if roll >= 0.89 and eligible > 0:
            index = rng.randrange(eligible)
            uri, label, version = published[index]
            if uri not in withdrawn:
                if roll >= 0.99:
                    withdrawn.add(uri)
                    body = json.dumps({"reason": "legal request"}).encode()
                    items.append(Item("withdraw", uri, SECTIONS[label], token, body))
                    continue
                published[index] = (uri, label, version + 1)
                body = json.dumps(article(rng, uri, label, version + 1, token)).encode()
                items.append(Item("correct", uri, SECTIONS[label], token, body))
                continue
        label = rng.choice(labels)
        uri = f"urn:newsflow:bench:{run}:{token}"
        published.append((uri, label, 1))
        body = json.dumps(article(rng, uri, label, 1, token)).encode()
        items.append(Item("publish", uri, SECTIONS[label], token, body))
    return items
