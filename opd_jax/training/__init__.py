"""The training system: train state, the jitted train step, the on-policy loop."""
