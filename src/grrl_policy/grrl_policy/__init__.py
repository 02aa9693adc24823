"""The GR-RL vision-language-action policy: Mixture-of-Transformers backbone, flow-matching action expert, noise predictor, jerk-constrained trajectory optimizer and the policy node."""
