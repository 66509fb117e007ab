"""Crash consistency and damage detection for Milvus Lite 3.2.2.

What the engine does, and what this module changes (each a replacement of one engine function):

- **Recovery replays writes twice.** A flush commits ``manifest.json`` before it deletes the
  write-ahead log (WAL); recovery replays every WAL file it finds, so a kill between the two
  brings the flushed rows back a second time (``count()`` 300 for 200 ids). Replay now skips a
  record the manifest already covers: its WAL number is below ``manifest.active_wal_number``
  (the flush that froze that WAL committed) *and* its ``_seq`` is at most ``manifest.current_seq``.
  With serialised writes (lookalike's engine layer) either condition alone implies the other;
  requiring both keeps every record an unserialised interleaving could have left out of a flush.
  Deletes share one ``_seq`` per batch and compaction never raises ``current_seq``, so a covered
  record is always in a segment or superseded there.
- **Index files are written in place and trusted.** A full disk or a kill leaves a truncated
  ``.idx``/``.sidx`` that the next open loads (or fails on) with no fallback. Index files are
  now written to ``<file>.tmp``, fsynced, given a ``<file>.crc32`` sidecar (in the partition's
  ``index_checksums`` folder, so ``indexes`` holds the engine's files only), then renamed; on
  open an index whose sidecar is missing or disagrees, or that fails to load, is rebuilt from
  its segment (one WARNING). An index is derived data: rebuilding it is an exact recovery.
- **Damage goes unnoticed.** The manifest now records each data and delta file's size and CRC-32
  and a CRC-32 seal of its own content (``integrity`` key; an unpatched engine ignores it).
  Opening a collection checks the seal, that ``manifest.json.prev`` is not newer, and every
  referenced file's size and CRC-32, and refuses with ``StorageError`` (naming the file and what
  to do) instead of falling back to the previous manifest, loading a segment of garbage or
  silently dropping a missing one. Recovery deletes a file the manifest does not list only when
  it is provably an orphan (a flush or compaction that did not commit: its rows are at or below
  ``current_seq``, or in a WAL being replayed); otherwise it refuses. A WAL that stops at a
  damaged record with more records after it is refused; a torn last record (a write cut by a
  crash, never acknowledged) is dropped as before. A collection directory whose ``schema.json``
  is missing or unreadable is refused instead of vanishing from the listing.
- **A failed flush loses writes in the running process.** ``_trigger_flush`` swaps in an empty
  memtable before it writes; if the write fails (a full disk) the rows vanish from reads, and the
  next flush deletes the WAL that still held them. A failed flush, or a failed WAL append, now
  puts the collection in a failed state: every later read and write raises the ``StorageError``
  (``disk_full`` for ENOSPC/EDQUOT) and closing it keeps its WAL, so reopening the directory
  recovers exactly what was acknowledged.
- Data and delta files are fsynced (and their directory) before the manifest that names them is
  committed, so the manifest never names a file the disk does not hold. Durability of an
  acknowledged write against ``kill -9`` comes from the WAL being handed to the kernel before
  ``insert`` returns (the engine does this); against power loss the WAL is fsynced only at flush
  (the engine's ``sync_mode="close"``): out of scope here, see docs/reliability.md.

Measured: docs/reliability.md (kinds of damage and outcomes, SIGKILL rounds, cost of the CRCs).
Upstream: each replacement is written as the engine function it replaces would read with the fix
(docs/reliability.md lists which would be offered to milvus-lite and why).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from lookalike.errors import StorageError

logger = logging.getLogger(__name__)

try:
    from milvus_lite.exceptions import ManifestCorruptedError as _EngineManifestError
except ImportError:  # this module is loaded only by apply(), with milvus_lite installed
    _EngineManifestError = Exception  # type: ignore[assignment,misc]


class ManifestDamagedError(StorageError, _EngineManifestError):
    """A damaged or missing ``manifest.json``, refused where the engine fell back to
    ``manifest.json.prev``. Also the engine's ``ManifestCorruptedError``, so code that catches
    the engine's error (its gRPC adapter, users of Milvus Lite) still catches this one."""

#: Key of the integrity block in manifest.json.
INTEGRITY_KEY = "integrity"
#: Folder beside a partition's ``indexes`` holding one ``<index file>.crc32`` per index file.
CHECKSUM_DIR = "index_checksums"
_CHUNK = 8 << 20
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

# CRC-32 and size of the data/delta files this process wrote, by absolute path.
_written: dict[str, tuple[int, int]] = {}
_written_lock = threading.Lock()
# Per-thread recovery context: what the manifest being recovered covers, what the WAL held.
_recovery = threading.local()


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The (owner, attribute, make replacement from original) patches of this module."""
    from milvus_lite import db
    from milvus_lite.engine import collection, compaction, flush, recovery
    from milvus_lite.storage import wal
    from milvus_lite.storage.manifest import Manifest
    from milvus_lite.storage.segment import Segment

    return [
        # flush.py and compaction.py imported the writers by name: patch those bindings.
        (flush, "write_data_file", _make_checksummed_write),
        (flush, "write_delta_file", _make_checksummed_write),
        (compaction, "write_data_file", _make_checksummed_write),
        (Manifest, "save", _make_sealed_save),
        (Manifest, "load", _make_verified_load),
        (collection, "execute_recovery", _make_verified_recovery),
        (recovery, "replay_wal_operations", _make_replay_skipping_flushed),
        (recovery, "_cleanup_orphan_files", _make_cautious_orphan_cleanup),
        (wal, "_read_wal_file", _make_wal_read_refusing_damage),
        (Segment, "build_or_load_index", _make_safe_vector_index),
        (Segment, "build_or_load_scalar_index", _make_safe_scalar_index),
        (collection.Collection, "_trigger_flush", _make_flush_failing_safe),
        (collection.Collection, "_apply", _make_apply_failing_safe),
        (collection.Collection, "_read_snapshot", _make_read_checking_failure),
        (collection.Collection, "close", _make_close_keeping_the_wal),
        (db.MilvusLite, "has_collection", _make_has_collection_refusing_damage),
        (db, "load_schema", _make_schema_load_refusing_damage),
    ]


# ── helpers ─────────────────────────────────────────────────────────────────


def file_crc32(path: str) -> tuple[int, int]:
    """The size and CRC-32 of the file at ``path``.

    Args:
        path: a file.

    Returns:
        (size in bytes, CRC-32 as an unsigned int).
    """
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(payload: dict[str, Any]) -> int:
    """CRC-32 of the manifest's canonical JSON without the seal itself."""
    body = dict(payload)
    integrity = dict(body.get(INTEGRITY_KEY) or {})
    integrity.pop("seal", None)
    body[INTEGRITY_KEY] = integrity
    return zlib.crc32(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())


def damaged(path: str, problem: str, kind: type[StorageError] = StorageError) -> StorageError:
    """The error for a damaged file of a data directory.

    Args:
        path: the damaged (or missing) file or directory.
        problem: what is wrong with it.
        kind: the ``StorageError`` class to raise (``ManifestDamagedError`` for the manifest).

    Returns:
        A ``StorageError`` naming the file, saying nothing was changed and what to do.
    """
    return kind(
        f"damaged data directory: {path} {problem}. The collection was not opened and nothing was "
        "changed on disk, so no answer comes from incomplete data. To fix: restore the data directory "
        "from a backup, or move this collection's directory aside and index its documents again; keep "
        "a copy of the damaged directory to diagnose it."
    )


def storage_failure(exc: BaseException, where: str) -> StorageError:
    """A ``StorageError`` for an engine write that failed (``disk_full`` for ENOSPC/EDQUOT)."""
    full = is_disk_full(exc)
    cause = "the disk is full" if full else f"a write failed ({exc})"
    return StorageError(
        f"cannot write to the data directory {where}: {cause}. Nothing acknowledged is lost: this "
        "collection refuses further requests until it is reopened, which recovers every acknowledged "
        "write from its log. To fix: " + ("free disk space" if full else "check the disk")
        + ", then reopen the client (restart the service).",
        disk_full=full,
    )


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or a quota is full.

    Arrow reports ENOSPC as an ``OSError`` without ``errno``, so its text is checked too.
    """
    while exc is not None:
        if isinstance(exc, OSError) and (exc.errno in _DISK_FULL or any(
                text in str(exc) for text in ("No space left on device", "Disk quota exceeded"))):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _wrap(original: Callable[..., Any], replacement: Callable[..., Any]) -> Callable[..., Any]:
    replacement.__doc__ = original.__doc__
    replacement.__wrapped__ = original  # type: ignore[attr-defined]
    return replacement


# ── data and delta files: fsynced, their CRC-32 remembered for the manifest ──


def _make_checksummed_write(original: Callable[..., Any]) -> Callable[..., Any]:
    """``write_data_file``/``write_delta_file`` that fsync the file and its directory and remember
    its size and CRC-32 (read back from the page cache) for the next manifest save."""

    def write(table: Any, partition_dir: str, seq_min: int, seq_max: int) -> str:
        rel = original(table, partition_dir, seq_min, seq_max)
        path = os.path.join(partition_dir, rel)
        _fsync_path(path)
        _fsync_path(os.path.dirname(path))
        sums = file_crc32(path)
        with _written_lock:
            _written[os.path.abspath(path)] = sums
        return rel

    return _wrap(original, write)


def _file_sums(manifest: Any, partition: str, rel: str) -> list[int] | None:
    """[size, crc] of one file the manifest lists: as written, as recorded, or read now; None
    for a file that does not exist (nothing to record: opening the collection refuses it as
    missing, while saving such a manifest still works as the engine's save does)."""
    path = os.path.abspath(os.path.join(manifest.data_dir, "partitions", partition, rel))
    with _written_lock:
        known = _written.get(path)
    if known is None:
        known = (getattr(manifest, "_lookalike_files", None) or {}).get(f"{partition}/{rel}")
    if known is None:  # listed by a manifest written without checksums: trust it from now on
        if not os.path.exists(path):
            return None
        known = file_crc32(path)
    return [int(known[0]), int(known[1])]


# ── the manifest: sealed, with every file's checksum; verified on load ───────


def _make_sealed_save(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Manifest.save`` that writes an ``integrity`` block (each data/delta file's size and CRC-32,
    and a seal over the whole manifest). Same protocol as the engine's (tmp, fsync, rename, fsync
    of the directory), except that ``manifest.json.prev`` is also written by tmp and rename."""
    from milvus_lite.storage import manifest as module

    def save(self: Any) -> None:
        data_dir = self.data_dir
        os.makedirs(data_dir, exist_ok=True)
        payload = self._to_payload()
        payload["version"] = self._version + 1
        files = {}
        for kind in (self.get_all_data_files(), self.get_all_delta_files()):
            for partition, rels in kind.items():
                for rel in rels:
                    if (sums := _file_sums(self, partition, rel)) is not None:
                        files[f"{partition}/{rel}"] = sums
        payload[INTEGRITY_KEY] = {"files": files}
        payload[INTEGRITY_KEY]["seal"] = _seal(payload)
        target = os.path.join(data_dir, module.MANIFEST_FILENAME)
        tmp = os.path.join(data_dir, module.MANIFEST_TMP_FILENAME)
        try:
            if os.path.exists(target):  # the previous manifest, for a person to inspect
                prev_tmp = os.path.join(data_dir, module.MANIFEST_PREV_FILENAME + ".tmp")
                with open(target, "rb") as src, open(prev_tmp, "wb") as dst:
                    dst.write(src.read())
                os.replace(prev_tmp, os.path.join(data_dir, module.MANIFEST_PREV_FILENAME))
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(payload, f, indent=2, sort_keys=True, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)  # the commit point
        except BaseException:
            for leftover in (tmp,):
                if os.path.exists(leftover):
                    os.remove(leftover)
            raise
        self._version = payload["version"]
        self._lookalike_files = files
        _fsync_path(data_dir)

    return _wrap(original, save)


def _read_manifest_payload(path: str) -> dict[str, Any]:
    """The checked JSON payload of a manifest file; raises ``StorageError`` when damaged."""
    try:
        with open(path, "rb") as f:
            payload = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged(path, f"cannot be read ({type(exc).__name__}: {exc})", ManifestDamagedError) from None
    if not isinstance(payload, dict):
        raise damaged(path, "is not a JSON object", ManifestDamagedError)
    integrity = payload.get(INTEGRITY_KEY)
    if integrity is not None and (not isinstance(integrity, dict) or integrity.get("seal") != _seal(payload)):
        raise damaged(path, "does not match its own checksum (its content was changed after it was written)",
                      ManifestDamagedError)
    return payload


def _make_verified_load(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Manifest.load`` that refuses a damaged or missing manifest instead of falling back to
    ``manifest.json.prev`` (which names files that recovery then deletes, and lacks the last
    commit, whose WAL is gone)."""
    from milvus_lite.storage import manifest as module

    def load(cls: Any, data_dir: str) -> Any:
        target = os.path.join(data_dir, module.MANIFEST_FILENAME)
        prev = os.path.join(data_dir, module.MANIFEST_PREV_FILENAME)
        if not os.path.exists(target):
            if os.path.exists(prev):
                raise damaged(target, "is missing (manifest.json.prev exists, so it was written before)",
                              ManifestDamagedError)
            fresh = cls(data_dir)  # a new collection; recovery refuses any file it cannot explain
            fresh._lookalike_files = {}
            return fresh
        payload = _read_manifest_payload(target)
        try:
            manifest = cls._load_path(data_dir, target)
        except (KeyError, ValueError, TypeError) as exc:
            raise damaged(target, f"is not a valid manifest ({exc})", ManifestDamagedError) from None
        integrity = payload.get(INTEGRITY_KEY)
        manifest._lookalike_files = dict(integrity["files"]) if integrity else None
        if os.path.exists(prev):
            try:
                older = _read_manifest_payload(prev)
            except StorageError:
                older = None  # the backup copy is only for people; a damaged one does not matter
            if older is not None and int(older.get("version", 0)) > manifest.version:
                raise damaged(target, f"is older (version {manifest.version}) than manifest.json.prev "
                                      f"(version {older.get('version')}): it was replaced by an old copy",
                              ManifestDamagedError)
        return manifest

    return classmethod(_wrap(original, load))


# ── recovery: files checked, flushed records skipped, orphans proven ─────────


def _verify_files(data_dir: str, manifest: Any) -> None:
    """Refuse a manifest whose data/delta files are missing or differ from what it recorded."""
    recorded = getattr(manifest, "_lookalike_files", None)
    for kind in (manifest.get_all_data_files(), manifest.get_all_delta_files()):
        for partition, rels in kind.items():
            for rel in rels:
                path = os.path.join(data_dir, "partitions", partition, rel)
                if not os.path.exists(path):
                    raise damaged(path, "is missing (the manifest lists it)")
                expected = None if recorded is None else recorded.get(f"{partition}/{rel}")
                if recorded is not None and expected is None:
                    raise damaged(os.path.join(data_dir, "manifest.json"), f"has no checksum for {partition}/{rel}")
                if expected is None:
                    continue  # written by an engine without checksums: nothing to compare with
                size = os.path.getsize(path)
                if size != expected[0]:
                    raise damaged(path, f"has {size} bytes, {expected[0]} were written")
                if file_crc32(path)[1] != expected[1]:
                    raise damaged(path, "does not match the checksum recorded when it was written")


def _make_verified_recovery(original: Callable[..., Any]) -> Callable[..., Any]:
    """``execute_recovery`` that first verifies every file the manifest lists, then replays the
    WAL skipping what the manifest covers, and deletes only provable orphans."""

    def execute_recovery(data_dir: str, schema: Any, manifest: Any) -> Any:
        _verify_files(data_dir, manifest)
        _recovery.manifest = manifest
        _recovery.seen = [None, None]  # lowest and highest _seq found in the WAL
        try:
            return original(data_dir, schema, manifest)
        finally:
            _recovery.manifest = _recovery.seen = None

    return _wrap(original, execute_recovery)


def _make_replay_skipping_flushed(original: Callable[..., Any]) -> Callable[..., Any]:
    """``replay_wal_operations`` that drops the records a committed flush already wrote to a
    segment: WAL number below ``active_wal_number`` and ``_seq`` at most ``current_seq``."""
    import pyarrow.compute as pc

    def replay_wal_operations(wal_dir: str, wal_number: int, pk_field: str) -> Iterator[Any]:
        manifest = getattr(_recovery, "manifest", None)
        seen = getattr(_recovery, "seen", None)
        active = None if manifest is None else manifest.active_wal_number
        for op in original(wal_dir, wal_number, pk_field):
            seqs = op.batch.column("_seq")
            if seen is not None and len(seqs):
                low, high = pc.min(seqs).as_py(), pc.max(seqs).as_py()
                seen[0] = low if seen[0] is None else min(seen[0], low)
                seen[1] = high if seen[1] is None else max(seen[1], high)
            if active is not None and wal_number < active:
                keep = pc.greater(seqs, manifest.current_seq)
                kept = pc.sum(keep).as_py() or 0
                if kept == 0:
                    continue
                if kept < len(seqs):
                    op = type(op)(partition=op.partition, batch=op.batch.filter(keep))
            yield op

    return _wrap(original, replay_wal_operations)


def _make_cautious_orphan_cleanup(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_cleanup_orphan_files`` that refuses when a data/delta file the manifest does not list
    cannot be an uncommitted flush or compaction: rows above ``current_seq`` that no WAL being
    replayed holds mean the manifest is older than the data (deleting them would lose writes).
    Also removes this module's leftovers: ``*.tmp`` index files and stale ``.crc32`` sidecars
    (an index dropped or compacted away while the collection was open leaves its sidecar until
    then)."""
    from milvus_lite.storage.data_file import parse_seq_range
    from milvus_lite.storage.snapshots import snapshot_references

    def _cleanup_orphan_files(data_dir: str, manifest: Any) -> None:
        root = os.path.join(data_dir, "partitions")
        listed = {"data": manifest.get_all_data_files(), "delta": manifest.get_all_delta_files()}
        pinned = dict(zip(("data", "delta"), snapshot_references(data_dir)[:2], strict=True))
        seen = getattr(_recovery, "seen", None) or [None, None]
        for partition in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            for kind in ("data", "delta"):
                folder = os.path.join(root, partition, kind)
                if not os.path.isdir(folder):
                    continue
                known = set(listed[kind].get(partition, [])) | set(pinned[kind].get(partition, set()))
                for name in os.listdir(folder):
                    if f"{kind}/{name}" in known:
                        continue
                    try:
                        low, high = parse_seq_range(name)
                    except ValueError:
                        continue  # not the engine's file: the engine leaves it alone too
                    in_wal = seen[0] is not None and seen[0] <= low and high <= seen[1]
                    if high > manifest.current_seq and not in_wal:
                        raise damaged(os.path.join(folder, name),
                                      f"holds writes up to #{high}, newer than the manifest (#{manifest.current_seq}) "
                                      "and in no write-ahead log: manifest.json is older than the data")
            _remove_index_leftovers(os.path.join(root, partition, "indexes"))
        original(data_dir, manifest)

    return _wrap(original, _cleanup_orphan_files)


def _remove_index_leftovers(folder: str) -> None:
    """Remove ``*.tmp`` files from an ``indexes`` folder, and from its ``index_checksums``
    sibling the sidecars whose index file is gone (dropped or compacted away) and ``*.tmp``.
    Sidecars left in ``indexes`` by earlier versions of this module go too (their indexes are
    rebuilt once)."""
    checksums = os.path.join(os.path.dirname(folder), CHECKSUM_DIR)
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.endswith((".tmp", ".crc32")):
            os.remove(os.path.join(folder, name))
    for name in os.listdir(checksums) if os.path.isdir(checksums) else []:
        if name.endswith(".tmp") or not os.path.exists(os.path.join(folder, name.removesuffix(".crc32"))):
            os.remove(os.path.join(checksums, name))


def _make_wal_read_refusing_damage(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_read_wal_file`` that tells a torn last record (a crash cut the write: it was never
    acknowledged, so it is dropped, as the engine does) from damage with bytes after it that are
    not a cut record (the engine silently dropped every record from there on: refused)."""
    import pyarrow as pa

    def _read_wal_file(path: str) -> list[Any]:
        batches = original(path)
        if not os.path.exists(path):
            return batches
        with open(path, "rb") as f:
            raw = f.read()
        stream = pa.BufferReader(raw)
        try:
            reader = pa.ipc.MessageReader.open_stream(stream)
            for _ in range(1 + len(batches)):  # the schema, then the records the engine kept
                reader.read_next_message()
        except (pa.ArrowInvalid, OSError, StopIteration, EOFError):
            if batches or not _is_torn(raw):
                raise damaged(path, "(a write-ahead log) has a damaged header") from None
            return batches
        rest = raw[stream.tell():]
        if not rest or rest == _END_OF_STREAM or _is_torn(rest):
            if rest and rest != _END_OF_STREAM:
                logger.warning("%s: dropped a torn last record (%d bytes, never acknowledged)", path, len(rest))
            return batches
        raise damaged(path, f"(a write-ahead log) is damaged after its record #{len(batches)}: "
                            "the writes after that point cannot be read")

    return _wrap(original, _read_wal_file)


_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _is_torn(rest: bytes) -> bool:
    """Whether ``rest`` is the beginning of one Arrow IPC message cut short by a crash: a
    continuation marker and a plausible metadata length, then fewer bytes than it declares."""
    import pyarrow as pa

    if len(rest) < 8:
        return rest == _END_OF_STREAM[: len(rest)] or rest == b"\xff" * len(rest)
    length = int.from_bytes(rest[4:8], "little", signed=True)
    if rest[:4] != b"\xff\xff\xff\xff" or not 0 < length < 1 << 20:
        return False
    if len(rest) < 8 + length:
        return True
    try:
        pa.ipc.read_message(pa.BufferReader(rest))
    except (pa.ArrowInvalid, OSError) as exc:
        return "Expected to be able to read" in str(exc)  # the body is shorter than declared
    return False  # a whole message the engine could not use: damage


# ── index files: atomic, checksummed, rebuilt when damaged ──────────────────


def _sidecar(path: str) -> str:
    """Where the CRC-32 of the index file ``path`` (``<partition>/indexes/<name>``) is kept:
    ``<partition>/index_checksums/<name>.crc32``, outside the folder the engine lists and
    cleans, which then holds the engine's index files only."""
    folder, name = os.path.split(path)
    return os.path.join(os.path.dirname(folder), CHECKSUM_DIR, f"{name}.crc32")


def _save_atomically(save: Callable[[str], None], path: str) -> None:
    """Write an index file by ``save(tmp)``, fsync, write its CRC-32 sidecar, then rename."""
    tmp, sidecar = f"{path}.tmp", _sidecar(path)
    try:
        save(tmp)
        _fsync_path(tmp)
        _size, crc = file_crc32(tmp)
        os.makedirs(os.path.dirname(sidecar), exist_ok=True)
        with open(f"{sidecar}.tmp", "w") as f:
            f.write(f"{crc}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(f"{sidecar}.tmp", sidecar)
        _fsync_path(os.path.dirname(sidecar))
        os.replace(tmp, path)
        _fsync_path(os.path.dirname(path))
    finally:
        for leftover in (tmp, f"{sidecar}.tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _save_or_warn(save: Callable[[str], None], path: str) -> None:
    """Persist a built index; if that fails (a full disk) the index is still used, and rebuilt
    at the next open: an index file is a cache of its segment, never needed for correctness."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _save_atomically(save, path)
    except Exception as exc:  # noqa: BLE001 - faiss reports a full disk as RuntimeError
        logger.warning("could not save index file %s (%s): it is used from memory and rebuilt at the next open",
                       path, exc)


def _load_checked(load: Callable[[str], Any], path: str) -> Any:
    """The index at ``path`` if it matches its CRC-32 sidecar and loads; else None (WARNING)."""
    try:
        with open(_sidecar(path)) as f:
            expected = int(f.read().strip())
        if file_crc32(path)[1] != expected:
            raise ValueError("its content does not match its checksum")
        return load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable index is rebuilt, never fatal
        logger.warning("index file %s is unusable (%s: %s): rebuilding it from its segment",
                       path, type(exc).__name__, exc)
        return None


def _make_safe_vector_index(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Segment.build_or_load_index`` with a checked load (rebuilt on any failure) and an atomic save."""

    def build_or_load_index(self: Any, spec: Any, index_dir: str) -> None:
        field_name = spec.field_name
        if field_name in self.indexes or self.num_rows == 0 or spec.index_type == "SPARSE_INVERTED_INDEX":
            return
        from milvus_lite.index.factory import build_index_from_spec, load_index_from_spec

        path = self.index_file_path(index_dir, spec.index_type, field_name)
        vectors, _ = self.vector_data(field_name)
        index = None
        if os.path.exists(path):
            index = _load_checked(lambda p: load_index_from_spec(spec, p, vectors.shape[1]), path)
        if index is None:
            index = build_index_from_spec(spec, vectors)
            _save_or_warn(index.save, path)
        self.attach_index(index, field_name=field_name)

    return _wrap(original, build_or_load_index)


def _make_safe_scalar_index(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Segment.build_or_load_scalar_index`` with a checked load and an atomic save."""

    def build_or_load_scalar_index(self: Any, spec: Any, index_dir: str, dtype: Any) -> None:
        field_name = spec.field_name
        if field_name in self.scalar_indexes or self.num_rows == 0:
            return
        from milvus_lite.index.scalar import ScalarInvertedIndex

        def load(path: str) -> Any:
            loaded = ScalarInvertedIndex.load(path)
            if loaded.field_name != field_name or loaded.dtype != dtype:
                raise ValueError(f"its metadata does not match field {field_name!r}")
            return loaded

        path = self.index_file_path(index_dir, spec.index_type, field_name, scalar=True)
        index = _load_checked(load, path) if os.path.exists(path) else None
        if index is None:
            index = ScalarInvertedIndex.build(self.table, field_name, dtype)
            _save_or_warn(index.save, path)
        self.attach_scalar_index(index, field_name)

    return _wrap(original, build_or_load_scalar_index)


# ── a failed write or flush: the collection fails safe until it is reopened ──


def _failure(collection: Any) -> StorageError | None:
    return getattr(collection, "_lookalike_failure", None)


def _fail(collection: Any, exc: BaseException) -> StorageError:
    error = exc if isinstance(exc, StorageError) else storage_failure(exc, collection.data_dir)
    collection._lookalike_failure = error
    logger.error("collection %s failed: %s", collection.data_dir, exc)
    return error


def _make_flush_failing_safe(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection._trigger_flush`` that, when the flush fails, leaves the collection failed
    (its memtable was already swapped out, so reads would miss rows and the next flush would
    delete the WAL that holds them) and raises a ``StorageError``."""

    def _trigger_flush(self: Any) -> None:
        if (failure := _failure(self)) is not None:
            raise failure
        frozen = self._wal
        try:
            original(self)
        except Exception as exc:
            if frozen._closed:  # the flush got past its commit (it closes the frozen WAL after it)
                raise
            raise _fail(self, exc) from exc  # before its commit: memory no longer matches the disk

    return _wrap(original, _trigger_flush)


def _make_apply_failing_safe(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection._apply`` that refuses after a failure, and fails the collection when the WAL
    append fails (its torn tail must stay the last record, or recovery stops before later ones)."""

    def _apply(self: Any, op: Any) -> None:
        if (failure := _failure(self)) is not None:
            raise failure
        try:
            original(self, op)
        except OSError as exc:
            raise _fail(self, exc) from exc

    return _wrap(original, _apply)


def _make_read_checking_failure(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection._read_snapshot`` (every read starts with it) that refuses after a failure."""

    def _read_snapshot(self: Any) -> Any:
        if (failure := _failure(self)) is not None:
            raise failure
        return original(self)

    return _wrap(original, _read_snapshot)


def _make_close_keeping_the_wal(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection.close`` that, on a failed collection, only stops its background work: the
    engine's close would flush (failing again) and delete the WAL that holds unflushed writes."""

    def close(self: Any) -> None:
        if _failure(self) is None:
            original(self)
            return
        self._bg_closed = True
        self._bg_executor.shutdown(wait=True)

    return _wrap(original, close)


# ── schema.json: a collection directory without a readable one is damage ─────


def _make_has_collection_refusing_damage(original: Callable[..., Any]) -> Callable[..., Any]:
    """``MilvusLite.has_collection`` that refuses a collection directory holding data but no
    ``schema.json`` (the engine reports such a collection as absent, its data unreachable)."""
    from milvus_lite import db

    def has_collection(self: Any, name: str, database_name: str = db.DEFAULT_DATABASE_NAME) -> bool:
        found = original(self, name, database_name=database_name)
        if not found:
            folder = self._collection_dir(self.resolve_collection_name(name, database_name=database_name),
                                          database_name=database_name)
            if any(os.path.exists(os.path.join(folder, f)) for f in ("manifest.json", "partitions", "wal")):
                raise damaged(os.path.join(folder, db.SCHEMA_FILENAME), "is missing (the collection has data)")
        return found

    return _wrap(original, has_collection)


def _make_schema_load_refusing_damage(original: Callable[..., Any]) -> Callable[..., Any]:
    """``load_schema`` (as db.py calls it) that reports an unreadable ``schema.json`` as damage."""

    def load_schema(path: str) -> Any:
        try:
            return original(path)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to read it is the file's, not the caller's
            raise damaged(path, f"cannot be read ({type(exc).__name__}: {exc})") from None

    return _wrap(original, load_schema)
