"""Set-up checks: pure functions that refuse an experiment before anything is compiled or written.

Each raises ``ValueError`` (``DataError`` for the data) with a message that names the setting,
file or line at fault and what to do about it.
"""

import dataclasses

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax import environments as EN

# The objectives' extra inputs scored from the records' extra teacher contexts, and their fields.
# The teacher settings of a teacher with its own tokenizer (teacher.kind="cross_tokenizer").
ALIGNMENT_FIELDS = ("token_ratio", "span_cuts", "shared_topk", "shared_tokens")
# teacher kinds that are one local model: the ones look-ahead scoring (objective lgr) can read
LOOKAHEAD_KINDS = ("model", "self", "initial", "ema", "served")
CONTEXT_FIELDS = {"aux_teacher_logp": "aux_teacher_prompts_ids",
                  "bad_teacher_logp": "bad_teacher_prompt_ids"}


def check_layout(exp, mesh_shape, process_count: int) -> None:
    """The batch divides over the data-parallel devices, the mini-batches (``loop.minibatches``),
    the micro-batches and the hosts; the run ends after a whole batch's optimizer steps."""
    rows = exp.data.batch_size * exp.sampler.num_samples
    shards = mesh_shape["data"] * mesh_shape["fsdp"]
    if exp.data.batch_size % shards:  # prompts are sharded before num_samples repeats them
        raise ValueError(f"data.batch_size={exp.data.batch_size} prompts do not divide over "
                         f"the {shards} data-parallel devices (mesh data={mesh_shape['data']} x "
                         f"fsdp={mesh_shape['fsdp']}); change the batch size or the mesh.")
    m = exp.loop.minibatches
    if exp.data.batch_size % m or (exp.data.batch_size // m) % shards:
        raise ValueError(f"data.batch_size={exp.data.batch_size} prompts cannot be split into "
                         f"loop.minibatches={m} equal slices that each divide over the {shards} "
                         "data-parallel devices; change the batch size or loop.minibatches.")
    rows //= m  # one optimizer step's
    if rows % exp.step.grad_accum or (rows // exp.step.grad_accum) % shards:
        raise ValueError(f"{rows} rows (per optimizer step) cannot be split into "
                         f"step.grad_accum={exp.step.grad_accum} micro-batches that each divide "
                         f"over {shards} devices.")
    if exp.run.steps % exp.loop.updates:
        raise ValueError(f"run.steps={exp.run.steps} is not a multiple of the "
                         f"{exp.loop.updates} optimizer steps each sampled batch trains in "
                         f"(loop.minibatches={m} x loop.epochs={exp.loop.epochs}); a run ends "
                         "after a whole batch.")
    if exp.data.batch_size % process_count:
        raise ValueError(f"data.batch_size={exp.data.batch_size} must divide over "
                         f"{process_count} hosts.")


def uses_rollouts(loop) -> bool:
    """The loop samples from the teacher (cold start, or sequence KD on off-policy steps)."""
    return loop.cold_start_steps > 0 or (loop.seq_kd and loop.lmbda < 1)


def check_teacher_use(exp, refusals: dict[str, str]) -> None:
    """The run asks of its teacher only what the teacher's kind can do (see
    :meth:`opd_jax.teachers.Teacher.refusals`)."""
    asked = {"rollout": uses_rollouts(exp.loop), "mix": exp.loop.teacher_mix > 0,
             "hidden": bool(getattr(exp.objective, "hidden_coef", 0.0)),
             "contexts": bool(set(CONTEXT_FIELDS) & O.required_inputs(exp.objective))}
    for what, needed in asked.items():
        if needed and what in refusals:
            raise ValueError(refusals[what])
    for field, n in (("loop.draft_tokens", exp.loop.draft_tokens), ("eval.draft_tokens", exp.eval.draft_tokens)):
        if n and "mix" in refusals:
            raise ValueError(f"{field}={n}: speculative sampling needs the teacher's own model to verify "
                             f"the student's drafts, and teacher.kind={exp.teacher.kind!r} has none to lend "
                             f"({refusals['mix']})")


def check_sparse_teacher(exp, top_k: int) -> None:
    """A teacher that sends its top-``top_k`` log-probs at temperature 1 can feed the objective:
    the loss temperature is 1 and no top-k size of the objective or the diagnostics exceeds it
    (recipes that need full teacher logits are refused by ``build_objective``)."""
    name = O.recipe_name(exp.objective)
    if exp.objective.temperature != 1.0:
        raise ValueError(f"objective {name!r} has temperature={exp.objective.temperature}, but a "
                         "served teacher returns log-probs at temperature 1 (inference engines "
                         "do not temper prompt log-probs); set objective.temperature=1.")
    sizes = {f"objective.{f.name}": getattr(exp.objective, f.name)
             for f in dataclasses.fields(exp.objective) if f.name in ("k", "teacher_top_k")}
    sizes["run.diagnostics_k"] = exp.run.diagnostics_k
    for field, k in sizes.items():
        if k is not None and k > top_k:
            raise ValueError(f"{field}={k} exceeds the {top_k} log-probs per token the served "
                             f"teacher sends (teacher.served.top_k); lower {field} or raise "
                             "teacher.served.top_k.")


def check_policy_gradient(exp) -> None:
    """A recipe that reads the sampler's behaviour log-prob trains on the student's own samples
    only: on reference completions or teacher samples that log-prob does not exist."""
    if exp.loop.lmbda >= 1.0 or not O.needs_behavior_logp(exp.objective):
        return
    name = O.recipe_name(exp.objective)
    other = "teacher samples (loop.seq_kd)" if exp.loop.seq_kd else "the data's completions"
    raise ValueError(
        f"objective {name!r} is a policy gradient on the student's own samples (it reads their "
        f"behaviour log-probability), but loop.lmbda={exp.loop.lmbda} < 1 also trains on {other}, "
        "where the student has none. Set loop.lmbda=1 (a cold start, loop.cold_start_steps, "
        "trains on teacher samples with the SFT objective), or use an objective that compares "
        "distributions (gkd, sg_topk, topk_opd, opsd, tip).")


def check_vocab(student_vocab: int, teacher_vocab: int, who: str = "teacher") -> None:
    if student_vocab != teacher_vocab:
        if who == "teacher":
            raise ValueError(f"teacher and student vocabularies differ (student {student_vocab}, "
                             f"teacher {teacher_vocab}); on-policy distillation needs one "
                             "tokenizer.")
        raise ValueError(f"{who}'s vocabulary ({teacher_vocab}) differs from the student's "
                         f"({student_vocab}); on-policy distillation needs one tokenizer.")


def check_tokenizers(student_path: str, teacher_path: str) -> None:
    """Two checkpoints' tokenizers have the same vocabulary (skipped where one has no tokenizer
    files: transformers would build an empty tokenizer of the model's type for it)."""
    if not (student_path and teacher_path):
        return
    from opd_jax.models import load_tokenizer
    from opd_jax.models.hf_io import has_tokenizer
    if not (has_tokenizer(student_path) and has_tokenizer(teacher_path)):
        return
    try:
        vs, vt = load_tokenizer(student_path).get_vocab(), load_tokenizer(teacher_path).get_vocab()
    except (OSError, ValueError):
        return
    if vs != vt:
        diff = sorted(set(vs.items()) ^ set(vt.items()))[:3]
        raise ValueError(f"student ({student_path}) and teacher ({teacher_path}) tokenizers "
                         f"differ, e.g. {diff}; on-policy distillation needs one tokenizer.")


def route_of(spec, record: dict) -> int | None:
    """The index of the teacher model named by a record's ``teacher`` field (None if none)."""
    v = record.get("teacher")
    if isinstance(v, str) and v in spec.names:
        return spec.names.index(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(spec.models):
        return v
    return None


def check_routes(spec, examples: list[D.Example], path: str) -> None:
    """With routed teachers, every record names its teacher."""
    if spec.kind != "models" or spec.combine != "route":
        return
    for e in examples:
        if route_of(spec, e.record) is None:
            known = list(spec.names) or list(range(len(spec.models)))
            raise D.DataError(
                f"{path}:{e.line}: teacher.combine='route' needs a `teacher` field naming one of "
                f"{known} (a name of teacher.names or an index), got {e.record.get('teacher')!r}.")


def check_lengths(examples: list[D.Example], max_new: int, limits, path: str, turns: int = 1,
                  env: EN.Environment | None = None) -> None:
    """Every prompt plus ``max_new`` generated tokens fits each model's position range; for
    episodes of ``turns`` turns (``loop.turns``), the prompt, ``turns`` times ``max_new`` and the
    environment's turns between them (the bounds of ``env``'s replies, by default the records').

    ``limits``: ``[(name, max positions, reads the teacher prompt)]``. No ``examples``: nothing to check.
    """
    if not examples:
        return
    env = env or EN.RecordTurns()

    def rest(e):
        return turns * max_new + EN.reply_tokens(env, e, turns)
    def what(e):
        if turns == 1:
            return f"plus sampler.max_new_tokens={max_new}"
        return (f"plus loop.turns={turns} x sampler.max_new_tokens={max_new} and its environment "
                f"turns ({rest(e)} tokens)")
    for who, max_positions, teacher_prompt in limits:
        def ids(e):
            return (e.teacher_prompt_ids or e.prompt_ids) if teacher_prompt else e.prompt_ids
        e = max(examples, key=lambda e: len(ids(e)) + rest(e))
        if len(ids(e)) + rest(e) > max_positions:
            raise D.DataError(
                f"{path}:{e.line}: a prompt of {len(ids(e))} tokens {what(e)} exceeds the {who}'s "
                f"max_position_embeddings={max_positions}; shorten the prompts "
                "(data.max_prompt_len) or lower sampler.max_new_tokens.")


def check_turns(exp, examples: list[D.Example], env: EN.Environment) -> None:
    """Multi-turn episodes (``loop.turns > 1``) are built from the student's own samples with a
    teacher of its tokenizer, and the environment can reply to some record."""
    if exp.loop.turns == 1:
        return
    clash = {"loop.golden_fraction > 0": exp.loop.golden_fraction > 0,
             "teacher.kind='cross_tokenizer'": exp.teacher.kind == "cross_tokenizer",
             "teacher.peers": exp.teacher.peers.on,
             "the records' other teacher contexts (UniSD's agreement, contrastive term)":
                 bool(set(CONTEXT_FIELDS) & O.required_inputs(exp.objective))}
    named = [k for k, v in clash.items() if v]
    if named:
        raise ValueError(f"loop.turns={exp.loop.turns} (multi-turn episodes) cannot be combined "
                         f"with {', '.join(named)}; set loop.turns=1 or turn them off.")
    turns, new, sampler = exp.loop.turns, exp.sampler.max_new_tokens, exp.sampler
    longest = max(len(e.prompt_ids) + (turns - 1) * new + EN.reply_tokens(env, e, turns)
                  for e in examples)  # the longest prompt a later turn's sampler call can get
    if sampler.prompt_buckets and longest > sampler.prompt_buckets[-1]:
        raise ValueError(f"loop.turns={turns}: a later turn starts from the episode so far, up to "
                         f"{longest} tokens (the prompt, {turns - 1} x sampler.max_new_tokens={new} "
                         "and the environment's turns), more than the largest of "
                         f"sampler.prompt_buckets={sampler.prompt_buckets}; add a bucket of at least "
                         f"{longest} (or leave the buckets empty: powers of two).")
    if sampler.cache_len is not None and longest >= sampler.cache_len:
        raise ValueError(f"loop.turns={turns}: a later turn starts from up to {longest} tokens, "
                         f"which leaves no room in sampler.cache_len={sampler.cache_len}; raise it.")
    if not any(EN.reply_tokens(env, e, turns) for e in examples):
        if isinstance(env, EN.RecordTurns):
            raise D.DataError(f"{exp.data.path}: loop.turns={exp.loop.turns}, but no record has "
                              "env_turns_ids (the environment's turns between the student's); add "
                              "them, name an environment, or set loop.turns=1.")
        raise ValueError(f"loop.turns={exp.loop.turns}, but the environment {type(env).__name__} "
                         "bounds every reply at 0 tokens (reply_bound / max_reply_tokens): it can "
                         "never reply; raise its bound or set loop.turns=1.")


def check_alignment(exp) -> None:
    """An objective that reads a span alignment (``simct``) has a teacher that makes one, and the
    alignment's settings are not set for a teacher that makes none."""
    spec = exp.teacher
    if spec.kind != "cross_tokenizer":
        unread = [f"teacher.{f.name}={getattr(spec, f.name)!r}" for f in dataclasses.fields(spec)
                  if f.name in ALIGNMENT_FIELDS and getattr(spec, f.name) != f.default]
        if unread:
            raise ValueError(f"{', '.join(unread)}: only teacher.kind='cross_tokenizer' reads "
                             f"{'it' if len(unread) == 1 else 'them'} (this run's teacher.kind is "
                             f"{spec.kind!r}); remove {'it' if len(unread) == 1 else 'them'} or set the kind")
    if set(O.VIRTUAL_INPUTS) & O.required_inputs(exp.objective) and spec.kind != "cross_tokenizer":
        raise ValueError(f"objective {O.recipe_name(exp.objective)!r} matches distributions over the "
                         "tokens two tokenizers share, along the spans a teacher with its own "
                         "tokenizer aligns; use teacher.kind='cross_tokenizer' (with a teacher of the "
                         "student's tokenizer, objective=gkd with beta=1 is the exact reverse KL)")


def check_inputs(exp, examples: list[D.Example], has_reward_fn: bool, env: EN.Environment | None = None,
                 eval_examples: list[D.Example] | None = None) -> None:
    """The objective's extra inputs can be supplied: a reward function, the records' contexts."""
    need = O.required_inputs(exp.objective)
    name = O.recipe_name(exp.objective)
    behavior_topk = {O.BEHAVIOR_TOPK_IDS, O.BEHAVIOR_TOPK_LOGP}
    unsupplied = sorted(need - {"reward", O.REF_LOGP, O.DRAFT_ERROR, *CONTEXT_FIELDS, *O.VIRTUAL_INPUTS,
                                *O.LOOKAHEAD_INPUTS, *behavior_topk})
    if unsupplied:
        raise ValueError(f"objective {name!r} reads {unsupplied}, which this training loop does not "
                         "supply; choose an option of the recipe that does not read them.")
    if exp.sampler.record_topk:
        raise ValueError(f"sampler.record_topk={exp.sampler.record_topk}: the trainer sets what "
                         "the sampler records from the objective (the sampling policy's top-k for "
                         "topk_opd's surrogate='ppo' and for lgr); leave it 0.")
    other = (f"loop.lmbda={exp.loop.lmbda} < 1 also trains on other completions (set it to 1)"
             if exp.loop.lmbda < 1.0 else f"loop.golden_fraction={exp.loop.golden_fraction} mixes "
             "in reference completions (set it to 0)" if exp.loop.golden_fraction else None)
    if behavior_topk & need and other:
        raise ValueError(f"objective {name!r} reads the sampling policy's top-k, which the sampler "
                         f"records for the student's own samples only, but {other}; or use "
                         "objective.surrogate='is'.")
    if set(O.LOOKAHEAD_INPUTS) & need and exp.teacher.kind not in LOOKAHEAD_KINDS:
        raise ValueError(f"objective {name!r} looks one step ahead of the student's candidate "
                         "tokens with a forward of the teacher's own model (tree attention) or "
                         f"requests to its server; teacher.kind={exp.teacher.kind!r} cannot be read "
                         f"that way: use teacher.kind in {list(LOOKAHEAD_KINDS)}")
    if set(O.LOOKAHEAD_INPUTS) & need and exp.teacher.kind == "served" \
            and exp.objective.confidence != "max_prob":
        raise ValueError(f"objective.confidence={exp.objective.confidence!r} needs the teacher's "
                         "whole next-token distribution, but a served teacher sends its top "
                         "log-probs only; set objective.confidence=max_prob.")
    if exp.loop.golden_fraction:
        missing = next((e for e in examples if e.completion_ids is None), None)
        if missing is not None:
            raise D.DataError(f"{exp.data.path}:{missing.line}: loop.golden_fraction="
                              f"{exp.loop.golden_fraction} mixes the records' reference completions "
                              "into the student's samples, but this record has none; add one to "
                              "every record or set loop.golden_fraction=0.")
    check_turns(exp, examples, env or EN.RecordTurns())
    check_drafts(exp, eval_examples)
    if "reward" in need and not has_reward_fn:
        raise ValueError(f"objective {name!r} trains on a reward: name one (reward=math, "
                         "--set reward=math on the command line; see opd_jax.rewards), define "
                         "reward_fn in the experiment file, or pass reward_fn=f to Trainer, "
                         "f(example, completion_ids) -> float (e.g. a verifier's 0/1).")
    terms = {"aux_teacher_logp": "the agreement weights (objective.agreement)",
             "bad_teacher_logp": "the contrastive term (objective.contrastive_coef)"}
    for extra, what in terms.items():
        if extra in need:
            field = CONTEXT_FIELDS[extra]
            missing = next((e for e in examples if field not in e.record), None)
            if missing is not None:
                raise D.DataError(f"{exp.data.path}:{missing.line}: objective {name!r} needs a "
                                  f"`{field}` field in every record for {what}; add it or turn "
                                  "that term off.")


def check_drafts(exp, eval_examples: list[D.Example] | None = None) -> None:
    """Speculative rollouts (``loop.draft_tokens``) replace the student's own sampling and nothing
    else asks of it; an objective that reads the rejected drafts' positions has them on every step;
    the held-out evaluation's drafting (``eval.draft_tokens``) has records whose prompt the
    teacher reads too."""
    name = O.recipe_name(exp.objective)
    if exp.eval.draft_tokens and not exp.eval.path:
        raise ValueError(f"eval.draft_tokens={exp.eval.draft_tokens} measures the student as the teacher's "
                         "drafter in the held-out evaluation, and this run has none: set eval.path")
    private = next((e for e in eval_examples or () if e.teacher_prompt_ids not in (None, e.prompt_ids)), None)
    if exp.eval.draft_tokens and private is not None:
        raise D.DataError(f"{exp.eval.path}:{private.line}: eval.draft_tokens={exp.eval.draft_tokens} has the "
                          "teacher verify the student's drafts after the student's own prompt, but this record "
                          "gives the teacher another one; use records without teacher prompts or "
                          "eval.draft_tokens=0.")
    if O.DRAFT_ERROR in O.required_inputs(exp.objective):
        other = ("loop.draft_tokens=0 (the student samples alone)" if not exp.loop.draft_tokens else
                 f"loop.lmbda={exp.loop.lmbda} < 1 (some steps train on other completions)"
                 if exp.loop.lmbda < 1 else f"loop.cold_start_steps={exp.loop.cold_start_steps} "
                 "(the first steps train on teacher rollouts)" if exp.loop.cold_start_steps else None)
        if other:
            raise ValueError(f"objective {name!r} weights the positions where the teacher rejected the "
                             f"student's drafts, which only speculative rollouts have, but {other}; set "
                             "loop.draft_tokens (e.g. 4) on every step, or objective.error_weight=0.")
    if not exp.loop.draft_tokens:
        return
    clash = {"loop.teacher_mix > 0": exp.loop.teacher_mix > 0,
             "loop.golden_fraction > 0": exp.loop.golden_fraction > 0,
             "loop.turns > 1": exp.loop.turns > 1,
             "teacher.peers": exp.teacher.peers.on,
             f"objective {name!r} (it reads what the student's own sampler records)":
                 bool({O.BEHAVIOR_TOPK_IDS, O.LGR_IDS} & O.required_inputs(exp.objective))}
    named = [k for k, v in clash.items() if v]
    if named:
        raise ValueError(f"loop.draft_tokens={exp.loop.draft_tokens} (speculative rollouts) cannot be "
                         f"combined with {', '.join(named)}; set loop.draft_tokens=0 or turn them off.")
    if exp.sampler.cache_len is not None:
        raise ValueError(f"loop.draft_tokens={exp.loop.draft_tokens}: speculative rollouts size their own "
                         f"caches; leave sampler.cache_len unset (got {exp.sampler.cache_len}).")
