"""Checkpoints: a thin wrapper over an Orbax ``CheckpointManager``.

What is saved at step ``s``: the whole train state (parameters, optimizer and objective state,
PRNG key, data cursor), the EMA/initial teacher copy when the run has one, and a JSON record
(the resolved config, the step). Saves are asynchronous; Orbax writes each one into a
temporary directory and renames it into place when complete, so a checkpoint that was being
written when the process died is never the one restored (``latest_step`` sees only finished
ones).

Test hook: with ``OPD_JAX_TEST_SAVE_DELAY=<seconds>`` in the environment every save also writes
a small "hook" item that takes that long, so the checkpoint stays unfinished (in Orbax's
temporary directory, partly written) long enough for a test to kill the process mid-save.
"""

import asyncio
import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.handlers import JsonCheckpointHandler

SAVE_DELAY_ENV = "OPD_JAX_TEST_SAVE_DELAY"


class CheckpointNotFound(FileNotFoundError):
    pass


def abstract(tree, shardings):
    """Restore targets: shapes and dtypes of ``tree``, placed as ``shardings`` say."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)


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
