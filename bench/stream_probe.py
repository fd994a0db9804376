"""Does a Delta Lake table commit safely on SeaweedFS? A probe, run once per store version:

    python -m bench.stream_probe

1. Conditional create: N threads PUT the same new key with `If-None-Match: *`; a store
   that enforces it atomically lets exactly one through (the rest 412).
2. delta-rs: N writers append to one table at the same time (each its own process view,
   no shared lock); with working conditional PUTs the log has one commit per writer and
   every row is readable once; without, two writers can claim the same version and one
   writer's rows vanish.

Prints what it measured; exit status 0 only when both hold.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import uuid
from pathlib import Path

from bench.seaweed import SeaweedServer

ACCESS, SECRET = "probe-key", "probe-secret"


def _client(endpoint: str):  # noqa: ANN202
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                        region_name="us-east-1")


def conditional_create(endpoint: str, bucket: str, writers: int, rounds: int) -> list[int]:
    """Per round: how many of `writers` simultaneous `If-None-Match: *` PUTs of one key succeeded."""
    from botocore.exceptions import ClientError

    client = _client(endpoint)
    results = []
    for r in range(rounds):
        key = f"race/{r}"
        wins, gate = [], threading.Barrier(writers)

        def put(i: int) -> None:
            gate.wait()
            try:
                client.put_object(Bucket=bucket, Key=key, Body=f"writer {i}".encode(), IfNoneMatch="*")
                wins.append(i)
            except ClientError:
                pass

        threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results.append(len(wins))
    return results


def delta_race(endpoint: str, bucket: str, writers: int, rounds: int) -> tuple[int, int, str]:
    """(rows expected, rows read, note) after `rounds` × `writers` concurrent one-row appends."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    uri = f"s3://{bucket}/delta-race"
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "conditional_put": "etag"}
    write_deltalake(uri, pa.table({"w": pa.array([-1], pa.int64())}), storage_options=options)
    errors: list[str] = []
    for r in range(rounds):
        gate = threading.Barrier(writers)

        def append(i: int) -> None:
            gate.wait()
            try:
                write_deltalake(uri, pa.table({"w": pa.array([r * writers + i], pa.int64())}), mode="append",
                                storage_options=options)
            except Exception as exc:  # noqa: BLE001 - a probe reports every failure
                errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")

        threads = [threading.Thread(target=append, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = DeltaTable(uri, storage_options=options).to_pyarrow_table()
    note = f"{len(errors)} writer error(s)" + (f", first: {errors[0]}" if errors else "")
    return rounds * writers + 1, rows.num_rows, note


def main() -> int:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "p", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                                                       "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        server = SeaweedServer(Path(tmp) / "data", extra_args=[f"-s3.config={config}"])
        server.start()
        try:
            bucket = f"probe-{uuid.uuid4().hex[:8]}"
            _client(server.endpoint).create_bucket(Bucket=bucket)
            wins = conditional_create(server.endpoint, bucket, writers=8, rounds=20)
            print(f"conditional create (If-None-Match: *), 8 writers x 20 rounds: winners per round {wins}")
            expected, got, note = delta_race(server.endpoint, bucket, writers=4, rounds=5)
            print(f"delta-rs concurrent appends, 4 writers x 5 rounds: {got} rows read of {expected} written; {note}")
            return 0 if set(wins) == {1} and got == expected else 1
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
