"""The local directory's pointer moves when a snapshot is renamed into place."""

from __future__ import annotations

from pathlib import Path

from jpki_va.server.responder.snapshot_notice import DirectoryNotice


def test_the_marker_moves_on_a_commit_and_stays_otherwise(tmp_path: Path) -> None:
    store = tmp_path / "snapshots"
    store.mkdir()
    notice = DirectoryNotice(store)
    before = notice.marker()
    assert before
    assert notice.marker() == before
    staging = store / ".tmp-1"
    staging.mkdir()
    (staging / "manifest.json").write_text("{}")
    staged = notice.marker()
    assert staged != before
    # Writing inside the staging directory does not touch the store's own entry...
    (staging / "more").write_text("x")
    assert notice.marker() == staged
    # ...the rename into place (the commit) does.
    staging.rename(store / "snap-000000000001")
    assert notice.marker() != staged


def test_an_unreadable_store_says_nothing(tmp_path: Path) -> None:
    assert DirectoryNotice(tmp_path / "missing").marker() == b""
