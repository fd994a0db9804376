"""MCAP recordings with JSON topics, stored and catalogued as an ingest leaves them."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

from mcap.reader import make_reader
from mcap.writer import Writer
from sqlalchemy import select

from storage_core.catalog import Catalog
from storage_core.catalog.models import Device, Recording, StoredObject
from storage_core.checksums import crc32c

T0 = 1_700_000_000_000_000_000
IMU_SCHEMA = {"type": "object", "properties": {"ax": {"type": "number"}, "n": {"type": "integer"}, "ok": {"type": "boolean"}}}


def mcap_with_topics(counts: dict[str, int], *, seed: int = 0) -> bytes:
    """An MCAP with `counts[topic]` JSON messages per topic, interleaved; `/imu*` topics
    have a JSON Schema, the others are schemaless JSON; `/raw` is not JSON at all."""
    out = io.BytesIO()
    writer = Writer(out, chunk_size=16 * 1024)
    writer.start(profile="", library="ferry-tests")
    imu = writer.register_schema("Imu", "jsonschema", json.dumps(IMU_SCHEMA).encode())
    channels = {}
    for topic in counts:
        if topic == "/raw":
            channels[topic] = writer.register_channel(topic, "cdr", writer.register_schema("Raw", "ros2msg", b"x"))
        else:
            channels[topic] = writer.register_channel(topic, "json", imu if topic.startswith("/imu") else 0)
    t = T0
    left = dict(counts)
    i = 0
    while any(left.values()):
        for topic in counts:
            if not left[topic]:
                continue
            left[topic] -= 1
            if topic == "/raw":
                data = bytes([i % 256, seed % 256]) * 8
            elif topic.startswith("/imu"):
                data = json.dumps({"ax": i * 0.5 + seed, "n": i, "ok": i % 2 == 0, "extra": [1]}).encode()
            else:
                data = json.dumps({"text": f"m{i}", "level": i % 5, "meta": {"s": seed}}).encode()
            writer.add_message(channels[topic], log_time=t, data=data, publish_time=t + 1, sequence=i)
            t += 1_000_000
            i += 1
    writer.finish()
    return out.getvalue()


def message_counts(data: bytes) -> dict[str, int]:
    """Messages per topic, counted by the mcap library (the outside oracle)."""
    counts: dict[str, int] = {}
    for _, channel, _ in make_reader(io.BytesIO(data)).iter_messages():
        counts[channel.topic] = counts.get(channel.topic, 0) + 1
    return counts


def store_recording(catalog: Catalog, store, key: str, data: bytes, *, device: str, recording: str) -> None:
    """Put `data` at `key` and catalogue it (a re-ingest of other bytes replaces the row's identity)."""
    meta = store.put(key, data, size=len(data), crc32c=crc32c(data))
    with catalog.session() as session:
        if session.get(Device, device) is None:
            session.add(Device(id=device))
            session.flush()
        rec = session.scalar(select(Recording).where(Recording.device_id == device, Recording.name == recording))
        if rec is None:
            rec = Recording(device_id=device, name=recording)
            session.add(rec)
            session.flush()
        obj = session.scalar(select(StoredObject).where(StoredObject.store_uri == store.uri, StoredObject.key == key))
        if obj is None:
            obj = StoredObject(recording_id=rec.id, store_uri=store.uri, key=key, relative_path=key.rsplit("/", 1)[-1],
                               modality="mcap", size=0, crc32c=0, etag="")
            session.add(obj)
        obj.size, obj.crc32c, obj.etag = len(data), crc32c(data), meta.etag
        obj.stored_at = datetime.now(timezone.utc)
