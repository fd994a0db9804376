"""Landing sources an operator declares: a folder or bucket prefix, how often to ingest
it, and where to.

Declared on the command line (`ferry serve --landing DIR --every 10m`, repeatable; a
bucket prefix is `--landing s3://bucket/prefix`) or in a small TOML file
(`ferry serve --config landing.toml`):

    [[landing]]
    folder = "/data/landing/robots"   # DEVICE/RECORDING/files (or RECORDING/files with device)
    every = "10m"                      # or: cron = "*/10 * * * *"
    device = "r1"                      # optional
    to = "s3://fleet/raw"              # optional; default FERRY_STORE

    [[landing]]
    prefix = "s3://uploads/robots"     # a bucket prefix instead of a folder, same layout
    cron = "*/5 * * * *"

Everything here is pure parsing and validation; nothing talks to Prefect or a store.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from storage_core.errors import ConfigError
from storage_core.keys import parse_uri

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
DEFAULT_EVERY = timedelta(minutes=10)


def parse_every(text: str) -> timedelta:
    """'90' or '90s', '10m', '1.5h', '1d' → timedelta; at least one second."""
    found = _DURATION.match(str(text).lower())
    if not found:
        raise ConfigError(f"invalid interval {text!r}: use e.g. 30s, 10m, 1h or 1d")
    seconds = float(found[1]) * _UNITS[found[2] or "s"]
    if seconds < 1:
        raise ConfigError(f"invalid interval {text!r}: at least one second")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class LandingSource:
    """One folder or bucket prefix ingested on a schedule: exactly one of `every` and `cron` is set.

    `source` is canonical (a resolved folder path, or `s3://bucket/prefix` without a
    trailing slash), so one place declared twice is recognised."""

    source: str
    every: timedelta | None = None
    cron: str | None = None
    device: str | None = None
    to: str | None = None

    @property
    def deployment_name(self) -> str:
        """Stable per source, readable in the UI: `landing-<last name>-<6 hex of the source>`."""
        name = self.source.rstrip("/").rsplit("/", 1)[-1]
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "root"
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:6]
        return f"landing-{slug}-{digest}"

    @property
    def schedule_text(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.every}"


def landing_source(
    source: str | Path,
    *,
    every: str | timedelta | None = None,
    cron: str | None = None,
    device: str | None = None,
    to: str | None = None,
) -> LandingSource:
    """Validate one declared source: an existing folder, or an `s3://bucket/prefix`."""
    text = str(source)
    if text.startswith("s3://"):
        location = parse_uri(text)
        where = f"s3://{location.root}/{location.prefix}".rstrip("/")
    else:
        if text.startswith("file://"):
            text = parse_uri(text).root
        elif "://" in text:
            raise ConfigError(f"landing source {text}: use a folder or s3://bucket/prefix")
        path = Path(text).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"landing source {path} is not an existing folder")
        where = str(path)
    if every is not None and cron is not None:
        raise ConfigError(f"landing source {where}: give an interval or a cron schedule, not both")
    if cron is not None:
        _check_cron(cron, where)
        return LandingSource(where, cron=cron, device=device, to=to)
    interval = every if isinstance(every, timedelta) else parse_every(every) if every is not None else DEFAULT_EVERY
    return LandingSource(where, every=interval, device=device, to=to)


def _check_cron(cron: str, where: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)  # the same check Prefect applies when the deployment is registered
    except ValidationError as exc:
        raise ConfigError(f"landing source {where}: invalid cron schedule {cron!r}") from exc


def load_landing_config(path: str | Path) -> list[LandingSource]:
    """The `[[landing]]` tables of a TOML file, each validated like a command-line source."""
    file = Path(path)
    try:
        document = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read landing config {file}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"landing config {file} is not valid TOML: {exc}") from exc
    tables = document.get("landing", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"landing config {file}: expected [[landing]] tables")
    sources = []
    for number, table in enumerate(tables, start=1):
        unknown = set(table) - {"folder", "prefix", "every", "cron", "device", "to"}
        places = [table.pop(name) for name in ("folder", "prefix") if name in table]
        if unknown or len(places) != 1:
            problem = f"unknown keys {sorted(unknown)}" if unknown else "give one 'folder' or 'prefix'"
            raise ConfigError(f"landing config {file}, [[landing]] #{number}: {problem}")
        sources.append(landing_source(places[0], **table))
    return sources


def unique_sources(sources: list[LandingSource]) -> list[LandingSource]:
    """Refuse the same source twice: two schedules would race for one deployment name."""
    seen: dict[str, LandingSource] = {}
    for source in sources:
        if source.deployment_name in seen:
            raise ConfigError(f"landing source {source.source} is declared twice")
        seen[source.deployment_name] = source
    return sources


__all__ = ["DEFAULT_EVERY", "LandingSource", "landing_source", "load_landing_config", "parse_every", "unique_sources"]
