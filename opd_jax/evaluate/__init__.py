"""Evaluation of a model on held-out prompts with answers (pass@k, lengths, truncation, token
diagnostics against a teacher); ``python -m opd_jax.evaluate`` runs it on any checkpoint.

    result = evaluate(graphdef, params, examples, reward_fn=rewards.get("math", tok, eos),
                      cfg=SamplerConfig(max_new_tokens=1024, eos_ids=eos), k=8)
    write_result(result, "<workdir>/eval/<step>.json")
"""

from opd_jax.evaluate.core import evaluate, pass_at_k, write_result

__all__ = ["evaluate", "pass_at_k", "write_result"]
