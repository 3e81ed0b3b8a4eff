"""The node loop and ``meshnode run``: services, periods on a timer, SIGTERM flushes the final period."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from meshnode.daemon import Node, NodeConfig
from meshnode.sensor._fake import FakeSensor
from meshnode.store import FlowQuery, Store
from meshnode.v1 import observer_pb2, observer_pb2_grpc
from tests.unit._flows import flow


def _final_ids(store: Store, conn: sqlite3.Connection) -> list[int]:
    """The flow ids of every final record the store holds, in key order."""
    return [s.record.flow_id for s in store.query_flows(FlowQuery(), conn)]

ROOT = Path(__file__).resolve().parents[2]


class RecordingService:
    """Stands in for the mesh: records when it is started and stopped."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def _config(tmp_path: Path, **kw: object) -> NodeConfig:
    base: dict[str, object] = dict(listen="127.0.0.1:0", metrics="off", watch_addresses=False,
                                   data_dir=tmp_path, retention_age=0.0, export_period=0.2, tick=0.02)
    base.update(kw)
    return NodeConfig(**base)  # type: ignore[arg-type]


def test_node_loop_periods_services_and_final_flush(tmp_path: Path) -> None:
    log: list[str] = []
    seen: list[tuple[int, int]] = []
    sensor = FakeSensor()

    async def main() -> None:
        node = Node(_config(tmp_path), sensor)
        node.add_service(RecordingService("mesh", log))
        node.period_listeners.append(lambda s: log.append(f"period {s.final_flows}"))
        node.record_listeners.append(lambda s, recs: seen.extend((s.seq, r.flow_id) for r in recs))
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        await asyncio.sleep(0.05)
        assert sensor.started and log[0] == "start mesh"
        sensor.feed([flow(1)])
        await asyncio.sleep(0.5)  # at least two periods close
        assert node.periods_closed >= 2
        sensor.feed([flow(2)])  # arrives after the last timed period: only the final flush writes it
        stop.set()
        await task
        assert log[0] == "start mesh" and log[-1] == "stop mesh" and sensor.closed
        periods = [int(e.split()[1]) for e in log[1:-1]]
        assert len(periods) == node.periods_closed and sum(periods) == 2
        assert sorted(fid for _, fid in seen) == [1, 2]  # each ended flow reaches the record listeners once

    asyncio.run(main())
    store = Store.in_dir(tmp_path)
    periods = store.periods(number=100)
    assert all(p.state == "closed" for p in periods) and store.recovered_incomplete == 0
    with store.reader() as conn:
        assert conn.execute("SELECT COUNT(*) FROM periods WHERE state = 'open'").fetchone()[0] == 0
        assert sorted(_final_ids(store, conn)) == [1, 2]
    store.close()


def test_period_boundaries_are_aligned(tmp_path: Path) -> None:
    node = Node(_config(tmp_path, export_period=10.0), FakeSensor())
    assert node._next_boundary(1_000_000_000_003) == 1_010_000_000_000
    assert node._next_boundary(1_010_000_000_000) == 1_020_000_000_000
    node.store.close()


def test_failing_service_stops_started_ones(tmp_path: Path) -> None:
    log: list[str] = []

    class Broken(RecordingService):
        async def start(self) -> None:
            raise RuntimeError("no")

    async def main() -> None:
        node = Node(_config(tmp_path), FakeSensor())
        node.add_service(RecordingService("first", log))
        node.add_service(Broken("second", log))
        with pytest.raises(RuntimeError):
            await node.run(asyncio.Event())

    asyncio.run(main())
    assert log == ["start first", "stop first"]


def _spawn(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    e = {**os.environ, "MESHNODE_ALLOW_FAKE_SENSOR": "1", "MESHNODE_FAKE_FLOWS_PER_POLL": "2",
         "PYTHONPATH": str(ROOT), **(env or {})}
    e.pop("MESHNODE_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", "--sensor", "fake", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path), *args],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=e, cwd=ROOT,
    )


def _startup_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            return line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("no startup line")


def test_meshnode_run_serves_and_flushes_on_sigterm(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "--export-period", "0.5", "--metrics", "127.0.0.1:0", "--label", "site=lab",
                  "--join", "127.0.0.1:7999")
    try:
        line = _startup_line(proc)
        assert "sensor fake" in line and "scope /" in line and f"data dir {tmp_path}" in line
        listen = re.search(r"listening on (\S+),", line)
        metrics = re.search(r"metrics (\S+),", line)
        assert listen and metrics

        async def status() -> observer_pb2.StatusResponse:
            async with grpc.aio.insecure_channel(listen.group(1)) as ch:
                stub = observer_pb2_grpc.ObserverStub(ch)
                return await stub.Status(observer_pb2.StatusRequest(), timeout=10)

        time.sleep(1.2)
        st = asyncio.run(status())
        assert st.sensor_mode == "fake" and st.periods >= 1 and dict(st.labels) == {"site": "lab"}
        import urllib.request

        body = urllib.request.urlopen(f"http://{metrics.group(1)}/metrics", timeout=10).read().decode()
        assert re.search(r'meshnode_flows_total\{flow_direction="outbound",network_transport="tcp",'
                         r'outcome="established"\} [1-9]', body)
        assert 'meshnode_flow_bytes_total{network_io_direction="receive",network_transport="tcp"}' in body
        assert "meshnode_store_bytes" in body and "meshnode_periods_total" in body
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped after" in err
    conn = sqlite3.connect(tmp_path / "meshnode.db")
    states = [r[0] for r in conn.execute("SELECT state FROM periods ORDER BY seq")]
    assert states and set(states) == {"closed"}  # the final period was flushed, nothing left open
    flows_in_periods = conn.execute("SELECT SUM(final_flows) FROM periods").fetchone()[0]
    with Store.in_dir(tmp_path) as store, store.reader() as c:
        ids = _final_ids(store, c)
    assert len(ids) == len(set(ids)) == flows_in_periods and ids


def test_meshnode_run_freezes_its_start_up_heap(tmp_path: Path) -> None:
    # a full collection visited every object the process had made at start-up (~60,000: 25-45 ms of the
    # event loop's time each); frozen, collections skip them
    proc = _spawn(tmp_path, "--log-level", "debug")
    try:
        _startup_line(proc)
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        frozen = None
        while frozen is None and time.monotonic() < deadline:
            frozen = re.search(r"start-up heap frozen: (\d+) objects", proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert frozen is not None, "no 'start-up heap frozen' line"
    assert int(frozen.group(1)) > 20_000
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--export-period", "-3"], "export_period: "),
        (["--listen", "nowhere"], "listen: 'nowhere' is not HOST:PORT"),
        (["--label", "x"], "labels: 'x' is not KEY=VALUE"),
    ],
)
def test_bad_config_exits_2_without_traceback(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = _spawn(tmp_path, *args)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert needle in err and "Traceback" not in err


def test_bad_config_file_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("export_perod = 5\n")
    proc = _spawn(tmp_path, "--config", str(cfg))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "export_perod: unknown key" in err and "Traceback" not in err


def test_failed_period_write_keeps_records_for_the_next_try(tmp_path: Path) -> None:
    from meshnode._exceptions import StoreError

    sensor = FakeSensor()

    async def main() -> None:
        node = Node(_config(tmp_path), sensor)
        await node.start()
        real = node.store.close_period
        calls = {"n": 0}

        def flaky(*args: object, **kw: object):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 1:
                raise StoreError("disk full")
            return real(*args, **kw)  # type: ignore[arg-type]

        node.store.close_period = flaky  # type: ignore[method-assign]
        sensor.feed([flow(1)])
        await node.tick()
        with pytest.raises(StoreError):
            await node.close_period()
        sensor.feed([flow(2)])
        await node.tick()
        summary = await node.close_period()
        assert summary.final_flows == 2 and summary.completeness["flows_recorded"] == 2
        await node.shutdown()

    asyncio.run(main())
    with Store.in_dir(tmp_path) as store, store.reader() as conn:
        assert sorted(_final_ids(store, conn)) == [1, 2]


def test_a_retried_period_counts_each_byte_once(tmp_path: Path) -> None:
    """An active flow's delta after a failed write counts from the last stored period, not the failed try."""
    from meshnode._exceptions import StoreError

    sensor = FakeSensor()

    async def main() -> list[int]:
        node = Node(_config(tmp_path), sensor)
        await node.start()
        real = node.store.close_period
        fail = {"next": False}

        def flaky(*args: object, **kw: object):  # type: ignore[no-untyped-def]
            if fail["next"]:
                fail["next"] = False
                raise StoreError("disk full")
            return real(*args, **kw)  # type: ignore[arg-type]

        node.store.close_period = flaky  # type: ignore[method-assign]
        sent = []
        for total, failing in [(1000, False), (3000, True), (6000, False), (6500, False)]:
            sensor.set_active([flow(7, kind="interim", bytes_tx=total)])
            fail["next"] = failing
            try:
                summary = await node.close_period()
            except StoreError:
                continue
            sent.append(sum(r.bytes_tx for r in summary.by_process))
        await node.shutdown()
        return sent

    assert asyncio.run(main()) == [1000, 5000, 500]  # 6,500 bytes, each counted once


def test_a_store_that_keeps_failing_stops_the_node_and_a_failed_final_poll_still_flushes(tmp_path: Path) -> None:
    from meshnode._exceptions import SensorError, StoreError
    from meshnode.daemon import _node

    sensor = FakeSensor()

    async def main() -> None:
        node = Node(_config(tmp_path, export_period=0.05, tick=0.01), sensor)
        node.store.close_period = lambda *a, **k: (_ for _ in ()).throw(StoreError("disk full"))  # type: ignore[method-assign]
        with pytest.raises(StoreError):  # polls succeed, period writes fail: it stops all the same
            await asyncio.wait_for(node.run(asyncio.Event()), 10)

    _node.MAX_CONSECUTIVE_FAILURES, saved = 3, _node.MAX_CONSECUTIVE_FAILURES
    try:
        asyncio.run(main())
    finally:
        _node.MAX_CONSECUTIVE_FAILURES = saved

    sensor2 = FakeSensor()

    async def flush() -> None:
        node = Node(_config(tmp_path / "b"), sensor2)
        await node.start()
        sensor2.feed([flow(1)])
        await node.tick()

        def broken() -> object:
            raise SensorError("sensor poll failed: map gone")

        sensor2.poll = broken  # type: ignore[method-assign]
        await node.shutdown()

    asyncio.run(flush())
    with Store.in_dir(tmp_path / "b") as store, store.reader() as conn:
        assert _final_ids(store, conn) == [1]


def test_periods_go_on_when_the_wall_clock_steps_back(tmp_path: Path) -> None:
    sensor = FakeSensor()
    wall = {"offset": 0}

    async def main() -> int:
        node = Node(_config(tmp_path, export_period=0.05, tick=0.01), sensor,
                    clock=lambda: time.time_ns() + wall["offset"])
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        await asyncio.sleep(0.3)
        before = node.periods_closed
        wall["offset"] = -3600 * 10**9  # an NTP step of an hour back
        await asyncio.sleep(0.4)
        after = node.periods_closed - before
        stop.set()
        await task
        return after

    assert asyncio.run(main()) >= 3
    with Store.in_dir(tmp_path) as store:
        assert all(p.end_ns > p.start_ns for p in store.periods(number=100) if p.end_ns)


def test_address_watcher_records_changes(tmp_path: Path) -> None:
    from meshnode.daemon import AddressWatcher
    from meshnode.daemon._addresses import parse_fib_trie, parse_if_inet6

    inet6 = ("00000000000000000000000000000001 01 80 10 80       lo\n"
             "fd000000000000000000000000000002 02 40 00 80     eth0\n")
    assert parse_if_inet6(inet6) == {"fd00::2"}
    trie = ("Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n"
            "     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n")
    assert parse_fib_trie(trie) == {"192.0.2.2"}

    readings = iter([frozenset({"10.0.0.1"}), frozenset({"10.0.0.1"}), frozenset({"10.0.0.2"})])
    seen: list[str] = []

    async def main() -> None:
        async def on_change(t: int, detail: str) -> None:
            seen.append(detail)

        w = AddressWatcher(on_change, read=lambda: next(readings))
        await w.start()
        await w.check()
        await w.check()
        await w.stop()

    asyncio.run(main())
    assert seen == ["+10.0.0.2 -10.0.0.1"]


def test_address_changes_reach_health(tmp_path: Path) -> None:
    """Failures within 60 s after a recorded change are counted by the Health RPC."""
    from tests.unit._flows import T0, S
    from tests.unit._node import running_node

    async def main() -> None:
        async with running_node(tmp_path) as h:
            await h.node._address_changed(T0 + 5 * S, "+10.0.0.9")
            await h.period(flow(6, outcome="timeout", start_ns=T0 + 6 * S),
                           flow(90, outcome="timeout", start_ns=T0 + 90 * S), flow(7))
            resp = await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0, until_ns=T0 + 100 * S),
                                       timeout=10)
            assert resp.failures_after_address_change == 1 and resp.address_changes == 1

    asyncio.run(main())


def test_the_sensor_is_polled_while_a_period_closes(tmp_path: Path) -> None:
    """A slow period close (a large period's store write) does not stop the polls: the ring buffer would
    overflow meanwhile. Polls and the close's read of active flows never run at once."""
    import threading

    sensor = FakeSensor()
    polls: list[float] = []
    busy = threading.Lock()
    overlapped: list[str] = []
    real_poll, real_active = sensor.poll, sensor.active

    def poll():  # type: ignore[no-untyped-def]
        if not busy.acquire(blocking=False):
            overlapped.append("poll")
        try:
            polls.append(time.monotonic())
            return real_poll()
        finally:
            if busy.locked():
                busy.release()

    def active():  # type: ignore[no-untyped-def]
        if not busy.acquire(blocking=False):
            overlapped.append("active")
        try:
            time.sleep(0.05)
            return real_active()
        finally:
            if busy.locked():
                busy.release()

    sensor.poll, sensor.active = poll, active  # type: ignore[method-assign]

    async def main() -> None:
        node = Node(_config(tmp_path, export_period=0.5, tick=0.05), sensor)
        real_close = node.store.close_period
        closes: list[tuple[float, float]] = []

        def slow_close(*args, **kw):  # type: ignore[no-untyped-def]
            t0 = time.monotonic()
            time.sleep(1.0)  # as a period of a few hundred thousand flows would take
            out = real_close(*args, **kw)
            closes.append((t0, time.monotonic()))
            return out

        node.store.close_period = slow_close  # type: ignore[method-assign]
        stop = asyncio.Event()
        run = asyncio.create_task(node.run(stop))
        sensor.feed([flow(1)])
        while not closes:
            await asyncio.sleep(0.05)
        stop.set()
        await run
        t0, t1 = closes[0]
        during = [t for t in polls if t0 < t < t1]
        assert len(during) >= 10, f"{len(during)} polls during a 1 s close"

    asyncio.run(asyncio.wait_for(main(), 30))
    assert overlapped == []
