from storage_core.catalog.db import Catalog, open_catalog, open_default_catalog
from storage_core.catalog.models import ItemStatus, TransactionStatus
from storage_core.catalog.views import ItemInfo, ObjectInfo, TransactionInfo

__all__ = [
    "Catalog",
    "ItemInfo",
    "ItemStatus",
    "ObjectInfo",
    "TransactionInfo",
    "TransactionStatus",
    "open_catalog",
    "open_default_catalog",
]
