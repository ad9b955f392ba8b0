"""Transforms: output shapes per crop style, crop geometry, resize to the cache size, config."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nexperia_utils.data import transforms as T
from nexperia_utils.config import get_profile
from nexperia_utils.errors import ConfigError


@pytest.mark.parametrize("size", [32, 64, 224])
def test_output_shapes_for_each_crop_style(size):
    resize = T.resize_size_for(size)
    image = torch.randint(0, 255, (1, resize, resize + 2), dtype=torch.uint8)
    assert T.train_transform(size)(image).shape == (3, size, size)
    assert T.eval_transform(size, "center")(image).shape == (3, size, size)
    assert T.eval_transform(size, "five")(image).shape == (5, 3, size, size)
    assert T.eval_transform(size, "ten")(image).shape == (10, 3, size, size)
    assert T.train_crop_transform(size, "ten")(image).shape == (10, 3, size, size)


def test_report_ratio_255_to_224():
    assert T.resize_size_for(224) == 255
    assert get_profile("full").resize_size == 255


def test_crops_are_the_corners_centre_and_flips():
    image = torch.arange(40 * 42, dtype=torch.float32).view(1, 40, 42) / (40 * 42)
    image = (image * 255).to(torch.uint8)
    five = T.eval_transform(32, "five")(image)
    ten = T.eval_transform(32, "ten")(image)
    centre = T.eval_transform(32, "center")(image)
    assert torch.equal(five[4], centre)                      # the fifth crop is the centre crop
    assert torch.equal(ten[:5], five)                        # the first five are the unflipped crops
    assert torch.equal(ten[9], centre.flip(-1))              # the last is the flipped centre
    assert not torch.equal(five[0], five[1])                 # corners differ


def test_normalisation_and_grey_to_rgb():
    image = torch.full((1, 36, 37), 128, dtype=torch.uint8)
    out = T.eval_transform(32)(image)
    expected = (128 / 255 - torch.tensor(T.IMAGENET_MEAN)) / torch.tensor(T.IMAGENET_STD)
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)
    grey = T.denormalise(out.unsqueeze(0))
    assert grey.shape == (1, 32, 32) and np.allclose(grey, 128 / 255, atol=1e-3)


def test_augmentation_is_random_but_seeded():
    image = torch.randint(0, 255, (1, 36, 37), dtype=torch.uint8)
    tf = T.train_transform(32)
    torch.manual_seed(0)
    a = tf(image)
    torch.manual_seed(0)
    assert torch.equal(a, tf(image))
    assert not torch.equal(a, tf(image))
    assert torch.equal(T.train_transform(32, augment=False)(image), T.eval_transform(32)(image))


def test_resize_grayscale_fits_the_cache_shape():
    img = np.random.default_rng(0).integers(0, 255, (267, 275), dtype=np.uint8)
    assert T.resize_grayscale(img, 73).shape == (73, 75)
    assert T.resize_grayscale(img[:, :262], 73, 75).shape == (73, 75)   # a slightly narrower image
    assert T.resize_grayscale(img.T, 73, 75).shape == (73, 75)           # portrait


def test_unknown_crop_style():
    with pytest.raises(ConfigError, match="crop style"):
        T.eval_transform(32, "seven")


def test_profiles_override_and_validate():
    assert get_profile("quick", epochs=1).epochs == 1
    assert get_profile("quick", epochs=None).epochs == get_profile("quick").epochs
    with pytest.raises(ConfigError, match="unknown profile parameter"):
        get_profile("quick", epoch=1)
    with pytest.raises(ConfigError, match="image_size"):
        get_profile("quick", image_size=16)
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("huge")


def test_long_profile_is_the_quick_recipe_at_64_px_on_the_full_data_set():
    quick, long, full = get_profile("quick"), get_profile("long"), get_profile("full")
    differ = {k for k, v in long.to_dict().items() if quick.to_dict()[k] != v}
    assert differ == {"name", "data_scale", "data_dir", "image_size"}
    assert (quick.image_size, long.image_size) == (128, 64)  # long was measured at 64 px (LEARNING.md #29-#32)
    assert (long.data_scale, long.data_dir) == (full.data_scale, full.data_dir)  # one generated set, shared
    assert long.outputs_dir().name == "long"
