"""The model repository: `models/*/model.json`, validated strictly at start-up.

A model.json that does not validate, or two models claiming one name, is a start-up error naming
the file and field: configuration mistakes fail loudly. A model whose graph is missing (committed
but not exported yet) is listed as unavailable with the reason; its hash is checked when it loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFound, shown
from .spec import SPEC_FILE, ExternalData, ModelSpec, SpecError, load_spec

IMAGE, TEXT = "image", "text"  # a model's graphs: every model has an image tower, CLIP a text one


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    directory: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.spec.onnx_file

    def graph_path(self, modality: str) -> Path:
        if modality == TEXT and self.spec.text is not None:
            return self.directory / self.spec.text.onnx_file
        return self.onnx_path

    def graph_sha256(self, modality: str) -> str | None:
        return self.spec.text.onnx_sha256 if modality == TEXT and self.spec.text else self.spec.onnx_sha256

    def graph_data(self, modality: str) -> ExternalData | None:
        """The graph's external-data file (its weights), for a graph too big to hold them inline."""
        return self.spec.text.onnx_data if modality == TEXT and self.spec.text else self.spec.onnx_data

    def unavailable_reason(self, modality: str = IMAGE) -> str | None:
        """Why this graph cannot be loaded at all, seen without reading it."""
        if modality == TEXT and self.spec.text is None:
            return f"model {self.name!r} has no text tower"
        if self.spec.onnx_sha256 is None:
            return (
                f"not exported yet: run `python -m export {self.spec.family} SOURCE --out {self.directory}`"
            )
        if not self.graph_path(modality).is_file():
            return f"graph file missing: {self.graph_path(modality)}"
        data = self.graph_data(modality)
        if data is not None and not (self.directory / data.file).is_file():
            return f"graph data file missing: {self.directory / data.file}"
        text = self.spec.text
        if modality == TEXT and text is not None and not (self.directory / text.tokenizer_file).is_file():
            return f"tokenizer file missing: {self.directory / text.tokenizer_file}"
        return None


class Repository:
    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self._names: dict[str, str] = {}
        for entry in entries:
            for key in (entry.name, *entry.spec.aliases):
                if key in self._names:
                    raise SpecError(
                        f"{entry.directory / SPEC_FILE}: field 'aliases': {key!r} is already used by "
                        f"model {self._names[key]!r}"
                    )
                self._names[key] = entry.name

    @classmethod
    def scan(cls, models_dir: Path) -> Repository:
        if not models_dir.is_dir():
            raise SpecError(f"{models_dir}: models directory does not exist")
        entries = []
        for spec_path in sorted(models_dir.glob(f"*/{SPEC_FILE}")):
            spec = load_spec(spec_path)
            if spec.name != spec_path.parent.name:
                raise SpecError(f"{spec_path}: field 'name': {spec.name!r} differs from its folder name")
            entries.append(ModelEntry(spec, spec_path.parent))
        return cls(entries)

    def resolve(self, name_or_alias: str) -> ModelEntry:
        try:
            return self.entries[self._names[name_or_alias]]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise ModelNotFound(f"unknown model {shown(name_or_alias)}; models: {known}") from None
