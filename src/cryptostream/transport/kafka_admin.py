"""Kafka client settings, topic creation/description and consumer lag.

Client settings that matter (also measured against the test broker, see docs):
idempotent producer with ``acks=all``; ``linger.ms`` 5 and lz4 for batched produce; a
bounded producer queue (``queue.buffering.max.*``) so that a broker that is away makes
``produce`` push back on the sources instead of growing memory; ``message.timeout.ms=0``
(retry until delivered: nothing is dropped while the broker is away); consumers with
manual commits, ``range`` assignment, ``fetch.wait.max.ms`` 100 and larger prefetch for
backlogs. Keys are hashed with murmur2 like the Java client, so other clients agree on
the partition of a symbol.

Lag is computed per partition as ``end − committed`` where the end offset is the broker's
high watermark; brokers that misreport it (the tansu test broker reports the last batch's
first offset + 1) make lag look smaller than it is, never negative (clamped at 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cryptostream.errors import CryptoStreamError

RAW, CLEAN, REJECTS, STATS = "raw_trades", "clean_trades", "rejects", "pipeline_stats"
ANOMALIES = "anomalies"  # scored windows from the ML stage of ``process``, key = symbol


class BrokerError(CryptoStreamError):
    """The broker cannot be reached or refused a request."""


def topic_names(window_tables: tuple[str, ...]) -> list[str]:
    return [RAW, CLEAN, REJECTS, STATS, *window_tables, ANOMALIES]


def producer_config(broker: str, **extra) -> dict:
    return {
        "bootstrap.servers": broker,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 256 * 1024,
        "message.timeout.ms": 0,
        "socket.keepalive.enable": True,
        **extra,
    }


def consumer_config(broker: str, group: str, session_timeout_ms: int = 10_000, **extra) -> dict:
    return {
        "bootstrap.servers": broker,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 6),
        "fetch.wait.max.ms": 100,
        "queued.min.messages": 20_000,
        "fetch.max.bytes": 64 * 2**20,
        **extra,
    }


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict


def topic_specs(window_tables: tuple[str, ...], partitions: int, retention_ms: int) -> list[TopicSpec]:
    data = {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}
    specs = [TopicSpec(RAW, partitions, data), TopicSpec(CLEAN, partitions, data),
             TopicSpec(REJECTS, partitions, data),
             TopicSpec(STATS, 1, {"cleanup.policy": "compact"})]
    specs += [TopicSpec(t, partitions, {"cleanup.policy": "compact"}) for t in window_tables]
    specs.append(TopicSpec(ANOMALIES, partitions, {"cleanup.policy": "compact"}))
    return specs


class Topics:
    """Admin operations on the pipeline's topics."""

    def __init__(self, broker: str, timeout_s: float = 15.0):
        self.broker = broker
        self.timeout_s = timeout_s
        self.admin = AdminClient({"bootstrap.servers": broker})

    def existing(self) -> dict[str, int]:
        """Topic name -> partition count."""
        try:
            md = self.admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise BrokerError(f"cannot reach the broker at {self.broker}: {exc}; is it running?") from exc
        return {name: len(t.partitions) for name, t in md.topics.items() if not t.error}

    def create(self, specs: list[TopicSpec]) -> dict[str, str]:
        """Create missing topics; name -> 'created' | 'exists (N partitions)'."""
        have = self.existing()
        result = {s.name: f"exists ({have[s.name]} partitions)" for s in specs if s.name in have}
        new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
               for s in specs if s.name not in have]
        if new:
            for name, fut in self.admin.create_topics(new, request_timeout=self.timeout_s).items():
                try:
                    fut.result()
                    result[name] = "created"
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" in str(exc):
                        result[name] = "exists"
                    else:
                        raise BrokerError(f"cannot create topic {name}: {exc}") from exc
        return result

    def describe(self, names: list[str]) -> list[dict]:
        md = self.admin.list_topics(timeout=self.timeout_s)
        rows = []
        for name in names:
            t = md.topics.get(name)
            if t is None or t.error:
                rows.append({"topic": name, "partitions": None, "status": "missing"})
                continue
            rows.append({"topic": name, "partitions": len(t.partitions), "status": "ok",
                         "leaders": sorted({p.leader for p in t.partitions.values()})})
        return rows

    def lag(self, group: str, names: list[str]) -> list[dict]:
        """Per partition: committed offset of ``group``, end offset, lag (end − committed)."""
        md = self.admin.list_topics(timeout=self.timeout_s)
        c = Consumer(consumer_config(self.broker, group))
        try:
            tps = [TopicPartition(n, p) for n in names if n in md.topics
                   for p in sorted(md.topics[n].partitions)]
            committed = c.committed(tps, timeout=self.timeout_s) if tps else []
            rows = []
            for tp in committed:
                low, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                    timeout=self.timeout_s)
                done = tp.offset if tp.offset >= 0 else low
                rows.append({"topic": tp.topic, "partition": tp.partition,
                             "committed": tp.offset if tp.offset >= 0 else None,
                             "end": high, "lag": max(0, high - done)})
            return rows
        finally:
            c.close()
