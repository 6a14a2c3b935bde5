"""open_sqlite: processes that open one new database together all get a WAL connection (SQLite's switch to WAL
answers "database is locked" at once while another process holds a lock; it is retried)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

from specs.io import open_sqlite


def _open_and_write(path, barrier, worker):
    barrier.wait()
    for i in range(20):
        conn = open_sqlite(path, autocommit=True)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE IF NOT EXISTS t (worker INTEGER, i INTEGER)")
        conn.execute("INSERT INTO t VALUES (?, ?)", (worker, i))
        conn.execute("COMMIT")
        conn.close()


def test_racing_processes_all_open_in_wal(tmp_path):
    path = tmp_path / "new.db"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_and_write, args=(path, barrier, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    conn = open_sqlite(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 80


def test_other_errors_are_not_retried(tmp_path):
    (tmp_path / "dir.db").mkdir()
    try:
        open_sqlite(tmp_path / "dir.db", timeout_s=5)
    except sqlite3.OperationalError as exc:
        assert "locked" not in str(exc)
    else:
        raise AssertionError("opening a directory as a database should fail")
