"""The model repository: `models/*/model.json`, validated strictly at start-up.

A model.json that does not validate, or two models claiming one name, is a start-up error naming
the file and field: configuration mistakes fail loudly. A model whose graph is missing (committed
but not exported yet) is listed as unavailable with the reason; its hash is checked when it loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFound, shown
from .spec import SPEC_FILE, ModelSpec, SpecError, load_spec


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

    def unavailable_reason(self) -> str | None:
        """Why this model cannot be loaded at all, seen without reading the graph."""
        if self.spec.onnx_sha256 is None:
            return (
                f"not exported yet: run `python -m export {self.spec.family} SOURCE --out {self.directory}`"
            )
        if not self.onnx_path.is_file():
            return f"graph file missing: {self.onnx_path}"
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
