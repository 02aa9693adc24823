"""offline stage of the GR-RL pipeline."""
