"""History store: content-hash dedup, delete keeps shared files, WAL mode, paging, no client file names."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medlens.app.store import FILE_KINDS, FileStore, HistoryStore, encode_png, is_valid_id
from tests.helpers_app import rgb_image


def _add(store: HistoryStore, image: np.ndarray, label: str = "benign", pipeline: str = "skin", **kw) -> dict:
    mask = (image[..., 0] > 100).astype(np.uint8) * 255
    return store.add(
        pipeline=pipeline,
        label=label,
        probabilities={"benign": 0.7, "malignant": 0.3},
        features={"area": 12.5, "nested": {"a": 1}},
        result={"recommendation": "ok", "notice": "Research tool, not a diagnosis."},
        pictures={"image": image, "mask": mask, "overlay": image[..., ::-1].copy(), "gradcam": None},
        source_format="png",
        **kw,
    )


@pytest.fixture()
def store(tmp_path):
    s = HistoryStore(home=tmp_path / "home")
    yield s
    s.close()


def test_sqlite_is_in_wal_mode_with_busy_timeout(store, tmp_path):
    assert store.journal_mode() == "wal"
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    # WAL persists in the file: a plain sqlite3 connection sees it too
    raw = sqlite3.connect(tmp_path / "home" / "history.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_add_get_roundtrip_and_files_named_by_content_hash(store):
    img = rgb_image(32)
    rec = _add(store, img)
    assert is_valid_id(rec["id"])
    got = store.get(rec["id"])
    assert got["label"] == "benign" and got["probabilities"] == {"benign": 0.7, "malignant": 0.3}
    assert got["features"]["nested"] == {"a": 1}
    assert datetime.fromisoformat(got["created"]).tzinfo is not None
    assert got["files"]["gradcam"] is None and got["files"]["thumb"] is not None
    import hashlib

    digest = got["files"]["image"]
    path = store.files.path(digest)
    assert path == store.home / "files" / digest[:2] / f"{digest}.png"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.read_bytes() == encode_png(img)
    # the mask is stored as a viewable 0/255 PNG; the thumbnail is at most 256 px
    from PIL import Image

    assert set(np.unique(np.asarray(Image.open(store.file_path(rec["id"], "mask"))))) <= {0, 255}


def test_the_thumbnail_shows_the_overlay_without_its_colour_key_strip(store):
    image = rgb_image(32)
    keyed = np.concatenate([image, np.full((12, 32, 3), (32, 32, 32), np.uint8)])  # the key's strip under it
    rec = store.add(pipeline="chest-xray", label=None, probabilities={}, features={}, result={},
                    pictures={"image": image, "overlay": keyed}, source_format="png")  # fmt: skip
    from PIL import Image

    thumb = np.asarray(Image.open(store.file_path(rec["id"], "thumb")))
    np.testing.assert_array_equal(thumb, image)  # the image part alone (32 px: no reduction)


def test_same_image_is_stored_once(store):
    img = rgb_image(32, seed=1)
    a, b = _add(store, img), _add(store, img, label="malignant")
    assert a["id"] != b["id"]
    assert a["files"]["image"] == b["files"]["image"]
    assert a["files"] == b["files"]
    n_files = sum(1 for p in (store.home / "files").rglob("*.png"))
    assert n_files == len(set(a["files"].values()) - {None})  # one copy of each, shared by both rows


def test_delete_keeps_files_another_row_references(store):
    shared = rgb_image(32, seed=2)
    a, b = _add(store, shared), _add(store, shared)
    c = _add(store, rgb_image(32, seed=3))
    assert store.delete(a["id"]) is True
    assert store.get(a["id"]) is None
    for kind in ("image", "mask", "overlay", "thumb"):
        assert store.files.exists(b["files"][kind]), kind
    assert store.delete(b["id"]) is True
    for kind in ("image", "mask", "overlay", "thumb"):
        assert not store.files.exists(b["files"][kind]), kind
    assert store.files.exists(c["files"]["image"])
    assert store.delete(b["id"]) is False
    assert store.delete("../../etc/passwd") is False
    assert store.count() == 1


def test_list_pages_filters_and_orders_newest_first(store):
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    ids = []
    for i in range(7):
        rec = _add(store, rgb_image(16, seed=10 + i), label="benign" if i % 2 else "malignant",
                   pipeline="skin" if i < 5 else "polyp", created=t0 + timedelta(hours=i))  # fmt: skip
        ids.append(rec["id"])
    items, total = store.list(page=1, page_size=3)
    assert total == 7 and [r["id"] for r in items] == ids[::-1][:3]
    items, total = store.list(page=3, page_size=3)
    assert total == 7 and [r["id"] for r in items] == [ids[0]]
    assert store.list(page=4, page_size=3) == ([], 7)
    items, total = store.list(pipeline="skin", label="benign")
    assert total == 2 and {r["id"] for r in items} == {ids[1], ids[3]}
    assert store.labels() == ["benign", "malignant"]
    assert store.labels("polyp") == ["benign", "malignant"]
    counts = store.label_counts()
    assert sum(c["count"] for c in counts) == 7 and {c["day"] for c in counts} == {"2024-05-01"}
    with pytest.raises(ValueError):
        store.list(page=0)


def test_no_client_file_name_is_stored(store, tmp_path):
    _add(store, rgb_image(16))
    raw = sqlite3.connect(tmp_path / "home" / "history.db")
    names = [r[1] for r in raw.execute("PRAGMA table_info(analyses)")]
    raw.close()
    assert not any("name" in n or "path" in n for n in names), names
    assert {f"{k}_hash" for k in FILE_KINDS} <= set(names)


def test_file_store_rejects_non_hash_names(tmp_path):
    files = FileStore(tmp_path / "f")
    for bad in ("../x", "a" * 63, "A" * 64, "g" * 64, ""):
        with pytest.raises(ValueError):
            files.path(bad)
    digest = files.put(b"abc")
    assert files.put(b"abc") == digest and files.path(digest).read_bytes() == b"abc"
    assert not list(files.root.rglob(".tmp-*"))


def test_concurrent_adds_and_deletes_lose_nothing(store):
    shared = rgb_image(24, seed=99)
    keep: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            rec = _add(store, shared if i % 2 else rgb_image(24, seed=i))
            if i % 3 == 0:
                assert store.delete(rec["id"])
            else:
                keep.append(rec["id"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == len(keep) == 16
    for analysis_id in keep:
        for kind in ("image", "mask", "overlay", "thumb"):
            assert store.file_path(analysis_id, kind) is not None, (analysis_id, kind)
