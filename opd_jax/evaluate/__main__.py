"""Evaluate any Hugging Face checkpoint on held-out prompts with answers.

    python -m opd_jax.evaluate --model PATH --data FILE [--teacher PATH] [--k 8]
        [--reward math] [--max-new-tokens 1024] [--temperature 1.0] [--top-p 1.0]
        [--batch-size 8] [--limit N] [--chat-template] [--template-kwargs JSON] [--system-prompt TEXT]
        [--diagnostics-k 16] [--dtype bfloat16] [--seed 0] [--out results.json] [--details]
        [--turns 2 [--environment retry]]

``PATH`` is a local checkpoint directory or a repo id in the local HF cache (nothing is
downloaded); the tokenizer comes with the model (``--tokenizer`` names another), the
end-of-sequence ids from its ``generation_config.json``. ``FILE`` holds records as the trainer
reads them (``prompt`` / ``messages`` / ``prompt_ids``, and ``answer``). With ``--teacher`` the
token diagnostics of the model's samples against that teacher are added (it must share the
tokenizer; ``--diagnostics-k`` is the top-k of its overlap ratio); evaluating the teacher itself
as ``--model`` gives the ceiling to compare a student with. A training run's own evaluation
(``eval.path``) is this one with the run's settings (``--seed`` = ``run.seed``). The metrics
are printed as JSON and, with ``--out``, written there atomically. ``--turns N`` plays each
problem as an episode of up to N model turns, the environment (``--environment``, see
:mod:`opd_jax.environments`; default: the records' ``env_turns``) replying between them. Bad arguments exit with
status 2, errors found while running with status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m opd_jax.evaluate",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory or repo id in the HF cache")
    p.add_argument("--data", required=True, help="JSONL(.gz) or Parquet records with `answer`")
    p.add_argument("--adapter", help="LoRA adapters in PEFT's layout (a run's hf/step_N/adapter) to put on --model")
    p.add_argument("--teacher", help="a teacher checkpoint for the token diagnostics")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    p.add_argument("--reward", default="math", help="reward name or module:factory (default math)")
    p.add_argument("--k", type=int, default=8, help="samples per prompt for pass@k (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0, help="of the k samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per sampler call")
    p.add_argument("--limit", type=int, help="evaluate the first N records only")
    p.add_argument("--max-prompt-len", type=int, default=1024)
    p.add_argument("--chat-template", action="store_true", help="wrap text prompts in the template")
    p.add_argument("--template-kwargs", default="", help='JSON, e.g. \'{"enable_thinking": false}\'')
    p.add_argument("--system-prompt", default="", help="a system message put first in every chat without one")
    p.add_argument("--diagnostics-k", type=int, default=16, help="top-k of the overlap ratio")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--details", action="store_true", help="add per-problem results")
    p.add_argument("--turns", type=int, default=1,
                   help="model turns per episode, the environment's replies between them (default 1)")
    p.add_argument("--environment", default="",
                   help="with --turns > 1: 'retry', 'package.module:factory', or '' (default): the "
                        "records' env_turns (opd_jax.environments)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    a = p.parse_args(argv)
    for name in ("k", "max_new_tokens", "batch_size", "max_prompt_len", "limit", "diagnostics_k",
                 "turns"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if a.adapter and not os.path.isfile(os.path.join(a.adapter, "adapter_config.json")):
        p.error(f"--adapter {a.adapter}: no adapter_config.json there (a PEFT LoRA directory, e.g. a "
                "run's hf/step_N/adapter)")
    if a.environment and a.turns == 1:
        p.error(f"--environment {a.environment} replies between the turns of episodes: give --turns > 1")
    return a


def run(a) -> dict:
    """Load the models, tokenizer and records named by the arguments, then evaluate."""
    from flax import nnx

    from opd_jax import data as D
    from opd_jax import environments as EN
    from opd_jax import rewards
    from opd_jax.evaluate import evaluate, write_result
    from opd_jax.models import from_pretrained, load_tokenizer
    from opd_jax.models.hf_io import read_hf_config
    from opd_jax.models.tokenizer import check_same_tokenizer, default_eos_ids, tokenizer_of
    from opd_jax.sampling import SamplerConfig
    from opd_jax.sharding import make_mesh

    tok = load_tokenizer(a.tokenizer) if a.tokenizer else tokenizer_of(a.model)
    if tok is None:
        raise ValueError(f"{a.model} has no tokenizer files; give --tokenizer DIR")
    t_tok = tokenizer_of(a.teacher) if a.teacher else None
    if t_tok is not None:
        check_same_tokenizer(tok, t_tok, student_name=f"model ({a.model})",
                             teacher_name=f"teacher ({a.teacher})")
    eos = default_eos_ids(a.model, tok)
    reward_fn = rewards.get(a.reward, tok, eos)
    examples = D.load_examples(a.data, tokenizer=tok, teacher_tokenizer=t_tok,
                               max_prompt_len=a.max_prompt_len,
                               vocab_size=int(read_hf_config(a.model)["vocab_size"]),
                               chat_template=a.chat_template,
                               template_kwargs=D.template_kwargs(a.template_kwargs), system_prompt=a.system_prompt)
    examples = examples[:a.limit] if a.limit else examples
    vocab = int(read_hf_config(a.model)["vocab_size"])
    opts = D.TextOptions(tok, chat_template=a.chat_template, template_kwargs=D.template_kwargs(a.template_kwargs),
                         system=a.system_prompt)
    responder = functools.partial(EN.responder, EN.get(a.environment, tokenizer=tok, eos_ids=eos, reward_fn=reward_fn),
                                  render=functools.partial(D.render_turn, opts=opts), vocab_size=vocab)
    mesh = make_mesh(data=-1)  # the records are checked before any weight is read
    model = from_pretrained(a.model, param_dtype=a.dtype, mesh=mesh)
    if a.adapter:
        from opd_jax.models.lora_io import load_adapter
        model = load_adapter(model, a.adapter, mesh=mesh)
    teacher = None
    if a.teacher:
        teacher = nnx.split(from_pretrained(a.teacher, param_dtype=a.dtype, mesh=mesh), nnx.Param)
    cfg = SamplerConfig(max_new_tokens=a.max_new_tokens, eos_ids=eos, temperature=a.temperature,
                        top_p=a.top_p, pad_id=tok.pad_token_id or 0)
    batch = min(a.batch_size, len(examples))
    graphdef, params = nnx.split(model, nnx.Param)
    result = evaluate(graphdef, params, examples, reward_fn=reward_fn, cfg=cfg, k=a.k, seed=a.seed,
                      batch_size=batch, mesh=mesh, teacher=teacher, details=a.details,
                      tokenizer=tok, diagnostics_k=a.diagnostics_k, turns=a.turns, responder=responder)
    result.update(model=a.model, adapter=a.adapter, data=a.data, teacher=a.teacher, reward_fn=a.reward,
                  max_new_tokens=a.max_new_tokens, temperature=a.temperature, max_turns=a.turns,
                  environment=a.environment)
    if a.out:
        write_result(result, a.out)
    return result


def main(argv=None) -> int:
    a = parse_args(argv)
    from opd_jax import process
    process.prepare()  # allocator policy and compilation cache, before JAX starts
    try:
        result = run(a)
    except (ValueError, OSError, FloatingPointError) as e:
        if a.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in result.items() if k != "problems_detail"}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
