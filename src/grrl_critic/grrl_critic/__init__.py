"""GR-RL distributional critic (Q-chunking, categorical values in [0, 1]), TD3+BC offline training, task progress and data filtering, live progress node."""
