"""A stand-in with summarize's parameter shape (`params.transaction_id`), so the upload
trigger is tested even where flows/summarize.py has not landed."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel


class UploadParams(BaseModel):
    transaction_id: str | None = None
    only_missing: bool = True


@flow(name="ferry-test-on-upload")
def on_upload(params: UploadParams = UploadParams()) -> str | None:  # noqa: B008 - a form default
    return params.transaction_id
