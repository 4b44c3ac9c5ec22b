"""ingest's adapters: the Kafka publisher and the Redis ledger of accepted versions."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.ingest.domain import LedgerEntry
from shared.events import Article, EventMeta, encode
from shared.redis import text as _text


class KafkaArticlePublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(self, article: Article, meta: EventMeta) -> None:
        await self._producer.send_and_wait(
            self._topic, encode(article), key=article.uri.encode(), headers=meta.to_headers()
        )


class RedisLedger:
    """One hash per uri holding the last accepted version; shared by every ingest replica."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}ingest:article:"

    async def get(self, uri: str) -> LedgerEntry | None:
        raw = await self._redis.hgetall(self._prefix + uri)
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return LedgerEntry(
            version=int(fields["version"]),
            event_id=fields["event_id"],
            event_type=fields["event_type"],
            fingerprint=fields["fingerprint"],
            article_json=fields["article"],
        )

    async def put(self, uri: str, entry: LedgerEntry) -> None:
        await self._redis.hset(
            self._prefix + uri,
            mapping={
                "version": entry.version,
                "event_id": entry.event_id,
                "event_type": entry.event_type,
                "fingerprint": entry.fingerprint,
                "article": entry.article_json,
            },
        )
