"""data stage of the GR-RL pipeline."""
