"""The command line: version, help, configuration errors and the YAML config file."""

import json
import os
import re
import subprocess

import pytest

from conftest import BIN, WHITELIST, free_port, masked_conn_str, new_tenant, random_key


def _run(args, env_extra=None, tmp_path=None, timeout=15):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_MANAGER_")}
    if tmp_path is not None:
        env["IOT_MANAGER_SQLITE_PATH"] = str(tmp_path / "cli.db")
        env["IOT_MANAGER_LISTEN"] = f"127.0.0.1:{free_port()}"
    env.update(env_extra or {})
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_version_json():
    out = _run(["version", "--output", "json"])
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert isinstance(info, dict)
    assert isinstance(info.get("version"), str) and re.search(r"\d+\.\d+\.\d+", info["version"]), info


def test_version_text():
    out = _run(["version"])
    assert out.returncode == 0, out.stderr
    assert re.search(r"\d+\.\d+\.\d+", out.stdout), out.stdout


def test_help_lists_every_command_and_option():
    out = _run(["--help"])
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for word in ("server", "--automigrate", "migrate", "version", "re-encrypt", "--config",
                 "--log-level"):
        assert word in text, f"--help does not mention {word}"


@pytest.mark.parametrize("name,value", [
    ("IOT_MANAGER_REQUEST_SIZE_LIMIT", "lots"),
    ("IOT_MANAGER_AES_ENCRYPTION_KEY", "c2hvcnQta2V5"),
    ("IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY", "bm90LWJhc2U2NCE!"),
    ("IOT_MANAGER_LISTEN", "not-an-address"),
    ("IOT_MANAGER_SECRETS_FORMAT", "rot13"),
    ("IOT_MANAGER_EVENT_EXP_TIMEOUT", "-5"),
    ("IOT_MANAGER_MONGO_URL", "mongo-without-scheme:27017"),
])
def test_bad_config_value_stops_startup(tmp_path, name, value):
    try:
        out = _run(["server"], {name: value}, tmp_path=tmp_path, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}={value!r} did not stop start-up")
    assert out.returncode != 0
    assert name in out.stdout + out.stderr, out.stderr[-2000:]
    if "KEY" in name:
        assert value not in out.stdout + out.stderr, "the key value was printed"


@pytest.mark.sqlite_only
def test_yaml_config_file_and_env_precedence(service_factory, tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\n"
                      f"domain_whitelist: \"{WHITELIST}\"\n"
                      f"sqlite_path: {tmp_path / 'from-config.db'}\n")
    svc = service_factory(start=False)
    svc.port = port
    svc.api.port = port
    svc.base_url = f"http://127.0.0.1:{port}"
    svc.set_env({"IOT_MANAGER_LISTEN": None, "IOT_MANAGER_DOMAIN_WHITELIST": None,
                 "IOT_MANAGER_SQLITE_PATH": None})
    svc.start(args=["--config", str(config), "server"])
    ui = svc.user(new_tenant())
    key = random_key()
    ui.create_hub(key)
    assert (tmp_path / "from-config.db").exists()
    assert svc.stop() == 0

    # The environment wins over the file.
    svc.set_env({"IOT_MANAGER_SQLITE_PATH": str(svc.sqlite_path)})
    svc.start(args=["--config", str(config), "server"])
    assert ui.listed() == []
    assert svc.sqlite_path.exists()
    assert svc.stop() == 0
    svc.set_env({"IOT_MANAGER_SQLITE_PATH": None})
    svc.start(args=["--config", str(config), "server"])
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key)
