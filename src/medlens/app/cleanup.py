"""Temporary files of the UI: uploads in Gradio's upload folder (a DICOM upload carries its header) and the
``medlens-ui-*`` folder of mask downloads. Removed when their analysis is deleted, by age, and at shutdown;
``medlens-ui-*`` folders that a killed server left behind are removed by age too.

Only files inside Gradio's upload folder or this janitor's own folder are ever removed (never an example).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "medlens-ui-"
DEFAULT_MAX_AGE_S = 3600.0


def gradio_upload_folder() -> Path:
    """Where Gradio writes uploads (``GRADIO_TEMP_DIR`` or ``<tmp>/gradio``)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)


class TempJanitor:
    """Tracks the UI's temporary files by analysis id and removes them (thread-safe).

    Args:
        max_age_s: files (and stale ``medlens-ui-*`` folders) older than this go at each :meth:`sweep`.
        uploads: Gradio's upload folder (default :func:`gradio_upload_folder`).
    """

    def __init__(self, max_age_s: float = DEFAULT_MAX_AGE_S, uploads: Path | None = None) -> None:
        self.max_age_s = max_age_s
        # the pid in the name: a sweep removes only the folders of servers that are no longer running
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")).resolve()
        self.uploads = (uploads or gradio_upload_folder()).resolve()
        self._files: dict[str, set[Path]] = {}  # analysis id -> files
        self._lock = threading.Lock()

    def track(self, analysis_id: str, path: str | Path) -> None:
        """Remember a file made for (or uploaded with) an analysis; files outside our folders are ignored."""
        path = Path(path).resolve()
        if _inside(path, self.folder) or _inside(path, self.uploads):
            with self._lock:
                self._files.setdefault(analysis_id, set()).add(path)

    def forget(self, analysis_id: str) -> None:
        """Remove the files of an analysis (on delete)."""
        with self._lock:
            files = self._files.pop(analysis_id, set())
        for path in files:
            self._remove(path)

    def sweep(self, now: float | None = None) -> int:
        """Remove tracked files, every upload (analysed or not, e.g. one whose analysis failed) and the
        ``medlens-ui-*`` folders of servers no longer running, once older than ``max_age_s``."""
        now = time.time() if now is None else now
        uploads = [p for p in self.uploads.rglob("*") if p.is_file()] if self.uploads.is_dir() else []
        old = [p for p in {*self._all(), *uploads} if _age(p, now) > self.max_age_s]
        for path in old:
            self._remove(path)
        with self._lock:
            for files in self._files.values():
                files.difference_update(old)
        stale = [
            d
            for d in self.folder.parent.glob(f"{PREFIX}*")
            if d != self.folder and _age(d, now) > self.max_age_s and not _owner_alive(d)
        ]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return len(old) + len(stale)

    def _all(self) -> list[Path]:
        with self._lock:
            tracked = {p for files in self._files.values() for p in files}
        return sorted(tracked | {p for p in self.folder.iterdir() if p.is_file()})

    def _remove(self, path: Path) -> None:
        """Remove a file, and its folder when that is a now-empty upload folder (``<uploads>/<hash>/``)."""
        path.unlink(missing_ok=True)
        if path.parent != self.uploads and _inside(path.parent, self.uploads):
            with contextlib.suppress(OSError):  # not empty: another upload of the same content is there
                os.rmdir(path.parent)

    def close(self) -> None:
        """At shutdown: remove every tracked file and this janitor's folder."""
        for path in self._all():
            self._remove(path)
        shutil.rmtree(self.folder, ignore_errors=True)
        with self._lock:
            self._files.clear()


def _owner_alive(folder: Path) -> bool:
    """Whether the server that made ``medlens-ui-<pid>-*`` still runs (an unknown owner counts as gone)."""
    pid = folder.name[len(PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


class Sweeper:
    """Calls ``janitor.sweep()`` every ``interval_s`` seconds in a daemon thread until :meth:`stop`."""

    def __init__(self, janitor: TempJanitor, interval_s: float = 300.0) -> None:
        self.janitor, self.interval_s = janitor, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medlens-temp-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.janitor.sweep()
            except OSError as exc:
                logger.warning("temporary file sweep failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
