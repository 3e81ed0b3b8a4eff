"""meshctl's command line: flags, validation (one line, exit 2), filters, help texts."""

from __future__ import annotations

import argparse

import pytest

from meshnode.cli._args import DEFAULT_NODE, build_parser, parse
from meshnode.cli._commands import flow_filter
from meshnode.v1 import flow_pb2

COMMANDS = ("status", "flows", "health", "events", "peers", "query", "blame", "validate", "top", "measure",
            "dns")


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["flows", "--since", "5x"], "'5x' is not a duration"),
        (["flows", "--until", "2026-13-01T00:00:00Z"], "RFC3339"),
        (["flows", "--dst", "10.0.0.300"], "not an IP address or CIDR"),
        (["flows", "--port", "70000"], "not a port"),
        (["flows", "--pid", "abc"], "not a process id"),
        (["flows", "--outcome", "refused,lost"], "one or more of"),
        (["flows", "--proto", "icmp"], "tcp, udp"),
        (["flows", "--limit", "-3"], "not a count"),
        (["events", "--type", "boom"], "retransmit_burst"),
        (["--node", "nohostport", "status"], "HOST:PORT"),
        (["frobnicate"], "invalid choice"),
        (["top", "--window", "soon"], "not a duration"),
    ],
)
def test_bad_flags_fail_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    err = _usage_error(capsys, argv)
    assert err.startswith("meshctl")
    assert needle in err
    assert "--help" in err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_node_from_flag_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHCTL_NODE", raising=False)
    assert parse(["status"]).node == DEFAULT_NODE == "127.0.0.1:7400"
    monkeypatch.setenv("MESHCTL_NODE", "10.1.2.3:7400")
    assert parse(["status"]).node == "10.1.2.3:7400"
    assert parse(["--node", "h:1", "status"]).node == "h:1"
    assert parse(["status", "--node", "h:2"]).node == "h:2"


def test_bad_env_node_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHCTL_NODE", "bogus")
    assert "MESHCTL_NODE" in _usage_error(capsys, ["status"])


def test_common_flags_before_or_after_the_command() -> None:
    a = parse(["--json", "status"])
    b = parse(["status", "--json", "--wide", "--timeout", "2s"])
    assert a.json and not a.wide and a.timeout == 10.0
    assert b.json and b.wide and b.timeout == 2.0


def test_filters_become_one_flow_filter() -> None:
    args = parse(["flows", "--proc", "curl", "--proc", "wget", "--pid", "42", "--dst", "10.0.0.0/8",
                  "--port", "443", "--dport", "8443", "--outcome", "refused,timeout", "--outcome", "reset",
                  "--proto", "tcp", "--direction", "outbound", "--cgroup", "/lab"])
    f = flow_filter(args)
    assert f is not None
    assert list(f.comm) == ["curl", "wget"] and list(f.pid) == [42] and list(f.dst) == ["10.0.0.0/8"]
    assert list(f.port) == [443] and list(f.dport) == [8443] and list(f.cgroup) == ["/lab"]
    assert list(f.outcome) == [flow_pb2.REFUSED, flow_pb2.TIMEOUT, flow_pb2.RESET]
    assert list(f.proto) == [flow_pb2.TCP] and list(f.direction) == [flow_pb2.OUTBOUND]
    assert flow_filter(parse(["flows"])) is None
    ev = flow_filter(parse(["events", "--type", "drop,rtt_shift"]))
    assert ev is not None and list(ev.event_type) == [flow_pb2.DROP, flow_pb2.RTT_SHIFT]


def test_every_command_has_examples_and_main_help_documents_exit_codes() -> None:
    parser = build_parser()
    main_help = parser.format_help()
    for code in ("0    ok", "2    usage", "3    node unreachable", "4    deadline", "5    permission", "130"):
        assert code in main_help
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    for name, p in sub.choices.items():
        text = p.format_help()
        examples = [line for line in text.splitlines() if line.strip().startswith(f"meshctl {name}")
                    or line.strip().startswith("meshctl --node")]
        assert len(examples) >= 2, (name, text)
        assert "--json" in text and "--node" in text
