"""Secrets at rest: keys never leave the service, wrong keys fail loudly, key files, re-encrypt."""

import json
import os
import stat

import pytest

from conftest import (OTHER_AES_KEY, TEST_AES_KEY, THIRD_AES_KEY, b64, conn_str, masked_conn_str,
                      new_tenant, random_key, sas_integration)


def test_full_key_never_leaves_the_service(service_factory):
    svc = service_factory(args=["--log-level", "debug", "server"])
    ui = svc.user(new_tenant())
    key, key2 = random_key(), random_key()
    iid = ui.create_hub(key)
    ui.listed()
    ui.get(iid)
    ui.create(sas_integration(key2))  # 409
    ui.set_credentials(iid, {"type": "sas", "connection_string": conn_str(key2, host="evil.example.com")})
    ui.set_credentials(iid, {"type": "sas", "connection_string": conn_str(key2) + ";Foo=bar"})
    ui.set_credentials(iid, {"type": "sas", "connection_string": conn_str(key2)})
    ui.listed()
    assert svc.stop() == 0
    svc.assert_secret_absent(b64(key), b64(key2), conn_str(key), conn_str(key2))
    assert TEST_AES_KEY not in svc.log_text()


def test_wrong_key_fails_with_500_not_garbage(service):
    ui = service.user(new_tenant())
    key = random_key()
    iid = ui.create_hub(key)

    service.restart(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": OTHER_AES_KEY})
    r = ui.list()
    assert r.status == 500, r
    assert r.error
    r = ui.get(iid)
    assert r.status == 500, r
    service.assert_secret_absent(b64(key))
    assert service.proc.poll() is None

    # The primary key as fallback opens it again.
    service.restart(env={"IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY": TEST_AES_KEY})
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key)

    service.restart(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": TEST_AES_KEY,
                         "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY": None})
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key)


@pytest.mark.sqlite_only
def test_generated_key_file(service_factory):
    svc = service_factory(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": None})
    key_file = svc.sqlite_path.with_name(svc.sqlite_path.name + ".key")
    assert key_file.is_file(), f"no key file at {key_file}"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    content = key_file.read_bytes()
    assert content

    ui = svc.user(new_tenant())
    key = random_key()
    iid = ui.create_hub(key)
    svc.restart()
    assert key_file.read_bytes() == content, "the key file was regenerated"
    assert ui.get(iid).json()["credentials"]["connection_string"] == masked_conn_str(key)
    svc.assert_secret_absent(content.decode(errors="replace").strip())

    # Without the key file the stored secret cannot be opened; no garbage is returned.
    svc.stop()
    os.rename(key_file, key_file.with_suffix(".moved"))
    svc.start()
    assert ui.list().status == 500


@pytest.mark.sqlite_only
def test_key_file_path_override(service_factory, tmp_path):
    key_file = tmp_path / "keys" / "iot-manager.key"
    key_file.parent.mkdir()
    svc = service_factory(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": None,
                               "IOT_MANAGER_AES_ENCRYPTION_KEY_FILE": str(key_file)})
    assert key_file.is_file()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert not svc.sqlite_path.with_name(svc.sqlite_path.name + ".key").exists()
    ui = svc.user(new_tenant())
    key = random_key()
    ui.create_hub(key)
    svc.restart()
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key)


@pytest.mark.mongo_only
def test_mongo_without_key_warns(service_factory):
    svc = service_factory(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": None})
    warnings = []
    for line in svc.log_lines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        text = json.dumps(obj).lower()
        if any(str(v).lower() in ("warn", "warning", "error") for v in obj.values()) and (
                "key" in text or "encrypt" in text):
            warnings.append(line)
    assert warnings, f"no warning about the missing encryption key:\n{svc.log_tail()}"


def _reencrypt_setup(svc):
    users = [svc.user(new_tenant()), svc.user(new_tenant()), svc.user("")]
    keys = [random_key() for _ in users]
    for u, k in zip(users, keys):
        u.create_hub(k)
    assert svc.stop() == 0
    return users, keys


def _assert_listed(users, keys):
    for u, k in zip(users, keys):
        assert u.listed()[0]["credentials"]["connection_string"] == masked_conn_str(k)


def test_reencrypt_with_new_key_and_old_as_fallback(service):
    users, keys = _reencrypt_setup(service)
    out = service.cli("re-encrypt", env={"IOT_MANAGER_AES_ENCRYPTION_KEY": OTHER_AES_KEY,
                                          "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY": TEST_AES_KEY})
    assert out.returncode == 0, out.stderr[-3000:]
    for k in keys:
        assert b64(k) not in out.stdout + out.stderr

    service.start(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": TEST_AES_KEY})
    for u in users:
        r = u.list()
        assert r.status == 500, f"the old key still opens tenant {u.tenant!r}: {r}"

    service.restart(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": OTHER_AES_KEY})
    _assert_listed(users, keys)


def test_reencrypt_with_flags(service):
    users, keys = _reencrypt_setup(service)
    out = service.cli("re-encrypt", "--from-key", TEST_AES_KEY, "--to-key", THIRD_AES_KEY,
                      env={"IOT_MANAGER_AES_ENCRYPTION_KEY": None})
    assert out.returncode == 0, out.stderr[-3000:]
    assert TEST_AES_KEY not in out.stdout + out.stderr
    assert THIRD_AES_KEY not in out.stdout + out.stderr

    service.start(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": THIRD_AES_KEY})
    _assert_listed(users, keys)
    service.restart(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": TEST_AES_KEY})
    assert users[0].list().status == 500
