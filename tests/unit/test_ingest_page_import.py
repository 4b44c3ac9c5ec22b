"""The page importer's reading of plain-text pages, and the sanitiser, under hypothesis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.page_import import ListedStory, Page, page_articles, parse_page, render_page
from services.ingest.domain import (
    clean_payload,
    clean_text,
    html_to_text,
    needs_cleaning,
    sanitise_html,
)
from shared.events import Article

pytestmark = pytest.mark.unit

PAGES = Path(__file__).parent.parent / "data" / "pages"


def test_a_page_becomes_the_main_story_and_each_listed_story() -> None:
    page = parse_page((PAGES / "harbour-strike.txt").read_text())

    assert page.headline == "Dock workers end three-day strike at Port Verrin"
    assert page.credit == "Harbourside Wire / Ana Lind"
    assert len(page.paragraphs) == 4
    assert page.section == "Business"
    assert page.more[0].headline == "Verrin ferry operator orders two electric vessels"
    assert page.more[1].summary.startswith("Savers will earn")

    articles = page_articles(page, "acme", None, "urn:newsflow:acme:", "https://img.example/1.jpg")
    assert len(articles) == 4
    assert {a["section"] for a in articles} == {"Business"}
    assert articles[0]["images"] == [
        {"href": "https://img.example/1.jpg", "credit": "Harbourside Wire / Ana Lind"}
    ]
    for article in articles:
        Article.model_validate(article)
        assert article["uri"].startswith("urn:newsflow:acme:page-")


def test_a_page_without_credit_keeps_its_first_paragraph() -> None:
    page = parse_page((PAGES / "no-credit.txt").read_text())

    assert page.credit is None
    assert page.paragraphs[0].startswith("Drones flew")
    assert page_articles(page, "p", "Wissenschaft", "urn:newsflow:p:")[1]["section"] == (
        "Wissenschaft"
    )


def test_a_page_without_body_is_refused() -> None:
    with pytest.raises(ValueError, match="headline"):
        parse_page("Only a headline\n")


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzÄéß0123456789", min_size=1, max_size=10)


def phrase(end: str) -> st.SearchStrategy[str]:
    return st.lists(words, min_size=1, max_size=12).map(lambda ws: " ".join(ws) + end)


pages = st.builds(
    Page,
    headline=phrase(""),
    paragraphs=st.lists(phrase("."), min_size=1, max_size=6),
    credit=st.one_of(st.none(), phrase("")),
    section=st.one_of(st.none(), words),
    more=st.lists(st.builds(ListedStory, phrase(""), phrase(".")), max_size=5),
).map(lambda p: p if p.section is not None else Page(p.headline, p.paragraphs, p.credit))


@settings(max_examples=60, deadline=None)
@given(pages)
def test_pages_read_back_as_written(page: Page) -> None:
    if page.credit is not None and len(page.paragraphs) == 1:
        paragraphs = [*page.paragraphs, "More."]
        page = Page(page.headline, paragraphs, page.credit, page.section, page.more)
    assert parse_page(render_page(page)) == page
    for article in page_articles(page, "prov", None, "urn:newsflow:prov:"):
        Article.model_validate(article)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_the_sanitiser_leaves_no_script_and_clean_text_no_controls(text: str) -> None:
    cleaned = clean_text(text)
    body = sanitise_html(f"<p>{cleaned}</p><script>{cleaned}</script><a href='javascript:x'>a</a>")

    assert "<script" not in body.lower()
    assert 'href="javascript' not in body.lower()
    assert not any(ord(c) < 32 and c not in "\t\n" for c in cleaned)
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in cleaned)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="<>&"), min_size=1), max_size=5))
def test_plain_text_keeps_every_paragraph(paragraphs: list[str]) -> None:
    body = sanitise_html("".join(f"<p>{clean_text(p)}</p>" for p in paragraphs))
    text = html_to_text(body)

    for paragraph in paragraphs:
        for word in clean_text(paragraph).split():
            assert word in text


_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_DOCUMENTS, st.booleans())
def test_a_document_passed_as_it_is_is_one_cleaning_would_not_change(
    document: Any, ascii_only: bool
) -> None:
    # ingest skips `clean_payload` for a body `needs_cleaning` passes: it must be the identity.
    text = json.dumps({"body": document}, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    decoded = json.loads(text.decode("utf-8", "surrogatepass"))
    if not needs_cleaning(text):
        assert clean_payload(decoded) == decoded


def test_bodies_with_characters_cleaning_changes_are_cleaned() -> None:
    for value in ["a\r\nb", "bell\u0007", "\b", "\f", "caf\u00e9", "del\x7f", "\ufffe"]:
        for ascii_only in (True, False):
            body = json.dumps({"headline": value}, ensure_ascii=ascii_only).encode()
            assert needs_cleaning(body), (value, ascii_only)
    assert not needs_cleaning(b'{"headline": "Dam \\"opens\\"\\n", "n": 1}')
