"""Completeness: every export family is exercised, and every committed model.json is current (no
drift from `export.committed`), holds the values the hub checkpoint publishes, and is what an
export of its hub id produces.

"Published" is read from the checkpoints' own config files, committed as fixtures with their
source named (tests/export/fixtures/hub/README.md), never from `export/architectures.py`, which
is what they check."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig

from embedder.spec import ModelSpec, load_spec
from export.architectures import architecture
from export.committed import DEFAULT_MODELS, committed_spec
from export.families import FAMILIES

PUBLISHED = Path(__file__).parent / "fixtures" / "hub"

REPO_ROOT = Path(__file__).parents[2]


def committed_models() -> list[str]:
    """Models whose model.json git tracks; `make bench` and `make models` leave other exports
    (the int8 variant) beside them, ignored by git."""
    listed = subprocess.run(
        ["git", "ls-files", "models/*/model.json"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:  # not a git checkout: every model.json there is the committed one
        return sorted(path.parent.name for path in (REPO_ROOT / "models").glob("*/model.json"))
    return sorted(Path(line).parent.name for line in listed.stdout.split())


COMMITTED = committed_models()
# Written by `python -m export`, not committed (the text tower's section names its files' hashes).
EXPORT_ONLY_FIELDS = ("onnx_sha256", "provenance", "parity", "text", "golden")
# Committed model -> the fixture holding a full-size random-init export of its hub id.
EXPORT_FIXTURES = {
    "clip-vit-base-patch32": "clip_b32_dir",
    "dinov2-small": "dinov2_small_dir",
    "dinov2-base": "dinov2_base_dir",
}


def committed_fields(spec: ModelSpec) -> ModelSpec:
    return spec.model_copy(update=dict.fromkeys(EXPORT_ONLY_FIELDS))


def published(hub_id: str) -> tuple[Any, PretrainedConfig]:
    """The checkpoint's slow image processor and config, as transformers loads its published files."""
    folder = PUBLISHED / hub_id.replace("/", "--")
    return AutoImageProcessor.from_pretrained(folder, use_fast=False), AutoConfig.from_pretrained(folder)


RESAMPLE = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}


def published_preprocessing(processor: Any) -> dict[str, Any]:
    """model.json's `preprocessing` as the published processor defines it (the server always
    resizes, crops, rescales and normalises, so the processor must do all four)."""
    assert (
        processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize
    )
    return {
        "processor_class": type(processor).__name__,
        "convert_rgb": processor.do_convert_rgb,
        "resize": {"shortest_edge": processor.size["shortest_edge"], "height": None, "width": None},
        "resample": RESAMPLE[processor.resample],
        "center_crop": dict(processor.crop_size),
        "rescale_factor": processor.rescale_factor,
        "mean": list(processor.image_mean),
        "std": list(processor.image_std),
    }


def published_dim(config: PretrainedConfig, pooling: str) -> int:
    """The served vector's width: CLIP's projection, DINOv2's hidden size (twice, cls+mean)."""
    if config.model_type == "clip":
        assert pooling == "projected"
        return int(config.projection_dim)
    return int(config.hidden_size) * (2 if pooling == "cls+mean" else 1)


# What shapes the computation: width, depth, heads, patches, activation, norms, the text ids the
# pooling depends on. Dropout, initialisation and generation defaults do not.
ARCHITECTURE_KEYS = {
    "clip": ("projection_dim",),
    "clip.text_config": (
        *("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
        *("max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id"),
        "pad_token_id",
    ),
    "clip.vision_config": (
        *("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size"),
        *("patch_size", "num_channels", "hidden_act", "layer_norm_eps"),
    ),
    "dinov2": (
        *("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "image_size", "patch_size"),
        *("num_channels", "hidden_act", "layer_norm_eps", "layerscale_value", "use_swiglu_ffn", "qkv_bias"),
    ),
}


def architecture_values(config: PretrainedConfig) -> dict[str, Any]:
    values = {key: getattr(config, key) for key in ARCHITECTURE_KEYS[config.model_type]}
    for part in ("text_config", "vision_config"):
        if f"{config.model_type}.{part}" in ARCHITECTURE_KEYS:
            sub = getattr(config, part)
            values |= {
                f"{part}.{key}": getattr(sub, key) for key in ARCHITECTURE_KEYS[f"{config.model_type}.{part}"]
            }
    return values


@pytest.fixture(scope="module")
def dinov2_base_dir(tmp_path_factory: pytest.TempPathFactory, export_model: Any) -> Path:
    """Only this test needs it, so it is not a session fixture: ~75 s on 2 cores, full gate."""
    out = tmp_path_factory.mktemp("full-exports") / "dinov2-base"
    process = export_model("dinov2", "facebook/dinov2-base", out, "--random-init")
    assert process.returncode == 0, f"{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
    return out


def test_every_family_is_exported_by_the_suite(
    tiny_clip_dir: Path, tiny_dinov2_dir: Path, tiny_siglip_dir: Path
) -> None:
    exports = (tiny_clip_dir, tiny_dinov2_dir, tiny_siglip_dir)
    covered = {load_spec(directory / "model.json").family for directory in exports}
    assert covered == set(FAMILIES)


def test_committed_models_are_the_default_models() -> None:
    assert COMMITTED == sorted(DEFAULT_MODELS)
    assert set(EXPORT_FIXTURES) == set(DEFAULT_MODELS)  # each one is exported below


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_json_has_not_drifted(name: str) -> None:
    spec = load_spec(REPO_ROOT / "models" / name / "model.json")
    expected = committed_spec(name, DEFAULT_MODELS[name])
    if spec.provenance is None:
        assert spec == expected  # as committed: processor values only
    else:
        # Someone ran `python -m export ... --out models/NAME` here, which rewrites the file with the
        # graph's hash and provenance; everything the committed file defines must still agree.
        assert committed_fields(spec) == expected


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_json_holds_the_published_values(name: str) -> None:
    """Preprocessing and width as the hub checkpoint's own files define them."""
    spec = load_spec(REPO_ROOT / "models" / name / "model.json")
    processor, config = published(DEFAULT_MODELS[name])
    assert spec.preprocessing.model_dump(mode="json") == published_preprocessing(processor)
    assert spec.embedding_dim == published_dim(config, spec.pooling)


@pytest.mark.parametrize("hub_id", sorted(DEFAULT_MODELS.values()))
def test_random_init_architecture_is_the_published_one(hub_id: str) -> None:
    """What `--random-init` builds for a hub id: the published architecture and processor."""
    arch = architecture(hub_id)
    processor, config = published(hub_id)
    built = type(config)(**arch.config)
    assert architecture_values(built) == architecture_values(config)
    built_processor = type(processor)(
        **{k: v for k, v in arch.processor.items() if k != "image_processor_type"}
    )
    assert published_preprocessing(built_processor) == published_preprocessing(processor)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPORT_FIXTURES))
def test_export_of_the_hub_id_reproduces_the_committed_model(
    name: str, request: pytest.FixtureRequest
) -> None:
    """Preprocessing and width are the published checkpoint's (not read from the constants the
    export used); name, aliases, family and pooling are the committed model's; the gate passed."""
    exported = load_spec(request.getfixturevalue(EXPORT_FIXTURES[name]) / "model.json")
    committed = load_spec(REPO_ROOT / "models" / name / "model.json")
    assert exported.verified
    assert exported.provenance is not None and exported.provenance.source == DEFAULT_MODELS[name]
    processor, config = published(DEFAULT_MODELS[name])
    assert exported.preprocessing.model_dump(mode="json") == published_preprocessing(processor)
    assert exported.embedding_dim == published_dim(config, exported.pooling)
    assert committed_fields(exported) == committed_fields(committed)
