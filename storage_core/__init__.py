"""Ferry's I/O library: stores, uploads, downloads, range reads, formats, catalog. No Prefect here."""
