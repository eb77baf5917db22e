"""opd_jax.host_memory and the relaunch: the policy's parsing, the tunable's environment, and that huge
pages and kept memory each cut the per-call page faults of a large output."""

import json
import os
import platform
import subprocess
import sys

import pytest
from benchmark_scripts import load

from opd_jax import host_memory as hm
from opd_jax import process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child process: the policy applied before JAX starts, then 30 calls of a jitted function
# whose 128 MB output is dropped after each call. Prints the minor page faults of each call.
_CHILD = """
import json, resource
from opd_jax import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((32, 1024, 1024), jnp.float32)  # 128 MB
f = jax.jit(lambda x: x * 2.0)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""


GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_policy_reads_the_environment():
    assert hm.policy({}) == hm.HUGEPAGES
    assert hm.policy({hm.ENV: " Keep "}) == hm.KEEP
    assert hm.policy({hm.ENV: "system"}) == hm.SYSTEM
    assert hm.policy({hm.ENV: ""}) == hm.HUGEPAGES
    with pytest.raises(ValueError, match=f"{hm.ENV}='sometimes'.*'hugepages'.*'keep'.*'system'"):
        hm.policy({hm.ENV: "sometimes"})


def test_kernel_mode_is_the_bracketed_word(tmp_path):
    for text, mode in [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                       ("always madvise [never]", "never"), ("garbled", None)]:
        (tmp_path / "enabled").write_text(text)
        assert hm.transparent_hugepages(str(tmp_path / "enabled")) == mode
    assert hm.transparent_hugepages(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not GLIBC, reason="the tunable is glibc's")
def test_relaunch_environment_adds_the_tunable_only_when_it_would_act():
    env = hm.relaunch_environment({"PATH": "/bin"}, thp_mode="madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # other tunables are kept, and the user's own word on this one is left alone
    kept = hm.relaunch_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_mode="always")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hm.relaunch_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp_mode="madvise") is None
    assert hm.tunable_set({"GLIBC_TUNABLES": "a.b=1: glibc.malloc.hugetlb = 0"}) == "0"
    for env, mode in [({hm.ENV: "system"}, "madvise"), ({hm.ENV: "keep"}, "madvise"),
                      ({hm.ENV: "sometimes"}, "madvise"), ({}, "never"), ({}, None)]:
        assert hm.relaunch_environment(env, thp_mode=mode) is None, (env, mode)


def _faults(policy: str, tunables: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **{hm.ENV: policy})
    env.pop("XLA_FLAGS", None)
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def _longest_quiet_run(faults, limit):
    best = run = 0
    for n in faults:
        run = run + 1 if n < limit else 0
        best = max(best, run)
    return best


@pytest.mark.skipif(not GLIBC, reason="the policy applies to glibc's malloc only")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    pages = 128 * 2**20 // os.sysconf("SC_PAGESIZE")  # one 128 MB output
    system, kept = _faults(hm.SYSTEM), _faults(hm.KEEP)
    assert not system["kept"] and kept["kept"]
    # The system allocator maps each output anew: every call faults its pages in again.
    assert min(system["faults"][1:]) > pages // 2, system
    # Kept: freed outputs are reused. The heap still grows now and then (3 to 12 of 30 calls in
    # our runs, early ones mostly: XLA's 64-byte-aligned requests are padded, so a freed block of
    # the same size does not fit until neighbours merge), but runs of calls that fault nothing appear.
    assert _longest_quiet_run(kept["faults"], pages // 10) >= 5, kept


@pytest.mark.skipif(not GLIBC or hm.transparent_hugepages() not in ("always", "madvise"),
                    reason="needs glibc's malloc and the kernel's transparent huge pages")
def test_huge_pages_fault_a_fresh_output_in_far_fewer_times():
    pages = 128 * 2**20 // os.sysconf("SC_PAGESIZE")
    system = _faults(hm.SYSTEM)
    huge = _faults(hm.SYSTEM, tunables="glibc.malloc.hugetlb=1")  # what the relaunch sets
    assert not huge["kept"]
    assert min(system["faults"][1:]) > pages // 2, system
    # 2 MB pages: a 128 MB output is 64 faults, not 32,768 (plus a few hundred of XLA's own)
    assert max(huge["faults"][1:]) < pages // 20, huge


def test_entry_module_reads_a_python_command_line():
    assert process.entry_module(["python", "-m", "opd_jax.main", "x.py"]) == "opd_jax.main"
    assert process.entry_module(["python", "-X", "importtime", "-u", "-mopd_jax.lab.zoo"]) == "opd_jax.lab.zoo"
    assert process.entry_module(["python", "-W", "ignore", "-m", "opd_jax"]) == "opd_jax"
    for argv in (["python"], ["python", "script.py", "-m", "x"], ["python", "-c", "import opd_jax", "-m"],
                 ["python", "-"], ["python", "-m"]):
        assert process.entry_module(argv) is None, argv


@pytest.mark.skipif(not GLIBC or hm.transparent_hugepages() not in ("always", "madvise"),
                    reason="the relaunch happens only where the tunable would act")
def test_python_m_opd_jax_starts_again_under_the_tunable_and_says_so():
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("GLIBC_TUNABLES", None)
    env.pop(hm.ENV, None)

    def report(**extra):
        run = subprocess.run([sys.executable, "-m", "opd_jax"], env=dict(env, **extra), capture_output=True,
                             text=True, timeout=60)
        return run.returncode, run.stdout + run.stderr

    rc, out = report()
    assert rc == 0 and "hugepages; in effect: transparent huge pages" in out, out
    rc, out = report(**{hm.ENV: "system"})
    assert rc == 0 and "system; in effect: the system allocator's defaults" in out, out
    rc, out = report(**{hm.ENV: "keep"})
    assert rc == 0 and "in effect: freed memory kept" in out, out
    rc, out = report(**{hm.ENV: "sometimes"})
    assert rc == 2 and "error: OPD_JAX_HOST_MEMORY='sometimes'" in out, out
    # a script's own call: `-c` runs its program again, now under the tunable
    code = ("import os; from opd_jax import process; print('start', flush=True); process.relaunch(); "
            "print(os.environ.get('GLIBC_TUNABLES'))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["start", "start", "glibc.malloc.hugetlb=1"], run.stdout + run.stderr


@pytest.mark.skipif(not GLIBC, reason="the benchmark's children set glibc's malloc")
def test_growth_benchmark_smoke(capsys):
    load("host_memory_growth").main(["--smoke"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith(("| system", "| hugepages", "| keep"))}
    assert set(rows) == {"system", "hugepages", "keep"}, out
    growth = [line for line in out.splitlines() if line.startswith("- alignment")]
    assert [line.split(":")[0] for line in growth] == ["- alignment 16", "- alignment 64"], out
    assert all(len(json.loads(line.split(": ", 1)[1])) == 4 for line in growth), out


def test_fresh_memory_reads_the_balloon_features(tmp_path):
    fm = load("fresh_memory")
    assert fm.free_page_reporting(str(tmp_path)) == "no virtio balloon"
    for name, device, features in [("virtio0", "0x0002", "0000010"), ("virtio1", "0x0005", "0110000")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "device").write_text(device + "\n")
        (tmp_path / name / "features").write_text(features + "\n")
    assert fm.free_page_reporting(str(tmp_path)) == "virtio balloon with free page reporting off"
    (tmp_path / "virtio1" / "features").write_text("0110010100\n")
    assert fm.free_page_reporting(str(tmp_path)) == "virtio balloon with free page reporting on"


def test_fresh_memory_smoke_prints_a_row_per_wait(capsys):
    load("fresh_memory").main(["--smoke"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 0.1"]
