"""The tests' and the bench's SeaweedFS never inherit the caller's AWS_* variables: `weed mini`
would take them as its admin identity and refuse every other key (InvalidAccessKeyId)."""

from __future__ import annotations

import uuid

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from bench.seaweed import server_env
from tests.conftest import ACCESS_KEY, SECRET_KEY, start_test_seaweed


def _client(endpoint: str, access_key: str, secret_key: str):  # noqa: ANN202
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def test_server_env_drops_every_aws_variable() -> None:
    env = server_env({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_PROFILE": "p", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}


def test_session_seaweed_ignores_junk_aws_keys_in_the_callers_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "JUNKJUNKJUNKJUNK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "junk-junk-junk-junk")
    server = start_test_seaweed(tmp_path / "seaweed")  # the session fixture's own path
    try:
        client = _client(server.endpoint, ACCESS_KEY, SECRET_KEY)
        bucket = f"env-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"the test keys still work")
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"the test keys still work"
        # and the server does check keys: the caller's junk ones are refused, not admitted
        with pytest.raises(botocore.exceptions.ClientError):
            _client(server.endpoint, "JUNKJUNKJUNKJUNK", "junk-junk-junk-junk").list_objects_v2(Bucket=bucket)
    finally:
        server.stop()
