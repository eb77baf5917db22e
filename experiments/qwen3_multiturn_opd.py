"""Multi-turn on-policy distillation of Qwen3-1.7B from Qwen3-8B: the student solves a math
problem, the user asks it to check its work, and it answers again; the teacher scores both turns
and the student learns from its own tokens only (``loop.turns=2``).

    python -m opd_jax.main --config experiments/qwen3_multiturn_opd.py:1gpu --workdir runs/q3_mt \\
        --set data.path=data/math/train_multiturn.jsonl
    python -m opd_jax.main --config experiments/qwen3_multiturn_opd.py:tcod ...   # TCOD's order
    python -m opd_jax.main --config experiments/qwen3_multiturn_opd.py:retry --workdir runs/q3_retry \\
        --set data.path=data/math/train.jsonl   # self-correction episodes
    python -m opd_jax.main --config experiments/qwen3_multiturn_opd.py:tools ...  # a calculator tool
    python -m opd_jax.main --config experiments/qwen3_multiturn_opd.py:smoke --workdir /tmp/mt  # CPU

Arguments: ``1gpu`` (the default; sampled-token OPD over both turns), ``tcod`` (the same, with
TCOD's turn curriculum: the first turn alone, then both, over the first 100 steps; a turn ends at
Qwen3's ``<|im_end|>``, id 151645), ``retry`` (self-correction: up to three turns, the retry
environment of :mod:`opd_jax.environments` saying "That is not correct. Try again." after each
answer math-verify finds wrong, so an episode goes on only while the student is wrong; plain
single-turn records), ``tools`` (up to four turns with a calculator tool: ``TOOLS_SYSTEM`` as
``data.system_prompt`` tells the student how to call it, the calculator environment answers each
call as a tool turn, and a turn without a call is the final answer; plain single-turn records),
``smoke``, ``retry_smoke`` and ``tools_smoke`` (CPU, tiny models).

Each record holds the problem as a chat and the follow-up as an environment turn, e.g.
``{"messages": [{"role": "user", "content": "<problem> ... \\boxed{}."}], "env_turns": ["Check
your work step by step; if you find a mistake, fix it, and give the final answer in \\boxed{}."],
"answer": "<reference answer>"}``; the follow-up is rendered by the student's chat template as it
continues the conversation after the student's ``<|im_end|>`` (``opd_jax.data``). An episode ends
after a turn that stops without an end-of-turn token (the token budget ran out) or after the
second turn; the run logs ``sample/turns``, the mean number of student turns per episode. The
evaluation (held-out pass@k, math-verify) asks the same follow-up (``eval.turns=2``: the held-out
records need it as ``env_turns`` too) and scores the student's last turn, its final answer;
``--set eval.turns=1`` scores first answers alone.

Sizes and memory as in ``qwen3_math_opd.py`` ``1gpu`` (8 prompts x 4 samples, remat), with two
turns of up to 512 new tokens each and the follow-up (~30 tokens) instead of one turn of 1024:
completions of up to ~1,100 tokens for the teacher and the update (the batch's width rounded up to
a multiple of 128 or 256), and two sampler calls (the second from the episodes so far, prompts of
up to ~1,100 tokens) instead of one; estimates, not measured. ``retry``: up to three turns of 512
(prompt buckets up to 2,048), and a third sampler call for the rows still wrong; ``tools``: up to
four (buckets up to 2,560), one sampler call per turn while some row calls the tool.
"""

import dataclasses
import json
import os

from opd_jax import smoke
from opd_jax.config import load_module
from opd_jax.objectives.recipes import OPDConfig, TCODConfig
from opd_jax.training.config import Experiment, LoopConfig

FOLLOW_UP = ("Check your work step by step; if you find a mistake, fix it, and give the final "
             "answer in \\boxed{}.")
IM_END = 151645  # Qwen3's end of turn
TOOLS_SYSTEM = ("You can use a calculator. To call it, write <tool_call>{\"name\": \"calculator\", "
                "\"arguments\": {\"expression\": \"...\"}}</tool_call> and stop; its result comes back "
                "as a tool response. Give the final answer in \\boxed{} without a tool call.")
# the single-turn recipe this one extends (models, sampler, optimizer, evaluation, smoke set-up)
single = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen3_math_opd.py"))


# per kind of episode: student turns, the environment, the training records, extra prompt buckets
KINDS = {"follow_up": (2, "", "data/math/train_multiturn.jsonl", (1536,)),
         "retry": (3, "retry", "data/math/train.jsonl", (2048,)),
         "tools": (4, "calculator", "data/math/train.jsonl", (2048, 2560))}


def get_config(arg: str = "") -> Experiment:
    arg = arg or "1gpu"
    presets = ("1gpu", "tcod", "retry", "tools", "smoke", "retry_smoke", "tools_smoke")
    if arg not in presets:
        raise ValueError(f"qwen3_multiturn_opd.py: unknown argument {arg!r}; use one of {presets}")
    smoke_run, kind = arg.endswith("smoke"), arg.removesuffix("_smoke")
    kind = kind if kind in KINDS else "follow_up"
    turns, environment, path, buckets = KINDS[kind]
    base = single.smoke_config() if smoke_run else single.get_config("1gpu")
    data = dataclasses.replace(base.data, system_prompt=TOOLS_SYSTEM if kind == "tools" else "")
    base = dataclasses.replace(base, loop=LoopConfig(lmbda=1.0, turns=turns), data=data,
                               eval=dataclasses.replace(base.eval, turns=turns), environment=environment)
    if smoke_run:
        if kind == "tools":  # the tiny models' 512 positions: the system prompt, two turns
            base = dataclasses.replace(base, loop=LoopConfig(lmbda=1.0, turns=2),
                                       eval=dataclasses.replace(base.eval, turns=2),
                                       data=dataclasses.replace(base.data, max_prompt_len=384))
        return dataclasses.replace(base, run=dataclasses.replace(
            base.run, workdir=f"runs/qwen3_multiturn_opd_{arg}"))
    objective = TCODConfig(separators=(IM_END,), grow_steps=100) if arg == "tcod" else OPDConfig()
    # a later turn's prompt is the episode so far: the prompt, the turns and the environment's
    sampler = dataclasses.replace(base.sampler, max_new_tokens=512, new_token_buckets=(512,),
                                  prompt_buckets=(256, 512, 1024) + buckets)
    suffix = "" if kind == "follow_up" else f"_{kind}"
    return dataclasses.replace(
        base, objective=objective, sampler=sampler, data=dataclasses.replace(base.data, path=path),
        run=dataclasses.replace(base.run, workdir=f"runs/qwen3_multiturn_opd{suffix}"))


def prepare(exp: Experiment) -> Experiment:
    """Smoke runs (no data path): the tiny models and problems of ``qwen3_math_opd``'s smoke run,
    each training and held-out record given the follow-up as its environment turn (the retry and
    calculator environments need none)."""
    if exp.data.path:
        return exp
    exp = smoke.prepare_run(exp, privileged=False)
    if exp.environment:
        return exp
    for path in (exp.data.path, exp.eval.path):
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        if any("env_turns" not in r for r in records):
            smoke.write_jsonl(path, [{**r, "env_turns": [FOLLOW_UP]} for r in records])
    return exp
