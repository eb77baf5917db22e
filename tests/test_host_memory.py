"""opd_jax.host_memory: the policy's parsing, and that kept memory stops per-call page faults."""

import importlib.util
import json
import os
import platform
import subprocess
import sys

import pytest

from opd_jax import host_memory as hm

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


def test_policy_reads_the_environment():
    assert hm.policy({}) == hm.SYSTEM
    assert hm.policy({hm.ENV: " Keep "}) == hm.KEEP
    assert hm.policy({hm.ENV: ""}) == hm.SYSTEM
    with pytest.raises(ValueError, match=f"{hm.ENV}='sometimes'.*'system'.*'keep'"):
        hm.policy({hm.ENV: "sometimes"})


def _faults(policy: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **{hm.ENV: policy})
    env.pop("XLA_FLAGS", None)
    run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def _longest_quiet_run(faults, limit):
    best = run = 0
    for n in faults:
        run = run + 1 if n < limit else 0
        best = max(best, run)
    return best


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the policy applies to glibc's malloc only")
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


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the benchmark's children set glibc's malloc")
def test_growth_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("host_memory_growth",
                                                  os.path.join(REPO, "benchmarks", "host_memory_growth.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--smoke"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith(("| system", "| keep"))}
    assert set(rows) == {"system", "keep"}, out
    growth = [line for line in out.splitlines() if line.startswith("- alignment")]
    assert [line.split(":")[0] for line in growth] == ["- alignment 16", "- alignment 64"], out
    assert all(len(json.loads(line.split(": ", 1)[1])) == 4 for line in growth), out
