"""Writes interaction records with the real clients, for tests/formats.rs.

Reads JSON lines (as `runner generate` prints them) and writes each record in FORMAT:
  json      the line's object, as JSON
  avro      fastavro's schemaless_writer with schemas/interaction.avsc, Confluent-framed with ID
  protobuf  the class protoc generated from schemas/interaction.proto (module dir: --proto-module)

to a Kafka topic with confluent-kafka (key = user_id), or to a file, each record after its length
as a varint (what `runner run --source` reads). Usage:
  produce.py FORMAT INPUT.jsonl (--kafka HOST:PORT --topic T | --file OUT) [--schema-id ID]
             [--avsc FILE] [--proto-module DIR]
"""

import argparse
import datetime
import io
import json
import sys


def avro_encoder(avsc, schema_id):
    import fastavro

    schema = fastavro.parse_schema(json.load(open(avsc)))

    def encode(record):
        r = dict(record)
        r["timestamp"] = datetime.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
        out = io.BytesIO()
        out.write(b"\x00" + schema_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(out, schema, r)
        return out.getvalue()

    return encode


def protobuf_encoder(module_dir):
    sys.path.insert(0, module_dir)
    import interaction_pb2

    def encode(record):
        m = interaction_pb2.Interaction()
        for name, value in record.items():
            if name == "timestamp":
                m.timestamp.FromJsonString(value)
            elif value is not None:
                setattr(m, name, value)
        return m.SerializeToString()

    return encode


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("format", choices=["json", "avro", "protobuf"])
    p.add_argument("input")
    p.add_argument("--kafka")
    p.add_argument("--topic")
    p.add_argument("--file")
    p.add_argument("--schema-id", type=int, default=1)
    p.add_argument("--avsc")
    p.add_argument("--proto-module")
    a = p.parse_args()
    records = [json.loads(line) for line in open(a.input) if line.strip()]
    if a.format == "json":
        encode = lambda r: json.dumps(r).encode()
    elif a.format == "avro":
        encode = avro_encoder(a.avsc, a.schema_id)
    else:
        encode = protobuf_encoder(a.proto_module)
    if a.file:
        with open(a.file, "wb") as f:
            for r in records:
                payload = encode(r)
                f.write(varint(len(payload)) + payload)
    else:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": a.kafka, "enable.idempotence": True})
        failed = []

        def delivered(err, _msg):
            if err is not None:
                failed.append(err)

        for r in records:
            producer.produce(a.topic, key=r["user_id"].encode(), value=encode(r), on_delivery=delivered)
            producer.poll(0)
        left = producer.flush(30)
        if left or failed:
            sys.exit(f"{left} records were not delivered, {len(failed)} failed: {failed[:3]}")
    print(len(records))


if __name__ == "__main__":
    main()
