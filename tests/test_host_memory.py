"""opd_jax.host_memory: the policy's parsing, and that kept memory stops per-call page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

from opd_jax import host_memory as hm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child process: the policy applied before JAX starts, then a jitted call whose 128 MB output
# is dropped after each call. Prints the minor page faults of 10 calls after 10 warm-up calls (a
# kept heap takes a few calls to hold enough freed blocks: 3 to 12 in our runs).
_CHILD = """
import json, resource, sys
from opd_jax import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((32, 1024, 1024), jnp.float32)  # 128 MB
f = jax.jit(lambda x: x * 2.0)
for _ in range(10):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x).block_until_ready()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
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


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the policy applies to glibc's malloc only")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    pages = 10 * 128 * 2**20 // os.sysconf("SC_PAGESIZE")  # ten fresh 128 MB outputs
    system, kept = _faults(hm.SYSTEM), _faults(hm.KEEP)
    assert not system["kept"] and kept["kept"]
    # The system allocator maps each output anew: every page faults again on each call.
    assert system["faults"] > pages // 2, system
    # Kept: a freed output is a later call's output, already mapped (a late call may still grow
    # the heap; most calls must not).
    assert kept["faults"] < system["faults"] // 2, (kept, system)
