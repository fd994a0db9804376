"""Rolling archives on a device: crash-safe MCAP recording that rolls by size and time,
recovers past damage, and reads back across archives in sequence order."""

from storage_core.device.archive.format import ArchiveRecord, PossiblyLost, archive_name, decode_record, encode_record
from storage_core.device.archive.reader import archive_paths, read_archives, sequence_gaps
from storage_core.device.archive.recover import RecoveryReport, quarantine_archive, recover_file, recover_folder
from storage_core.device.archive.scan import ArchiveReader, ArchiveScan, DamagedRange, scan_archive
from storage_core.device.archive.writer import ArchiveInfo, ArchiveWriter, Durability, WhenFull, WriterReport

__all__ = [
    "ArchiveInfo",
    "ArchiveReader",
    "ArchiveRecord",
    "ArchiveScan",
    "ArchiveWriter",
    "DamagedRange",
    "Durability",
    "PossiblyLost",
    "RecoveryReport",
    "WhenFull",
    "WriterReport",
    "archive_name",
    "archive_paths",
    "decode_record",
    "encode_record",
    "quarantine_archive",
    "read_archives",
    "recover_file",
    "recover_folder",
    "scan_archive",
    "sequence_gaps",
]
