"""Helpers shared by test modules, one module per concern; test modules import from here, never each other.

    env       require_kernel: skip (fail under CI=true) without root, eBPF, cgroup v2 and the network tools
    lab       pytest fixtures around meshnode.lab.Lab: make_lab, lab_fixture
"""
