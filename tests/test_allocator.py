"""The host allocator tuning (fusioncam/allocator.py): what it sets, when it stays off, and that the
app's command line applies it. The effect is checked in fresh processes with glibc's own counters."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from fusioncam import allocator, cli

ROOT = Path(__file__).resolve().parent.parent
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# In a fresh interpreter: malloc and free one 16 MiB block and report, from glibc's mallinfo2, how many
# bytes of it were mmap'ed while it lived, and how much the heap kept once it was freed.
PROBE = """
import ctypes, json, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    from fusioncam.allocator import tune_host_allocator
    assert tune_host_allocator()
before = libc.mallinfo2()
block = libc.malloc(16 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"mmapped": during.hblkhd - before.hblkhd, "kept": after.arena - before.arena}))
"""


def probe(setting: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are GNU libc's")
def test_tuned_malloc_serves_activation_sized_blocks_from_the_heap_and_keeps_them() -> None:
    default, tuned = probe("default"), probe("tuned")
    assert default["mmapped"] >= 16 << 20          # glibc's default: a fresh mapping per 16 MiB block
    assert tuned["mmapped"] == 0                   # tuned: from the heap …
    assert tuned["kept"] >= 8 << 20                # … which keeps it for the next pass once freed


class FakeMallopt:
    """A ctypes-like ``mallopt`` that records its calls and answers ``answer``."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


class FakeLibc:
    def __init__(self) -> None:
        self.mallopt = FakeMallopt()


@pytest.fixture
def fake_libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    libc = FakeLibc()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv(allocator.SWITCH, raising=False)
    return libc


def test_tune_sets_both_thresholds(fake_libc: FakeLibc) -> None:
    assert allocator.tune_host_allocator() is True
    assert fake_libc.mallopt.calls == [(-3, 32 << 20), (-1, 1 << 30)]      # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_switched_off_or_elsewhere_leaves_malloc_alone(fake_libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.SWITCH, "0")
    assert allocator.tune_host_allocator() is False
    monkeypatch.delenv(allocator.SWITCH)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))     # musl, or not found
    assert allocator.tune_host_allocator() is False
    monkeypatch.setattr(allocator.platform, "system", lambda: "Darwin")
    assert allocator.tune_host_allocator() is False
    assert fake_libc.mallopt.calls == []


def test_a_refused_mallopt_is_reported_not_raised(fake_libc: FakeLibc, caplog: pytest.LogCaptureFixture) -> None:
    fake_libc.mallopt.answer = 0
    assert allocator.tune_host_allocator() is False
    assert "could not tune malloc" in caplog.text


def test_the_command_line_tunes_before_it_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "tune_host_allocator", lambda: calls.append("tuned") or True)
    code = cli.main(["explain", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out")])
    assert code != 0 and calls == ["tuned"]


def test_the_app_tunes_when_run_as_a_script() -> None:
    source = (ROOT / "app.py").read_text()
    main_block = source[source.index('if __name__ == "__main__":'):]
    assert "tune_host_allocator()" in main_block
