"""IW-OPD (arXiv 2606.22600) against PW-OPSD (arXiv 2605.21606) in the lab: should a sequence's late
tokens weigh less (IW-OPD, "Prefix Teach, Suffix Fade") or more (PW-OPSD) in the OPD loss?

    python -m opd_jax.lab.reproduce position_weighting [--mode smoke|quick|full]

IW-OPD's side is decisive (its claim is about an external teacher, which the lab's is); PW-OPSD's
side (``pw_opsd``: a clipped forward KL weighted by ``w(t / L)``, up or down) runs beside it on
the same teacher and is reported, not decisive (its claim is about a privileged self-teacher).
Hardware and wall time (quick: 6 arms x 3 seeds x the baseline's steps): 20 min on 2 AMD EPYC CPU
cores (2026-12-04). The set-up, the arms per mode, the metrics and the verdict rule (written before
any run) are the constants and functions below; ``experiments/lab/results/position_weighting/
<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import verdicts as V

PAPER = "IW-OPD (arXiv 2606.22600) vs PW-OPSD (arXiv 2605.21606): position weighting"
ARXIV = "2606.22600"
CLAIM = ("With an external teacher, weighting a sequence's early tokens more than its late ones "
         "(IW-OPD, w_t = 1 + gamma (1 - the share of |advantage| before t)) beats uniform weights.")
SETUP = ("6 arms from the baseline regime's student, steps and learning rate: 'uniform' (Tinker's "
         "sampled-token OPD), 'iw_0.5' (IW-OPD with the paper's gamma 0.5: early tokens weigh up to 1.5) "
         "and 'iw_1' (gamma 1); and on PW-OPSD's clipped forward KL (clip 10 nats): 'fkl_flat' "
         "(gamma 0), 'pw_up' (w = 1 + t/L, PW-OPSD's direction) and 'pw_down' (w = 1 + (1 - t/L)). "
         "Metric: sampled pass@1 at the last evaluation. The verdict is about IW-OPD; the PW arms are "
         "reported beside it.")
RULE = ("Part 'down-weighting late tokens helps': 'iw_0.5' > 'uniform' on pass@1 at the last evaluation "
        "by more than 2 pooled standard errors over seeds. Reproduced if it holds; not reproduced if it "
        "is reversed by that margin; inconclusive otherwise (and with fewer than 3 seeds). 'iw_1' is "
        "reported beside the verdict, not decisive; so are 'pw_up' and 'pw_down' against 'fkl_flat'.")
FIGURE = ("pass@1", "greedy_pass@1", "pass@k", "entropy")


def arms(mode: str):
    return [BL.arm("uniform", O.OPDConfig(), mode), BL.arm("iw_0.5", O.IWOPDConfig(gamma=0.5), mode),
            BL.arm("iw_1", O.IWOPDConfig(gamma=1.0), mode),
            BL.arm("fkl_flat", O.PWOPSDConfig(gamma=0.0), mode),
            BL.arm("pw_up", O.PWOPSDConfig(gamma=1.0, direction="increasing"), mode),
            BL.arm("pw_down", O.PWOPSDConfig(gamma=1.0, direction="decreasing"), mode)]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "iw_0.5", "uniform", name="down-weighting late tokens helps")]
    notes = {"iw_1 vs uniform": V.describe(V.better(results, "pass@1", "iw_1", "uniform")),
             "pw_up vs fkl_flat": V.describe(V.better(results, "pass@1", "pw_up", "fkl_flat")),
             "pw_down vs fkl_flat": V.describe(V.better(results, "pass@1", "pw_down", "fkl_flat"))}
    return V.combine(parts, RULE, notes)
