from storage_core.stores.base import (
    CopyFile,
    CopyRange,
    Delete,
    DeleteMany,
    GetRange,
    GetRangeAndTail,
    GetRangeInto,
    GetTail,
    Head,
    List,
    Multipart,
    ObjectMeta,
    ObjectStore,
    OpenRead,
    PendingUpload,
    Presign,
    Put,
    PutEmptyMany,
    StoredPart,
    Tail,
)
from storage_core.stores.local import LocalStore
from storage_core.stores.registry import open_store


def __getattr__(name: str):  # noqa: ANN202 - S3Store loads boto3: only when asked for
    if name == "S3Store":
        from storage_core.stores.s3 import S3Store

        return S3Store
    raise AttributeError(name)


__all__ = [
    "CopyFile",
    "CopyRange",
    "Delete",
    "DeleteMany",
    "GetRange",
    "GetRangeAndTail",
    "GetRangeInto",
    "GetTail",
    "Head",
    "List",
    "LocalStore",
    "Multipart",
    "ObjectMeta",
    "ObjectStore",
    "OpenRead",
    "PendingUpload",
    "Presign",
    "Put",
    "PutEmptyMany",
    "S3Store",
    "StoredPart",
    "Tail",
    "open_store",
]
