"""Landing sources as an operator declares them, and `ferry serve`'s one-line refusals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from deployments.definitions import ferry_deployments
from deployments.landing import landing_source, load_landing_config, parse_every, unique_sources
from storage_core.errors import ConfigError
from tests.flows.conftest import run_ferry


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("10m", 600), ("1.5h", 5400), ("1d", 86400)])
def test_parse_every(text: str, seconds: int):
    assert parse_every(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10x", "-5m", "0.2s", "m"])
def test_parse_every_refuses(text: str):
    with pytest.raises(ConfigError, match="invalid interval"):
        parse_every(text)


def test_sources_are_validated(tmp_path: Path):
    with pytest.raises(ConfigError, match="use a folder or s3://bucket/prefix"):
        landing_source("gs://fleet/landing/")
    with pytest.raises(ConfigError, match="not a valid bucket name"):
        landing_source("s3://Fleet/landing/")
    with pytest.raises(ConfigError, match="not an existing folder"):
        landing_source(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not both"):
        landing_source(tmp_path, every="1m", cron="* * * * *")
    with pytest.raises(ConfigError, match="invalid cron"):
        landing_source(tmp_path, cron="every tuesday")
    with pytest.raises(ConfigError, match="declared twice"):
        unique_sources([landing_source(tmp_path), landing_source(str(tmp_path) + "/")])
    with pytest.raises(ConfigError, match="s3://fleet/landing is declared twice"):
        unique_sources([landing_source("s3://fleet/landing"), landing_source("s3://fleet/landing/")])
    assert landing_source(f"file://{tmp_path}").source == str(tmp_path.resolve())


def test_a_bucket_prefix_is_a_landing_source(tmp_path: Path):
    config = tmp_path / "landing.toml"
    config.write_text('[[landing]]\nprefix = "s3://uploads/robots/"\ncron = "*/5 * * * *"\ndevice = "r1"\n')
    (source,) = load_landing_config(config)
    assert source.source == "s3://uploads/robots" and source.deployment_name.startswith("landing-robots-")
    (spec, *_) = ferry_deployments([source])
    assert spec.parameters["source"] == "s3://uploads/robots" and spec.cron == "*/5 * * * *"
    config.write_text(f'[[landing]]\nprefix = "s3://uploads/robots"\nfolder = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="give one 'folder' or 'prefix'"):
        load_landing_config(config)


def test_one_deployment_per_source_with_a_stable_name(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = tmp_path / "landing.toml"
    config.write_text(
        f'[[landing]]\nfolder = "{tmp_path / "a"}"\nevery = "5m"\ndevice = "r1"\n\n'
        f'[[landing]]\nfolder = "{tmp_path / "b"}"\ncron = "*/15 * * * *"\nto = "s3://fleet/raw"\n'
    )
    a, b = load_landing_config(config)
    specs = ferry_deployments([a, b])
    assert [s.name for s in specs[:2]] == [a.deployment_name, b.deployment_name]
    assert specs[0].interval == timedelta(minutes=5) and specs[0].parameters["device"] == "r1"
    assert specs[1].cron == "*/15 * * * *" and specs[1].parameters["to"] == "s3://fleet/raw"
    assert a.deployment_name == landing_source(tmp_path / "a").deployment_name  # same folder, same deployment
    assert a.deployment_name.startswith("landing-a-")
    config.write_text(f'[[landing]]\nfolder = "{tmp_path / "a"}"\nevry = "5m"\n')
    with pytest.raises(ConfigError, match=r"unknown keys \['evry'\]"):
        load_landing_config(config)


@pytest.mark.slow  # two `ferry serve` subprocesses, each importing Prefect
def test_serve_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "ph"), "FERRY_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    bucket = run_ferry(["serve", "--landing", "s3://Fleet/landing"], env, timeout=60)
    down = run_ferry(["serve", "--api-url", "http://127.0.0.1:9/api"], env, timeout=60)
    for result, expected in ((bucket, "'Fleet' is not a valid bucket name"), (down, "no Prefect API at http://127.0.0.1:9/api")):
        assert result.returncode == 1 and expected in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
