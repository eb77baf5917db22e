"""Test set-up that must run before JAX initialises a backend."""

import os

# Eight fake CPU devices, so that sharding is tested on every machine. Most of the suite's time
# is XLA compiling small programs, so LLVM compiles their kernels at level 0 (XLA's own passes
# all run; the programs compute the same): tests/objectives/test_vocab.py took 71 s instead of
# 102 s. A level in $XLA_FLAGS wins; programs that set their own (the CPU sampler's 1) keep it.
# At level 0, most of what is left is XLA:CPU's MLIR fusion emitters building each fused kernel;
# its older emitters (LLVM IR directly) compile a lab train step in 0.85 s instead of 1.89 s,
# and the whole suite in 979 s instead of 1,398 s on 2 cores (BENCHMARKS.md, "The test suite's
# compile"). Runs outside the tests keep XLA's default emitters: at XLA's default level the older
# ones compile slower (3.77 s against 3.38 s for the same step). A setting in $XLA_FLAGS wins.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    _FLAGS += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in _FLAGS:
    _FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = (_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")  # silent broadcasting bugs become errors
# Many tests compile identical programs (each Trainer or jit wrapper is a new cache key in
# memory); the persistent cache, keyed by the compiled program itself, shares them.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", os.environ.get("OPD_TEST_JAX_CACHE", _CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")


@pytest.fixture(scope="session")
def n_devices():
    assert jax.device_count() == 8, "conftest must run before anything initialises JAX"
    return jax.device_count()
