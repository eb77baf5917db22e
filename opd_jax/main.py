"""Train one experiment from the command line.

    python -m opd_jax.main --config experiments/tiny_opd.py:smoke [--set section.field=value ...]
        [--workdir DIR] [--cpu-devices N] [--coordinator HOST:PORT --num-processes N --process-id I]

The experiment file defines ``get_config(arg) -> Experiment`` and may define
``prepare(exp) -> Experiment``, called once the configuration is final (e.g. to write a synthetic
data file), and ``reward_fn``: a function ``f(example, completion_ids) -> float`` (for reward
objectives and ``eval.path``), or the name of one (``"math"``, or ``"package.module:factory"``;
see ``opd_jax.rewards``). The configuration's ``reward`` (``--set reward=math``, or
``--reward math``) names one too and wins; a name is recorded in ``config.json``.

Text (see ``opd_jax.training.text``): the tokenizer is the student checkpoint's (``student.path``,
a local directory or a repo id in the local HF cache) or ``data.tokenizer``, the teacher's
prompts go through the teacher's; a teacher whose tokenizer differs from the student's is
refused. Unless ``sampler.eos_ids`` is set, sampling stops at every end-of-sequence id of the
student's ``generation_config.json`` (resolved into ``config.json``). With ``eval.path`` the
student is evaluated on held-out problems (``<workdir>/eval/<step>.json``); at the end it is
exported as a Hugging Face checkpoint (``<workdir>/hf/step_<N>``). Overrides and ``--workdir``
are checked before anything is compiled or written; a bad one exits with status 2 naming the
field. The run resumes from the latest finished checkpoint in
``<workdir>/checkpoints`` and writes the resolved configuration to ``<workdir>/config.json``.
Errors found by the run (data, models, checkpoints, a non-finite loss) exit with status 1.
With ``--coordinator`` every host runs the same command with its own ``--process-id``.
``--cpu-devices N`` splits the host CPU into N JAX devices (one per core is the useful value):
with the default mesh (``mesh.data=-1``) the rows are then spread over them, which runs small
models' sampling and updates on every core (see README); it does nothing on GPUs and TPUs.
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m opd_jax.main", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment file, path/to/file.py[:arg]")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="override a config field (repeatable)")
    p.add_argument("--workdir", help="run directory (sets run.workdir)")
    p.add_argument("--coordinator", help="multi-host: HOST:PORT of process 0, or 'auto' where "
                   "JAX can detect the cluster (Cloud TPU pods, SLURM)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index")
    p.add_argument("--cpu-devices", type=int, help="split the host CPU into N JAX devices "
                   "(one per core): rows spread over them with the default mesh")
    p.add_argument("--reward", help="reward function by name (e.g. math) or module:factory; "
                   "overrides the experiment file's reward_fn")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p.parse_args(argv)


def init_distributed(args) -> None:
    """Join the multi-host job before anything touches a JAX device."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise SystemExit("error: --num-processes/--process-id need --coordinator HOST:PORT")
        return
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; others ignore it
    if args.coordinator == "auto":  # Cloud TPU pods, SLURM, ...: JAX finds the cluster itself
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def resolve(args):
    """The final experiment: get_config(arg), then --set overrides, then --workdir."""
    from opd_jax.config import apply_overrides, load_module
    path, _, arg = args.config.partition(":")
    module = load_module(path)
    exp = apply_overrides(module.get_config(arg), args.overrides)
    if args.workdir:
        exp = apply_overrides(exp, [f"run.workdir={args.workdir}"])
    if args.reward:
        exp = apply_overrides(exp, [f"reward={args.reward}"])
    return module, exp


def reward_of(module, exp):
    """``(exp, reward_fn)``: the experiment file's ``reward_fn`` as the run takes it. The
    configured ``reward`` wins; else a name becomes ``exp.reward`` (recorded in ``config.json``)
    and a function goes to the Trainer."""
    import dataclasses
    reward = getattr(module, "reward_fn", None)
    if reward is not None and not (callable(reward) or isinstance(reward, str)):
        raise ValueError(f"reward_fn must be a function or a name, got {type(reward).__name__}")
    if exp.reward or reward is None:
        return exp, None
    if isinstance(reward, str):
        return dataclasses.replace(exp, reward=reward), None
    return exp, reward


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            print(f"error: --cpu-devices must be >= 1, got {args.cpu_devices}", file=sys.stderr)
            return 2
        import jax  # before anything touches a device: JAX reads this when it creates the CPU client
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    init_distributed(args)
    from opd_jax import process
    try:  # the allocator policy and the compilation cache (a second run starts without compiling)
        process.prepare()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        module, exp = resolve(args)
    except (ValueError, FileNotFoundError, AttributeError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    from opd_jax.training.loop import Trainer, TrainingError
    try:
        if hasattr(module, "prepare"):
            exp = module.prepare(exp)
        exp, reward_fn = reward_of(module, exp)
        Trainer(exp, reward_fn=reward_fn).run()
    except (ValueError, OSError, FloatingPointError, TrainingError) as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
