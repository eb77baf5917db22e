"""Composable on-policy distillation objectives.

Level 1 — per-token pure functions (arrays in, one value per position out, keyword-only
hyper-parameters, ``where=`` masks, float32 inside):
divergences, entropies, sampled-token estimators, top-k divergences, advantages,
surrogates, gates and token selection, self-distillation pieces.

Level 2 — composition: :class:`Feature` (vocabulary phase), :class:`TokenCtx`,
:class:`Objective`, :func:`weighted_sum`, reductions to ``(numerator, denominator)``, and
the named recipes of :func:`build_objective`.
"""

from opd_jax.objectives.advantages import (clip, clip_below, discounted_future_sum,
                                           mixture_clip_floor, opd_advantage, positive_part,
                                           scale_by_sign, vopd_advantage)
from opd_jax.objectives.base import (Feature, Objective, TokenCtx, VocabInputs, coefficient,
                                     feature, merge_features, stateless, token_objective,
                                     weighted_sum)
from opd_jax.objectives.diagnostics import (diagnostic_features, diagnostic_metrics,
                                            overlap_ratio, top1_agreement)
from opd_jax.objectives.divergences import (forward_kl, generalized_jsd, log_probs, log_ratio,
                                            reverse_kl, sampled_kl, token_entropy, token_logp,
                                            total_variation)
from opd_jax.objectives.recipes import (RECIPES, AOPDConfig, EOPDConfig, GKDConfig,
                                        ObjectiveConfig, OPDConfig, OPSDConfig, REOPOLDConfig,
                                        ReinforceConfig, SFTConfig, SGTopKConfig, TIPConfig,
                                        TopKOPDConfig, UniSDConfig, VOPDConfig, build_objective,
                                        make_config, recipe_name, required_inputs,
                                        with_diagnostics)
from opd_jax.objectives.requirements import loop_defaults, needs_behavior_logp, reads_teacher
from opd_jax.objectives.reductions import (Reduced, seq_mean_token_mean, seq_mean_token_sum,
                                           seq_mean_weighted_mean, token_mean, total,
                                           weighted_mean)
from opd_jax.objectives.selection import (entropy_gate, masked_quantile, minmax_normalize,
                                          quadrant_select, quantile_select, reopold_select,
                                          sampled_fraction_select, soft_or, tip_sampling_weights,
                                          top_fraction_select, two_stage)
from opd_jax.objectives.self_distillation import (clip_divergence, contrastive_hinge,
                                                  hidden_state_matching,
                                                  quantile_clip_divergence,
                                                  sequence_agreement_weights,
                                                  token_agreement_weights)
from opd_jax.objectives.surrogates import (importance_ratio, importance_sampling_loss,
                                           ppo_clip_loss, sign_split_loss)
from opd_jax.objectives.topk import (TeacherTopK, intersect_topk_reverse_kl,
                                     student_topk_renormalized_reverse_kl,
                                     student_topk_reverse_kl, student_topk_reverse_kl_sg,
                                     student_topk_reverse_kl_tail, teacher_logp_at,
                                     teacher_topk, teacher_topk_forward_kl,
                                     teacher_topk_generalized_jsd, topk_opd_loss)
from opd_jax.objectives.vocab import compute_features, fused_token_loss
