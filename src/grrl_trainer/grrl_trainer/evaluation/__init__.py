"""evaluation stage of the GR-RL pipeline."""
