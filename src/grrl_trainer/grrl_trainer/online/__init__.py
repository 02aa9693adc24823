"""online stage of the GR-RL pipeline."""
