"""bench stage of the GR-RL pipeline."""
