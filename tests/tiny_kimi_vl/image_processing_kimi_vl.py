"""Image processor of the tiny Kimi-VL test model (kimi-cua's own; loaded by vLLM through ``auto_map``).

It implements the image token rule vLLM's ``KimiVLProcessingInfo.get_num_image_tokens`` uses (REFERENCE.md
section 1) and returns what vLLM's ``kimi_vl.py``/``moonvit.py`` consume:

- ``pixel_values``: float tensor ``(sum of patches, 3, 14, 14)``, the 14-px patches of every image in row-major
  grid order, images concatenated;
- ``image_grid_hws``: int64 tensor ``(num_images, 2)``, each image's patch grid ``(H/14, W/14)``.

Rule, with p = patch_size (14) and L = in_token_limit: when ``(W//p)*(H//p) > L`` the image is resized (bicubic)
by ``sqrt(L / ((W//p)*(H//p)))`` (int-truncated sides); then padded (black, bottom/right) up to multiples of
``merge_kernel_size * p`` (28); it costs ``(H/28)*(W/28)`` placeholder tokens.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze())


class KimiVLImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values", "image_grid_hws"]

    def __init__(
        self,
        patch_size: int = 14,
        in_token_limit: int = 4096,
        merge_kernel_size=(2, 2),
        pad_input: bool = True,
        image_mean=OPENAI_DATASET_MEAN,
        image_std=OPENAI_DATASET_STD,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.in_token_limit = int(in_token_limit)
        self.merge_kernel_size = [int(k) for k in merge_kernel_size]
        self.pad_input = bool(pad_input)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    # -- the rule ---------------------------------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """Size after the in_token_limit downscale (before padding)."""
        p = self.patch_size
        patches = (width // p) * (height // p)
        if patches > self.in_token_limit:
            scale = math.sqrt(self.in_token_limit / patches)
            width, height = int(width * scale), int(height * scale)
        return width, height

    def padded_size(self, width: int, height: int) -> tuple[int, int]:
        kh, kw = self.merge_kernel_size
        unit_h, unit_w = kh * self.patch_size, kw * self.patch_size
        width, height = self.resized_size(width, height)
        return width + (-width) % unit_w, height + (-height) % unit_h

    def num_image_tokens(self, width: int, height: int) -> int:
        kh, kw = self.merge_kernel_size
        pw, ph = self.padded_size(width, height)
        return (ph // (kh * self.patch_size)) * (pw // (kw * self.patch_size))

    # -- processing -------------------------------------------------------------------------------------------
    def _one(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        image = _to_pil(image).convert("RGB")
        width, height = image.size
        new_w, new_h = self.resized_size(width, height)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        pad_w, pad_h = self.padded_size(width, height)
        if (pad_w, pad_h) != image.size:
            canvas = Image.new("RGB", (pad_w, pad_h), (0, 0, 0))
            canvas.paste(image, (0, 0))
            image = canvas
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        chw = array.transpose(2, 0, 1)
        p = self.patch_size
        c, h, w = chw.shape
        patches = chw.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4).reshape(-1, c, p, p)
        return np.ascontiguousarray(patches), (h // p, w // p)

    def preprocess(self, images, return_tensors=None, **kwargs) -> BatchFeature:
        if images is None:
            images = []
        if not isinstance(images, (list, tuple)):
            images = [images]
        flat = []
        for item in images:  # a batch may come nested (one list per prompt)
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        outputs = [self._one(image) for image in flat]
        if outputs:
            pixel_values = np.concatenate([patches for patches, _ in outputs], axis=0)
        else:
            pixel_values = np.zeros((0, 3, self.patch_size, self.patch_size), np.float32)
        grid_hws = np.asarray([grid for _, grid in outputs], dtype=np.int64).reshape(-1, 2)
        return BatchFeature(data={"pixel_values": pixel_values, "image_grid_hws": grid_hws},
                            tensor_type=return_tensors)

    def __call__(self, images=None, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)
