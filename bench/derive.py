"""`ferry bench derive`: MB/s of MCAP turned into per-topic Parquet, Ferry's `topics` product
(streaming, chunked, published through a manifest and the catalog) against a plain script
with the `mcap` reader and `pyarrow` doing the same rows and decoded JSON columns (all in
memory, one file per topic, no checksums, no catalog). Local store, sides alternated.

    python -m bench.derive [--mb 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _plain(mcap_path: Path, out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mcap.reader import make_reader

    topics: dict[str, list[dict]] = {}
    with open(mcap_path, "rb") as f:
        for _, channel, message in make_reader(f).iter_messages(log_time_order=False):
            row = {"log_time": message.log_time, "publish_time": message.publish_time, "sequence": message.sequence,
                   "channel_id": channel.id, "data": message.data}
            if channel.message_encoding == "json":
                row.update(json.loads(message.data))
            topics.setdefault(channel.topic, []).append(row)
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for i, (topic, items) in enumerate(topics.items()):
        pq.write_table(pa.Table.from_pylist(items), out / f"{i}.parquet", compression="zstd")
        rows += len(items)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry bench derive", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="size of the MCAP input (MB, about)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from mcap.writer import Writer

    from storage_core.catalog import Catalog
    from storage_core.catalog.models import Device, Recording, StoredObject
    from storage_core.checksums import crc32c
    from storage_core.config import load_settings
    from storage_core.products import derive_one, plan_derive
    from storage_core.stores.local import LocalStore

    with tempfile.TemporaryDirectory(prefix="ferry-bench-derive-") as tmp:
        root = Path(tmp)
        buffer = io.BytesIO()
        writer = Writer(buffer)
        writer.start(profile="", library="ferry-bench")
        channels = [writer.register_channel(f"/sensor/{i}", "json", 0) for i in range(8)]
        i = 0
        while buffer.tell() < args.mb * 1_000_000:
            payload = json.dumps({"x": i * 0.1, "n": i, "ok": i % 2 == 0, "label": f"s{i % 97}", "pad": "p" * 120}).encode()
            writer.add_message(channels[i % 8], log_time=i * 1000, data=payload, publish_time=i * 1000, sequence=i)
            i += 1
        writer.finish()
        data = buffer.getvalue()
        store = LocalStore(root / "store")
        store.put("in/dev/rec/x.mcap", data, size=len(data))
        os.environ["FERRY_STORE"] = store.uri
        catalog = Catalog(f"sqlite:///{root / 'catalog.db'}")
        with catalog.session() as session:
            session.add(Device(id="dev"))
            session.flush()
            rec = Recording(device_id="dev", name="rec")
            session.add(rec)
            session.flush()
            session.add(StoredObject(recording_id=rec.id, store_uri=store.uri, key="in/dev/rec/x.mcap", relative_path="x.mcap",
                                     modality="mcap", size=len(data), crc32c=crc32c(data), etag="e"))
        mb = len(data) / 1e6
        print(f"input: {mb:.1f} MB, {i} messages on 8 JSON topics")
        times: dict[str, list[float]] = {"ferry": [], "plain": []}
        settings = load_settings()
        for r in range(args.rounds):
            for side in (("ferry", "plain") if r % 2 == 0 else ("plain", "ferry")):
                start = time.perf_counter()
                if side == "ferry":
                    [item] = plan_derive(catalog, "topics", mode="force" if r else "reuse", settings=settings)
                    derive_one(catalog, item, mode="force" if r else "reuse", settings=settings)
                else:
                    _plain(root / "store" / "in/dev/rec/x.mcap", root / f"plain{r}")
                times[side].append(time.perf_counter() - start)
        best = {side: min(values) for side, values in times.items()}
        for side in ("ferry", "plain"):
            print(f"{side:6s} best {best[side]:.2f} s  {mb / best[side]:.1f} MB/s  (runs: {', '.join(f'{t:.2f}' for t in times[side])})")
        print(f"ratio ferry/plain: {best['plain'] / best['ferry']:.2f}x")
        catalog.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
