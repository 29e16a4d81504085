"""History store: one SQL row per analysis and the pictures as content-addressed PNG files.

Rows live in SQLite (WAL mode, ``busy_timeout``) by default, or in any SQLAlchemy 2 URL given as ``db_url``
(the server's ``MEDLENS_DB_URL``, e.g. ``postgresql+psycopg://user@host/medlens``). Pictures live under
``<home>/files/ab/abcdef....png``, named by the sha256 of their PNG bytes, so that the same upload is
stored once however often it is analysed. A row keeps only hashes; deleting a row removes the files that no
other row references.

Privacy: the store keeps de-identified pixel copies only (never a DICOM header), and never the client's file
name, only the detected source format ("png", "jpeg", "dicom", ...).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import JSON, DateTime, String, create_engine, event, func, or_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from medlens.home import medlens_home

logger = logging.getLogger(__name__)

FILE_KINDS = ("image", "mask", "overlay", "gradcam", "thumb")
"""Pictures a row may reference: de-identified input, label mask, overlay, Grad-CAM, thumbnail."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[0-9a-f]{32}$")
SQLITE_BUSY_TIMEOUT_MS = 30_000
THUMB_SIZE = 256


def is_valid_id(analysis_id: str) -> bool:
    """Whether ``analysis_id`` looks like the ids this store hands out (uuid4 hex: 32 lower-case digits)."""
    return bool(_ID.match(analysis_id or ""))


class Base(DeclarativeBase):
    pass


class AnalysisRow(Base):
    """One analysis: what was asked, what came out, and the hashes of its pictures."""

    __tablename__ = "analyses"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    pipeline: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(128), index=True)
    source_format: Mapped[str] = mapped_column(String(16))
    probabilities: Mapped[dict] = mapped_column(JSON)
    features: Mapped[dict] = mapped_column(JSON)
    result: Mapped[dict] = mapped_column(JSON)
    image_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    mask_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    overlay_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    gradcam_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    thumb_hash: Mapped[str | None] = mapped_column(String(64), index=True)

    def to_dict(self) -> dict[str, Any]:
        created = self.created if self.created.tzinfo else self.created.replace(tzinfo=UTC)
        return {
            "id": self.id,
            "created": created.isoformat(),
            "pipeline": self.pipeline,
            "label": self.label,
            "source_format": self.source_format,
            "probabilities": self.probabilities,
            "features": self.features,
            "result": self.result,
            "files": {kind: getattr(self, f"{kind}_hash") for kind in FILE_KINDS},
        }


def encode_png(array: np.ndarray) -> bytes:
    """Encode an ``(H, W)`` or ``(H, W, C)`` uint8 array (C in {1, 3, 4}) as PNG bytes (deterministic)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"encode_png expects uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def make_thumbnail(array: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """A copy of an HWC/HW uint8 image whose longer side is at most ``size`` pixels."""
    img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img)


class FileStore:
    """Content-addressed files: ``root/ab/abcdef....png`` where ``abcdef...`` is the sha256 of the bytes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the file of ``digest`` lives; ValueError for anything but a sha256 hex digest."""
        if not _HEX64.match(digest or ""):
            raise ValueError("not a sha256 hex digest")
        return self.root / digest[:2] / f"{digest}.png"

    def put(self, data: bytes) -> str:
        """Store ``data`` once (atomic write) and return its sha256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)


def _make_engine(db_url: str) -> Engine:
    """An engine; SQLite: usable from any thread, WAL journal, busy timeout, NORMAL sync (safe under WAL)."""
    if not db_url.startswith("sqlite"):
        return create_engine(db_url, pool_pre_ping=True, future=True)
    engine = create_engine(
        db_url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=8,
        max_overflow=32,
        pool_timeout=60,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


class HistoryStore:
    """Analyses history. Thread-safe: a session per operation; writes that touch files are serialised.

    Args:
        home: folder for ``history.db`` and ``files/`` (default :func:`medlens.home.medlens_home`).
        db_url: SQLAlchemy URL (default ``sqlite:///<home>/history.db``).
    """

    def __init__(self, home: str | Path | None = None, db_url: str | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else medlens_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.files = FileStore(self.home / "files")
        self.db_url = db_url or f"sqlite:///{self.home / 'history.db'}"
        self.engine = _make_engine(self.db_url)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Adding (files, then row) and deleting (row, then unreferenced files) must not interleave, or a
        # delete could remove a file that an add is about to reference: one transaction each, under this lock
        # (threads) and, on PostgreSQL, advisory locks per file (processes). SQLite serialises writers anyway.
        self._write_lock = threading.RLock()
        logger.info("history store: %s, files under %s", self.engine.url.render_as_string(), self.files.root)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def add(
        self,
        *,
        pipeline: str,
        label: str | None,
        probabilities: Mapping[str, float],
        features: Mapping[str, Any],
        result: Mapping[str, Any],
        pictures: Mapping[str, np.ndarray | bytes | None],
        source_format: str,
        analysis_id: str | None = None,
        created: datetime | None = None,
    ) -> dict[str, Any]:
        """Store one analysis and return its record (see :meth:`get`).

        ``pictures`` maps kinds in :data:`FILE_KINDS` to HWC/HW uint8 arrays (encoded as PNG here) or PNG
        bytes; a missing "thumb" is made from the overlay's image part (its first rows, as many as the
        image's: the colour key's strip under them is left out) or, without an overlay, the image.
        """
        unknown = set(pictures) - set(FILE_KINDS)
        if unknown:
            raise ValueError(f"unknown picture kinds {sorted(unknown)}; valid: {FILE_KINDS}")
        encoded = self._encode_pictures(pictures)
        row = AnalysisRow(
            id=analysis_id or uuid.uuid4().hex,
            created=created or datetime.now(UTC),
            pipeline=pipeline,
            label=label,
            source_format=source_format,
            probabilities=dict(probabilities),
            features=dict(features),
            result=dict(result),
        )
        digests = {kind: hashlib.sha256(data).hexdigest() for kind, data in encoded.items()}
        with self._write_lock, self._session() as session:
            self._lock_files(session, digests.values())
            for kind, data in encoded.items():
                setattr(row, f"{kind}_hash", self.files.put(data))
            session.add(row)
        return row.to_dict()

    @staticmethod
    def _encode_pictures(pictures: Mapping[str, np.ndarray | bytes | None]) -> dict[str, bytes]:
        arrays = {k: v for k, v in pictures.items() if v is not None}
        if "thumb" not in arrays:
            source, image = arrays.get("overlay", arrays.get("image")), arrays.get("image")
            if isinstance(source, np.ndarray) and isinstance(image, np.ndarray):
                source = source[: image.shape[0]]  # an overlay's key strip is not in the thumbnail
            if isinstance(source, np.ndarray):
                arrays["thumb"] = make_thumbnail(source)
        return {k: v if isinstance(v, bytes) else encode_png(v) for k, v in arrays.items()}

    def get(self, analysis_id: str) -> dict[str, Any] | None:
        """The record ``{"id", "created" (ISO, UTC), "pipeline", "label", "source_format", "probabilities",
        "features", "result", "files": {kind: sha256 | None}}``, or None."""
        if not is_valid_id(analysis_id):
            return None
        with self._session() as session:
            row = session.get(AnalysisRow, analysis_id)
            return row.to_dict() if row is not None else None

    def list(
        self,
        page: int = 1,
        page_size: int = 20,
        pipeline: str | None = None,
        label: str | None = None,
        out_of_scope: bool | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Records newest first, filtered by pipeline, label and/or whether they were refused (out of scope):
        (items of the page, total matching)."""
        if page < 1 or page_size < 1:
            raise ValueError("page and page_size must be >= 1")
        query = select(AnalysisRow)
        if pipeline:
            query = query.where(AnalysisRow.pipeline == pipeline)
        if label:
            query = query.where(AnalysisRow.label == label)
        if out_of_scope is not None:
            refused = func.coalesce(AnalysisRow.result["out_of_scope"].as_boolean(), False)
            query = query.where(refused == out_of_scope)
        with self._session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(AnalysisRow.created.desc(), AnalysisRow.id)
                .offset((page - 1) * page_size)
                .limit(page_size)
            ).all()
            return [r.to_dict() for r in rows], int(total)

    def delete(self, analysis_id: str) -> bool:
        """Remove the row and each of its files that no other row references; False when there is no row."""
        if not is_valid_id(analysis_id):
            return False
        with self._write_lock, self._session() as session:
            row = session.get(AnalysisRow, analysis_id)
            if row is None:
                return False
            digests = {getattr(row, f"{k}_hash") for k in FILE_KINDS} - {None}
            self._lock_files(session, digests)
            session.delete(row)
            session.flush()
            for digest in digests:
                if not self._referenced(session, digest):
                    self.files.remove(digest)
        logger.info("deleted analysis %s", analysis_id)
        return True

    @staticmethod
    def _lock_files(session: Session, digests: Iterable[str]) -> None:
        """Serialise file writes and removals per content hash across processes sharing one PostgreSQL
        history (transaction-level advisory locks, in a fixed order); SQLite serialises writers by itself."""
        if session.get_bind().dialect.name != "postgresql":
            return
        for digest in sorted(set(digests)):
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int(digest[:15], 16)})

    @staticmethod
    def _referenced(session: Session, digest: str) -> bool:
        columns = [getattr(AnalysisRow, f"{k}_hash") for k in FILE_KINDS]
        query = select(AnalysisRow.id).where(or_(*(c == digest for c in columns))).limit(1)
        return session.scalar(query) is not None

    def file_path(self, analysis_id: str, kind: str) -> Path | None:
        """Path of picture ``kind`` of an analysis, or None (unknown id, kind absent, file missing)."""
        if kind not in FILE_KINDS:
            return None
        record = self.get(analysis_id)
        digest = record["files"].get(kind) if record else None
        if digest is None:
            return None
        path = self.files.path(digest)
        return path if path.exists() else None

    def count(self) -> int:
        with self._session() as session:
            return int(session.scalar(select(func.count()).select_from(AnalysisRow)) or 0)

    def labels(self, pipeline: str | None = None) -> list[str]:
        """Distinct labels (optionally of one pipeline), sorted."""
        query = select(AnalysisRow.label).where(AnalysisRow.label.is_not(None)).distinct()
        if pipeline:
            query = query.where(AnalysisRow.pipeline == pipeline)
        with self._session() as session:
            return sorted(session.scalars(query).all())

    def label_counts(self) -> list[dict[str, Any]]:
        """Counts per (UTC day, pipeline, label): ``[{"day": "2024-05-01", "pipeline", "label", "count"}]``.

        Grouped in Python: date functions differ between SQLite and PostgreSQL.
        """
        with self._session() as session:
            rows = session.execute(select(AnalysisRow.created, AnalysisRow.pipeline, AnalysisRow.label)).all()
        counts: dict[tuple[str, str, str], int] = {}
        for created, pipeline, label in rows:
            day = (
                (created if created.tzinfo else created.replace(tzinfo=UTC))
                .astimezone(UTC)
                .date()
                .isoformat()
            )
            key = (day, pipeline, label or "(none)")
            counts[key] = counts.get(key, 0) + 1
        return [
            {"day": d, "pipeline": p, "label": lab, "count": n} for (d, p, lab), n in sorted(counts.items())
        ]

    def journal_mode(self) -> str | None:
        """SQLite journal mode ("wal"), None for other databases."""
        if self.engine.dialect.name != "sqlite":
            return None
        with self.engine.connect() as conn:
            return str(conn.execute(text("PRAGMA journal_mode")).scalar()).lower()

    def close(self) -> None:
        self.engine.dispose()
