"""Helpers shared by test modules, one module per concern; test modules import from here, never each other.

    env         require_kernel: skip (fail under CI=true) without root, eBPF, cgroup v2 and the network tools
    lab         pytest fixtures around meshnode.lab.Lab: make_lab, lab_fixture
    labnode     a real ``meshnode run`` on a lab host, and the console scripts the lab tests run
    traffic     programs that make real traffic on lab hosts and report what they did
    tmux        a tmux server on a private socket (its fixture, ``tmux``, is in tests/conftest.py)
    fakenode    a fake meshnode (real grpc.aio server, canned data) for meshctl's tests; ``python -m`` runs it
    sensor      an EbpfSensor over fake probes, and ring records built as the kernel lays them out
    ring        a file laid out like the kernel's ring-buffer mapping
    blamefleet  a synthetic fleet's transactions for blame: six hosts, two sites, faults as functions
    tlsnode     a node's security and mesh wiring on a real grpc.aio server, with a test fleet CA (Pki)
    meshfleet   real MeshService nodes on grpc.aio servers on 127.0.0.1, joined and published: Fleet, run

Fixtures shared by several modules are in tests/conftest.py. Products (meshnode, cli, probes) never import
anything here; bench/ may.
"""
