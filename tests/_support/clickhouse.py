"""A private clickhouse-server for tests: Debian's package, its own config in a temp dir, loopback ports.

``ClickHouseServer`` writes a minimal config (listen 127.0.0.1, free native and HTTP ports, every path in
its directory, UTC), starts the server (as the ``clickhouse`` user when the tests run as root: the
server's files then belong to it), waits until it answers, and stops it and removes its directory even
when a test fails. ``stop()`` and ``start()`` again keep the data and the ports (a restart).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests._support.env import in_ci

SERVER = "/usr/sbin/clickhouse-server"

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/error.log</errorlog>
    <console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>5368709120</mark_cache_size>
  <max_concurrent_queries>20</max_concurrent_queries>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile>
    <quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def require_clickhouse() -> None:
    """Skip (under CI=true: fail) when Debian's clickhouse-server is not installed."""
    if os.path.exists(SERVER):
        return
    msg = f"needs {SERVER} (apt-get install clickhouse-server; make setup installs it)"
    if in_ci():
        pytest.fail("CI=true: " + msg, pytrace=False)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClickHouseServer:
    """One clickhouse-server on 127.0.0.1, owned by the test that made it."""

    def __init__(self) -> None:
        require_clickhouse()
        # Not under pytest's tmp_path: its parents are 0700 root, and the server runs as ``clickhouse``.
        self.dir = Path(tempfile.mkdtemp(prefix="meshnode-clickhouse-"))
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "config.xml").write_text(_CONFIG.format(dir=self.dir, tcp=self.tcp_port, http=self.http_port))
        (self.dir / "users.xml").write_text(_USERS)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("clickhouse")
            except KeyError:
                self._user = None
        if self._user is not None:
            os.chmod(self.dir, 0o755)
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    @property
    def url(self) -> str:
        return f"clickhouse://127.0.0.1:{self.tcp_port}/meshnode"

    def start(self, timeout: float = 60.0) -> None:
        cmd = [SERVER, f"--config-file={self.dir}/config.xml"]
        user = self._user

        def demote() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=demote, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self.proc.returncode}: {self.errors()}")
            try:
                self.query("SELECT 1")
                return
            except Exception:  # not up yet
                time.sleep(0.2)
        raise RuntimeError(f"clickhouse-server did not answer on 127.0.0.1:{self.tcp_port} in {timeout:g} s: "
                           f"{self.errors()}")

    def errors(self) -> str:
        try:
            return (self.dir / "error.log").read_text()[-2000:]
        except OSError:
            return "(no error log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        deadline = time.monotonic() + 10  # the port must be free again before a restart binds it
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.tcp_port)) != 0:
                    break
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def client(self):  # type: ignore[no-untyped-def]
        from clickhouse_driver import Client

        return Client(host="127.0.0.1", port=self.tcp_port, connect_timeout=2, send_receive_timeout=60)

    def query(self, sql: str, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
        client = self.client()
        try:
            return list(client.execute(sql, params))
        finally:
            client.disconnect()
