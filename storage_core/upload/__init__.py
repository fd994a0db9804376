from storage_core.parts import MAX_PARTS, MIN_PART_SIZE, Part, choose_part_size, plan_parts
from storage_core.upload.plan import batch_items
from storage_core.upload.transfer import (
    CompletedPart,
    FileIdentity,
    OnProgress,
    ResumeState,
    UploadJournal,
    UploadResult,
    upload_file,
    upload_object,
)

__all__ = [
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "CompletedPart",
    "FileIdentity",
    "OnProgress",
    "Part",
    "ResumeState",
    "UploadJournal",
    "UploadResult",
    "batch_items",
    "choose_part_size",
    "plan_parts",
    "upload_file",
    "upload_object",
]
