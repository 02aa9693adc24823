"""The Qwen2.5-VL backbone on a tiny random model: pixels patched in the official processor's
order, prefix shapes and mask, padding invariance, the exported keys/values are the model's own
cache of its latter-half layers, and bad input is refused."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grrl_policy.prefix import Prefix
from grrl_policy.qwen_backbone import QwenBackbone, build_qwen_backbone, preprocess_images

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

IMAGE_SIZE = 56  # 2x2 merged tokens per image with patch 14, merge 2
TOKENS_PER_IMAGE = 4
N_LAYERS = 4
START, END, IMAGE, VIDEO = 100, 101, 102, 103
WORDS = "pick up the red cube and place it in box fold towel on table".split()

TINY_CONFIG = dict(
    text_config=dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    ),
    vision_config=dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, window_size=56, out_hidden_size=64, fullatt_block_indexes=[1],
    ),
    image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
)


def word_tokenizer():
    """Whitespace word-level tokenizer: ids 0 (pad), 1 (unk), 2.. words, all below the image ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    cfg = transformers.Qwen2_5_VLConfig(**TINY_CONFIG)
    return transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def backbone(full_model) -> QwenBackbone:
    return QwenBackbone(full_model, word_tokenizer(), image_size=IMAGE_SIZE).eval()


def observation(batch: int = 2, cameras: int = 2, h: int = 64, w: int = 48, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, cameras, h, w, 3), dtype=torch.uint8, generator=g)
    instructions = ["pick up the red cube and place it in the box", "fold towel", "cube on table"]
    return {"images": images, "instruction": instructions[:batch]}


# -- image preprocessing ----------------------------------------------------------------------

def test_pixel_values_match_the_official_processor():
    """Patch order, normalisation, temporal duplication and grid equal the reference
    Qwen2VLImageProcessorPil (the numpy/PIL backend) on already right-sized images."""
    proc_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    proc = proc_cls()
    rng = np.random.default_rng(1)
    for size in (56, 84):
        images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        ref = proc(images=list(images), do_resize=False, return_tensors="pt")
        pixel_values, grid = preprocess_images(torch.from_numpy(images), size)
        assert pixel_values.shape == ref["pixel_values"].shape == (3 * (size // 14) ** 2, 3 * 2 * 14 * 14)
        assert torch.equal(grid, ref["image_grid_thw"].long())
        torch.testing.assert_close(pixel_values, ref["pixel_values"].float(), atol=1e-5, rtol=1e-5)


def test_backbone_inputs_use_the_same_pixels(backbone):
    obs = observation(h=IMAGE_SIZE, w=IMAGE_SIZE)
    inputs = backbone.build_inputs(obs)
    expected, grid = preprocess_images(obs["images"].flatten(0, 1), IMAGE_SIZE)
    torch.testing.assert_close(inputs["pixel_values"], expected, atol=0, rtol=0)
    assert grid.tolist() == [[1, 4, 4]] * 4 == inputs["image_grid_thw"].tolist()


def test_resize_keeps_a_constant_image_constant():
    images = torch.full((2, 37, 91, 3), 128, dtype=torch.uint8)
    pixel_values, grid = preprocess_images(images, 28)
    assert grid.tolist() == [[1, 2, 2]] * 2
    per_channel = pixel_values.view(8, 3, 2 * 14 * 14)
    expected = (128 / 255 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(per_channel, expected.view(1, 3, 1).expand_as(per_channel), atol=1e-5, rtol=0)


def test_image_size_must_be_a_multiple_of_the_merged_patch(full_model):
    with pytest.raises(ValueError, match="multiple of"):
        QwenBackbone(full_model, word_tokenizer(), image_size=50)
    with pytest.raises(ValueError, match="multiple of"):
        preprocess_images(torch.zeros(1, 28, 28, 3, dtype=torch.uint8), 42)


# -- encoding ---------------------------------------------------------------------------------

def test_token_layout(backbone):
    inputs = backbone.build_inputs(observation())
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    text = [len(backbone.tokenizer(s)["input_ids"]) for s in observation()["instruction"]]
    block = [START] + [IMAGE] * TOKENS_PER_IMAGE + [END]
    for i, n in enumerate(text):
        assert ids[i, n:n + 2 * len(block)].tolist() == block * 2
        assert int(mask[i].sum()) == n + 2 * len(block)
    assert torch.equal(inputs["mm_token_type_ids"].bool(), ids == IMAGE)


def test_encode_shapes_and_mask(backbone):
    obs = observation()
    prefix = backbone.encode(obs)
    assert isinstance(prefix, Prefix)
    assert backbone.n_prefix_layers == N_LAYERS // 2 == len(prefix.keys) == len(prefix.values)
    assert (backbone.n_kv_heads, backbone.head_dim) == (2, 16)
    text = [len(backbone.tokenizer(s)["input_ids"]) for s in obs["instruction"]]
    lengths = [n + 2 * (TOKENS_PER_IMAGE + 2) for n in text]
    assert text[0] != text[1]
    L = max(lengths)
    for k, v in zip(prefix.keys, prefix.values):
        assert k.shape == v.shape == (2, backbone.n_kv_heads, L, backbone.head_dim)
        assert torch.isfinite(k).all() and torch.isfinite(v).all()
    assert prefix.mask.dtype == torch.bool and prefix.mask.shape == (2, L)
    assert prefix.mask.sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert prefix.mask[i, :n].all() and not prefix.mask[i, n:].any()


def test_padding_does_not_change_real_tokens(backbone):
    obs = observation()
    with torch.no_grad():
        batched = backbone.encode(obs)
        for i in range(2):
            one = {"images": obs["images"][i:i + 1], "instruction": obs["instruction"][i:i + 1]}
            alone = backbone.encode(one)
            n = alone.mask.shape[1]
            assert int(batched.mask[i].sum()) == n
            for kb, ka, vb, va in zip(batched.keys, alone.keys, batched.values, alone.values):
                torch.testing.assert_close(kb[i:i + 1, :, :n], ka, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(vb[i:i + 1, :, :n], va, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_prefix_layers", [None, 3])
def test_prefix_is_the_models_own_latter_half_cache(full_model, n_prefix_layers):
    """The exported tensors equal what a plain ``model(..., use_cache=True)`` caches for the last
    layers (rotary positions from the model's own get_rope_index), not the first ones."""
    bb = QwenBackbone(full_model, word_tokenizer(), image_size=IMAGE_SIZE, n_prefix_layers=n_prefix_layers)
    n = bb.n_prefix_layers
    assert n == (n_prefix_layers or N_LAYERS // 2)
    obs = observation()
    with torch.no_grad():
        prefix = bb.encode(obs)
        inputs = bb.build_inputs(obs)
        full_model.model.rope_deltas = None
        out = full_model(**inputs, use_cache=True)
    cache = out.past_key_values
    assert len(cache.layers) == N_LAYERS
    for j in range(n):
        layer = cache.layers[N_LAYERS - n + j]
        torch.testing.assert_close(prefix.keys[j], layer.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prefix.values[j], layer.values, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(prefix.keys[0], cache.layers[0].keys, atol=1e-3)


def test_gradients_reach_the_vision_tower_unless_frozen(full_model):
    bb = QwenBackbone(full_model, word_tokenizer(), image_size=IMAGE_SIZE)
    full_model.zero_grad(set_to_none=True)
    prefix = bb.encode(observation(batch=1))
    (prefix.keys[-1].square().mean() + prefix.values[0].square().mean()).backward()
    grad = full_model.model.visual.patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    full_model.zero_grad(set_to_none=True)

    frozen = QwenBackbone(transformers.Qwen2_5_VLForConditionalGeneration(full_model.config),
                          word_tokenizer(), image_size=IMAGE_SIZE).train()
    assert frozen.freeze() is frozen
    assert not frozen.training and not any(m.training for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.encode(observation(batch=1)).keys[0].requires_grad


# -- loading ----------------------------------------------------------------------------------

def test_from_pretrained_loads_a_local_directory(full_model, backbone, tmp_path):
    full_model.save_pretrained(tmp_path)
    backbone.tokenizer.save_pretrained(tmp_path)
    loaded = QwenBackbone.from_pretrained(tmp_path, dtype=torch.float32, device="cpu", image_size=IMAGE_SIZE)
    assert not hasattr(loaded.model, "lm_head")
    obs = observation()
    with torch.no_grad():
        a, b = backbone.encode(obs), loaded.eval().encode(obs)
    assert torch.equal(a.mask, b.mask)
    for ka, kb in zip(a.keys, b.keys):
        torch.testing.assert_close(ka, kb, atol=1e-6, rtol=1e-6)
    with pytest.raises(FileNotFoundError):
        QwenBackbone.from_pretrained(tmp_path / "missing")


def test_build_from_a_random_config():
    cfg = SimpleNamespace(path="", image_size=28, dtype="float32", random_config=TINY_CONFIG)
    bb = build_qwen_backbone(cfg)
    with torch.no_grad():
        prefix = bb.encode(observation(batch=2, cameras=3))
    assert len(prefix.keys) == 2 and prefix.keys[0].shape[:2] == (2, 2)
    assert prefix.mask.sum(1).tolist()[1] == len("fold towel") + 3 * (1 + 2)
    with pytest.raises(ValueError, match="random_config"):
        build_qwen_backbone(SimpleNamespace(path="", image_size=28, dtype="float32", random_config=None))


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (lambda o: {**o, "images": o["images"].float()}, "uint8"),
    (lambda o: {**o, "images": o["images"][:, 0]}, "shape"),
    (lambda o: {**o, "images": o["images"][..., :2]}, "shape"),
    (lambda o: {**o, "images": o["images"][:, :0]}, "shape"),
    (lambda o: {**o, "images": o["images"].numpy()}, "torch.Tensor"),
    (lambda o: {"instruction": o["instruction"]}, "images"),
    (lambda o: {**o, "instruction": o["instruction"][:1]}, "batch size"),
    (lambda o: {**o, "instruction": "pick up the cube"}, "list of strings"),
    (lambda o: {**o, "instruction": ["pick", 3]}, "strings"),
])
def test_bad_input_is_refused(backbone, bad, match):
    with pytest.raises(ValueError, match=match):
        backbone.encode(bad(observation()))
