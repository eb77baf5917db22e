"""Programs shared by the Trainers of one process that have the same static pieces.

A lab experiment builds one ``Trainer`` per arm and seed, a test suite many more. Each used to
build its own optimizer, objective and ``jax.jit`` of the train step, so every seed of an arm
traced and lowered the same step again (XLA's compile came from the persistent cache, or ran
again for a program under the cache's threshold).
:func:`cached` keeps the last :data:`LIMIT` values by a key of everything they are built from:
configs (frozen dataclasses), graph definitions and shardings. The values are pure functions of
that key (``optax`` transformations and objectives hold no state), so sharing them changes no
number; a key that cannot be hashed is built afresh each time.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

LIMIT = 16
_VALUES: collections.OrderedDict = collections.OrderedDict()


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key`` among the last :data:`LIMIT` keys used."""
    try:
        hash(key)
    except TypeError:  # an unhashable config field: nothing to share
        return build()
    if key in _VALUES:
        _VALUES.move_to_end(key)
        return _VALUES[key]
    value = _VALUES[key] = build()
    while len(_VALUES) > LIMIT:
        _VALUES.popitem(last=False)
    return value


def clear() -> None:
    """Forget every shared value (their programs are freed with the last Trainer using them)."""
    _VALUES.clear()
