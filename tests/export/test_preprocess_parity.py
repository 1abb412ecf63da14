"""The torch-free preprocessing equals the Hugging Face slow processors bit for bit.

For every registered family's processors (built from its architectures' processor configs) and every image of
the parity set, huge ones included: `embedder.preprocess.Preprocessor.from_bytes(data)` must equal
`processor(images=Image.open(...).convert("RGB"))["pixel_values"][0]` exactly, dtype included.
Parametrized per image so a failure names it. The steps are also checked alone: the resize-size
rule and the padding center crop against the transformers functions they reproduce.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers.image_transforms import center_crop as hf_center_crop
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

from embedder.preprocess import Preprocessor, center_crop, resize_output_size
from embedder.spec import CropSize, Preprocessing, Resize
from export.families import FAMILIES
from export.images import ParityImage, parity_images
from export.parity import CHANNEL_AMBIGUOUS_HEIGHTS
from export.spec_writer import preprocessing_from_processor

IMAGES: dict[str, ParityImage] = {image.name: image for image in parity_images(include_huge=True)}
AMBIGUOUS = [name for name, image in IMAGES.items() if image.size[1] in CHANNEL_AMBIGUOUS_HEIGHTS]


def processor_configs() -> dict[str, tuple[type, dict[str, Any]]]:
    """Every distinct processor config of every registered family's architectures, named by the
    first architecture using it: (the family's slow processor class, the config)."""
    configs: dict[str, tuple[type, dict[str, Any]]] = {}
    for family in FAMILIES.values():
        for name, arch in family.architectures.items():
            if all(arch.processor != seen for _, seen in configs.values()):
                configs[name] = (family.processor_class, arch.processor)
    return configs


PROCESSOR_CONFIGS = processor_configs()


@pytest.fixture(scope="module", params=sorted(PROCESSOR_CONFIGS))
def processor(request: pytest.FixtureRequest) -> Any:
    """The slow (PIL) processor the checkpoints load with use_fast=False."""
    cls, config = PROCESSOR_CONFIGS[request.param]
    assert cls.__name__ == config["image_processor_type"]
    return cls(**{k: v for k, v in config.items() if k != "image_processor_type"})


@pytest.fixture(scope="module")
def preprocessor(processor: Any) -> Preprocessor:
    return Preprocessor(preprocessing_from_processor(processor))


def decoded(image: ParityImage) -> Image.Image:
    return Image.open(io.BytesIO(image.data)).convert("RGB")  # the pipeline's own decode


def hf_pixels(processor: Any, image: Image.Image, **kwargs: Any) -> np.ndarray:
    return processor(images=image, return_tensors="np", **kwargs)["pixel_values"][0]


def hf_reference(processor: Any, image: Image.Image) -> np.ndarray:
    """HF's output, told the channel axis where its guess is wrong (1 or 3 px high; see below)."""
    if image.height in CHANNEL_AMBIGUOUS_HEIGHTS:
        return hf_pixels(processor, image, input_data_format="channels_last")
    return hf_pixels(processor, image)


@pytest.mark.parametrize("name", IMAGES)
def test_preprocessing_equals_hf_bit_for_bit(name: str, processor: Any, preprocessor: Preprocessor) -> None:
    image = IMAGES[name]
    expected = hf_reference(processor, decoded(image))
    ours = preprocessor.from_bytes(image.data)
    assert ours.dtype == expected.dtype == np.float32
    assert ours.shape == expected.shape == (3, *preprocessor.spec.input_size())
    assert np.array_equal(ours, expected), f"max abs diff {np.abs(ours - expected).max():.3g}"


def test_the_set_holds_images_of_both_ambiguous_heights() -> None:
    """Without them the channels_last rule below would be untested."""
    assert {IMAGES[name].size[1] for name in AMBIGUOUS} == set(CHANNEL_AMBIGUOUS_HEIGHTS)


@pytest.mark.parametrize("height", range(1, 6))
@pytest.mark.parametrize("width", [1, 2, 3, 4, 50])
def test_hf_guesses_channels_first_exactly_for_the_ambiguous_heights(height: int, width: int) -> None:
    """The rule the gate and these tests use (heights 1 and 3) is HF's own inference, for any width."""
    guess = infer_channel_dimension_format(np.zeros((height, width, 3), dtype=np.uint8))
    assert (guess != ChannelDimension.LAST) == (height in CHANNEL_AMBIGUOUS_HEIGHTS)


@pytest.mark.parametrize("name", AMBIGUOUS)
def test_hf_default_mangles_ambiguous_heights(name: str, processor: Any) -> None:
    """Why the reference passes input_data_format="channels_last" for these images: HF's default
    call takes the height as the channel axis and either raises or returns other numbers."""
    image = decoded(IMAGES[name])
    explicit = hf_pixels(processor, image, input_data_format="channels_last")
    try:
        default = hf_pixels(processor, image)
    except Exception:  # noqa: BLE001 - any error is the documented outcome
        return
    assert not np.array_equal(default, explicit), "HF's default now handles this image; the rule may go"


# --- the steps alone ------------------------------------------------------------------------------

SIZES = [
    *range(1, 40),
    100,
    223,
    224,
    225,
    255,
    256,
    257,
    333,
    500,
    517,
    518,
    519,
    640,
    1000,
    2000,
    4096,
    4097,
]
RULES = {
    "shortest-224": Resize(shortest_edge=224),
    "shortest-256": Resize(shortest_edge=256),
    "shortest-1": Resize(shortest_edge=1),
    "shortest-518": Resize(shortest_edge=518),
    "exact-224x224": Resize(height=224, width=224),
    "exact-100x300": Resize(height=100, width=300),
}


def spec_with(resize: Resize) -> Preprocessing:
    return Preprocessing(
        processor_class="CLIPImageProcessor",
        resize=resize,
        resample="bicubic",
        center_crop=CropSize(height=224, width=224),
        rescale_factor=None,
        mean=None,
        std=None,
    )


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_resize_output_size_matches_hf(rule: Resize) -> None:
    spec = spec_with(rule)
    if rule.shortest_edge is not None:
        size: Any = rule.shortest_edge
        square = False  # what CLIPImageProcessor/BitImageProcessor.resize pass for shortest_edge
    else:
        size, square = (rule.height, rule.width), True
    mismatches = []
    for width in SIZES:
        for height in SIZES:
            shape_only = np.broadcast_to(np.zeros(1, np.uint8), (height, width, 3))  # no 4096^2 allocation
            hf_h, hf_w = get_resize_output_image_size(
                shape_only, size=size, default_to_square=square, input_data_format="channels_last"
            )
            if resize_output_size(width, height, spec) != (hf_w, hf_h):
                mismatches.append((width, height, resize_output_size(width, height, spec), (hf_w, hf_h)))
    assert not mismatches, mismatches[:10]


def test_center_crop_pads_small_images_with_zeros_around_the_centre() -> None:
    pixels = np.arange(1, 13, dtype=np.uint8).reshape(2, 2, 3)
    expected = np.zeros((3, 4, 3), dtype=np.uint8)
    expected[1:3, 1:3] = pixels  # 1 padding row, on top (odd: HF rounds the top pad up); 1 column each side
    assert np.array_equal(center_crop(pixels, 3, 4), expected)
    single = np.full((1, 1, 3), 9, dtype=np.uint8)
    expected = np.zeros((2, 2, 3), dtype=np.uint8)
    expected[1, 1] = 9  # odd padding on both axes: the pixel ends up bottom-right of centre
    assert np.array_equal(center_crop(single, 2, 2), expected)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (2, 2), (5, 7), (3, 40), (40, 3), (224, 100), (100, 224), (223, 225), (300, 200), (224, 224)],
)
@pytest.mark.parametrize("crop", [(224, 224), (3, 3), (4, 5), (1, 1)])
def test_center_crop_matches_hf(shape: tuple[int, int], crop: tuple[int, int]) -> None:
    pixels = np.random.default_rng(shape[0] * 1000 + shape[1]).integers(1, 256, (*shape, 3), dtype=np.uint8)
    ours = center_crop(pixels, *crop)
    theirs = hf_center_crop(pixels, crop, data_format="channels_last", input_data_format="channels_last")
    assert ours.shape == (*crop, 3)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
