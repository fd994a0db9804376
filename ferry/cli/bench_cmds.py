"""`ferry bench upload|download|summary|archive|derive|stream|scale`: pass-through to the benchmarks in `bench/`."""

from __future__ import annotations

import typer

from ferry.cli.common import bench_app


def _bench(name: str, args: list[str]) -> None:
    import importlib

    module = importlib.import_module(f"bench.{name}")
    code = module.main(args)
    if code:
        raise typer.Exit(code)


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@bench_app.command("upload", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_upload(ctx: typer.Context) -> None:
    """Ferry vs boto3 upload_file vs curl, s5cmd, rclone and aws-cli (SeaweedFS on loopback), and local store vs cp."""
    _bench("upload", ctx.args)


@bench_app.command("download", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_download(ctx: typer.Context) -> None:
    """Ferry's verified download vs boto3 download_file vs curl, s5cmd, rclone and aws-cli, and local store vs cp."""
    _bench("download", ctx.args)


@bench_app.command("summary", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_summary(ctx: typer.Context) -> None:
    """Ferry's range-read MCAP summary vs a full download + mcap vs mcap's SeekingReader."""
    _bench("summary", ctx.args)


@bench_app.command("archive", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_archive(ctx: typer.Context) -> None:
    """Ferry's rolling archive (durability group and close) vs the mcap Python writer: records/s, MB/s, overhead per record."""
    _bench("archive", ctx.args)


@bench_app.command("derive", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_derive(ctx: typer.Context) -> None:
    """Ferry's topics product (MCAP → per-topic Parquet, streamed, published) vs a plain mcap + pyarrow script: MB/s."""
    _bench("derive", ctx.args)


@bench_app.command("stream", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_stream(ctx: typer.Context) -> None:
    """Telemetry appended through the gateway (Delta commits) and read back vs pyarrow writing one Parquet file."""
    _bench("stream", ctx.args)


@bench_app.command("scale", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_scale(ctx: typer.Context) -> None:
    """The same backfill by 1, 2 and 3 workers on hosts of their own (network namespaces, 20 ms latency): files/s, MB/s, store CPU; needs root."""
    _bench("scale", ctx.args)
