"""speed.keep_freed_memory: glibc keeps freed blocks mapped instead of returning their pages every step."""

import platform
import subprocess
import sys

import pytest

from hintdistill.engine import memory

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# In a fresh interpreter: the resident memory after a 16 MiB block is touched and freed, minus before (MiB)
FREED = """
import sys
import torch
from hintdistill.engine.memory import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory(), file=sys.stderr)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss()
block = torch.ones(4 << 20)  # 16 MiB, every page touched
del block
print(round(rss() - before, 1))
"""


def resident_after_free(mode: str, env: dict | None = None) -> float:
    out = subprocess.run([sys.executable, "-c", FREED, mode], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout)


@glibc
def test_freed_blocks_stay_mapped_only_with_the_fixed_thresholds():
    assert resident_after_free("default") < 4  # glibc unmaps a fresh large block when it is freed
    assert resident_after_free("keep") > 15  # kept for the next step's allocation


@glibc
def test_the_environment_and_other_allocators_are_respected(monkeypatch):
    assert memory.why_not() is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert memory.why_not() == "jemalloc is preloaded"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert memory.why_not() == "the environment sets glibc's malloc options"
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert memory.why_not() == "the environment sets glibc's malloc options"


@glibc
def test_a_user_setting_is_left_alone_and_said(monkeypatch):
    import os

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", FREED, "keep"], capture_output=True, text=True, check=True, env=env)
    assert "glibc's thresholds left as they are (the environment sets glibc's malloc options)" in out.stderr
    assert float(out.stdout) < 4
