"""Names of the model's inputs, low in the stack: the backbones, the runtime, the controller and
the trainer's batches use these constants, never the string literals.

A model observation is a dict with ``INSTRUCTION`` (list of B strings) and either ``IMAGES``
((B, cameras, S, S, 3) uint8, cameras in ``CAMERAS`` order) or ``STATE`` ((B, state_dim) float
simulator state); proprioception is passed beside it. ``ACTION`` / ``PROPRIO`` also name the
normaliser's statistics.
"""
from __future__ import annotations

INSTRUCTION = "instruction"
IMAGES = "images"
STATE = "state"
PROPRIO = "proprio"
ACTION = "action"

CAMERAS = ("head", "left_wrist", "right_wrist")
"""camera order of ``IMAGES``"""
