"""numpy <-> ROS image payloads, without cv_bridge (the PyPI one is ROS 1's and breaks on
numpy 2). Works on plain fields so it is testable without rclpy; the nodes copy the fields
into and out of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage``."""
from __future__ import annotations

import io

import numpy as np

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class ImageError(ValueError):
    """An image payload that cannot be decoded; the message says why."""


def encode_raw(image: np.ndarray) -> tuple[str, int, int, int, bytes]:
    """(encoding, height, width, step, data) for an RGB (H, W, 3) uint8 image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w, _ = image.shape
    return "rgb8", h, w, 3 * w, np.ascontiguousarray(image).tobytes()


def decode_raw(encoding: str, height: int, width: int, step: int, data: bytes | bytearray
               | memoryview | np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 from a raw ``sensor_msgs/Image`` payload."""
    ch = _CHANNELS.get(encoding)
    if ch is None:
        raise ImageError(f"unsupported encoding '{encoding}' (supported: {sorted(_CHANNELS)})")
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image {width}x{height}")
    if step < width * ch:
        raise ImageError(f"step {step} < width*channels {width * ch}")
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(),
                        dtype=np.uint8)
    if buf.size != step * height:
        raise ImageError(f"{buf.size} bytes for {height} rows of {step} bytes")
    img = buf.reshape(height, step)[:, :width * ch].reshape(height, width, ch)
    if encoding == "mono8":
        return np.repeat(img, 3, axis=2)
    if encoding.startswith("bgr"):
        img = img[:, :, 2::-1]
    return np.ascontiguousarray(img[:, :, :3])


def encode_compressed(image: np.ndarray, fmt: str = "jpeg", quality: int = 90
                      ) -> tuple[str, bytes]:
    """(format, data) of a ``sensor_msgs/CompressedImage`` for an RGB image."""
    from PIL import Image

    if fmt not in ("jpeg", "png"):
        raise ImageError(f"format must be jpeg or png, got {fmt}")
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt.upper(), **({"quality": quality}
                                                            if fmt == "jpeg" else {}))
    return f"rgb8; {fmt} compressed rgb8", out.getvalue()


def decode_compressed(fmt: str, data: bytes | bytearray | memoryview) -> np.ndarray:
    """RGB (H, W, 3) uint8 from a ``sensor_msgs/CompressedImage`` (JPEG or PNG)."""
    from PIL import Image, UnidentifiedImageError

    low = fmt.lower()
    if "jpeg" not in low and "jpg" not in low and "png" not in low:
        raise ImageError(f"unsupported compressed format '{fmt}'")
    try:
        return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"corrupt {fmt} image: {exc}") from exc
