"""A seccomp filter for local-mode sandboxes, as the classic BPF program bubblewrap loads.

The sandbox already has no capabilities, its own namespaces and no new user
namespaces (``--disable-userns``). The filter takes away kernel interfaces
that a notebook never needs and that are a frequent way into kernel bugs, as
container runtimes' default profiles do: keyrings, BPF, perf events,
userfaultfd, io_uring, the mount API, module and kexec loading, swap, reboot,
clocks, accounting, file handles. They fail with ``EPERM``. System calls of
another ABI (i386 / x32 on x86_64) fail the same way, so numbers cannot be
smuggled through a compatibility table.

Numbers: ``arch/x86/entry/syscalls/syscall_64.tbl`` and
``include/uapi/asm-generic/unistd.h`` (aarch64) of Linux 6.6.
"""

import errno
import platform
import struct

# struct seccomp_data: int nr; __u32 arch; ...
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
X32_SYSCALL_BIT = 0x40000000

DENIED = (
    "keyctl add_key request_key mount umount2 pivot_root kexec_load kexec_file_load bpf "
    "perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register "
    "open_by_handle_at init_module finit_module delete_module swapon swapoff reboot acct "
    "settimeofday clock_settime adjtimex open_tree move_mount fsopen fsconfig fsmount fspick"
).split()

# (AUDIT_ARCH_*, reject x32 numbers, {name: number})
ARCHES = {
    "x86_64": (
        0xC000003E,
        True,
        {
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "open_by_handle_at": 304,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "swapon": 167,
            "swapoff": 168,
            "reboot": 169,
            "acct": 163,
            "settimeofday": 164,
            "clock_settime": 227,
            "adjtimex": 159,
            "open_tree": 428,
            "move_mount": 429,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
        },
    ),
    "aarch64": (
        0xC00000B7,
        False,
        {
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "open_by_handle_at": 265,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "swapon": 224,
            "swapoff": 225,
            "reboot": 142,
            "acct": 89,
            "settimeofday": 170,
            "clock_settime": 112,
            "adjtimex": 171,
            "open_tree": 428,
            "move_mount": 429,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
        },
    ),
}


def _insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(machine=None, denied=DENIED):
    """The BPF program (bytes) for ``machine`` (``platform.machine()``), or None if unknown."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        return None
    audit_arch, reject_x32, numbers = ARCHES[machine]
    deny = RET_ERRNO | errno.EPERM
    checks = sorted({numbers[name] for name in denied})
    body = [(_LD_W_ABS, 0, 0, _OFFSET_ARCH)]
    body.append((_JEQ_K, 1, 0, audit_arch))
    body.append((_RET_K, 0, 0, deny))
    body.append((_LD_W_ABS, 0, 0, _OFFSET_NR))
    jumps = ([(_JGE_K, X32_SYSCALL_BIT)] if reject_x32 else []) + [(_JEQ_K, n) for n in checks]
    # layout after the jumps: RET ALLOW, then RET deny
    for i, (code, k) in enumerate(jumps):
        to_deny = len(jumps) - i  # skip the remaining jumps and RET ALLOW
        body.append((code, to_deny, 0, k))
    body.append((_RET_K, 0, 0, RET_ALLOW))
    body.append((_RET_K, 0, 0, deny))
    return b"".join(_insn(*i) for i in body)
