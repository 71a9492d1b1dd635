"""The files in ``deploy/`` say what the program accepts: the systemd template units'
command lines and settings (with the example settings file) parse into the settings a
district needs, and nginx lets through the largest upload HealthSync takes."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

import settings as settings_mod
from healthsync.cli import check_exposure, parse_args
from tests.support import ROOT
from tests.support.redis import free_port

DEPLOY = ROOT / "deploy"


def unit_lines(path: Path) -> list[tuple[str, str]]:
    """``(key, value)`` of a unit file's lines, in order (keys repeat: ``Environment``)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {k: v for k, v in pairs}


def unit_settings(unit: str, instance: str, folder: Path = DEPLOY) -> tuple[list[str], settings_mod.Settings]:
    """The arguments of ``unit``'s ``ExecStart`` (the installed ``healthsync`` command) for
    ``instance``, and the settings they make with its ``Environment``/``EnvironmentFile``
    (the example file)."""
    lines = unit_lines(folder / unit)
    env: dict[str, str] = {}
    for key, value in lines:
        if key == "EnvironmentFile":
            assert value == "/etc/healthsync/district.env"
            env.update(env_file(DEPLOY / "district.env.example"))
        elif key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val.replace("%i", instance)
    (exec_start,) = [v for k, v in lines if k == "ExecStart"]
    argv = shlex.split(exec_start.replace("%i", instance))
    assert argv[0] == "/opt/healthsync/.venv/bin/healthsync", argv  # what `pip install .` puts there
    args = parse_args(argv[1:])
    overrides = {n: getattr(args, n) for n in settings_mod.Settings.model_fields if getattr(args, n, None) is not None}
    return argv[1:], settings_mod.load(env, overrides)


def test_the_server_template_unit_serves_one_port_per_instance_in_token_mode_on_postgresql():
    argv, s = unit_settings("healthsync@.service", "8002")
    assert argv[0] == "serve"
    assert s.port == 8002 and s.host == "127.0.0.1"
    assert s.auth_mode == "token" and check_exposure(s) is None
    assert s.embedded_worker is False
    assert s.database_url.startswith("postgresql://") and s.queue_url.startswith("redis://") and s.queue_name


def test_the_clinic_box_unit_serves_on_every_address_in_token_mode():
    argv, s = unit_settings("healthsync.service", "", folder=ROOT / "healthsync")
    assert argv == ["serve"]
    assert s.host == "0.0.0.0" and s.port == 8000 and str(s.data_dir) == "/var/lib/healthsync"
    assert s.auth_mode == "token" and check_exposure(s) is None  # auth auto off loopback: token mode


def test_the_worker_template_unit_uses_the_same_site():
    argv, worker = unit_settings("healthsync-worker@.service", "1")
    _, server = unit_settings("healthsync@.service", "8001")
    assert argv == ["worker"]
    assert (worker.database_url, worker.queue_url, worker.queue_name) == (
        server.database_url, server.queue_url, server.queue_name)


@pytest.mark.parametrize("unit", ["healthsync@.service", "healthsync-worker@.service"])
def test_the_units_can_write_only_the_data_dir(unit):
    lines = dict(unit_lines(DEPLOY / unit))
    _, s = unit_settings(unit, "8001")
    assert lines["ProtectSystem"] == "strict" and lines["ReadWritePaths"] == str(s.data_dir)


def test_nginx_takes_the_largest_upload_and_keeps_websockets_open():
    conf = (DEPLOY / "nginx-healthsync.conf").read_text()
    _, s = unit_settings("healthsync@.service", "8001")
    size = re.search(r"client_max_body_size (\d+)m;", conf)
    assert size and int(size.group(1)) * 1024 * 1024 == s.max_body_bytes
    assert f"over the limit of {s.max_body_bytes} bytes" in conf  # nginx's own 413 says it as HealthSync does
    ws = conf.split("location ^~ /api/sync/ws", 1)[1].split("}", 1)[0]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws and "proxy_http_version 1.1;" in ws
    timeout = re.search(r"proxy_read_timeout (\d+)h;", ws)
    assert timeout and int(timeout.group(1)) * 3600 > s.ws_ping_seconds
    upstream = re.findall(r"server 127\.0\.0\.1:(\d+)", conf)
    assert len(upstream) >= 2


# The nginx example for real, in front of two server processes ---------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_for_test(conf: str, ports: list[int], listen: int, where: Path) -> Path:
    """The example config on plain HTTP at 127.0.0.1:``listen`` (no certificate), its
    upstream the given server ports, in a main config of its own under ``where``."""
    conf = re.sub(r"\n    server 127\.0\.0\.1:\d+[^\n]*", "", conf)
    conf = conf.replace("upstream healthsync {", "upstream healthsync {\n" + "".join(
        f"    server 127.0.0.1:{p};\n" for p in ports), 1)
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen};")
    conf = re.sub(r"\n    ssl_certificate[^\n]*", "", conf)
    conf = conf.split("\nserver {\n    listen 80;", 1)[0]  # no redirect from port 80
    (where / "site.conf").write_text(conf)
    main = where / "nginx.conf"
    main.write_text(f"""
{'user root;' if os.geteuid() == 0 else ''}
daemon off;
pid {where}/nginx.pid;
error_log {where}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {where}/access.log;
    client_body_temp_path {where}/body;
    proxy_temp_path {where}/proxy;
    fastcgi_temp_path {where}/fastcgi;
    uwsgi_temp_path {where}/uwsgi;
    scgi_temp_path {where}/scgi;
    include {where}/site.conf;
}}
""")
    return main


@pytest.fixture
def nginx(tmp_path):
    """A factory: ``nginx(ports)`` runs the example config in front of ``ports``; its URL."""
    if not os.access(NGINX, os.X_OK):
        pytest.skip("nginx is not installed (Debian package nginx)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(ports: list[int]) -> str:
        listen = free_port()
        main = nginx_for_test((DEPLOY / "nginx-healthsync.conf").read_text(), ports, listen, tmp_path)
        check = subprocess.run([NGINX, "-t", "-c", str(main)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        procs.append(subprocess.Popen([NGINX, "-c", str(main)], stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                return f"http://127.0.0.1:{listen}"
            except OSError:
                assert time.monotonic() < deadline and procs[-1].poll() is None, "nginx did not start"
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
async def test_the_nginx_example_passes_uploads_websockets_and_healthsyncs_413(
    server_process, tmp_path, postgres_url, redis_queue, nginx
):
    flags = ["--database-url", postgres_url, "--queue-url", redis_queue["queue_url"], "--queue-name",
             redis_queue["queue_name"], "--no-worker"]
    servers = [server_process("serve", *flags, data_dir=tmp_path / f"s{i}") for i in range(2)]
    url = nginx([s.port for s in servers])  # type: ignore[misc]
    conn = await websocket_connect(url.replace("http://", "ws://") + "/api/sync/ws?cursor=0")
    client = AsyncHTTPClient(force_instance=True)
    try:
        assert orjson.loads(await conn.read_message())["type"] == "hello"
        for i in range(4):  # spread over both processes
            body = {"device_id": "tab-1", "changes": [{"operation": "create", "resource_type": "Patient",
                                                       "client_temp_id": f"p{i}", "payload": {"name": f"P {i}"}}]}
            resp = await client.fetch(f"{url}/api/sync/upload/", method="POST", body=orjson.dumps(body),
                                      headers={"Content-Type": "application/json"})
            assert resp.code == 200
        got: list[str] = []
        while len(got) < 4:
            msg = orjson.loads(await asyncio.wait_for(conn.read_message(), 10))
            got += [c["data"]["name"] for c in msg.get("changes", [])]
        assert sorted(got) == [f"P {i}" for i in range(4)]
        too_big = b'{"device_id": "tab-1", "changes": [], "pad": "' + b"x" * (16 * 1024 * 1024) + b'"}'
        resp = await client.fetch(f"{url}/api/sync/upload/", method="POST", body=too_big, raise_error=False,
                                  headers={"Content-Type": "application/json"}, request_timeout=60)
        assert resp.code == 413 and resp.headers["Content-Type"] == "application/json", resp.body[:300]
        assert "over the limit" in orjson.loads(resp.body)["error"]
        just_right = orjson.dumps({"device_id": "tab-1", "changes": []})
        just_right = just_right[:-1] + b', "pad": "' + b"x" * (16 * 1024 * 1024 - len(just_right) - 20) + b'"}'
        resp = await client.fetch(f"{url}/api/sync/upload/", method="POST", body=just_right, raise_error=False,
                                  headers={"Content-Type": "application/json"}, request_timeout=60)
        assert resp.code == 400 and "pad" in resp.body.decode(), resp.body[:300]  # HealthSync read it: unknown field
    finally:
        conn.close()
        client.close()


# Behind the proxy: the devices' addresses -------------------------------------------------


def access_ips(server) -> list[str]:
    lines = [orjson.loads(line) for line in "".join(server.log).splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("logger") == "healthsync.access"]
    return [x["remote_ip"] for x in access if x.get("path") == "/api/patients/"]


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [True, False], ids=["trust_proxy_headers", "default"])
def test_the_devices_address_comes_from_the_proxy_only_when_trusted(server_process, trusted):
    import urllib.request

    flags = ["--log-format", "json"] + (["--trust-proxy-headers"] if trusted else [])
    server = server_process(*flags)
    request = urllib.request.Request(
        server.url + "/api/patients/", headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    assert server.stop() == 0
    # Tornado takes the last address of X-Forwarded-For: the one nginx added (a device's own
    # header cannot put another address there); without the setting the header is ignored.
    assert access_ips(server) == (["203.0.113.7"] if trusted else ["127.0.0.1"])
