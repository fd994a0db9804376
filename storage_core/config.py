"""Ferry's settings, from the environment (pydantic-settings).

`FERRY_STORE` and `FERRY_DATABASE_URL` default to a folder and a SQLite file under
`./.ferry/`; the usual AWS variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_PROFILE`) are honoured.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def _home() -> Path:
    return Path.cwd() / ".ferry"


class FerrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore")

    home: Path = Field(default_factory=_home, description="where the embedded defaults live")
    store: str = Field(default="", description="default destination store URI")
    database_url: str = Field(default="", description="SQLAlchemy URL of Ferry's catalog")
    part_size: int = Field(default=16 * MiB, ge=5 * MiB, description="multipart part size (grows for huge files)")
    multipart_threshold: int = Field(default=16 * MiB, ge=5 * MiB)
    # 16 MiB x 4 measured as fast as any wider setting on 2 cores, at 138 MiB peak RSS (bench/upload.py)
    max_concurrency: int = Field(default=4, ge=1, le=64, description="parallel parts per transfer")
    # requests in flight per process, small files and parts together (bytes held stay within
    # max_concurrency x part_size): many 100 KiB files are latency-bound, not bandwidth-bound.
    # 1,000 x 100 KiB to loopback SeaweedFS on 2 busy cores: 8 -> 11.7 s, 16 -> 9.5 s, 32 -> 10.0 s
    # (upload); the download's files in flight likewise 7.8 / 5.5 / 7.4 s (/tmp sweep, one run each)
    max_in_flight: int = Field(default=16, ge=1, le=256, description="requests in flight per batch of files")
    part_attempts: int = Field(
        default=6, ge=1, le=20, description="tries per part on retryable errors (the budget: storage_core.retry)"
    )
    # long enough for a busy writer's commit, short enough that a locked or unreachable
    # catalog is reported (one `error:` line, a gateway 503) well within 15 s
    catalog_timeout: float = Field(
        default=10.0, gt=0, le=600, description="seconds to wait for a locked SQLite or a PostgreSQL connection"
    )
    # how long a presigned URL a gateway hands out stays valid (SigV4's ceiling is 7 days);
    # reconcile keeps a finished upload's staging objects that long, so its URLs stay fenced
    url_expiry: int = Field(default=900, ge=1, le=7 * 24 * 3600, description="seconds a device's presigned URL stays valid")
    # how many single-file URLs a gateway hands out at a time (a device asks for the next
    # window as it goes): an abort fences only the staging keys a URL was issued for, one
    # request each, so this bounds what an abort of a large manifest costs (~1 s per 1,000
    # against loopback SeaweedFS on a busy 2-core machine)
    url_window: int = Field(default=1000, ge=1, le=100_000, description="single-file URLs a gateway answer carries at most")
    # the local copies reads keep of stored objects (storage_core.ranges.cache), under home/cache
    cache_max_bytes: int = Field(default=4 * 1024**3, ge=1, description="bytes the local disk cache may hold")
    # across hosts only: `ferry worker` turns it on for the flow runs it starts (tasks/limits.py)
    store_limits: bool = Field(
        default=False, description="upload tasks hold a slot of their store's Prefect concurrency limit ferry-store:<bucket>"
    )
    endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("FERRY_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    region: str | None = Field(default=None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def store_uri(self) -> str:
        return self.store or f"file://{self.home / 'store'}"

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'catalog.db'}"


def load_settings(**overrides: object) -> FerrySettings:
    """Settings from the environment, with explicit overrides winning."""
    return FerrySettings(**{k: v for k, v in overrides.items() if v is not None})


__all__ = ["FerrySettings", "MiB", "load_settings"]
