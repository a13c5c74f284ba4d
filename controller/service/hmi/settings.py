"""What `povd serve` tells the HMI: the idle logout and where the shipped recipes are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.service.hmi.sessions import DEFAULT_IDLE_LOGOUT_S

# The recipes shipped beside the package (a source checkout or an editable install); a start
# can also upload a recipe file, so a line PC without them loses only the pick list.
SHIPPED_RECIPES = Path(__file__).resolve().parents[3] / "recipes"
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"


@dataclass(frozen=True)
class HmiSettings:
    idle_logout_s: float = DEFAULT_IDLE_LOGOUT_S
    recipes_dir: Path | None = field(
        default_factory=lambda: SHIPPED_RECIPES if SHIPPED_RECIPES.is_dir() else None)
