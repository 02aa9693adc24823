"""GR-RL-agnostic ROS tooling."""
