"""episodes stage of the GR-RL pipeline."""
