"""A throwaway PostgreSQL server for the store tests: ``initdb`` into a fresh folder, ``pg_ctl start`` on a
free loopback port, removed afterwards. As root the server runs as the ``postgres`` user (PostgreSQL refuses
to run as root). Every reason it cannot start becomes a precise ``pytest.skip`` message."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers_app import free_port


def _bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _runner() -> tuple[list[str], int | None]:
    """(command prefix, uid to own the data folder): as root, run as ``postgres`` through ``runuser``."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip(
            "running as root and runuser (util-linux) is missing: cannot start PostgreSQL as postgres"
        )
    return [runuser, "-u", "postgres", "--"], uid


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip(
            f"PostgreSQL {what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-400:]}"
        )


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yield the SQLAlchemy URL (``postgresql+psycopg://medlens@127.0.0.1:<port>/postgres``) of a server."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'medlens[postgres]')")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): initdb not found")
    prefix, uid = _runner()
    root = Path(tempfile.mkdtemp(prefix="medlens-pg-"))  # in /tmp: reachable by the postgres user
    data, port = root / "data", free_port()
    if uid is not None:
        os.chown(root, uid, -1)
    _run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "medlens", "--no-sync"],
        "initdb",
    )
    options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -F"
    start = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w"]
    _run([*start, "-t", "60", "start"], "start")
    try:
        yield f"postgresql+psycopg://medlens@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
