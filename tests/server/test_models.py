"""The model repository as served: names and aliases, ModelInfo, and start-up validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

from embedder.server import EmbedderServer
from embedder.settings import Settings
from embedder.spec import SPEC_FILE, SpecError, file_sha256, load_spec, write_spec
from embedder.v1 import embedder_pb2 as pb
from export.images import ParityImage
from tests.support.models import make_models_dir

if TYPE_CHECKING:
    from tests.support.inprocess import Served

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def aliased(
    serve: Callable[..., Served], tmp_path: Path, tiny_clip_dir: Path, aliased_dinov2_dir: Path
) -> Served:
    return serve(make_models_dir(tmp_path / "models", tiny_clip_dir, aliased_dinov2_dir))


@pytest.mark.parametrize("alias", ["acme/tiny-dino", "tiny-dino"])
def test_alias_resolves_to_the_canonical_model(
    aliased: Served, aliased_dinov2_dir: Path, alias: str, parity_set: list[ParityImage]
) -> None:
    image = [parity_set[0].data]
    by_alias = aliased.client.embed(alias, image)
    by_name = aliased.client.embed("dino-aliased", image)
    assert by_alias.model.name == "dino-aliased"
    assert list(by_alias.model.aliases) == ["acme/tiny-dino", "tiny-dino"]
    np.testing.assert_array_equal(by_alias.embeddings, by_name.embeddings)


def test_an_alias_is_not_a_prefix_match(aliased: Served, parity_set: list[ParityImage]) -> None:
    error = aliased.error(pb.EmbedRequest(model="acme/tiny", images=[pb.Image(data=parity_set[0].data)]))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("model_dir", ["tiny_clip_dir", "aliased_dinov2_dir"])
def test_model_info_describes_the_served_graph(
    request: pytest.FixtureRequest, aliased: Served, model_dir: str, parity_set: list[ParityImage]
) -> None:
    directory: Path = request.getfixturevalue(model_dir)
    spec = load_spec(directory / SPEC_FILE)
    info = aliased.call(pb.EmbedRequest(model=spec.name, images=[pb.Image(data=parity_set[0].data)])).model

    assert info.name == spec.name and info.family == spec.family and info.pooling == spec.pooling
    assert info.dim == spec.embedding_dim > 0
    assert info.onnx_sha256 == spec.onnx_sha256 == file_sha256(directory / spec.onnx_file)
    assert info.preprocessing_sha256 == spec.preprocessing.sha256()
    assert info.weights == "random-init"
    assert info.parity_verified is True
    assert info.source == ("tiny-clip" if spec.family == "clip" else "tiny-dinov2")
    assert info.quantization == ""
    listed = aliased.models()[spec.name]
    assert listed.info == info
    assert listed.onnx_bytes == (directory / spec.onnx_file).stat().st_size


def test_two_families_have_different_preprocessing_identities(aliased: Served) -> None:
    infos = [status.info for status in aliased.models().values()]
    assert len({info.preprocessing_sha256 for info in infos}) == 2


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change model.json as raw JSON: the schema would refuse to write these."""
    body = json.loads(path.read_text(encoding="utf-8"))
    change(body)
    path.write_text(json.dumps(body, indent=2), encoding="utf-8")


def _set(*keys_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *keys, value = keys_and_value

    def change(body: dict[str, Any]) -> None:
        for key in keys[:-1]:
            body = body[key]
        body[keys[-1]] = value

    return change


BAD_SPECS = {
    "unknown key": (_set("colour", "blue"), ["field 'colour'", "Extra inputs are not permitted"]),
    "unknown nested key": (_set("preprocessing", "gamma", 2.2), ["field 'preprocessing.gamma'"]),
    "std with 0": (
        _set("preprocessing", "std", [0.27, 0.0, 0.28]),
        ["field 'preprocessing'", "std values must be > 0"],
    ),
    "mean of two values": (_set("preprocessing", "mean", [0.5, 0.5]), ["field 'preprocessing.mean.2'"]),
    "unknown resample": (_set("preprocessing", "resample", "antialias"), ["field 'preprocessing.resample'"]),
    "cls pooling for clip": (_set("pooling", "cls"), ["pooling 'cls' is not valid for family 'clip'"]),
    "name not its folder": (_set("name", "other-name"), ["field 'name'", "differs from its folder name"]),
    "bad sha": (_set("onnx_sha256", "abc"), ["field 'onnx_sha256'"]),
    "string dim": (_set("embedding_dim", "16"), ["field 'embedding_dim'"]),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_invalid_model_json_fails_start_up_naming_file_and_field(
    case: str, tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path
) -> None:
    models = make_models_dir(tmp_path / "models", tiny_clip_dir, tiny_dinov2_dir)
    spec_path = models / load_spec(tiny_clip_dir / SPEC_FILE).name / SPEC_FILE
    change, fragments = BAD_SPECS[case]
    edit_json(spec_path, change)

    with pytest.raises(SpecError) as caught:
        EmbedderServer(Settings(address="127.0.0.1:0", models_dir=models))

    message = str(caught.value)
    assert str(spec_path) in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("aliases_a", "aliases_b", "claimed"),
    [
        (("shared/alias",), ("shared/alias",), "shared/alias"),  # one alias on two models
        (("tiny-clip-b",), (), "tiny-clip-b"),  # an alias that is another model's name
    ],
)
def test_a_name_claimed_twice_fails_start_up(
    aliases_a: tuple[str, ...],
    aliases_b: tuple[str, ...],
    claimed: str,
    tmp_path: Path,
    tiny_clip_dir: Path,
) -> None:
    models = make_models_dir(
        tmp_path / "models", (tiny_clip_dir, "tiny-clip-a"), (tiny_clip_dir, "tiny-clip-b")
    )
    for name, aliases in (("tiny-clip-a", aliases_a), ("tiny-clip-b", aliases_b)):
        spec = load_spec(models / name / SPEC_FILE)
        write_spec(spec.model_copy(update={"aliases": aliases}), models / name / SPEC_FILE)

    with pytest.raises(SpecError) as caught:
        EmbedderServer(Settings(address="127.0.0.1:0", models_dir=models))

    message = str(caught.value)
    assert "field 'aliases'" in message and repr(claimed) in message and SPEC_FILE in message


def test_missing_models_dir_fails_start_up(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        EmbedderServer(Settings(address="127.0.0.1:0", models_dir=tmp_path / "nowhere"))


def test_committed_models_dir_starts_and_lists_unexported_models(
    serve: Callable[..., Served], parity_set: list[ParityImage]
) -> None:
    committed = {p.parent.name: load_spec(p) for p in REPO_MODELS.glob(f"*/{SPEC_FILE}")}
    assert committed, f"no model.json under {REPO_MODELS}"
    served = serve(REPO_MODELS, preload=True)  # preload skips what it cannot load

    listed = served.models()
    assert set(listed) == set(committed)
    assert served.health() == "SERVING"
    unexported = [name for name, spec in committed.items() if spec.onnx_sha256 is None]
    for name in unexported:
        status = listed[name]
        assert status.state == pb.MODEL_STATE_UNAVAILABLE and "not exported" in status.error, status
        assert status.info.dim == committed[name].embedding_dim and not status.info.parity_verified
        assert served.health(name) == "NOT_SERVING"
        alias = (committed[name].aliases or (name,))[0]
        error = served.error(pb.EmbedRequest(model=alias, images=[pb.Image(data=parity_set[0].data)]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "not exported" in error.details()
