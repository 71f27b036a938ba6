"""The embedded SQLite store: one WAL-mode file, and a locked database answered with 503."""

import contextlib
import sqlite3
import time

import pytest

from conftest import new_tenant, random_key, sas_integration

pytestmark = pytest.mark.sqlite_only


def test_one_file_in_wal_mode(service):
    service.user(new_tenant()).create_hub(random_key())
    assert service.sqlite_path.is_file()
    with contextlib.closing(sqlite3.connect(str(service.sqlite_path))) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"devices", "device_integrations"} <= names, names


def test_locked_database_gives_503_and_writes_nothing(service_factory):
    svc = service_factory(env={"IOT_MANAGER_STORE_TIMEOUT_MS": "500"})
    owner = svc.user(new_tenant())
    owner.create_hub(random_key())
    listed = owner.listed()
    before = svc.snapshot()

    other = svc.user(new_tenant())
    locker = sqlite3.connect(str(svc.sqlite_path), timeout=1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        start = time.monotonic()
        r = other.create(sas_integration(random_key()))
        assert time.monotonic() - start < 10
        assert r.status == 503, r
        assert r.error
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert svc.proc.poll() is None
    assert svc.snapshot() == before
    assert other.listed() == []
    assert owner.listed() == listed
    other.create_hub(random_key())
