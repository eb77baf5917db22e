"""Load a script of ``benchmarks/`` as a module, for its smoke and unit tests (``tests/`` is on
``sys.path`` through its ``conftest.py``)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    """``benchmarks/<name>.py``, executed as a fresh module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
