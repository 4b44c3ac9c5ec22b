"""Documents generated from the code must match what is committed, and be well-formed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ops.docs import asyncapi_yaml, configuration_markdown
from shared.asyncapi import document
from shared.http import add_health_routes

pytestmark = pytest.mark.unit

DOCS = Path(__file__).parents[2] / "docs"
REGENERATE = "run `newsflow docs write` (or `.venv/bin/newsflow docs write`) and commit"


def test_asyncapi_yaml_matches_the_code() -> None:
    assert (DOCS / "asyncapi.yaml").read_text(encoding="utf-8") == asyncapi_yaml(), REGENERATE


def test_configuration_md_matches_the_settings() -> None:
    assert (DOCS / "configuration.md").read_text(encoding="utf-8") == configuration_markdown(), (
        REGENERATE
    )


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_asyncapi_document_is_well_formed() -> None:
    doc = yaml.safe_load(asyncapi_yaml())
    assert doc["asyncapi"] == "3.0.0"
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
    addresses = {c["address"]: c for c in doc["channels"].values()}
    enriched = addresses["stories.enriched.v1"]
    assert enriched["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]
    assert all(c["bindings"]["kafka"]["partitions"] >= 6 for c in addresses.values())
    groups = {
        op["bindings"]["kafka"]["groupId"]["enum"][0]
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    assert groups == {"newsflow-enrichment", "newsflow-delivery"}
    story = doc["components"]["schemas"]["Story"]
    assert "enrichment" in story["properties"]


def test_every_service_serves_the_document() -> None:
    app = FastAPI()

    async def ready() -> bool:
        return True

    add_health_routes(app, CollectorRegistry(), ready)
    with TestClient(app) as client:
        assert client.get("/asyncapi.json").json() == document()
