"""What ops and internal teams observe: one trace across the services, the metrics the
Grafana dashboard reads, and the AsyncAPI document."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from ops.devrun import http_json
from shared.events import new_traceparent, trace_id
from shared.kafka import make_consumer
from shared.settings import NewsflowSettings
from tests.e2e.conftest import RunningStack
from tests.factories import article_payload

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "newsflow-dashboard.json"


def ingest_traced(stack: RunningStack, uri: str, traceparent: str) -> None:
    request = urllib.request.Request(  # noqa: S310 (loopback http only)
        f"{stack.ingest}/v1/articles",
        data=json.dumps(article_payload(uri=uri)).encode(),
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {stack.api_key}",
            "traceparent": traceparent,
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 202
        assert trace_id(response.headers["traceparent"]) == trace_id(traceparent)


async def traceparent_on(stack: RunningStack, topic: str, uri: str) -> str:
    settings = NewsflowSettings(kafka_bootstrap_servers=stack.kafka)
    consumer = make_consumer(settings, topic, f"obs-{uuid.uuid4().hex}")
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    if record.key == uri.encode():
                        return dict(record.headers)["ce_traceparent"].decode()
        raise AssertionError(f"{uri} never reached {topic}")
    finally:
        await consumer.stop()


def test_one_trace_from_the_newsroom_request_to_the_enriched_story(stack: RunningStack) -> None:
    uri = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
    caller = new_traceparent()
    ingest_traced(stack, uri, caller)

    ingested = asyncio.run(traceparent_on(stack, stack.topics.ingested, uri))
    enriched = asyncio.run(traceparent_on(stack, stack.topics.enriched, uri))

    assert trace_id(ingested) == trace_id(enriched) == trace_id(caller)
    assert len({ingested, enriched, caller}) == 3  # one trace, a new span at each hop


def exposed_families(stack: RunningStack) -> set[str]:
    families: set[str] = set()
    for url in (stack.ingest, stack.enrichment, stack.delivery):
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310
            text = response.read().decode()
        families |= {family(name) for name in re.findall(r"^# TYPE (\S+) ", text, re.M)}
    return families


def family(name: str) -> str:
    return re.sub(r"_(bucket|total|count|sum)$", "", name)


def test_every_metric_on_the_dashboard_is_exposed(stack: RunningStack) -> None:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    wanted = {family(name) for expr in exprs for name in re.findall(r"newsflow_[a-z_]+", expr)}
    missing = wanted - exposed_families(stack)
    assert not missing, f"the dashboard reads metrics no service exposes: {sorted(missing)}"


def test_each_service_serves_the_asyncapi_document(stack: RunningStack) -> None:
    for url in (stack.ingest, stack.enrichment, stack.delivery):
        status, document = http_json("GET", f"{url}/asyncapi.json")
        assert status == 200
        assert document["asyncapi"] == "3.0.0"
        # The deployment's own topic names (this stack runs with a topic prefix).
        addresses = {c["address"] for c in document["channels"].values()}
        assert stack.topics.enriched in addresses
        assert stack.topics.enriched != "stories.enriched.v1"
