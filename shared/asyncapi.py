"""The AsyncAPI 3.0 description of every newsflow topic, generated from the contract models.

Served at `/asyncapi.json` by every service and written to `docs/asyncapi.yaml`; a test fails when
the file drifts from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.events import (
    CONTENT_TYPE,
    SPEC_VERSION,
    Article,
    DeliveryAttempt,
    EventType,
    Story,
    Topics,
    TopicSpec,
)

KAFKA_BINDING = "0.5.0"
SCHEMAS = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Channel:
    id: str
    spec: TopicSpec
    key: str
    payload: type[BaseModel] | None  # None: the original bytes of a poison record
    event_types: tuple[str, ...]
    producer: str
    consumers: tuple[str, ...]
    description: str


def channels(topics: Topics) -> list[Channel]:
    specs = {spec.name: spec for spec in topics.all()}
    article_types = tuple(t.value for t in EventType)
    return [
        Channel(
            "articlesIngested",
            specs[topics.ingested],
            "The article uri",
            Article,
            article_types,
            "ingest",
            ("newsflow-enrichment",),
            "Every accepted article version, including withdrawals (`pubstatus: canceled`).",
        ),
        Channel(
            "storiesEnriched",
            specs[topics.enriched],
            "The article uri",
            Story,
            article_types,
            "enrichment",
            ("newsflow-delivery",),
            "The latest version of every story with its enrichment; compacted by uri. "
            "A withdrawn story's last record has `pubstatus: canceled`.",
        ),
        Channel(
            "deliveryAttempts",
            specs[topics.attempts],
            "The subscription id",
            DeliveryAttempt,
            ("newsflow.delivery.attempted",),
            "delivery",
            (),
            "One record per webhook attempt: where, status, latency, outcome.",
        ),
        *(
            Channel(
                f"deadLetters{index}",
                specs[topics.dlq(source)],
                "The original record's key",
                None,
                (),
                consumer,
                (),
                f"Records of `{source}` that could not be processed: the original value and "
                "headers, plus `newsflow_error` and `newsflow_original_topic/partition/offset`.",
            )
            for index, (source, consumer) in enumerate(
                [(topics.ingested, "enrichment"), (topics.enriched, "delivery")], start=1
            )
        ),
    ]


def all_channels(topics: Topics) -> list[Channel]:
    """The described channels, plus any other topic newsflow creates (internal ones)."""
    described = channels(topics)
    covered = {channel.spec.name for channel in described}
    internal = [
        Channel(
            f"internal{index}",
            spec,
            "Set by the producing service",
            None,
            (),
            "newsflow",
            (),
            "Internal to newsflow; not for consumers outside it.",
        )
        for index, spec in enumerate(topics.all(), start=1)
        if spec.name not in covered
    ]
    return described + internal


def cloudevents_headers(event_types: tuple[str, ...]) -> dict[str, Any]:
    type_schema: dict[str, Any] = {"type": "string"}
    if event_types:
        type_schema["enum"] = list(event_types)
    return {
        "type": "object",
        "description": "CloudEvents 1.0, Kafka protocol binding, binary content mode.",
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "content-type"],
        "properties": {
            "ce_specversion": {"type": "string", "const": SPEC_VERSION},
            "ce_id": {"type": "string", "description": "Unique per record."},
            "ce_source": {"type": "string", "examples": ["urn:newsflow:ingest"]},
            "ce_type": type_schema,
            "ce_time": {"type": "string", "format": "date-time"},
            "content-type": {"type": "string", "const": CONTENT_TYPE},
        },
    }


def document(topics: Topics | None = None) -> dict[str, Any]:
    topics = topics or Topics()
    _, definitions = models_json_schema(
        [(model, "serialization") for model in (Article, Story, DeliveryAttempt)],
        ref_template=SCHEMAS,
    )
    doc_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in all_channels(topics):
        message_id = f"{channel.id}Message"
        payload: dict[str, Any] = (
            {"$ref": SCHEMAS.format(model=channel.payload.__name__)}
            if channel.payload
            else {"description": "Bytes as described on the channel."}
        )
        messages[message_id] = {
            "name": message_id,
            "contentType": CONTENT_TYPE,
            "headers": cloudevents_headers(channel.event_types),
            "payload": payload,
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": channel.key},
                    "bindingVersion": KAFKA_BINDING,
                }
            },
        }
        policy = "compact" if channel.spec.compacted else "delete"
        doc_channels[channel.id] = {
            "address": channel.spec.name,
            "description": channel.description,
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
            "bindings": {
                "kafka": {
                    "topic": channel.spec.name,
                    "partitions": channel.spec.partitions,
                    "topicConfiguration": {"cleanup.policy": [policy]},
                    "bindingVersion": KAFKA_BINDING,
                }
            },
        }
        ref = {"$ref": f"#/channels/{channel.id}"}
        operations[f"{channel.producer}Sends{_title(channel.id)}"] = {
            "action": "send",
            "channel": ref,
            "summary": f"{channel.producer} produces to {channel.spec.name}",
        }
        for group in channel.consumers:
            operations[f"{group.removeprefix('newsflow-')}Receives{_title(channel.id)}"] = {
                "action": "receive",
                "channel": ref,
                "summary": f"consumer group {group}",
                "bindings": {
                    "kafka": {
                        "groupId": {"type": "string", "enum": [group]},
                        "bindingVersion": KAFKA_BINDING,
                    }
                },
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "newsflow topics",
            "version": "1.0.0",
            "description": "Every newsflow topic. Records are CloudEvents 1.0 in Kafka binary "
            "mode; any Kafka client or the official CloudEvents SDK can read them. Topic names "
            "take the deployment's optional prefix (`NEWSFLOW_TOPIC_PREFIX`).",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "`make run` (embedded broker) or docker compose (localhost:29092)",
            }
        },
        "channels": doc_channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": definitions.get("$defs", {})},
    }


def _title(channel_id: str) -> str:
    return channel_id[:1].upper() + channel_id[1:]
