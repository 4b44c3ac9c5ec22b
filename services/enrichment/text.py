"""Text as enrichment reads it: markup stripped, words normalised, stopwords dropped. No I/O."""

from __future__ import annotations

import html
import re
import string
import unicodedata
from dataclasses import dataclass

from shared.events import Article

WORD = re.compile(r"[^\W\d_][\w'\u2019-]*[^\W_]|[^\W\d_]", re.UNICODE)
# In ASCII text (most news copy) WORD finds the runs of these characters, each trimmed to begin
# with a letter and end with a letter or digit: a byte translation and `split` find the runs.
_ASCII_IN_WORDS = frozenset(string.ascii_letters + string.digits + "_'-")
_ASCII_SPACED = bytes(c if chr(c) in _ASCII_IN_WORDS else ord(" ") for c in range(256))
_NOT_FIRST = string.digits + "_'-"
_NOT_LAST = "_'-"
# Each character's kind: letter "a", digit "0", "-" for "_'-", else space. A run needs trimming
# only where a space is followed by "0" or "-", or preceded by "-".
_KINDS = bytes(
    ord("a" if chr(c) in string.ascii_letters else "0" if chr(c) in string.digits else "-")
    if chr(c) in _ASCII_IN_WORDS
    else ord(" ")
    for c in range(256)
)
TAG = re.compile(r"<[^>]+>")
_STOPWORDS = """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours out over own said same says she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours monday tuesday wednesday thursday friday saturday sunday new told say year
years week weeks day days one two three last first people per cent percent may might must shall
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def plain_text(body_html: str) -> str:
    return html.unescape(TAG.sub(" ", body_html))


def fold(text: str) -> str:
    """Case- and accent-insensitive form: `Économie` and `economie` are the same label."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _stem(word: str) -> str:
    # Plural and possessive endings only: enough for "talks"/"talk", cheap and predictable.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalise(word: str) -> str:
    """One spelling of a word: typographic apostrophes straightened, possessive dropped."""
    if "'" in word or "\u2019" in word:
        word = word.replace("\u2019", "'").removesuffix("'s")
    return word


def _term(word: str) -> str:
    """The counted form of a lower-cased word; "" for stopwords and short words."""
    word = normalise(word)
    return _stem(word) if len(word) > 2 and word not in STOPWORDS else ""


class _Terms(dict[str, str]):
    """Each lower-cased word's `_term`, worked out the first time the word is looked up."""

    def __missing__(self, word: str) -> str:
        term = self[word] = _term(word)
        return term


# Words repeat across stories: the cache turns tokenising into one dict lookup per word.
_TERMS = _Terms()
_TERMS_MAX = 500_000


def _terms_of(lowered_words: list[str]) -> list[str]:
    if len(_TERMS) > _TERMS_MAX:
        _TERMS.clear()
    # One C-level pass over the cache (only words never seen before reach `__missing__`), and
    # one to drop the stopwords' and short words' "".
    return list(filter(None, map(_TERMS.__getitem__, lowered_words)))


def words_of(text: str) -> list[str]:
    """`WORD.findall(text)`, quicker when the text is ASCII."""
    if not text.isascii():
        return WORD.findall(text)
    raw = text.encode()
    runs = raw.translate(_ASCII_SPACED).decode().split()
    kinds = b" " + raw.translate(_KINDS) + b" "
    # A byte is found many times quicker than a pair of bytes: the pairs are looked for only
    # in text with a digit, or an "_'-", at all.
    if (b"0" in kinds and b" 0" in kinds) or (b"-" in kinds and (b" -" in kinds or b"- " in kinds)):
        return [word for run in runs if (word := run.lstrip(_NOT_FIRST).rstrip(_NOT_LAST))]
    return runs


def tokens(text: str) -> list[str]:
    """Content words, stemmed: what the classifier and the related-story index count."""
    return _terms_of(words_of(text.lower()))


@dataclass(frozen=True)
class ReadStory:
    """One story's text read once: the index, the entities and the shingles all start from it."""

    terms: list[str]  # `tokens(story_text(article))`
    words: list[str]  # every word of `full_text(article)`, lower-cased, not yet `normalise`d
    text: str  # `full_text(article)`


def read_story(article: Article) -> ReadStory:
    """Tokenise a story once: the same terms as `tokens(story_text(...))` and the words of
    `full_text(...)`, without reading the body twice.
    """
    head_parts = [article.headline, article.subheadline or "", article.summary or ""]
    body = plain_text(article.body_html)
    head_words = words_of(" ".join(head_parts).lower())
    body_words = words_of(body.lower())
    head_terms = _terms_of(head_words)
    terms = head_terms + head_terms + _terms_of(body_words)
    if article.keywords:
        terms += _terms_of(words_of(" ".join(article.keywords).lower()))
    text = "\n".join(p for p in [*head_parts, body] if p)
    return ReadStory(terms, head_words + body_words, text)


def story_text(article: Article) -> str:
    # The headline and summary say what a story is about; weight them above the body.
    head = f"{article.headline} {article.subheadline or ''} {article.summary or ''}"
    return f"{head} {head} {plain_text(article.body_html)} {' '.join(article.keywords)}"


def full_text(article: Article) -> str:
    """Headline, summary and body once each: what entities and shingles are read from."""
    parts = [article.headline, article.subheadline or "", article.summary or ""]
    parts.append(plain_text(article.body_html))
    return "\n".join(p for p in parts if p)
