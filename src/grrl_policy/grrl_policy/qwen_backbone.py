"""Qwen2.5-VL as the GR-RL vision-language backbone: it turns an observation (camera images and a
language instruction) into the key/value :class:`~grrl_policy.prefix.Prefix` that the experts
(action DiT, critics, noise predictor) attend to.

Design choices
--------------
* **Only the latter half of the decoder layers is exported** (GR-3 / GR-RL): ``n_prefix_layers``
  defaults to ``num_hidden_layers // 2`` and the prefix holds the caches of layers
  ``num_hidden_layers - n_prefix_layers .. num_hidden_layers - 1``. Expert layer ``i`` attends to
  backbone layer ``num_hidden_layers - n_prefix_layers + i``.
* **The keys are the cached keys**, i.e. after the backbone's multimodal rotary embedding
  (M-RoPE) has been applied, exactly as a ``DynamicCache`` stores them. They have the backbone's
  grouped-query layout ``(B, n_kv_heads, L, head_dim)``; the experts repeat them over their query
  heads themselves.
* **Token layout**, per sample: the instruction's text tokens (no chat template, no special
  tokens added by the tokenizer), then for every camera
  ``<|vision_start|> <|image_pad|> * n <|vision_end|>`` with
  ``n = grid_t * grid_h * grid_w / spatial_merge_size**2``. Samples are right-padded to the batch's
  longest sequence; the padding is masked out of attention and, because attention is causal and
  padding sits at the end, it cannot change a real token's keys/values.
* **Rotary positions** come from the model's own ``get_rope_index`` (3-D M-RoPE for image
  tokens, 1-D for text, padding ignored through the attention mask). They are computed here and
  passed to the model explicitly, so the model's stateful ``rope_deltas`` (a generation helper)
  is never read or relied upon.
* **Images are preprocessed in torch** on the model's device (no PIL loop, no torchvision):
  bicubic resize (antialiased, rounded back to the 8-bit grid, as PIL would) to a square
  ``image_size`` that must be a multiple of ``patch_size * spatial_merge_size``, rescale to
  ``[0, 1]``, normalise with the CLIP mean/std that Qwen2-VL uses, repeat the frame
  ``temporal_patch_size`` times, and flatten into patches in exactly the official
  ``Qwen2VLImageProcessor`` order (merge-window order: the ``merge x merge`` patches that the
  vision tower's patch merger fuses into one token are consecutive).
* **Proprioception is not fed to the VLM.** The robot state enters the experts as a state token;
  the backbone only sees images and text, so its prefix can be shared by the actor and critics.
* **Only the inner ``Qwen2_5_VLModel`` is run** (vision tower + decoder), never the LM head. The
  exported range ends at the last decoder layer, so every layer has to run; the text model's
  final RMSNorm is applied by transformers and cannot be skipped through its API, but it is a
  negligible cost next to the (skipped) ``vocab x hidden`` LM head. ``from_pretrained`` loads the
  full conditional-generation checkpoint (so that every checkpoint layout the library knows is
  converted correctly) and keeps only its inner model, which frees the LM head.
* **Entry points**: ``QwenBackbone.from_pretrained`` (a local directory, ``local_files_only``),
  ``build_qwen_backbone`` (from ``grrl_policy.model.QwenConfig``; a ``random_config`` builds a
  randomly initialised model with an offline character tokenizer, for tests) and
  ``QwenBackbone.build_inputs`` (the exact model inputs, for checking against a plain forward).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
)

from grrl_policy.keys import IMAGES, INSTRUCTION
from grrl_policy.prefix import Backbone, Prefix

logger = logging.getLogger(__name__)

IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Qwen2-VL / CLIP per-channel mean (RGB, on the [0, 1] scale)."""
IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Qwen2-VL / CLIP per-channel standard deviation (RGB, on the [0, 1] scale)."""


def preprocess_images(
    images: torch.Tensor,
    image_size: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL image preprocessing in torch.

    Args:
        images: (N, H, W, 3) uint8 RGB images, any device.
        image_size: side of the square the images are resized to; a multiple of
            ``patch_size * merge_size``.
        patch_size, merge_size, temporal_patch_size: the vision tower's patching parameters.
        mean, std: per-channel normalisation on the [0, 1] scale.

    Returns:
        pixel_values: (N * gh * gw, 3 * temporal_patch_size * patch_size**2) float32, with
            ``gh = gw = image_size // patch_size``; the rows of image ``n`` are the contiguous
            block ``n * gh * gw .. (n + 1) * gh * gw - 1``, in the official processor's
            merge-window order, and each row is laid out as (channel, time, row, column).
        image_grid_thw: (N, 3) int64, every row ``(1, gh, gw)``.

    Raises:
        ValueError: on a bad ``image_size`` or a tensor that is not (N, H, W, 3) uint8.
    """
    factor = patch_size * merge_size
    if image_size <= 0 or image_size % factor != 0:
        raise ValueError(
            f"image_size must be a positive multiple of patch_size * spatial_merge_size = {factor}, "
            f"got {image_size}"
        )
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(images.shape)}")

    n = images.shape[0]
    x = images.permute(0, 3, 1, 2).float()  # (N, 3, H, W), 0..255
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True
        )
        x = x.clamp(0.0, 255.0).round()  # back onto the 8-bit grid a PIL resize produces
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x * (1.0 / 255.0) - mean_t) / std_t

    g = image_size // patch_size  # patches per side
    m = merge_size
    x = x.reshape(n, 3, g // m, m, patch_size, g // m, m, patch_size)
    # -> (N, gh/m, gw/m, m_h, m_w, C, p_h, p_w): merge windows row-major, patches inside a window
    # row-major, then the patch's own (channel, row, column) content
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    # a still image is its own temporal neighbour: repeat it along a time axis after the channel
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch_size, patch_size, patch_size)
    pixel_values = x.reshape(n * g * g, 3 * temporal_patch_size * patch_size * patch_size)
    grid = torch.tensor([1, g, g], dtype=torch.long, device=images.device).expand(n, 3).contiguous()
    return pixel_values, grid


class QwenBackbone(Backbone):
    """Qwen2.5-VL whose latter-half key/value cache is the experts' prefix.

    Args:
        model: a ``Qwen2_5_VLForConditionalGeneration`` (only its inner model is kept) or a
            ``Qwen2_5_VLModel``.
        tokenizer: the model's tokenizer.
        image_size: side of the square every camera image is resized to; a multiple of
            ``patch_size * spatial_merge_size`` (28 for the released models). Each image becomes
            ``(image_size / 28)**2`` tokens for the released models.
        n_prefix_layers: how many of the last decoder layers are exported; defaults to
            ``num_hidden_layers // 2``.
    """

    def __init__(
        self,
        model: Qwen2_5_VLForConditionalGeneration | Qwen2_5_VLModel,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 224,
        n_prefix_layers: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, Qwen2_5_VLForConditionalGeneration):
            model = model.model
        if not isinstance(model, Qwen2_5_VLModel):
            raise TypeError(
                "model must be a Qwen2_5_VLForConditionalGeneration or Qwen2_5_VLModel, "
                f"got {type(model).__name__}"
            )
        self.model: Qwen2_5_VLModel = model
        self.tokenizer = tokenizer

        cfg = model.config
        text_cfg = cfg.get_text_config(decoder=True)
        vis_cfg = cfg.vision_config
        self.patch_size = int(vis_cfg.patch_size)
        self.merge_size = int(vis_cfg.spatial_merge_size)
        self.temporal_patch_size = int(vis_cfg.temporal_patch_size)
        factor = self.patch_size * self.merge_size
        if image_size <= 0 or image_size % factor != 0:
            raise ValueError(
                f"image_size must be a positive multiple of patch_size * spatial_merge_size = {factor}, "
                f"got {image_size}"
            )
        self.image_size = int(image_size)
        self.tokens_per_image = (self.image_size // factor) ** 2

        self.n_layers = int(text_cfg.num_hidden_layers)
        if n_prefix_layers is None:
            n_prefix_layers = self.n_layers // 2
        if not 1 <= n_prefix_layers <= self.n_layers:
            raise ValueError(f"n_prefix_layers must be in [1, {self.n_layers}], got {n_prefix_layers}")
        self.n_prefix_layers = int(n_prefix_layers)
        self.n_kv_heads = int(text_cfg.num_key_value_heads)
        head_dim = getattr(text_cfg, "head_dim", None)
        self.head_dim = int(head_dim or text_cfg.hidden_size // text_cfg.num_attention_heads)
        if any(t != "full_attention" for t in text_cfg.layer_types):
            logger.warning("backbone has sliding-window layers: their cached keys/values may be truncated")

        self.image_token_id = int(cfg.image_token_id)
        self.vision_start_token_id = int(cfg.vision_start_token_id)
        self.vision_end_token_id = int(cfg.vision_end_token_id)
        vocab_size = int(text_cfg.vocab_size)
        if len(tokenizer) > vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}"
            )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        if pad == self.image_token_id:
            raise ValueError("the tokenizer's pad token must differ from the image token")
        self.pad_token_id = int(pad)
        logger.info(
            "QwenBackbone: %d decoder layers, exporting the last %d; %d kv heads x %d; "
            "%d tokens per %dpx image",
            self.n_layers, self.n_prefix_layers, self.n_kv_heads, self.head_dim, self.tokens_per_image,
            self.image_size,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        image_size: int = 224,
        n_prefix_layers: int | None = None,
        **model_kwargs,
    ) -> "QwenBackbone":
        """Load Qwen2.5-VL and its tokenizer from a local directory (never from the network).

        ``model_kwargs`` go to ``Qwen2_5_VLForConditionalGeneration.from_pretrained``
        (e.g. ``attn_implementation="flash_attention_2"``).
        """
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no local Qwen2.5-VL directory at {path}")
        logger.info("loading Qwen2.5-VL from %s (dtype %s)", path, dtype)
        full = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(path), dtype=dtype, local_files_only=True, **model_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        backbone = cls(full, tokenizer, image_size=image_size, n_prefix_layers=n_prefix_layers)
        del full  # drops the LM head
        if device is not None:
            backbone.to(device)
        return backbone

    def freeze(self) -> "QwenBackbone":
        """Stop gradients into the backbone and put it in eval mode; returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_obs(self, obs: dict) -> tuple[torch.Tensor, list[str]]:
        if IMAGES not in obs or obs[IMAGES] is None:
            raise ValueError("QwenBackbone needs obs['images'] of shape (B, n_cameras, H, W, 3) uint8")
        images = obs[IMAGES]
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"obs['images'] must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"obs['images'] must be uint8, got {images.dtype}")
        if images.ndim != 5 or images.shape[-1] != 3 or images.shape[0] == 0 or images.shape[1] == 0:
            raise ValueError(
                "obs['images'] must have shape (B, n_cameras, H, W, 3) with B, n_cameras >= 1, "
                f"got {tuple(images.shape)}"
            )
        instruction = obs.get(INSTRUCTION)
        if isinstance(instruction, str) or not isinstance(instruction, Sequence):
            raise ValueError("obs['instruction'] must be a list of strings, one per sample")
        if len(instruction) != images.shape[0]:
            raise ValueError(
                f"obs['instruction'] has {len(instruction)} entries but obs['images'] has "
                f"batch size {images.shape[0]}"
            )
        if not all(isinstance(s, str) for s in instruction):
            raise ValueError("obs['instruction'] must contain only strings")
        return images, list(instruction)

    def build_inputs(self, obs: dict) -> dict[str, torch.Tensor]:
        """The model inputs for a batch of observations, on the model's device.

        Returns a dict with
            input_ids: (B, L) int64, right-padded with the tokenizer's pad token,
            attention_mask: (B, L) int64, 1 on real tokens,
            mm_token_type_ids: (B, L) int32, 1 on image-pad tokens, 0 elsewhere,
            pixel_values: (B * n_cameras * gh * gw, 3 * temporal_patch_size * patch_size**2) float32,
            image_grid_thw: (B * n_cameras, 3) int64, in the order the images appear in the tokens.
        """
        images, instruction = self._check_obs(obs)
        device = self.device
        b, n_cam = images.shape[:2]
        pixel_values, grid = preprocess_images(
            images.to(device).flatten(0, 1),
            self.image_size,
            self.patch_size,
            self.merge_size,
            self.temporal_patch_size,
        )

        text_ids = self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
        for ids in text_ids:
            if self.image_token_id in ids:
                raise ValueError("an instruction tokenised into the image placeholder token")
        image_block = [self.vision_start_token_id] + [self.image_token_id] * self.tokens_per_image + [
            self.vision_end_token_id
        ]
        seqs = [list(ids) + image_block * n_cam for ids in text_ids]
        length = max(len(s) for s in seqs)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, : len(s)] = 1
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device)
        mm_token_type_ids = ((input_ids == self.image_token_id) & attention_mask.bool()).int()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids,
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
        }

    def encode(self, obs: dict) -> Prefix:
        """Run the backbone once and return its latter-half key/value cache.

        Args:
            obs: ``images`` (B, n_cameras, H, W, 3) uint8 and ``instruction`` list[str] of length B
                (other keys, e.g. ``state``, are ignored).

        Returns:
            Prefix with ``n_prefix_layers`` keys/values of shape (B, n_kv_heads, L, head_dim) in the
            model's dtype (post-RoPE keys, layers in order) and mask (B, L) bool.
        """
        inputs = self.build_inputs(obs)
        position_ids, _ = self.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=position_ids,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        first = self.n_layers - self.n_prefix_layers
        keys = [cache.layers[i].keys for i in range(first, self.n_layers)]
        values = [cache.layers[i].values for i in range(first, self.n_layers)]
        mask = inputs["attention_mask"].bool()
        logger.debug("encoded prefix: %d layers of %s", len(keys), tuple(keys[0].shape))
        return Prefix(keys, values, mask)


def char_tokenizer() -> PreTrainedTokenizerBase:
    """An offline character-level tokenizer (ids 0..42: pad, unk, lowercase letters, digits and a
    little punctuation) for randomly initialised backbones, which have no tokenizer of their own.
    Give such a backbone a text vocabulary of at least 43 and special token ids above that."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,-'"
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def build_qwen_backbone(cfg) -> QwenBackbone:
    """Build the backbone from a ``grrl_policy.model.QwenConfig``-like object (fields ``path``,
    ``image_size``, ``dtype`` and ``random_config``; an optional ``n_prefix_layers``).

    With ``random_config`` (a ``Qwen2_5_VLConfig`` as a dict) the model is randomly initialised and
    gets :func:`char_tokenizer`; otherwise it is loaded from the local directory ``path``. The
    backbone stays on the CPU; the caller moves the whole policy to its device.
    """
    from transformers import Qwen2_5_VLConfig

    dtype = getattr(torch, str(cfg.dtype), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown backbone dtype {cfg.dtype!r}")
    n_prefix_layers = getattr(cfg, "n_prefix_layers", None)
    if cfg.random_config is not None:
        config = Qwen2_5_VLConfig(**copy.deepcopy(cfg.random_config))
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
        return QwenBackbone(
            model, char_tokenizer(), image_size=cfg.image_size, n_prefix_layers=n_prefix_layers
        )
    if not cfg.path:
        raise ValueError("the Qwen backbone needs a local model directory (qwen.path) or a random_config")
    return QwenBackbone.from_pretrained(
        cfg.path, dtype=dtype, image_size=cfg.image_size, n_prefix_layers=n_prefix_layers
    )
