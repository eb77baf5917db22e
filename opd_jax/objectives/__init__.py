"""Composable on-policy distillation objectives.

Level 1 — per-token pure functions (arrays in, one value per position out, keyword-only
hyper-parameters, ``where=`` masks, float32 inside):
divergences, entropies, sampled-token estimators, top-k divergences, advantages,
surrogates, gates and token selection, self-distillation pieces.

Level 2 — composition: :class:`Feature` (vocabulary phase), :class:`TokenCtx`,
:class:`Objective`, :func:`weighted_sum`, reductions to ``(numerator, denominator)``, and
the named recipes of :func:`build_objective` (configs in ``configs`` / ``configs_2026``,
builders in ``recipes_pg`` / ``recipes_dist`` / ``recipes_select``; the table of methods and
their status is :mod:`opd_jax.objectives.recipes`' docstring).

Zero probabilities (``-inf`` logits) and padding never produce NaN or inf: see
:mod:`opd_jax.objectives.divergences` for the rule (:data:`LOG_FLOOR`).
"""

from opd_jax.objectives.advantages import (clip, clip_below, discounted_future_sum,
                                           iw_opd_weights, margin_shift, mixture_clip_floor,
                                           opd_advantage, positive_part, power_advantage,
                                           relative_position_weights, scale_by_sign,
                                           vopd_advantage)
from opd_jax.objectives.base import (Feature, Objective, TokenCtx, VocabInputs, coefficient,
                                     extra, feature, mask_rows, merge_features, stateless,
                                     token_objective, weighted_sum)
from opd_jax.objectives.configs_2026 import DRAFT_ERROR, REF_LOGP
from opd_jax.objectives.diagnostics import (diagnostic_features, diagnostic_metrics,
                                            overlap_ratio, top1_agreement)
from opd_jax.objectives.divergences import (LOG_FLOOR, floor_log_probs, forward_kl,
                                            generalized_jsd, log_probs, log_ratio,
                                            normalized_entropy, reverse_kl, sampled_kl,
                                            token_entropy, token_logp, total_variation)
from opd_jax.objectives.recipes import (RECIPES, AOPDConfig, DASDConfig, DraftOPDConfig, EOPDConfig,
                                        FiReOPDConfig,
                                        GKDConfig, HorizonOPDConfig, IWOPDConfig, LGRConfig,
                                        ObjectiveConfig,
                                        OPDConfig, OPSDConfig, PowerOPDConfig, PWOPSDConfig,
                                        REOPOLDConfig, ReinforceConfig, SEADConfig,
                                        SFTConfig, SGTopKConfig, SimCTConfig, StableOPDConfig,
                                        TAOPDConfig, TCODConfig,
                                        TIPConfig, TopKOPDConfig, UniOPDConfig, UniSDConfig,
                                        VOPDConfig,
                                        build_objective, make_config, recipe_name,
                                        required_inputs, with_diagnostics)
from opd_jax.objectives.lookahead import (LGR_IDS, LGR_REWARD, LOOKAHEAD_INPUTS, branch_points,
                                          candidate_loss, confidence, entropy_and_topk,
                                          group_rewards, sampled_reward)
from opd_jax.objectives.recipes_dist import BEHAVIOR_TOPK_IDS, BEHAVIOR_TOPK_LOGP
from opd_jax.objectives.requirements import loop_defaults, needs_behavior_logp, reads_teacher
from opd_jax.objectives.reductions import (Reduced, masked_mean, seq_mean_token_mean,
                                           seq_mean_token_sum, seq_mean_weighted_mean,
                                           token_mean, total, weighted_mean)
from opd_jax.objectives.selection import (confidence_weights, cosine_anneal, entropy_gate,
                                          entropy_zones, fraction_count, horizon_mask,
                                          masked_quantile, minmax_normalize, quadrant_select,
                                          quantile_select, reopold_select,
                                          sampled_fraction_select, sequence_quantile_keep,
                                          separator_indicator, soft_or, tip_sampling_weights,
                                          top_fraction_select, turn_mask, two_stage)
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
                                     student_topk_reverse_kl_tail, student_topk_teacher_mass,
                                     teacher_logp_at, teacher_support, teacher_topk,
                                     teacher_topk_forward_kl, teacher_topk_generalized_jsd)
from opd_jax.objectives.topk_opd import topk_opd_behavior_loss, topk_opd_loss
from opd_jax.objectives.virtual_vocab import (VIRTUAL_INPUTS, span_mean, support_log_mass,
                                              support_reverse_kl, virtual_reverse_kl)
from opd_jax.objectives.vocab import compute_features, fused_token_loss
