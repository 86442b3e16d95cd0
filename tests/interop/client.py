"""A foreign Kafka client for the Avro interop test (tests/avro.rs): Confluent's Python client
with its schema-registry Avro serdes (fastavro underneath), nothing of Touchstream's.

  client.py produce BROKERS REGISTRY TOPIC < events.jsonl
      each line {"writer": "old"|"new", "key": "...", "record": {...}}: serialised with the named
      writer schema (registered under <TOPIC>-value, TopicNameStrategy) in the Confluent framing.
  client.py consume BROKERS REGISTRY TOPIC COUNT TIMEOUT_S
      reads TOPIC from the beginning (read_committed) until COUNT records or the timeout, decodes
      each value with the writer schema fetched from the registry by the id in its header, and
      prints one JSON line per record: {"key": ..., "schema_id": ..., "value": {...}}.
"""
import datetime
import json
import struct
import sys
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

# An older producer of the input contract: fewer fields, another order, a field we do not have.
OLD = {
    "type": "record", "name": "JourneyEvent", "namespace": "io.touchstream.v1",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "event_id", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "event_type", "type": {"type": "enum", "name": "EventType",
                                        "symbols": ["impression", "click", "purchase"]}},
        {"name": "channel", "type": ["null", {"type": "enum", "name": "Channel",
                                               "symbols": ["paid_search", "email", "display"]}],
         "default": None},
        {"name": "legacy_score", "type": "int", "default": 0},
        {"name": "value", "type": ["null", "double"], "default": None},
    ],
}
# A newer one: an extra optional field and a channel symbol we do not know (read as "other").
NEW = {
    "type": "record", "name": "JourneyEvent", "namespace": "io.touchstream.v1",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "customer_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "event_type", "type": {"type": "enum", "name": "EventType", "default": "other",
                                        "symbols": ["impression", "click", "purchase", "other"]}},
        {"name": "channel", "type": ["null", {"type": "enum", "name": "Channel", "default": "other",
                                               "symbols": ["paid_search", "email", "tiktok", "other"]}],
         "default": None},
        {"name": "device", "type": ["null", "string"], "default": None},
        {"name": "campaign", "type": ["null", "string"], "default": None},
        {"name": "value", "type": ["null", "double"], "default": None},
    ],
}
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def produce(brokers, registry, topic):
    sr = SchemaRegistryClient({"url": registry})
    serializers = {name: AvroSerializer(sr, json.dumps(schema), conf={"auto.register.schemas": True})
                   for name, schema in (("old", OLD), ("new", NEW))}
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    ctx = SerializationContext(topic, MessageField.VALUE)
    n = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        record = dict(item["record"])
        if item["writer"] == "new":  # fastavro wants a datetime for timestamp-millis
            record["ts"] = EPOCH + datetime.timedelta(milliseconds=record["ts"])
        producer.produce(topic, key=item["key"].encode(), value=serializers[item["writer"]](record, ctx))
        n += 1
    if producer.flush(60) != 0:
        sys.exit("not every record was delivered")
    print(json.dumps({"produced": n}))


def plain(o):
    if isinstance(o, datetime.datetime):
        return (o - EPOCH) // datetime.timedelta(milliseconds=1)
    raise TypeError(repr(o))


def consume(brokers, registry, topic, count, timeout):
    sr = SchemaRegistryClient({"url": registry})
    deserialize = AvroDeserializer(sr)  # no reader schema: the writer schema, fetched by id
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "interop-" + uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    ctx = SerializationContext(topic, MessageField.VALUE)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    seen = 0
    while seen < count and datetime.datetime.now() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        raw = msg.value()
        magic, schema_id = struct.unpack(">bI", raw[:5])
        assert magic == 0, "not the Confluent framing"
        value = deserialize(raw, ctx)
        key = msg.key().decode() if msg.key() is not None else None
        print(json.dumps({"key": key, "schema_id": schema_id, "value": value}, default=plain), flush=True)
        seen += 1
    consumer.close()


if __name__ == "__main__":
    cmd, brokers, registry, topic = sys.argv[1:5]
    if cmd == "produce":
        produce(brokers, registry, topic)
    elif cmd == "consume":
        consume(brokers, registry, topic, int(sys.argv[5]), float(sys.argv[6]))
    else:
        sys.exit(__doc__)
