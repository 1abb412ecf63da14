"""Every architecture `--random-init` can build without a download, by name: the union of the
registered families' recipes (each family module writes out its hub checkpoints' configs and
processor configs, plus one tiny architecture for tests). Weights are seeded and random; every
model built from here is labelled random-init, not pretrained."""

from __future__ import annotations

from .families import FAMILIES, Architecture


def _gather() -> dict[str, Architecture]:
    """One table; a name two families both claim is an error, not a silent override."""
    table: dict[str, Architecture] = {}
    for family in FAMILIES.values():
        for name, arch in family.architectures.items():
            if name in table:
                raise ValueError(
                    f"architecture {name!r} is registered by {table[name].family} and {family.name}"
                )
            if arch.family != family.name:
                raise ValueError(f"architecture {name!r} of family {family.name} says {arch.family}")
            table[name] = arch
    return table


ARCHITECTURES: dict[str, Architecture] = _gather()


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise SystemExit(
            f"--random-init knows no architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
