"""The ops CLI against the running services: topics, tail, and subscriptions by hand."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.devrun import http_json
from tests.e2e.conftest import RunningStack
from tests.factories import article_payload
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli_env(stack: RunningStack) -> dict[str, str]:
    delivery = urlsplit(stack.delivery)
    return {
        "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": stack.kafka,
        "NEWSFLOW_TOPIC_PREFIX": stack.topics.prefix,
        "NEWSFLOW_DELIVERY_HOST": str(delivery.hostname),
        "NEWSFLOW_DELIVERY_PORT": str(delivery.port),
        "NEWSFLOW_ADMIN_TOKEN": stack.admin_token,
        "COLUMNS": "200",
    }


def test_topics_create_is_idempotent_and_describe_counts_partitions(
    cli_env: dict[str, str],
) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["topics", "create"], env=cli_env)
    assert created.exit_code == 0, created.output
    assert "stories.enriched.v1  partitions=6  cleanup.policy=compact" in created.output

    described = runner.invoke(app, ["topics", "describe"], env=cli_env)
    assert described.exit_code == 0, described.output
    partitions = json.loads(described.output)
    assert all(len(by_partition) == 6 for by_partition in partitions.values())


def test_tail_shows_cloudevents_of_a_topic(stack: RunningStack, cli_env: dict[str, str]) -> None:
    uri = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
    status, _ = http_json(
        "POST", f"{stack.ingest}/v1/articles", article_payload(uri=uri), token=stack.api_key
    )
    assert status == 202
    # `tail` follows forever without --limit; with it, it stops after that many records.
    result = CliRunner().invoke(
        app, ["tail", "articles.ingested.v1", "--from-beginning", "--limit", "1"], env=cli_env
    )
    assert result.exit_code == 0, result.output
    assert "newsflow.article." in result.output
    assert "key=urn:" in result.output


def test_subscriptions_by_hand(
    stack: RunningStack, receiver: WebhookReceiver, cli_env: dict[str, str]
) -> None:
    runner = CliRunner()
    added = runner.invoke(
        app, ["subs", "add", f"{receiver.url}/hooks", "--section", "sport"], env=cli_env
    )
    assert added.exit_code == 0, added.output
    subscription = json.loads(added.output)
    assert subscription["secret"].startswith("whsec_")
    try:
        disabled = runner.invoke(app, ["subs", "disable", subscription["id"]], env=cli_env)
        assert disabled.exit_code == 0, disabled.output
        assert json.loads(disabled.output)["status"] == "paused"
        enabled = runner.invoke(app, ["subs", "enable", subscription["id"]], env=cli_env)
        assert json.loads(enabled.output)["status"] == "active"
        listed = runner.invoke(app, ["subs", "list"], env=cli_env)
        assert subscription["id"] in listed.output
        assert "whsec_" not in listed.output
        # Every secret is already sealed with the stack's one key: nothing to write again.
        resealed = runner.invoke(app, ["subs", "reseal"], env=cli_env)
        assert resealed.exit_code == 0, resealed.output
        assert json.loads(resealed.output) == {"resealed": 0}
    finally:
        runner.invoke(app, ["subs", "delete", subscription["id"]], env=cli_env)
