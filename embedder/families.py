"""What a model family means at serving time: the poolings its image graph may be exported with
and whether it may carry a text tower. Everything else a served model needs (preprocessing,
tokenization rules, graph inputs) is data in its model.json; how to export a family lives in
export/families/<family>.py. Adding a family adds one entry here (docs/adding-a-model.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    poolings: tuple[str, ...]  # the first is the family's default
    text: bool  # whether its checkpoints may carry a text tower


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("clip", ("projected",), text=True),
        Family("dinov2", ("cls", "mean", "cls+mean"), text=False),
        Family("siglip", ("head",), text=True),  # head: the vision tower's attention-pooling head
    )
}
