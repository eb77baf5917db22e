"""The persistent compilation cache: where it writes, how it is turned off, that a run fills it."""

import os
import subprocess
import sys

from opd_jax import compile_cache as cc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resolve_order(tmp_path):
    assert cc.resolve({cc.ENV: str(tmp_path)}) == str(tmp_path)
    for off in ("off", "0", "None", " "):
        assert cc.resolve({cc.ENV: off}) is None
    assert cc.resolve({"JAX_COMPILATION_CACHE_DIR": "/x/y"}) == "/x/y"
    assert cc.resolve({cc.ENV: str(tmp_path), "JAX_COMPILATION_CACHE_DIR": "/x/y"}) == str(tmp_path)
    assert cc.resolve({"XDG_CACHE_HOME": "/c"}) == os.path.join("/c", "opd_jax", "xla")


def test_a_process_fills_the_cache_and_a_second_reads_it(tmp_path):
    where = tmp_path / "xla"
    prog = ("import jax, jax.numpy as jnp\n"
            "from opd_jax import compile_cache\n"
            "print(compile_cache.enable(min_compile_secs=0))\n"
            "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())\n"
            "print(float(f(jnp.ones((64, 64)))))\n")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env[cc.ENV] = str(where)
    first = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == str(where)
    entries = sorted(os.listdir(where))
    assert entries, "the first process wrote no cache entry"
    second = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert sorted(os.listdir(where)) == entries  # the same program: read, not written again
    env[cc.ENV] = "off"
    off = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True)
    assert off.returncode == 0 and off.stdout.splitlines()[0] == "None"
