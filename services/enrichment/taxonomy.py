"""The section taxonomy: a versioned JSON file ops can swap (NEWSFLOW_ENRICHMENT_TAXONOMY_PATH)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from services.enrichment.text import fold


@dataclass(frozen=True)
class Section:
    id: str
    name: str
    aliases: tuple[str, ...] = ()
    iptc: tuple[str, ...] = ()
    parent: str | None = None
    keywords: tuple[str, ...] = ()  # seed vocabulary the classifier starts from


@dataclass(frozen=True)
class Taxonomy:
    version: int
    sections: tuple[Section, ...]
    fallback: str

    @classmethod
    def from_file(cls, path: Path) -> Taxonomy:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Taxonomy:
        entries = raw["sections"]
        if not isinstance(entries, list):
            raise ValueError("taxonomy `sections` must be a list")
        sections = tuple(
            Section(
                id=str(s["id"]),
                name=str(s["name"]),
                aliases=tuple(s.get("aliases", ())),
                iptc=tuple(s.get("iptc", ())),
                parent=s.get("parent"),
                keywords=tuple(s.get("keywords", ())),
            )
            for s in entries
        )
        version = raw.get("version", 1)
        taxonomy = cls(int(str(version)), sections, str(raw.get("fallback", "general")))
        taxonomy.section(taxonomy.fallback)  # a taxonomy without its fallback is a config error
        ids = [s.id for s in sections]
        if len(set(ids)) != len(ids):
            raise ValueError("taxonomy section ids must be unique")
        for section in sections:
            if section.parent is not None:
                taxonomy.section(section.parent)
        return taxonomy

    def section(self, section_id: str) -> Section:
        found = self._by_id.get(section_id)
        if found is None:
            raise KeyError(f"taxonomy has no section {section_id!r}")
        return found

    def by_hint(self, hint: str) -> Section | None:
        """The section a provider's label names: id, name, alias or IPTC code, any case/accents."""
        hints = self._by_hint
        if hint in hints:  # providers use a handful of labels: each is read once
            return hints[hint]
        if len(hints) >= _HINTS_KEPT:
            hints.clear()
        found = hints[hint] = self._by_label.get(_label(hint))
        return found

    @cached_property
    def _by_id(self) -> dict[str, Section]:
        by_id: dict[str, Section] = {}
        for section in self.sections:
            by_id.setdefault(section.id, section)  # the first, as a scan in order finds
        return by_id

    @cached_property
    def _by_hint(self) -> dict[str, Section | None]:
        return {}

    @cached_property
    def _by_label(self) -> dict[str, Section]:
        labels: dict[str, Section] = {}
        for section in self.sections:
            for name in (section.id, section.name, *section.aliases, *section.iptc):
                labels.setdefault(_label(name), section)
        return labels

    @property
    def classes(self) -> tuple[str, ...]:
        """Sections a classifier may choose: all but the fallback."""
        return tuple(s.id for s in self.sections if s.id != self.fallback)


_HINTS_KEPT = 10_000


def _label(text: str) -> str:
    return " ".join(fold(text).replace("&", " and ").replace("-", " ").replace("_", " ").split())
