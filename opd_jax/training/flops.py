"""Analytic model FLOPs of each phase of an iteration (sample, score, update).

The usual matmul count (2 FLOPs per multiply-add): projections, MLP, attention scores and values
over the whole context (the PaLM MFU convention: causal masking is not discounted), and the LM
head; elementwise work, recomputation and padding are not counted, so the figures are "model
FLOPs" as in MFU, not hardware FLOPs.
"""

from opd_jax.models.config import ModelConfig


def _sizes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Each projection's (fan in, fan out)."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q": (D, q), "k": (D, kv), "v": (D, kv), "o": (q, D), "gate": (D, F), "up": (D, F), "down": (F, D)}


def _body_parts(cfg: ModelConfig, tokens: float, context: float) -> tuple[float, float, float]:
    """Forward FLOPs of the decoder layers: (weight products, attention, low-rank adapters)."""
    sizes, L = _sizes(cfg), cfg.num_layers
    weights = sum(2 * fan_in * fan_out for fan_in, fan_out in sizes.values())
    adapter = sum(2 * cfg.lora_rank * sum(sizes[t]) for t in cfg.lora_targets) if cfg.lora_rank else 0
    return tokens * L * weights, tokens * L * 4 * cfg.num_heads * cfg.head_dim * context, tokens * L * adapter


def fold_flops(cfg: ModelConfig) -> float:
    """Folding the low-rank adapters into their weights once (``A @ B`` of every target and layer)."""
    if not cfg.lora_rank:
        return 0.0
    return cfg.num_layers * sum(2 * fan_in * cfg.lora_rank * fan_out
                                for t, (fan_in, fan_out) in _sizes(cfg).items() if t in cfg.lora_targets)


def body_flops(cfg: ModelConfig, tokens: float, context: float) -> float:
    """Forward FLOPs of the decoder layers (no LM head) for ``tokens`` tokens attending to
    ``context`` keys on average (the low-rank adapters' products included)."""
    return sum(_body_parts(cfg, tokens, context))


def head_flops(cfg: ModelConfig, tokens: float) -> float:
    return tokens * 2 * cfg.hidden_size * cfg.vocab_size


def sample_flops(cfg: ModelConfig, prompts: int, prompt_len: int, rows: int, steps: int) -> float:
    """Prefill of each prompt once, then ``steps`` decode steps for every row. Low-rank adapters
    run as their own products in the prefill; the decode steps read weights they were folded
    into once per call (``Transformer.decoder``), so the fold is counted and their products not."""
    prefill = body_flops(cfg, prompts * prompt_len, prompt_len) + head_flops(cfg, prompts)
    weights, attention, _ = _body_parts(cfg, rows * steps, prompt_len + steps / 2)
    return prefill + fold_flops(cfg) + weights + attention + head_flops(cfg, rows * steps)


def sequence_tokens(rows: int, seq_len: int, completion_len: int = 0, group: int = 1) -> int:
    """Tokens a forward over ``rows`` sequences runs when each group of ``group`` rows runs its
    shared prompt (all but the last ``completion_len`` tokens) once."""
    return rows // group * (seq_len - completion_len) + rows * completion_len


def score_flops(cfg: ModelConfig, rows: int, seq_len: int, completion_len: int = 0,
                group: int = 1) -> float:
    """The teacher's forward over its sequences (hidden states only)."""
    return body_flops(cfg, sequence_tokens(rows, seq_len, completion_len, group), seq_len)


def update_flops(student: ModelConfig, teacher: ModelConfig | None, rows: int, seq_len: int,
                 completion_len: int, group: int = 1) -> float:
    """Student forward + backward (3x forward) and the vocabulary phase: the student's head
    forward and backward over the completion, the teacher's head forward. A student with adapters
    (``lora_rank``) trains only them: its frozen weight products and head are differentiated for
    their inputs alone (2x forward), attention and the adapters in full (3x)."""
    tokens = sequence_tokens(rows, seq_len, completion_len, group)
    if student.lora_rank:
        weights, attention, adapter = _body_parts(student, tokens, seq_len)
        out = 2 * weights + 3 * (attention + adapter) + 2 * head_flops(student, rows * completion_len)
    else:
        out = 3 * body_flops(student, tokens, seq_len) + 3 * head_flops(student, rows * completion_len)
    if teacher is not None:
        out += head_flops(teacher, rows * completion_len)
    return out


def iteration_flops(student: ModelConfig, teachers: list[ModelConfig], *, source: str,
                    rows: int, seq_len: int, completion_len: int, teacher_len: int,
                    prompts: int, prompt_len: int, decode_steps: int, teacher_mix: bool,
                    scored: bool, group: int = 1, teacher_group: int | None = None
                    ) -> dict[str, float]:
    """Model FLOPs of one iteration's phases, all hosts together.

    ``source`` is the batch's source (``"data"``: nothing sampled; ``"cold_start"``/``"seq_kd"``:
    every local teacher samples every row; else the student, plus the first teacher when tokens
    are mixed); ``scored``: the teacher's body ran over its sequences and its head over the
    completion (not on SFT steps); ``group``: rows sharing a prompt, run once per group
    (``teacher_group``: the same for the teacher's sequences, default ``group``). ``teachers``
    are the local teacher models (none when served).
    """
    if source == "data":
        sample_f = 0.0
    elif source in ("cold_start", "seq_kd"):
        sample_f = sum(sample_flops(c, prompts, prompt_len, rows, decode_steps) for c in teachers)
    else:
        sample_f = sample_flops(student, prompts, prompt_len, rows, decode_steps)
        if teacher_mix:
            sample_f += sample_flops(teachers[0], prompts, prompt_len, rows, decode_steps)
    scoring = teachers if scored else []
    return {"flops/sample": sample_f,
            "flops/score": sum(score_flops(c, rows, teacher_len, completion_len, teacher_group or group)
                               for c in scoring),
            "flops/update": update_flops(student, None, rows, seq_len, completion_len, group)
            + sum(head_flops(c, rows * completion_len) for c in scoring)}
