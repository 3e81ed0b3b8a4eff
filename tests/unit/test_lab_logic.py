"""The lab's pure logic: names, address plan, rate parsing, nft and tc rendering. No root, no network."""

from __future__ import annotations

import ipaddress

import pytest

from meshnode.lab import LabUsageError, parse_lab_id, parse_rate
from meshnode.lab._faults import (
    local_exemptions,
    rate_commands,
    render_filter_table,
    render_ingress_table,
    resolve_peer,
    verdicts,
    ways,
)
from meshnode.lab._lab import _plan
from meshnode.lab._names import (
    SLOTS,
    check_name,
    default_host_names,
    host_ipv4,
    host_ipv6,
    host_netns,
    lab_id,
    lab_ipv4,
    lab_ipv6,
    nft_table,
    site_ipv4,
    site_ipv6,
    slot_for,
    slot_of,
    tbf_burst_bytes,
)

B = ipaddress.ip_network("10.213.1.2/32")
B6 = ipaddress.ip_network("fd6d:6e6c:6162:1::2/128")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnlab-42-3", ("mnlab-42-3", 42, 3)),
        ("mnlab-42-3-h-a", ("mnlab-42-3", 42, 3)),
        ("mnlab-42-3-f12", ("mnlab-42-3", 42, 3)),
        ("mnlab-42", None),
        ("mnlab-42-x", None),
        ("other-42-3-h-a", None),
        ("mnlab-42-3x", None),
    ],
)
def test_parse_lab_id(name: str, expected: tuple[str, int, int] | None) -> None:
    parsed = parse_lab_id(name)
    assert (None if parsed is None else (parsed.text, parsed.pid, parsed.seq)) == expected


def test_names_carry_the_lab_id() -> None:
    lab = lab_id(1234, 7)
    assert lab == "mnlab-1234-7"
    for name in (host_netns(lab, "web1"), nft_table(lab, 3)):
        parsed = parse_lab_id(name)
        assert parsed is not None and parsed.text == lab


@pytest.mark.parametrize("name", ["a", "web1", "abcdefghij"])
def test_good_names(name: str) -> None:
    assert check_name(name, "host") == name


@pytest.mark.parametrize("name", ["", "A", "1a", "web-1", "abcdefghijk", "sw", "core", "a b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(LabUsageError):
        check_name(name, "host")


def test_default_host_names() -> None:
    assert default_host_names(3) == ["a", "b", "c"]
    assert default_host_names(26)[-1] == "z"
    assert default_host_names(27)[:2] == ["h1", "h2"]


def test_address_plan() -> None:
    assert str(lab_ipv4(147)) == "10.147.0.0/16"
    assert str(lab_ipv6(147)) == "fd6d:6e6c:6162:9300::/56"
    assert str(site_ipv4(147, 0)) == "10.147.0.0/24"
    assert str(site_ipv4(147, 2)) == "10.147.2.0/24"
    assert str(site_ipv6(147, 2)) == "fd6d:6e6c:6162:9302::/64"
    assert str(host_ipv4(147, 1, 3)) == "10.147.1.3"
    assert str(host_ipv6(147, 1, 254)) == "fd6d:6e6c:6162:9301::fe"
    assert site_ipv6(254, 200).subnet_of(lab_ipv6(254))
    assert site_ipv4(254, 200).subnet_of(lab_ipv4(254))
    assert lab_ipv6(128).network_address.is_private
    for bad in [lambda: host_ipv4(147, 1, 255), lambda: lab_ipv4(127), lambda: site_ipv4(255, 1)]:
        with pytest.raises(LabUsageError):
            bad()


def test_slots() -> None:
    slot = slot_for("mnlab-1-1", set())
    assert slot in SLOTS
    assert slot_for("mnlab-1-1", set()) == slot  # deterministic
    assert slot_for("mnlab-1-1", {slot}) != slot  # moves on when taken
    assert slot_for("mnlab-1-1", set(SLOTS)) in SLOTS  # all taken: share
    assert slot_of("10.147.1.2") == 147
    assert slot_of("10.12.1.2") is None
    assert slot_of("fd6d::1") is None


@pytest.mark.parametrize(
    ("rate", "bps"),
    [("8mbit", 8_000_000), ("1mbps", 8_000_000), ("1.5gbit", 1_500_000_000), (64_000, 64_000), ("500kbit", 500_000)],
)
def test_parse_rate(rate: int | str, bps: int) -> None:
    assert parse_rate(rate) == bps


@pytest.mark.parametrize("rate", ["fast", "8 furlongs", "100bit", True, 10])
def test_parse_rate_rejects(rate: object) -> None:
    with pytest.raises(LabUsageError):
        parse_rate(rate)  # type: ignore[arg-type]


def test_tbf_burst_covers_frames_and_scales() -> None:
    assert tbf_burst_bytes(64_000) == 16 * 1024
    assert tbf_burst_bytes(8_000_000_000) == 8_000_000_000 // 8 // 50


def test_plan_groups_and_validates() -> None:
    assert _plan(2, None) == [(None, ["a", "b"])]
    assert _plan(["web", "db"], None) == [(None, ["web", "db"])]
    assert _plan(0, {"east": 2, "west": ["w"]}) == [("east", ["east1", "east2"]), ("west", ["w"])]
    bad: list[tuple[int | list[str], dict[str, int | list[str]] | None]] = [
        (0, None),
        (["a", "a"], None),
        (2, {"east": 1}),
        (0, {"east": ["x"], "west": ["x"]}),
    ]
    for hosts, sites in bad:
        with pytest.raises(LabUsageError):
            _plan(hosts, sites)


def test_resolve_peer() -> None:
    assert resolve_peer(None) == []
    assert resolve_peer("10.213.1.2") == [B]
    assert resolve_peer("fd6d:6e6c:6162:1::/64") == [ipaddress.ip_network("fd6d:6e6c:6162:1::/64")]
    with pytest.raises(LabUsageError):
        resolve_peer("not-an-address")


def test_verdicts() -> None:
    assert verdicts("drop") == ["drop"]
    assert verdicts("loss", 30) == ["numgen random mod 1000 < 300 drop"]
    assert verdicts("loss", 0.5) == ["numgen random mod 1000 < 5 drop"]
    assert verdicts("reject")[0] == "meta l4proto tcp reject with tcp reset"
    for percent in (0, 0.05, -1, 101, None):
        with pytest.raises(LabUsageError):
            verdicts("loss", percent)


def test_ways() -> None:
    assert ways("both") == ["out", "in"]
    assert ways("in") == ["in"]


def test_render_host_filter_for_a_peer() -> None:
    text = render_filter_table(
        "mnlab-1-1-f1",
        iface="eth0",
        forwarding=False,
        directions=["out", "in"],
        statements=["drop"],
        networks=[B, B6],
    )
    assert text == (
        "table inet mnlab-1-1-f1 {\n"
        "\tchain output {\n"
        "\t\ttype filter hook output priority 0; policy accept;\n"
        '\t\toifname "eth0" ip daddr { 10.213.1.2/32 } drop\n'
        '\t\toifname "eth0" ip6 daddr { fd6d:6e6c:6162:1::2/128 } drop\n'
        "\t}\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority 0; policy accept;\n"
        '\t\tiifname "eth0" ip saddr { 10.213.1.2/32 } drop\n'
        '\t\tiifname "eth0" ip6 saddr { fd6d:6e6c:6162:1::2/128 } drop\n'
        "\t}\n"
        "}\n"
    )


def test_render_reject_lets_the_hosts_own_answers_out() -> None:
    text = render_filter_table(
        "t",
        iface="eth0",
        forwarding=False,
        directions=["out"],
        statements=verdicts("reject"),
        networks=[],
        exempt=lambda way: local_exemptions("reject", way),
    )
    rules = [line.strip() for line in text.splitlines() if line.startswith("\t\toifname")]
    assert rules[:4] == [
        'oifname "eth0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept',
        'oifname "eth0" tcp flags & rst == rst accept',
        'oifname "eth0" icmp type destination-unreachable accept',
        'oifname "eth0" icmpv6 type destination-unreachable accept',
    ]
    assert rules[4:] == [
        'oifname "eth0" meta l4proto tcp reject with tcp reset',
        'oifname "eth0" reject with icmpx port-unreachable',
    ]
    assert local_exemptions("drop", "out") == []


def test_render_router_filter_hooks_forward_without_exemptions() -> None:
    text = render_filter_table(
        "t", iface="up0", forwarding=True, directions=["out", "in"], statements=["drop"], networks=[]
    )
    assert text.count("chain forward") == 1
    assert 'oifname "up0" drop' in text and 'iifname "up0" drop' in text


def test_render_ingress_table_on_the_switch_port() -> None:
    text = render_ingress_table("t", device="p-a", statements=["drop"], networks=[])
    assert 'type filter hook ingress device "p-a" priority 0; policy accept;' in text
    assert "meta protocol { ip, ip6 } drop" in text
    text = render_ingress_table("t", device="p-a", statements=["drop"], networks=[B])
    assert "ip daddr { 10.213.1.2/32 } drop" in text and "meta protocol" not in text


def test_rate_commands() -> None:
    assert rate_commands("eth0", 8_000_000, [], "dst") == [
        ["qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf", "rate", "8000000bit", "burst", "20000",
         "latency", "100ms"],
    ]  # fmt: skip
    commands = rate_commands("p-a", 8_000_000, [B, B6], "src")
    assert commands[0] == ["qdisc", "add", "dev", "p-a", "root", "handle", "1:", "htb"]
    assert commands[2][:7] == ["qdisc", "add", "dev", "p-a", "parent", "1:3", "handle"]
    assert commands[3][-7:] == ["u32", "match", "ip", "src", "10.213.1.2/32", "flowid", "1:3"]
    assert commands[4][6:8] == ["protocol", "ipv6"] and "ip6" in commands[4]
