from storage_core.products.derive import (
    MODES,
    PRODUCTS,
    DeriveOutcome,
    PlannedProduct,
    derive_one,
    plan_derive,
    product_definition,
)
from storage_core.products.frontends import CACHE_ENV, GetResult, get_product
from storage_core.products.lineage import OptionSpec, ProductDefinition, canonical_json, lineage, lineage_key, short_key
from storage_core.products.maintenance import GarbageReport, RechunkResult, collect_garbage, rechunk_product
from storage_core.products.publish import AttemptWriter, Manifest, ProductFile, check_attempt, read_manifest
from storage_core.products.topics import TOPICS, dataset_name

__all__ = [
    "CACHE_ENV",
    "MODES",
    "PRODUCTS",
    "TOPICS",
    "AttemptWriter",
    "DeriveOutcome",
    "GarbageReport",
    "GetResult",
    "Manifest",
    "OptionSpec",
    "PlannedProduct",
    "ProductDefinition",
    "ProductFile",
    "RechunkResult",
    "canonical_json",
    "check_attempt",
    "collect_garbage",
    "dataset_name",
    "derive_one",
    "get_product",
    "lineage",
    "lineage_key",
    "plan_derive",
    "product_definition",
    "read_manifest",
    "rechunk_product",
    "short_key",
]
