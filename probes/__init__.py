"""meshnode's kernel side: BPF programs (``*.bpf.c``), the bcc loader around them and the sock_diag fallback.

Nothing outside this package imports bcc; what crosses out is plain data (frozen records, dicts, bytes).
"""

from meshnode.probes._errors import ProbeCompileError, ProbeError
from meshnode.probes._loader import (
    CGROUP_ROOT,
    ProbeConfig,
    Probes,
    cgroup2_root,
    cgroup_scope,
    drop_reason_names,
    import_bcc,
    missing_prerequisites,
    missing_proc_tracepoints,
    tracepoint_fields,
    translation_unit,
)

__all__ = [
    "CGROUP_ROOT",
    "ProbeCompileError",
    "ProbeConfig",
    "ProbeError",
    "Probes",
    "cgroup2_root",
    "cgroup_scope",
    "drop_reason_names",
    "import_bcc",
    "missing_prerequisites",
    "missing_proc_tracepoints",
    "tracepoint_fields",
    "translation_unit",
]
