"""GR-RL application package: datasets and episode recording, mirror augmentation, BC and online steering-RL training, the episode node, and grrl-launch (a pip-only runner of the launch/ files)."""
