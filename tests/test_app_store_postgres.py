"""The history store on a real PostgreSQL server (``MEDLENS_DB_URL``), the choice when several server
processes share one history: the same contract as on SQLite, and concurrent writers from several processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medlens.app.store import HistoryStore
from tests.helpers_pg import throwaway_postgres


@pytest.fixture(scope="module")
def pg_url():
    with throwaway_postgres() as url:
        yield url


def _add(store: HistoryStore, seed: int, label: str = "nv") -> dict:
    image = np.full((16, 16, 3), seed % 5, np.uint8)  # few distinct pictures: rows share files
    return store.add(pipeline="skin", label=label, probabilities={"nv": 0.9, "mel": 0.1},
                     features={"area_fraction": 0.1 * (seed % 10)}, result={"seed": seed},
                     pictures={"image": image}, source_format="png")  # fmt: skip


def test_store_contract_on_postgresql(pg_url, tmp_path):
    store = HistoryStore(tmp_path / "home", db_url=pg_url)
    try:
        assert store.engine.dialect.name == "postgresql" and store.journal_mode() is None
        first, second = _add(store, 1, "nv"), _add(store, 2, "mel")
        again = store.get(first["id"])
        assert again["result"] == {"seed": 1} and again["created"].endswith("+00:00")
        items, total = store.list(page=1, page_size=10)
        assert total == 2 and [r["id"] for r in items] == [second["id"], first["id"]]
        assert store.list(label="mel")[1] == 1 and store.labels() == ["mel", "nv"]
        assert sum(c["count"] for c in store.label_counts()) == 2
        assert store.file_path(first["id"], "image").exists()
        assert store.delete(first["id"]) and store.get(first["id"]) is None and store.count() == 1
    finally:
        store.delete(second["id"])
        store.close()


def _writer(url: str, home: str, start: int, n: int) -> list[str]:
    """One "server process": its own store, four threads adding ``n`` analyses and deleting every third (the
    pictures repeat, so deletes race with adds of the same file in the other processes)."""
    store = HistoryStore(Path(home), db_url=url)

    def one(i: int) -> str | None:
        record = _add(store, start + i)
        if i % 3 == 0:
            store.delete(record["id"])
            return None
        return record["id"]

    with ThreadPoolExecutor(4) as pool:
        kept = [r for r in pool.map(one, range(n)) if r]
    store.close()
    return kept


def test_concurrent_writers_from_several_processes(pg_url, tmp_path):
    home = tmp_path / "shared-home"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.starmap(_writer, [(pg_url, str(home), 1000 * k, 24) for k in range(3)])
    kept = [i for ids in results for i in ids]
    store = HistoryStore(home, db_url=pg_url)
    try:
        assert store.count() == len(kept) == 3 * 16
        for analysis_id in kept:
            assert store.file_path(analysis_id, "image") is not None, analysis_id
    finally:
        for analysis_id in kept:
            store.delete(analysis_id)
        store.close()
