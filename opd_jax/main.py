"""Train one experiment from the command line.

    python -m opd_jax.main --config experiments/tiny_opd.py:smoke [--set section.field=value ...]
        [--workdir DIR] [--cpu-devices N] [--coordinator HOST:PORT --num-processes N --process-id I]

The experiment file defines ``get_config(arg) -> Experiment`` and may define
``prepare(exp) -> Experiment``, called once the configuration is final (e.g. to write a synthetic
data file), and ``reward_fn``: a function ``f(example, completion_ids) -> float`` (for reward
objectives), or the name of one (``"math"``, or ``"package.module:factory"``; see
``opd_jax.rewards``); ``--reward NAME`` overrides it.

Text: the tokenizer is the student checkpoint's (``student.path``, a local directory or a repo id
in the local HF cache), the teacher's prompts go through the teacher's; a teacher whose tokenizer
differs from the student's is refused. Unless ``sampler.eos_ids`` is set, sampling stops at every
end-of-sequence id of the student's ``generation_config.json`` (resolved into ``config.json``).
Overrides and ``--workdir`` are checked before anything is compiled or written; a bad one exits
with status 2 naming the field. The run resumes from the latest finished checkpoint in
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
    return module, exp


def _vocab_size(spec) -> int:
    """The vocabulary size of a ``ModelSpec``, from its checkpoint's config.json or its config."""
    if not spec.path:
        return spec.config.vocab_size
    from opd_jax.models.hf_io import read_hf_config
    return int(read_hf_config(spec.path)["vocab_size"])


def _teacher_paths(exp) -> list[str]:
    t = exp.teacher
    specs = [t.model] if t.kind == "model" else list(t.models) if t.kind == "models" else []
    return [s.path for s in specs if s.path]


def prepare_text(exp):
    """``(exp, tokenizer, examples)``: the student's tokenizer (``data.tokenizer`` if the config
    has that field and sets it, else the checkpoint's at ``student.path``; None without either),
    the teachers' tokenizers checked against it, ``sampler.eos_ids`` defaulted from the
    student's generation config, and the records read with the chat-template options."""
    import dataclasses

    from opd_jax import data as D
    from opd_jax.models import load_tokenizer
    from opd_jax.models.tokenizer import check_same_tokenizer, default_eos_ids, tokenizer_of
    # Proposed DataConfig fields (read here once they exist): ``tokenizer`` (a tokenizer
    # directory or repo id overriding the student's) and ``chat_template_kwargs`` (a JSON object).
    named = getattr(exp.data, "tokenizer", "")
    tok = load_tokenizer(named) if named else tokenizer_of(exp.student.path)
    t_tok = None
    for path in _teacher_paths(exp):
        other = tokenizer_of(path)
        if other is not None and tok is not None:
            check_same_tokenizer(tok, other, student_name=f"student ({named or exp.student.path})",
                                 teacher_name=f"teacher ({path})")
        t_tok = t_tok or other
    eos = default_eos_ids(exp.student.path, tok, exp.sampler.eos_ids)
    exp = dataclasses.replace(exp, sampler=exp.sampler.replace(eos_ids=eos))
    examples = D.load_examples(
        exp.data.path, tokenizer=tok, teacher_tokenizer=t_tok,
        max_prompt_len=exp.data.max_prompt_len, vocab_size=_vocab_size(exp.student),
        chat_template=exp.data.chat_template,
        template_kwargs=D.template_kwargs(getattr(exp.data, "chat_template_kwargs", "")))
    return exp, tok, examples


def resolve_reward(reward, tokenizer, eos_ids):
    """A reward function from the experiment file's ``reward_fn`` or ``--reward``: a function is
    used as it is, a name is built by :func:`opd_jax.rewards.get`; None stays None."""
    if reward is None or callable(reward):
        return reward
    if not isinstance(reward, str):
        raise ValueError(f"reward_fn must be a function or a name, got {type(reward).__name__}")
    from opd_jax import rewards
    return rewards.get(reward, tokenizer, eos_ids)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            print(f"error: --cpu-devices must be >= 1, got {args.cpu_devices}", file=sys.stderr)
            return 2
        import jax  # before anything touches a device: JAX reads this when it creates the CPU client
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    init_distributed(args)
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
        exp, tok, examples = prepare_text(exp)
        reward_fn = resolve_reward(args.reward or getattr(module, "reward_fn", None), tok,
                                   exp.sampler.eos_ids)
        Trainer(exp, examples=examples, tokenizer=tok, reward_fn=reward_fn).run()
    except (ValueError, OSError, FloatingPointError, TrainingError) as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
