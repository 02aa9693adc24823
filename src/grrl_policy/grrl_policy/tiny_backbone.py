"""The tiny vision-language backbone: same role as Qwen2.5-VL, small enough to train on a CPU.

Tokens: the instruction (frozen MiniLM features or hashed words, projected), then either the
camera images (a small strided CNN shared by the cameras → an 8x8 grid of tokens per 128x128
image, plus a camera embedding) or, in the state-observation mode, the simulator state cut into
``state_tokens`` tokens. A stack of bidirectional transformer layers runs over them; the
keys/values of the latter half of the layers are the experts' prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .keys import IMAGES, INSTRUCTION, STATE
from .prefix import Backbone, Prefix
from .text_encoder import TextEncoder
from .transformer import Block


@dataclass
class TinyBackboneConfig:
    """Dimensions of the tiny backbone."""

    width: int = 128
    """token width"""
    layers: int = 4
    """transformer layers; the latter half is exported to the experts"""
    heads: int = 4
    """query heads"""
    kv_heads: int = 2
    """key/value heads (grouped-query attention, as in Qwen2.5)"""
    head_dim: int = 32
    """per-head width"""
    text_encoder: str = "minilm"
    """'minilm' (pretrained, frozen, offline) or 'hashed' (trainable word hashing)"""
    observation: str = "images"
    """'images' (three cameras) or 'state' (low-dimensional simulator state)"""
    image_size: int = 128
    """square camera images, must be a multiple of 16"""
    cameras: int = 3
    """number of cameras, in keys.CAMERAS order"""
    state_dim: int = 0
    """simulator state size for observation='state'"""
    state_tokens: int = 4
    """tokens the state vector is projected into"""
    dropout: float = 0.0
    """dropout on the blocks' residual branches during training (a regulariser of BC)"""
    text_pool: bool = False
    """pool the instruction into one token (its masked mean) instead of one token per word
    piece: a 4x shorter prefix for state models (the instruction only names the lace end and
    the eyelet), at the price of word order"""


class ImageEncoder(nn.Module):
    """(N, 3, S, S) float in [0, 1] → (N, (S/16)^2, width) patch tokens."""

    def __init__(self, width: int, image_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=4, stride=4), nn.GELU(),
            nn.Conv2d(32, 64, kernel_size=2, stride=2), nn.GELU(),
            nn.Conv2d(64, width, kernel_size=2, stride=2))
        self.pos = nn.Parameter(torch.randn(1, (image_size // 16) ** 2, width) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).transpose(1, 2) + self.pos


class TinyBackbone(Backbone):
    def __init__(self, cfg: TinyBackboneConfig):
        super().__init__()
        if cfg.layers < 2:
            raise ValueError("the tiny backbone needs at least 2 layers (the latter half is exported)")
        if cfg.observation not in ("images", "state"):
            raise ValueError(f"unknown observation mode {cfg.observation!r}")
        if cfg.observation == "images" and cfg.image_size % 16:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of 16")
        if cfg.observation == "state" and cfg.state_dim <= 0:
            raise ValueError("observation='state' needs state_dim > 0")
        self.cfg = cfg
        self.n_kv_heads, self.head_dim = cfg.kv_heads, cfg.head_dim
        self.n_prefix_layers = cfg.layers - cfg.layers // 2
        self.text = TextEncoder(cfg.text_encoder, dim=cfg.width)
        self.text_proj = nn.Linear(self.text.dim, cfg.width)
        self.text_type = nn.Parameter(torch.zeros(1, 1, cfg.width))
        if cfg.observation == "images":
            self.images = ImageEncoder(cfg.width, cfg.image_size)
            self.camera_emb = nn.Parameter(torch.randn(cfg.cameras, 1, cfg.width) * 0.02)
        else:
            self.state_proj = nn.Linear(cfg.state_dim, cfg.state_tokens * cfg.width)
            self.state_pos = nn.Parameter(torch.randn(1, cfg.state_tokens, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.kv_heads, cfg.head_dim,
                                          dropout=cfg.dropout)
                                    for _ in range(cfg.layers))

    def _observation_tokens(self, obs: dict, device: torch.device) -> torch.Tensor:
        cfg = self.cfg
        if cfg.observation == "state":
            state = obs[STATE]
            if state.ndim != 2 or state.shape[1] != cfg.state_dim:
                raise ValueError(f"state must be (B, {cfg.state_dim}), got {tuple(state.shape)}")
            return self.state_proj(state.float()).view(len(state), cfg.state_tokens, cfg.width) + self.state_pos
        images = obs[IMAGES]
        want = (cfg.cameras, cfg.image_size, cfg.image_size, 3)
        if images.dtype != torch.uint8 or images.ndim != 5 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must be uint8 (B, {', '.join(map(str, want))}), got "
                             f"{images.dtype} {tuple(images.shape)}")
        B = images.shape[0]
        x = images.to(device).flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0   # (B*C, 3, S, S)
        tok = self.images(x).view(B, cfg.cameras, -1, cfg.width) + self.camera_emb
        return tok.flatten(1, 2)

    def encode(self, obs: dict) -> Prefix:
        device = self.text_proj.weight.device
        instructions = obs[INSTRUCTION]
        text, text_mask = self.text(list(instructions), device)
        if self.cfg.text_pool:
            w = text_mask.unsqueeze(-1).to(text.dtype)
            text = (text * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
            text_mask = text_mask.any(1, keepdim=True)
        text = self.text_proj(text) + self.text_type
        other = self._observation_tokens(obs, device)
        if len(instructions) != other.shape[0]:
            raise ValueError(f"{len(instructions)} instructions for a batch of {other.shape[0]}")
        x = torch.cat([text, other], dim=1)
        mask = torch.cat([text_mask, torch.ones(other.shape[:2], dtype=torch.bool, device=device)], 1)
        allowed = mask[:, None, :].expand(-1, x.shape[1], -1)
        keys, values = [], []
        first_exported = self.cfg.layers - self.n_prefix_layers
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # the last layer's output is never read: only its keys/values are exported
            x, k, v = block(x, allowed) if i < last else (x, *block.keys_values(x))
            if i >= first_exported:
                keys.append(k)
                values.append(v)
        return Prefix(keys, values, mask)
