"""People, places and organisations from a gazetteer and capitalisation rules. No I/O, no model.

Rules, in order: a known place or organisation (gazetteer, demonyms map to their country);
a capitalised name ending in an organisation word ("Nordbank", "Arden University", "Ministry of
Health"); a name after a title ("President", "coach", "Dr") or two-to-three capitalised words
that are neither is a person. A surname alone is folded into the full name seen in the same story.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from services.enrichment import kernels


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


COUNTRIES = """
Afghanistan Albania Algeria Angola Argentina Armenia Australia Austria Azerbaijan Bahrain
Bangladesh Belarus Belgium Bolivia Bosnia Botswana Brazil Bulgaria Cambodia Cameroon Canada
Chad Chile China Colombia Congo Croatia Cuba Cyprus Czechia Denmark Ecuador Egypt Eritrea
Estonia Ethiopia Finland France Gabon Gaza Georgia Germany Ghana Greece Guatemala Guinea Haiti
Honduras Hungary Iceland India Indonesia Iran Iraq Ireland Israel Italy Jamaica Japan Jordan
Kazakhstan Kenya Kosovo Kuwait Laos Latvia Lebanon Liberia Libya Lithuania Luxembourg
Madagascar Malawi Malaysia Mali Malta Mexico Moldova Mongolia Montenegro Morocco Mozambique
Myanmar Namibia Nepal Netherlands Nicaragua Niger Nigeria Norway Oman Pakistan Palestine Panama
Paraguay Peru Philippines Poland Portugal Qatar Romania Russia Rwanda Senegal Serbia Singapore
Slovakia Slovenia Somalia Spain Sudan Sweden Switzerland Syria Taiwan Tajikistan Tanzania
Thailand Tunisia Turkey Uganda Ukraine Uruguay Uzbekistan Venezuela Vietnam Yemen Zambia
Zimbabwe Europe Africa Asia America Arctic Antarctica Sinai Crimea Kashmir
"""
MULTIWORD_PLACES = (
    "United States",
    "United Kingdom",
    "South Africa",
    "South Korea",
    "North Korea",
    "New Zealand",
    "Saudi Arabia",
    "Sri Lanka",
    "Costa Rica",
    "Gaza Strip",
    "West Bank",
    "Hong Kong",
    "Ivory Coast",
    "Middle East",
    "Latin America",
    "Sao Paulo",
    "New York",
    "Los Angeles",
    "Rio de Janeiro",
    "Buenos Aires",
    "Tel Aviv",
    "New Delhi",
    "Cape Town",
)
CITIES = """
London Paris Berlin Madrid Rome Lisbon Vienna Brussels Amsterdam Geneva Zurich Warsaw Prague
Budapest Athens Istanbul Ankara Moscow Kyiv Kiev Minsk Beijing Shanghai Tokyo Seoul Delhi
Mumbai Karachi Jakarta Manila Bangkok Hanoi Sydney Melbourne Cairo Lagos Nairobi Johannesburg
Tehran Baghdad Damascus Beirut Jerusalem Rafah Khan Riyadh Dubai Doha Washington Chicago
Toronto Ottawa Mexico Havana Bogota Lima Santiago Caracas Brasilia Borneo Dublin Edinburgh Oslo
Stockholm Copenhagen Helsinki
"""
DEMONYMS = {
    "israeli": "Israel",
    "palestinian": "Palestine",
    "gazan": "Gaza",
    "iranian": "Iran",
    "american": "United States",
    "british": "United Kingdom",
    "chinese": "China",
    "russian": "Russia",
    "ukrainian": "Ukraine",
    "french": "France",
    "german": "Germany",
    "indian": "India",
    "japanese": "Japan",
    "taiwanese": "Taiwan",
    "egyptian": "Egypt",
    "mexican": "Mexico",
    "brazilian": "Brazil",
    "turkish": "Turkey",
    "syrian": "Syria",
    "lebanese": "Lebanon",
    "saudi": "Saudi Arabia",
    "korean": "South Korea",
    "kenyan": "Kenya",
    "nigerian": "Nigeria",
    "spanish": "Spain",
    "italian": "Italy",
    "polish": "Poland",
    "south african": "South Africa",
    "australian": "Australia",
    "canadian": "Canada",
}
ALIASES = {"US": "United States", "USA": "United States", "UK": "United Kingdom"}
ORGANISATIONS = """
NATO UN EU WHO IMF OPEC UNICEF UNESCO FIFA UEFA Hamas Hezbollah Taliban Interpol Europol Axios
Reuters AFP Congress Pentagon Kremlin Parliament Senate Google Apple Microsoft Amazon Meta Tesla
"""
MULTIWORD_ORGANISATIONS = (
    "United Nations",
    "European Union",
    "African Union",
    "World Bank",
    "Red Cross",
    "Security Council",
    "Supreme Court",
    "White House",
    "World Health Organization",
    "International Monetary Fund",
    "Social Democrats",
    "Liberal Union",
)
ORGANISATION_WORDS = _names(
    """
    Bank Savings University College School Ministry Department Council Party Union Court Company
    Corporation Corp Inc Ltd Group Agency Authority Commission Committee Hospital Museum
    Laboratory Institute Foundation Association Federation League Airlines Airways United City FC
    Club Board Office Service Army Navy Police Democrats Republicans Parliament Assembly Trust
    Fund Force Forces Guard Organisation Organization Network Times Post News Labs Motors Studio
    """
)
TITLES = _names(
    """
    president prime minister secretary chancellor governor mayor senator general dr doctor mr mrs
    ms professor judge coach striker director author singer captain chief executive leader king
    queen prince princess pope ayatollah sheikh ambassador envoy spokesman spokeswoman player
    champion runner chairman chairwoman founder officer commander
    """
)
CONNECTORS = frozenset({"of", "de", "du", "van", "von", "der", "al", "bin", "la", "le"})
# Words of a role in front of a name: "Army Chief of Staff Herzi Halevy", "Defence Minister Yoav".
ROLE_WORDS = TITLES | _names(
    "pm staff state defence defense foreign finance interior health justice"
)
ROLE_WORDS |= _names("vice deputy head")
LEADING_NOISE = _names(
    """
    The A An In On At For From By With After Before As But And Or If When While Despite Under Over
    This That These Those His Her Their Its Our We They He She It There Here Former Ex New Top
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April June July
    August September October November December Mr Mrs Ms Dr Sir Dame Millions Thousands Hundreds
    """
)

_PLACES = {p.casefold(): p for p in [*COUNTRIES.split(), *CITIES.split(), *MULTIWORD_PLACES]}
_ALIAS_KEYS = frozenset(a.casefold() for a in ALIASES)
_ORGS = {o.casefold(): o for o in [*ORGANISATIONS.split(), *MULTIWORD_ORGANISATIONS]}
_CAPITALISED = re.compile(
    r"(?:[A-Z][\w\u00C0-\u024F'\u2019-]*"
    r"(?:[ \t]+(?:(?:of|de|du|van|von|der|al|bin|la|le)[ \t]+)?[A-Z][\w\u00C0-\u024F'\u2019-]*)*)"
)
_SENTENCE_START = re.compile(r"(?:^|[.!?:\"\u201c]\s+|\n\s*)$")


@dataclass(frozen=True)
class FoundEntities:
    people: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    organisations: tuple[str, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        """One set to compare stories by: `p:`/`l:`/`o:` plus the lower-cased name."""
        return frozenset(
            [
                *(f"p:{p.casefold()}" for p in self.people),
                *(f"l:{p.casefold()}" for p in self.places),
                *(f"o:{o.casefold()}" for o in self.organisations),
            ]
        )


def extract_entities(text: str) -> FoundEntities:
    people: dict[str, None] = {}
    places: dict[str, None] = {}
    orgs: dict[str, None] = {}
    found = {"place": places, "org": orgs, "person": people}
    if len(_READINGS) > _READINGS_MAX or len(_SENTENCE_STARTS) > _READINGS_MAX:
        _READINGS.clear()
        _SENTENCE_STARTS.clear()
        _NAMES_A_DEMONYM.clear()
    names_a_demonym = False
    for start, end in _capitalised_spans(text):
        name = text[start:end]
        # Any demonym the search below finds (one or two capitalised words) lies whole in one
        # of these runs: the runs tell whether to search, sooner than a search of the text.
        in_run = _NAMES_A_DEMONYM.get(name)
        if in_run is None:
            in_run = _NAMES_A_DEMONYM[name] = bool(_DEMONYM_MENTION.search(name))
        names_a_demonym = names_a_demonym or in_run
        before = text[start - 40 : start] if start > 40 else text[:start]  # (`max` is slower)
        # Whether the name opens a sentence shows in the four characters before it.
        opening = before[-4:]
        at_start = _SENTENCE_STARTS.get(opening)
        if at_start is None:
            at_start = _SENTENCE_STARTS[opening] = bool(_SENTENCE_START.search(opening))
        previous = before.rsplit(None, 1)
        key = (name, bool(previous) and previous[-1].casefold() in TITLES, at_start)
        reading = _READINGS.get(key)
        if reading is None:
            reading = _READINGS[key] = _read_name(*key)
        for kind, canonical in reading:
            found[kind][canonical] = None
    # Most stories name no demonym: that spares reading every capitalised word again.
    if names_a_demonym:
        for word in _DEMONYM_CANDIDATE.findall(text):
            if (country := DEMONYMS.get(word.casefold())) is not None:
                places[country] = None
    return FoundEntities(tuple(_fold_surnames(people)), tuple(places), tuple(orgs))


# Names recur from story to story: each (name, after a title, at a sentence start) is read once,
# and each four characters before a name are looked at once.
_READINGS: dict[tuple[str, bool, bool], tuple[tuple[str, str], ...]] = {}
_READINGS_MAX = 200_000
_SENTENCE_STARTS: dict[str, bool] = {}
_NAMES_A_DEMONYM: dict[str, bool] = {}  # capitalised run: whether a demonym is written in it
_DEMONYM_CANDIDATE = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?\b")
# A candidate is a demonym only when written as one: "Israeli", "South African".
_DEMONYM_MENTION = re.compile("|".join(name.title() for name in DEMONYMS))


# `_CAPITALISED`'s connectors as `kernels.capitalised_runs` looks for them.
_CONNECTOR_CODES = np.array(
    [int.from_bytes(word.encode(), "little") for word in sorted(CONNECTORS)], dtype=np.int64
)


def _capitalised_spans(text: str) -> Iterable[tuple[int, int]]:
    """Where `_CAPITALISED` matches `text`; in ASCII text (most news copy) a compiled loop
    finds them several times quicker than the pattern.
    """
    if not text.isascii():
        return [match.span() for match in _CAPITALISED.finditer(text)]
    starts = np.empty(len(text) // 2 + 1, dtype=np.int64)
    ends = np.empty_like(starts)
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    count = kernels.capitalised_runs(data, _CONNECTOR_CODES, starts, ends)
    return zip(starts[:count].tolist(), ends[:count].tolist(), strict=True)


def _read_name(found: str, after_title: bool, at_start: bool) -> tuple[tuple[str, str], ...]:
    """What a capitalised run is: (kind, canonical name) for each entity in it."""
    readings = []
    for part in _split_on_gazetteer(_clean(found)):
        kind, canonical = _classify(part, after_title, at_start)
        if kind != "none":
            readings.append((kind, canonical))
    return tuple(readings)


def _clean(name: str) -> str:
    name = re.sub(r"['\u2019]s$", "", name.strip(" .-'\u2019"))
    parts = name.split()
    while parts and parts[0] in LEADING_NOISE:
        parts = parts[1:]
    return " ".join(parts)


def _split_on_gazetteer(name: str) -> list[str]:
    """`Israeli PM Benjamin Netanyahu` -> the known and unknown pieces, gazetteer first."""
    if not name:
        return []
    parts = name.split()
    if len(parts) <= 1 or _known(name.casefold()):
        return [name]
    for size in range(len(parts) - 1, 0, -1):
        for start in range(len(parts) - size + 1):
            piece = " ".join(parts[start : start + size])
            if _known(piece.casefold()):
                before = " ".join(parts[:start])
                after = " ".join(parts[start + size :])
                return [*_split_on_gazetteer(before), piece, *_split_on_gazetteer(after)]
    return [name]


def _known(folded: str) -> bool:
    return folded in _PLACES or folded in _ORGS or folded in DEMONYMS or folded in _ALIAS_KEYS


def _after_role(parts: list[str]) -> list[str] | None:
    """The name after the last role word, if a role precedes it."""
    roles = [i for i, p in enumerate(parts) if p.casefold() in ROLE_WORDS]
    if not roles:
        return None
    rest = parts[roles[-1] + 1 :]
    return rest if 1 <= len([p for p in rest if p not in CONNECTORS]) <= 3 else []


def _classify(name: str, after_title: bool, at_start: bool) -> tuple[str, str]:
    """`after_title`: the word before the name is a title ("coach", "President")."""
    folded = name.casefold()
    if not name or folded in {"i"}:
        return "none", name
    if folded.upper() in ALIASES:
        return "place", ALIASES[folded.upper()]
    if folded in _PLACES:
        return "place", _PLACES[folded]
    if folded in _ORGS:
        return "org", _ORGS[folded]
    if folded in DEMONYMS:
        return "place", DEMONYMS[folded]
    parts = name.split()
    if (rest := _after_role(parts)) is not None:
        return ("person", " ".join(rest)) if rest else ("none", name)
    if any(p in ORGANISATION_WORDS for p in parts) or parts[-1].endswith(("bank", "corp")):
        return "org", name
    if name.isupper() and 2 <= len(name) <= 6:
        return "org", name
    real_parts = [p for p in parts if p not in CONNECTORS]
    if after_title and len(real_parts) <= 3:
        return "person", name
    if 2 <= len(real_parts) <= 3 and not (at_start and len(real_parts) == 1):
        return "person", name
    return "none", name


def _fold_surnames(people: dict[str, None]) -> list[str]:
    full = [p for p in people if len(p.split()) > 1]
    kept: list[str] = []
    for person in people:
        if len(person.split()) == 1 and any(f.split()[-1] == person for f in full):
            continue
        kept.append(person)
    return kept
