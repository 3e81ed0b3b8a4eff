"""``meshctl top`` against a real node in-process (grpc.aio on 127.0.0.1, a FakeSensor): the rows are the
node's rollups, inbound flows show under their service port, and the frame is 80 columns of plain text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meshnode.cli.main import main
from tests.unit._flows import flow
from tests.unit._node import Harness, running_node

SERVER = dict(direction="inbound", src="10.0.0.1", sport=8000, dst="10.0.0.7", comm="server", pid=9,
              srtt_us=300)


def _top(h: Harness, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["--node", h.node.api.address, "top", *argv]) == 0
    return capsys.readouterr().out


def test_top_renders_the_nodes_rollups_with_services_and_sparklines(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    async def body(h: Harness) -> None:
        await h.period(flow(1), flow(2, outcome="refused", bytes_tx=0, bytes_rx=0, srtt_us=0),
                       flow(3, dport=51000, **SERVER))
        await h.period(flow(4, retransmits=4), flow(5, dport=51001, **SERVER), flow(6, dport=51002, **SERVER))
        out = await asyncio.to_thread(_top, h, capsys)  # stdout is a pipe here: one plain frame
        doc = json.loads(await asyncio.to_thread(_top, h, capsys, "--json"))

        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 80
        assert lines[0] == f"node {h.node.api.address} test-node (test-nod) · fake/exact · period 1h · window 5m"
        at = lines.index
        assert lines[at(" PROCESSES by flows (2)") + 1:at(" DESTINATIONS by flows (1)")] == [
            "PROCESS                  FLOWS  FAIL USEFUL    RTT   BYTES FLOWS/S FAIL/S RETX/S",
            "server/9                     3     0   100%  300us 6.2 KiB      ▄█",   # ties: more bytes first
            "curl/100                     3     1  66.7%  1.0ms 4.1 KiB      █▄     █       █",
        ]
        # Outbound flows by remote address:port; the inbound ones by the local port clients reach, one row
        # for three client ports (as destinations they would be three one-flow rows of ephemeral ports).
        assert lines[at(" DESTINATIONS by flows (1)") + 1:at(" SERVICES by flows (1)")] == [
            "DESTINATION      SVC     FLOWS  FAIL USEFUL    RTT   BYTES FLOWS/S FAIL/S RETX/S",
            "10.0.0.2:443     https       3     1  66.7%  1.0ms 4.1 KiB      █▄     █       █",
        ]
        assert lines[at(" SERVICES by flows (1)") + 1:at(" EVENTS")] == [
            "SERVICE          SVC     FLOWS  FAIL USEFUL    RTT   BYTES FLOWS/S FAIL/S RETX/S",
            "10.0.0.1:8000    -           3     0   100%  300us 6.2 KiB      ▄█",
        ]
        assert "10.0.0.7:" not in out

        rollups = doc["rollups"]  # --json prints the node's rollups as the node sent them
        assert [p["seq"] for p in rollups["periods"]] == [1, 2]
        [svc] = rollups["by_service"]
        assert (svc["totals"]["key"], svc["totals"]["flows"], svc["flows"]) == ("10.0.0.1:8000", 3, [1, 2])
        [dest] = rollups["by_destination"]
        assert (dest["failures"], dest["retransmits"], dest["totals"]["failures"]) == ([1, 0], [0, 4],
                                                                                       {"refused": 1})

    async def main_() -> None:
        async with running_node(tmp_path) as h:
            await body(h)

    asyncio.run(main_())
