"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations are annotated with *logical* axis names (``"embed"``,
``"mlp"``, ...). A rule table maps each logical name to zero, one or several of the
three mesh axes ``("data", "fsdp", "tensor")``. Changing the parallelism layout means
changing the table, never the model.
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (str), several mesh axes (tuple) or None (replicated).
LOGICAL_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # activations: batch over every data-parallel axis
    "seq": None,
    "vocab": "tensor",
    "embed": "fsdp",  # parameters: the model dimension is the FSDP-sharded one
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
    "cache_seq": None,
    "lora_rank": None,  # the low-rank axis of an adapter's factors (opd_jax.models.lora)
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh; one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh size may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into a mesh with fixed sizes "
                             f"data={data} fsdp={fsdp} tensor={tensor}")
        sizes[sizes.index(-1)] = len(devices) // known
    total = int(np.prod(sizes))
    if total > len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {total} devices, "
                         f"only {len(devices)} are available")
    grid = np.asarray(devices[:total], dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_mesh(names: Sequence[str | None] | None,
                    rules: Mapping[str, str | tuple[str, ...] | None] = LOGICAL_RULES) -> P:
    """Translate a tuple of logical axis names into a mesh ``PartitionSpec``."""
    if names is None:
        return P()
    out, used = [], set()
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        axes = rules[name]
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        axes = tuple(a for a in axes if a not in used)  # a mesh axis may shard one dimension only
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def logical_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_RULES):
    """Map a pytree of logical specs (tuples of names or ``PartitionSpec``) to ``NamedSharding``s."""
    def one(spec):
        return NamedSharding(mesh, logical_to_mesh(tuple(spec) if spec is not None else None, rules))
    return jax.tree.map(one, logical_specs, is_leaf=lambda x: x is None or isinstance(x, (tuple, P)))


def shard(x: jax.Array, *names: str | None, rules=LOGICAL_RULES) -> jax.Array:
    """Constrain an activation's sharding by logical names (under ``jax.set_mesh``; else identity)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh(names, rules))
