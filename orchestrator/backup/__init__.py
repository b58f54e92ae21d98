"""Backup bundles: a whole version (image, version folder, ledger records, hashes) as one archive.

For air-gapped hosts: `create` writes it (streamed, temp file + rename), `verify` checks every
byte, `restore` loads it into an engine and the ledger ready to switch to, `list` shows what a
directory holds. The format is described in orchestrator/backup/format.py and docs/backup.md.

Archives are untrusted input: every name, size and record in one is checked before it becomes
a path, reaches the engine or the ledger (docs/security.md, "Backup archives").

Modules: format (tar layout, SHA256SUMS, limits), writer / reader (streaming tar with hashes),
dockersave (the strict gate a docker save tar passes: one untagged image matching its config),
archive (whole archive, engine-free), records (the ledger records a restore may write),
engine_io (the Docker calls), create / verify / restore (the flows), catalog (listing, signed
sidecars).
"""

from orchestrator.backup.archive import ArchiveInput, OpenArchive, open_archive, write_archive
from orchestrator.backup.catalog import list_archives
from orchestrator.backup.create import create_backup
from orchestrator.backup.reader import ArchiveError, ForeignArchiveError
from orchestrator.backup.restore import restore_backup
from orchestrator.backup.verify import verify_archive

__all__ = [
    "ArchiveError",
    "ArchiveInput",
    "ForeignArchiveError",
    "OpenArchive",
    "create_backup",
    "list_archives",
    "open_archive",
    "restore_backup",
    "verify_archive",
    "write_archive",
]
