"""Make the kernel refuse one ``prctl()`` option to a process and what it execs.

A fault the kernel raises for real: a seccomp filter (Linux) that answers
``prctl(OPTION, ...)`` with an errno and lets every other call through. It is installed
in a small Python program that then execs the command, so the command sees a kernel
without that option (an older kernel, or a container that forbids it) and handles the
error with its own code. Used by the ``ksm`` tests (``PR_SET_MEMORY_MERGE``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

from tests.kit.processes import exec_after

# struct sock_filter: u16 code, u8 jt, u8 jf, u32 k.
_LD_ABS_W, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_ARCHES = {"x86_64": (0xC000003E, 157), "aarch64": (0xC00000B7, 167)}  # audit arch, prctl
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def supported() -> bool:
    """Whether this machine's architecture is one the filter knows."""
    return sys.platform.startswith("linux") and platform.machine() in _ARCHES


def refuse_prctl(option: int, errno_value: int) -> None:
    """From now on, in this process and what it execs, ``prctl(option)`` fails with
    *errno_value*. Irreversible: call it in a process that will exec."""
    arch, nr_prctl = _ARCHES[platform.machine()]
    program = [
        (_LD_ABS_W, 0, 0, 4),  # A = arch
        (_JEQ_K, 0, 5, arch),  # another architecture's calls: allow
        (_LD_ABS_W, 0, 0, 0),  # A = system call number
        (_JEQ_K, 0, 3, nr_prctl),
        (_LD_ABS_W, 0, 0, 16),  # A = args[0] (its low 32 bits)
        (_JEQ_K, 0, 1, option),
        (_RET_K, 0, 0, _RET_ERRNO | errno_value),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
        _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0
    ) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def refusing_prctl(option: int, errno_value: int) -> list[str]:
    """A command-line prefix: what follows it runs with ``prctl(option)`` refused (see
    refuse_prctl)."""
    return exec_after(
        f"from tests.kit.seccomp import refuse_prctl\nrefuse_prctl({option}, {errno_value})"
    )
