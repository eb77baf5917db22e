"""The adapters' state count: the trained parameters, gradients and AdamW moments it prints are
the closed form of the Qwen3 shapes, for full training and for adapters."""

from benchmark_scripts import load

from opd_jax.models import named_config


def test_state_counts_are_the_closed_form(capsys):
    load("lora_state").main(["--configs", "qwen3-0.6b", "--ranks", "8"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| qwen3-0.6b")]
    cfg = named_config("qwen3-0.6b")
    D, F, q, kv, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim,
                      cfg.num_kv_heads * cfg.head_dim, cfg.num_layers)
    per_layer = 8 * ((D + q) + 2 * (D + kv) + (q + D) + 3 * (D + F))
    trained = [float(r[2].split("M of")[0].replace(",", "")) * 1e6 for r in rows]
    assert rows[1][1] == "adapters, rank 8" and abs(trained[1] - L * per_layer) < 0.05e6
    full = trained[0]
    # gradients: 4 bytes per trained float32; moments: two of them (AdamW's counters are scalars)
    for r, n in zip(rows, trained):
        assert abs(float(r[3]) - 4 * n / 1e9) < 0.01 and abs(float(r[4]) - 8 * n / 1e9) < 0.01
    assert float(rows[1][5].rstrip(" |%")) < 1.0 and full > 5e8
    # a checkpoint: full training's weights and moments (12 bytes each, and a few scalars); the
    # adapters' alone (the frozen base weights are left out)
    for r, n in zip(rows, trained):
        assert abs(float(r[6].rstrip(" |")) - 12 * n / 1e9) < 0.01, r
