"""The registry's shared S3 clients: one per endpoint and budget, and per credentials in the
environment (a warm process builds them before it forks; a command's child may carry other
keys than its parent had)."""

from __future__ import annotations

import pytest

from storage_core.config import load_settings
from storage_core.stores import registry


def test_a_client_is_shared_only_under_the_same_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    monkeypatch.setattr(registry, "_clients", {})
    monkeypatch.setattr(registry, "_sessions", {})
    settings = load_settings()
    first = registry._s3_client(settings)
    assert registry._s3_client(settings) is first
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second")
    second = registry._s3_client(settings)
    assert second is not first
    assert second._request_signer._credentials.access_key == "second"


def test_preloading_builds_the_clients_only_with_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(registry, "_clients", {})
    monkeypatch.setattr(registry, "_sessions", {})
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    registry.preload_clients()
    assert registry._clients == {}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    registry.preload_clients()
    assert len(registry._clients) == 2  # the looped and the unlooped client open_store gives
