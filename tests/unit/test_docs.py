"""The configuration reference names every setting the models accept."""

import re
import typing

from pydantic import BaseModel

from bakery.config import Settings
from tests.helpers import PROJECT


def field_names(model: type[BaseModel], seen=None) -> set[str]:
    seen = seen if seen is not None else set()
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for inner in _models_in(field.annotation):
            if inner not in seen:
                seen.add(inner)
                names |= field_names(inner, seen)
    return names


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_every_setting_is_documented():
    text = (PROJECT / "docs/configuration.md").read_text()
    documented = set(re.findall(r"`(?:[a-z_\[\]]+\.)*([a-z_0-9]+)`", text))
    missing = sorted(field_names(Settings) - documented)
    assert missing == []
