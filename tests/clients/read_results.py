"""Reads a results topic with the real clients, for tests/formats.rs.

Consumes TOPIC from the start with confluent-kafka until no message came for IDLE seconds, reads
each Confluent-framed value with fastavro's schemaless_reader and the schema in AVSC (the schema
the runner registered), and prints one JSON line per message:
  {"key", "schema_id", "metric", "window_start", "window_end", "value"}
with the times in ms since the epoch and the value as the JSON it stands for. Usage:
  read_results.py --kafka HOST:PORT --topic T --avsc FILE [--idle SECONDS]
"""

import argparse
import io
import json
import sys
import uuid


def unwrap(value):
    """The JSON value a runner.Value record ({"v": ...}) stands for."""
    v = value["v"]
    if isinstance(v, list):
        return [unwrap(x) for x in v]
    if isinstance(v, dict):
        return {k: unwrap(x) for k, x in v.items()}
    return v


def millis(t):
    return int(t.timestamp() * 1000) if hasattr(t, "timestamp") else t


def main():
    import fastavro
    from confluent_kafka import Consumer

    p = argparse.ArgumentParser()
    p.add_argument("--kafka", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--avsc", required=True)
    p.add_argument("--idle", type=float, default=5.0)
    a = p.parse_args()
    schema = fastavro.parse_schema(json.load(open(a.avsc)))
    consumer = Consumer(
        {
            "bootstrap.servers": a.kafka,
            "group.id": f"read_results_{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([a.topic])
    read = 0
    while True:
        msg = consumer.poll(a.idle)
        if msg is None:
            break
        if msg.error():
            sys.exit(f"kafka: {msg.error()}")
        body = msg.value()
        if body[0] != 0:
            sys.exit(f"not Confluent-framed: first byte {body[0]:#x}")
        r = fastavro.schemaless_reader(io.BytesIO(body[5:]), schema)
        print(
            json.dumps(
                {
                    "key": msg.key().decode(),
                    "schema_id": int.from_bytes(body[1:5], "big"),
                    "metric": r["metric"],
                    "window_start": millis(r["window_start"]),
                    "window_end": millis(r["window_end"]),
                    "value": unwrap(r["value"]),
                }
            )
        )
        read += 1
    consumer.close()
    print(f"{read} messages", file=sys.stderr)


if __name__ == "__main__":
    main()
