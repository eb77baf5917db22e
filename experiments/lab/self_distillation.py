"""OPSD (Zhao et al., arXiv 2601.18734) and the Many Faces of OPD (Zhu et al., arXiv 2605.11182) in
the lab: self-distillation from the student's own initial weights reading privileged context, a
shared rule against an instance-specific reference solution.

    python -m opd_jax.lab.reproduce self_distillation [--mode smoke|quick|full]

Needs the lab model ``contextual`` (``opd_jax.lab.zoo``: the strong student's recipe on records
whose prompts are plain, behind a rule the solution follows, or behind a hint). Hardware and
wall time (quick: 2 arms x 3 seeds x the baseline's steps): 7 min on 2 AMD EPYC CPU cores
(2026-12-04), after building ``contextual`` (about 4 min). The set-up, the
arms per mode, the metrics and the verdict rule (written before any run) are the constants and
functions below; ``experiments/lab/results/self_distillation/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import setups as S
from opd_jax.lab import variants
from opd_jax.lab import verdicts as V

PAPER = "OPSD: Self-Distilled Reasoner (Zhao et al.) with The Many Faces of OPD (Zhu et al.)"
ARXIV = "2601.18734, 2605.11182"
CLAIM = ("Self-distillation with privileged context works when the context is a shared rule (the "
         "student takes it up without seeing it) and fails when it is instance-specific (a reference "
         "solution).")
RULE_NAME = "no_subtraction"
SETUP = ("2 arms, OPSD's objective (full-vocabulary JSD(0.5) at loss temperature 1.1) from the "
         "'contextual' student, its teacher its own frozen initial weights reading a privileged prompt, "
         "the baseline regime's steps and learning rate: 'rule' (the teacher reads the shared rule "
         "'never subtract' before every problem that has a solution following it) and 'hint' (the "
         "teacher reads one reference solution of the problem). Evaluated without any context: sampled "
         f"pass@1 and (measure rule:{RULE_NAME}) the share of correct answers that follow the rule.")
RULE = ("Part 'rule taken up': the 'rule' arm's rule/adherence at the last evaluation exceeds its value "
        "before training. Part 'rule costs nothing': the 'rule' arm's pass@1 is not below its value before "
        "training (non-inferiority). Part 'hint fails': the 'hint' arm's pass@1 at the last evaluation is "
        "below its value before training. Each by more than 2 pooled standard errors over seeds. "
        "Reproduced if all three hold; not reproduced if any is reversed by that margin; inconclusive "
        "otherwise (and with fewer than 3 seeds).")
FIGURE = ("rule/adherence", "rule/correct_following", "pass@1", "greedy_pass@1")
def schedule(mode: str):
    return S.schedule(mode, measures=(f"rule:{RULE_NAME}",))


def arms(mode: str):
    return [S.context_arm("rule", O.OPSDConfig(), mode, data=f"{variants.RULE_PREFIX}{RULE_NAME}.jsonl"),
            S.context_arm("hint", O.OPSDConfig(), mode, data=variants.HINT)]


def verdict(results, mode):
    parts = [V.changes(results, "rule/adherence", "rule", up=True, name="rule taken up"),
             V.compare("rule costs nothing", V.final(results, "pass@1", "rule"), V.start(results, "pass@1", "rule"),
                       a_label="rule at the end", b_label="rule at step 0", metric="pass@1", kind="not_worse"),
             V.changes(results, "pass@1", "hint", up=False, name="hint fails")]
    return V.combine(parts, RULE)
