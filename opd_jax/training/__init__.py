"""The training system: train state and the jitted train step (``step``), batches (``batches``),
set-up checks (``checks``), run safety (``safety``), evaluation, and the on-policy loop
(``loop.Trainer``); the teachers it scores with live in :mod:`opd_jax.teachers`."""
