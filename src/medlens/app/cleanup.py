"""Temporary files of the UI: uploads in Gradio's upload folder (a DICOM upload carries its header) and the
``medlens-ui-*`` folder of mask downloads. Removed when their analysis is deleted, by age, and at shutdown;
``medlens-ui-*`` folders that a killed server left behind are removed by age too.

Gradio's upload folder is also its cache: it holds the copies Gradio serves for components (the dashboard's
plots, the examples, shown pictures), named by content hash and copied with the source's mtime. So a file
there counts as an upload only when Gradio's ``/upload`` route received it (``Blocks.upload_file_set``, see
:meth:`TempJanitor.attach`), and a file a component keeps (``keep_in_cache``: examples, static images) is
never removed. Nothing outside Gradio's upload folder or this janitor's own folder is ever removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "medlens-ui-"
DEFAULT_MAX_AGE_S = 3600.0


def gradio_upload_folder() -> Path:
    """Where Gradio writes uploads (``GRADIO_TEMP_DIR`` or ``<tmp>/gradio``)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)


def _resolved(paths: Iterable[str | Path]) -> set[Path]:
    return {Path(p).resolve() for p in set(paths)}  # set(): one atomic copy of a set another thread adds to


class TempJanitor:
    """Tracks the UI's temporary files by analysis id and removes them (thread-safe).

    Args:
        max_age_s: files (and stale ``medlens-ui-*`` folders) older than this go at each :meth:`sweep`.
        uploads: Gradio's upload folder (default :func:`gradio_upload_folder`).

    Until :meth:`attach` names the Blocks, no file in Gradio's folder counts as an upload (only this janitor's
    own files are removed).
    """

    def __init__(self, max_age_s: float = DEFAULT_MAX_AGE_S, uploads: Path | None = None) -> None:
        self.max_age_s = max_age_s
        # the pid in the name: a sweep removes only the folders of servers that are no longer running
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")).resolve()
        self.uploads = (uploads or gradio_upload_folder()).resolve()
        self._files: dict[str, set[Path]] = {}  # analysis id -> files
        self._lock = threading.Lock()
        self._blocks: Any = None

    def attach(self, blocks: Any) -> None:
        """Learn from a Gradio ``Blocks`` which files are uploads (``upload_file_set``) and which it serves
        for its components (each component's ``keep_in_cache``: examples, static images such as plots)."""
        self._blocks = blocks

    def gradio_uploads(self) -> set[Path]:
        """The files Gradio's ``/upload`` route wrote into the upload folder (none before :meth:`attach`)."""
        paths = _resolved(getattr(self._blocks, "upload_file_set", ()))
        return {p for p in paths if _inside(p, self.uploads)}

    def kept(self) -> set[Path]:
        """The files Gradio keeps serving for components (examples, static images): never removed."""
        blocks = list((getattr(self._blocks, "blocks", None) or {}).values())
        return {p for block in blocks for p in _resolved(getattr(block, "keep_in_cache", ()))}

    def track(self, analysis_id: str, path: str | Path) -> None:
        """Remember a file made for (or uploaded with) an analysis; anything but this janitor's own files and
        Gradio's uploads (an example, a file outside our folders) is ignored."""
        path = Path(path).resolve()
        upload = path in self.gradio_uploads() and path not in self.kept()
        if _inside(path, self.folder) or upload:
            with self._lock:
                self._files.setdefault(analysis_id, set()).add(path)

    def forget(self, analysis_id: str) -> None:
        """Remove the files of an analysis (on delete), but not one another analysis was made from too."""
        with self._lock:
            files = self._files.pop(analysis_id, set())
            files -= {p for other in self._files.values() for p in other}
        kept = self.kept()
        for path in files:
            self._remove(path, kept)

    def sweep(self, now: float | None = None) -> int:
        """Remove tracked files, every upload (analysed or not, e.g. one whose analysis failed) and the
        ``medlens-ui-*`` folders of servers no longer running, once older than ``max_age_s``. Gradio's other
        files (its cached copies of plots, examples and outputs) are its own to remove."""
        now = time.time() if now is None else now
        kept = self.kept()
        candidates = {*self._all(), *(p for p in self.gradio_uploads() if p.is_file())} - kept
        old = [p for p in candidates if _age(p, now) > self.max_age_s]
        for path in old:
            self._remove(path, kept)
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
        own = {p for p in self.folder.iterdir() if p.is_file()} if self.folder.is_dir() else set()  # closed
        return sorted(tracked | own)

    def _remove(self, path: Path, kept: set[Path]) -> None:
        """Remove a file, and its folder when that is a now-empty upload folder (``<uploads>/<hash>/``); never
        one Gradio keeps serving."""
        if path in kept:
            return
        path.unlink(missing_ok=True)
        if path.parent != self.uploads and _inside(path.parent, self.uploads):
            with contextlib.suppress(OSError):  # not empty: another upload of the same content is there
                os.rmdir(path.parent)

    def close(self) -> None:
        """At shutdown: remove every tracked file and this janitor's folder."""
        kept = self.kept()
        for path in self._all():
            self._remove(path, kept)
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
    """Time since the last write (mtime: what uploads and our own files are aged by; Gradio's cached copies
    carry their source's mtime, so they are never aged here)."""
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
