"""The family registry: every registered family (export/families/__init__.py) is tested here by
being registered, so a new family needs no new test to be held to the same bar
(docs/adding-a-model.md). Also: the export package's imports point one way, and generic modules
name no family.

- the export registry and the serving one (embedder/families.py) list the same families, with the
  same text-tower flag;
- a family owns its architectures, has one tiny test architecture, and its processors are ones the
  server reproduces;
- its random-init recipe builds a checkpoint that its `load` reads back, and the module it exports
  computes its PyTorch reference, for every pooling (and the text tower likewise, with the
  tokenizer rules the server will follow);
- its tiny architecture exports through the real CLI and passes the gate.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from embedder.families import FAMILIES as SERVED
from embedder.spec import TextTower, load_spec
from embedder.text import TextTokenizer, collate, pad
from export.architectures import ARCHITECTURES
from export.criteria import TOLERANCE
from export.families import FAMILIES, Family, TextRules, save_random_init
from export.families.clip import Clip, ClipText
from export.parity_texts import parity_texts
from export.spec_writer import preprocessing_from_processor
from export.text import export_text, hf_encode, run_text_gate
from tests.conftest import TINY_SEED, export_or_fail

EXPORT = Path(__file__).parents[2] / "export"
NAMES = sorted(FAMILIES)
CASES = [(name, pooling) for name in NAMES for pooling in FAMILIES[name].poolings]
TEXTS = ["a photo of a cat", "", "A Dog ON the BEACH, at noon!", "x " * 200]


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_export_and_serving_registries_list_the_same_families() -> None:
    assert sorted(SERVED) == NAMES
    for name in NAMES:
        assert FAMILIES[name].name == name
        assert (FAMILIES[name].text is not None) == SERVED[name].text, name


def test_architecture_names_are_unique_across_families() -> None:
    """export/architectures.py refuses a name two families claim; the union loses none."""
    assert len(ARCHITECTURES) == sum(len(family.architectures) for family in FAMILIES.values())


@pytest.mark.parametrize("name", NAMES)
def test_family_owns_its_architectures_and_has_one_test_architecture(name: str) -> None:
    family = FAMILIES[name]
    tiny = family.test_architecture  # raises unless exactly one is test-only
    assert not family.architectures[tiny].pretrained
    for arch_name, arch in family.architectures.items():
        assert ARCHITECTURES[arch_name] is arch and arch.family == name, arch_name
        assert arch.processor["image_processor_type"] == family.processor_class.__name__, arch_name
        # spec_writer refuses a processor the server cannot reproduce bit for bit
        preprocessing_from_processor(family.random_processor(arch))
        for pooling in family.poolings:
            assert family.architecture_dim(arch, pooling) > 0, (arch_name, pooling)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> its tiny architecture saved by its random-init recipe (as `--random-init` does)."""
    root = tmp_path_factory.mktemp("family-checkpoints")
    saved = {}
    for name in NAMES:
        family = FAMILIES[name]
        saved[name] = root / name
        save_random_init(family.architectures[family.test_architecture], TINY_SEED, saved[name])
    return saved


@pytest.mark.parametrize(("name", "pooling"), CASES)
def test_exportable_image_module_computes_the_reference(
    name: str, pooling: str, checkpoints: dict[str, Path]
) -> None:
    """What is exported is what the gate compares against, before ONNX is involved: for the served
    input size, the module's vectors equal `Family.image_features` within the gate's tolerance."""
    family: Family = FAMILIES[name]
    loaded = family.load(str(checkpoints[name]), pooling)
    assert loaded.family is family and loaded.pooling == pooling
    height, width = preprocessing_from_processor(loaded.processor).input_size()
    pixels = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = loaded.reference(pixels).numpy()
        exported = loaded.exportable(height, width)(pixels).numpy()
    assert reference.shape == exported.shape == (3, loaded.embedding_dim)
    assert np.abs(unit(reference) - unit(exported)).max() <= TOLERANCE


@pytest.mark.parametrize("name", [name for name in NAMES if FAMILIES[name].text is not None])
def test_text_tower_hooks_agree_with_the_servers_rules(name: str, checkpoints: dict[str, Path]) -> None:
    """The rules a family writes into model.json make the server's tokenizer (embedder/text.py)
    give transformers' ids, and the exported text module computes the family's text reference."""
    family = FAMILIES[name]
    hooks = family.text
    assert hooks is not None
    source = str(checkpoints[name])
    loaded = family.load(source, family.poolings[0])
    tokenizer = hooks.tokenizer(source)
    rules = hooks.rules(tokenizer, loaded.model, source)
    tower = TextTower(
        onnx_file="text.onnx",
        onnx_sha256="0" * 64,
        tokenizer_file="tokenizer.json",
        tokenizer_sha256="0" * 64,
        **rules.fields(),
    )
    # TextTokenizer checks at load that the file frames a text as the rules say
    ours = TextTokenizer(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), tower)
    rows = ours.encode(TEXTS)
    ids, mask = pad(rows, tower)
    theirs = hf_encode(tokenizer, TEXTS, tower, return_tensors="np")
    assert np.array_equal(ids, theirs["input_ids"]) and np.array_equal(mask, theirs["attention_mask"])
    feeds = {key: torch.from_numpy(value) for key, value in collate(rows, tower).items()}
    assert list(feeds) == list(rules.input_names)
    with torch.no_grad():
        reference = hooks.features(loaded.model, feeds).numpy()
        exported = hooks.module(loaded.model).eval()(*feeds.values()).numpy()
    assert reference.shape == exported.shape == (len(TEXTS), loaded.embedding_dim)
    assert np.abs(unit(reference) - unit(exported)).max() <= TOLERANCE


class InputIdsOnly(torch.nn.Module):
    """CLIP's text features from `input_ids` alone: CLIP pools at the end-of-text token and its
    attention is causal, so padding after that token changes nothing without a mask."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids)


class FixedLengthText(ClipText):
    """CLIP's tower under the other rules the contract allows: Python lowercasing, padding to
    max_length, the graph fed `input_ids` only (as a SigLIP-like family would declare)."""

    def module(self, model: Any) -> torch.nn.Module:
        return InputIdsOnly(model)

    def features(self, model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        assert list(inputs) == ["input_ids"]  # the reference sees what the graph sees
        return super().features(model, inputs)

    def rules(self, tokenizer: Any, model: Any, source: str) -> TextRules:
        clip = super().rules(tokenizer, model, source)
        return TextRules(
            max_length=clip.max_length,
            pad_id=clip.pad_id,
            start_of_text_id=clip.start_of_text_id,
            end_of_text_id=clip.end_of_text_id,
            lowercase=True,
            padding="max_length",
            input_names=("input_ids",),
        )


class FixedLengthClip(Clip):
    text = FixedLengthText()


def test_text_export_and_gate_follow_the_rules_as_data(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """The generic text export and gate (export/text.py) under rules CLIP does not use: the graph
    takes the inputs the rules name, every row is padded to max_length, and the gate passes with
    ids equal to transformers' under the same rules and vectors within 1e-6 of PyTorch's."""
    loaded = FixedLengthClip().load(str(checkpoints["clip"]), "projected")
    tower = export_text(loaded, tmp_path, opset=17)
    assert (tower.lowercase, tower.padding, tower.input_names) == (True, "max_length", ("input_ids",))
    session = ort.InferenceSession(str(tmp_path / tower.onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    texts = parity_texts()
    report = run_text_gate(tmp_path, tower, loaded, texts, TOLERANCE)
    assert report.verified, report.table()
    assert report.batch_shape == (len(texts), tower.max_length) and report.tokens_identical
    assert max(r.normalized_max_abs for r in report.texts) <= TOLERANCE
    assert report.reference.endswith("CLIPModel.get_text_features")


@pytest.fixture(scope="module", params=NAMES)
def tiny_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(family, its tiny architecture exported through the CLI). The session's export of it when
    tests/conftest.py has one (`tiny_<family>_dir`, shared with other tests), else its own."""
    name: str = request.param
    try:
        return name, request.getfixturevalue(f"tiny_{name}_dir")
    except pytest.FixtureLookupError:
        family = FAMILIES[name]
        out = tmp_path_factory.mktemp(f"registry-{name}") / family.test_architecture
        args = ("--random-init", "--seed", str(TINY_SEED), "--no-huge")
        return name, export_or_fail(name, family.test_architecture, out, *args).directory


def test_registered_family_exports_through_the_cli_and_passes_the_gate(tiny_export: tuple[str, Path]) -> None:
    name, directory = tiny_export
    family = FAMILIES[name]
    spec = load_spec(directory / "model.json")
    assert spec.family == name and spec.pooling == family.poolings[0] and spec.verified
    assert spec.provenance is not None and spec.provenance.source == family.test_architecture
    assert (spec.text is not None) == (family.text is not None)
    if spec.text is not None:
        assert spec.text.verified and (directory / spec.text.onnx_file).is_file()


# --- the package's shape ---------------------------------------------------------------------------


def export_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the export package."""
    found = {}
    for path in sorted(EXPORT.rglob("*.py")):
        parts = path.relative_to(EXPORT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(module: str, path: Path, node: ast.AST) -> set[str]:
    """The export modules an import statement names (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "export"}


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module-level imports between export modules, and every import found inside a function."""
    modules = export_modules()
    graph: dict[str, set[str]] = {}
    nested: list[str] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = set()
        for statement in tree.body:
            graph[module] |= imported_modules(module, path, statement) & set(modules)
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    nested.append(f"{module}.{function.name}: {ast.unparse(node)}")
    return graph, nested


def test_export_imports_have_no_cycle_and_none_is_hidden_in_a_function() -> None:
    graph, nested = import_graph()
    assert "export.parity" in graph and "export.quantize" in graph  # the scan sees the package
    assert nested == []
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module] - {module}):
            if state.get(target) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*trail, module, target])}")
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_generic_modules_name_no_family() -> None:
    """Outside export/families/, no module imports a family's module or the transformers classes a
    family module uses: what differs per family goes through the `Family` hooks."""
    modules = export_modules()
    family_modules = {f"export.families.{name}" for name in NAMES}
    family_classes: set[str] = set()
    generic: dict[str, Any] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        from_transformers = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "transformers"
            for alias in node.names
        }
        if module in family_modules:
            family_classes |= from_transformers
        elif not module.startswith("export.families"):
            imported = set().union(*(imported_modules(module, path, n) for n in ast.walk(tree)))
            generic[module] = (imported, from_transformers)
    assert family_classes  # the scan sees the family modules' imports
    for module, (imported, from_transformers) in generic.items():
        assert not imported & family_modules, module
        assert not from_transformers & family_classes - {"PreTrainedModel"}, module
