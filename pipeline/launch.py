"""A GStreamer pipeline description that no outside value can rewrite.

`Launch.template` is what `Gst.parse_launch` gets: our own elements and constants only, with the
elements that need a value from a URI or a path named. The values themselves (a file location, a
host, a device, credentials) are set afterwards as properties of those named elements, so a value
such as `127.0.0.1 filesrc location=secret ! tcpclientsink ...` stays one odd host name instead
of becoming three elements. `shown()` renders the same pipeline with the values in place, for
logs, `describe_*` and docs, with secrets masked.

No GStreamer import here: describing a pipeline works without `gi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.uri import REDACTED


@dataclass(frozen=True)
class Prop:
    """One value for one named element."""

    element: str
    name: str
    value: str | int
    quote: bool = True  # how `shown()` writes a text value (numbers are never quoted)
    secret: bool = False  # masked in `shown()`


class _Bin(Protocol):
    def get_by_name(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Launch:
    """A launch template plus the property values for its named elements."""

    template: str
    props: tuple[Prop, ...] = ()

    def shown(self) -> str:
        """The pipeline as gst-launch would read it with the values written in (secrets masked):
        `filesrc name=src` becomes `filesrc location="rec.mp4"`."""
        text = self.template
        for element in dict.fromkeys(p.element for p in self.props):
            values = " ".join(_render(p) for p in self.props if p.element == element)
            text = text.replace(f" name={element}", f" {values}", 1)
        return text

    def apply(self, pipeline: _Bin) -> None:
        """Set every value on its element of a pipeline parsed from `template`."""
        for prop in self.props:
            element = pipeline.get_by_name(prop.element)
            if element is None:
                raise ValueError(f"launch template has no element named {prop.element!r}")
            element.set_property(prop.name, prop.value)


def _render(prop: Prop) -> str:
    value = REDACTED if prop.secret else str(prop.value)
    if not prop.quote or isinstance(prop.value, int):
        return f"{prop.name}={value}"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{prop.name}="{escaped}"'
