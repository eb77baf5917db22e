"""Checkpoints: a thin wrapper over an Orbax ``CheckpointManager``.

What is saved at step ``s``: the whole train state (parameters, optimizer and objective state,
PRNG key, data cursor), the EMA/initial teacher copy when the run has one, and a JSON record
(the resolved config, the step). A student with low-rank adapters is saved without its frozen
base weights (they never change: a resumed run loads them again from the model's source, as the
first run did), so a checkpoint holds the adapters and their optimizer state, not the whole
model; its record holds a fingerprint of the base weights (per tensor: the count, the sum of
squares, a sum under pseudo-random signs), checked on resume (``check_base``).

Saves are asynchronous; Orbax writes each one into a temporary directory and renames it into
place when complete, so a checkpoint that was being written when the process died is never the
one restored (``latest_step`` sees only finished ones).

Test hook: with ``OPD_JAX_TEST_SAVE_DELAY=<seconds>`` in the environment every save also writes
a small "hook" item that takes that long, so the checkpoint stays unfinished (in Orbax's
temporary directory, partly written) long enough for a test to kill the process mid-save.
"""

import asyncio
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.handlers import JsonCheckpointHandler

from opd_jax.training.step import trainable

SAVE_DELAY_ENV = "OPD_JAX_TEST_SAVE_DELAY"
BASE_RECORD = "frozen_base"  # the record's key for the fingerprint of the base weights left out
# The fingerprint's tolerances (float32 sums of one tensor, possibly summed in another order on
# another mesh): the sum of squares relative to itself, the signed sum relative to the sum of
# absolute values. A tensor changed by ~0.3% of its scale or more fails them.
_SQUARES_RTOL, _SIGNED_TOL = 1e-5, 1e-5


class CheckpointNotFound(FileNotFoundError):
    pass


def abstract(tree, shardings):
    """Restore targets: shapes and dtypes of ``tree``, placed as ``shardings`` say."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)


def split_base(state):
    """``(kept, base)``: the part of a train state (or of its tree of shardings) a checkpoint
    stores, and the frozen base weights it leaves out (None unless the student has low-rank
    adapters)."""
    trained, frozen = trainable(state.params)
    return (state, None) if frozen is None else (state.replace(params=trained), frozen)


def join_base(kept, base):
    """The train state of ``kept`` with the frozen ``base`` weights put back (``split_base``)."""
    return kept if base is None else kept.replace(params=nnx.merge_state(kept.params, base))


def _flat_index(shape):
    """Each element's row-major index (modulo 2**32) as uint32, built per dimension (no reshape
    of a sharded tensor)."""
    strides = [int(np.prod(shape[d + 1:], dtype=np.uint64) % 2 ** 32) for d in range(len(shape))]
    return sum((jax.lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(st) for d, st in enumerate(strides)),
               jnp.zeros(shape, jnp.uint32))


@jax.jit
def _sums(leaves):
    out = []
    for x in leaves:
        x = x.astype(jnp.float32)
        sign = 1.0 - 2.0 * (((_flat_index(x.shape) * np.uint32(2654435761)) >> 15) & 1).astype(jnp.float32)
        out.append(jnp.stack([jnp.sum(x * x), jnp.sum(x * sign), jnp.sum(jnp.abs(x))]))
    return out


def fingerprint(base) -> dict:
    """Per tensor of ``base`` (by path): ``[elements, sum of squares, signed sum, sum of |x|]``."""
    flat = [("/".join(str(getattr(k, "key", k)) for k in path), v.get_value()) for path, v in nnx.to_flat_state(base)]
    sums = jax.device_get(_sums([x for _, x in flat]))
    return {name: [int(x.size), *(float(v) for v in s)] for (name, x), s in zip(flat, sums)}


def check_base(saved: dict, now: dict, where: str) -> None:
    """Raise a clear error unless the base weights fingerprinted in ``now`` are those of ``saved``."""
    differ = sorted(set(saved) ^ set(now))
    for name in sorted(set(saved) & set(now)):
        (n0, sq0, sg0, ab0), (n1, sq1, sg1, ab1) = saved[name], now[name]
        if n0 != n1 or abs(sq0 - sq1) > _SQUARES_RTOL * max(sq0, sq1) or abs(sg0 - sg1) > _SIGNED_TOL * max(ab0, ab1):
            differ.append(name)
    if differ:
        raise ValueError(f"checkpoint {where} holds low-rank adapters trained on other base weights than the "
                         f"student's now (these tensors differ: {', '.join(differ[:5])}"
                         f"{' ...' if len(differ) > 5 else ''}). The checkpoint stores the adapters only; "
                         "resume with the student model (student.path, or its seed and config) the run "
                         "started from. Nothing was restored or changed.")


class _SlowHandler(JsonCheckpointHandler):
    """Writes its JSON item after a delay (inside Orbax's commit, before the checkpoint is final)."""

    async def _save_fn(self, x, directory):
        await asyncio.sleep(x["delay_s"])
        await super()._save_fn(x, directory)


@ocp.args.register_with_handler(_SlowHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class _SlowSave(ocp.args.CheckpointArgs):
    item: dict


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._print = None  # the frozen base weights' fingerprint (save_train)

    def save_train(self, step: int, state, items: dict, meta: dict) -> None:
        """Save the train ``state`` (without a student's frozen base weights, fingerprinted in
        the record instead), the other ``items`` and the record ``meta``."""
        kept, base = split_base(state)
        if base is not None:
            meta = {**meta, BASE_RECORD: self._base_print(base)}
        self.save(step, {"state": kept, **items}, meta)

    def restore_train(self, step: int | None, state, shardings, targets: dict) -> tuple[Any, dict]:
        """``(train state, other items)`` of checkpoint ``step`` (None: the latest), placed as
        ``shardings``; the frozen base weights (if it left them out) taken from ``state``, after
        checking their fingerprint against the record's."""
        step = self.latest_step() if step is None else step
        kept, base = split_base(state)
        saved = self.meta(step).get(BASE_RECORD) if base is not None and step in self.all_steps() else None
        if saved is None:  # the whole state was saved (or there is nothing to restore: restore says so)
            kept, base = state, None
        else:
            check_base(saved, self._base_print(base), f"{self.directory}/{step}")
        items, _ = self.restore(step, {"state": abstract(kept, split_base(shardings)[0] if base is not None
                                                          else shardings), **targets})
        return join_base(items.pop("state"), base), items

    def _base_print(self, base) -> dict:
        if self._print is None:  # a run's base weights never change: fingerprinted once
            self._print = fingerprint(base)
        return self._print

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, items: dict, meta: dict) -> None:
        args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
        args["meta"] = ocp.args.JsonSave(meta)
        if os.environ.get(SAVE_DELAY_ENV):
            args["hook"] = _SlowSave({"delay_s": float(os.environ[SAVE_DELAY_ENV])})
        self.manager.save(step, args=ocp.args.Composite(**args))

    def restore(self, step: int | None, targets: dict) -> tuple[dict, dict]:
        """Restore ``targets`` (abstract trees with shardings) at ``step`` (None: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointNotFound(f"no finished checkpoint in {self.directory}")
        if step not in self.manager.all_steps():
            raise CheckpointNotFound(f"no checkpoint for step {step} in {self.directory}; "
                                     f"available: {sorted(self.manager.all_steps())}")
        args = {k: ocp.args.StandardRestore(v) for k, v in targets.items()}
        args["meta"] = ocp.args.JsonRestore()
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # Orbax raises many types for damaged files
            earlier = [s for s in self.all_steps() if s < step]
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ValueError(f"checkpoint {self.directory}/{step} cannot be restored (damaged, or "
                             f"from a different model or config?): {detail}. It was left untouched; "
                             f"move it out of {self.directory} to resume from an earlier "
                             f"checkpoint (steps {earlier}).") from e
        return {k: out[k] for k in targets}, out["meta"]

    def meta(self, step: int) -> dict:
        """The JSON record saved with checkpoint ``step`` (its step and configuration)."""
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax raises many types for damaged files
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ValueError(f"checkpoint {self.directory}/{step} cannot be restored (its record "
                             f"is damaged): {detail}. It was left untouched; move it out of "
                             f"{self.directory} to resume from an earlier checkpoint.") from e
        return dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
