"""Components from outside omnifuse: a recipe names a user's class by dotted path or entry point.

``connectors: {image: {type: mypkg.connectors.MyConnector, hidden: 64}}`` imports ``mypkg.connectors``
when the recipe is loaded, checks that ``MyConnector`` has the members of the connector contract
(:mod:`omnifuse.components`) and validates the other keys against the class's ``Spec`` (a pydantic
model, usually a subclass of :class:`omnifuse.recipe.Spec`; a class without one takes no options).
An installed package can also give its class a short name through the entry-point group
``omnifuse.components`` (``my_connector = "mypkg.connectors:MyConnector"``), used as ``type:
my_connector``. The builders then call the class with the validated options as keyword arguments
(``MyConnector(in_dim, out_dim, hidden=64)``), so no recipe object enters a module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from omnifuse.components import PROTOCOLS, missing_members
from omnifuse.recipe.schema import Spec

GROUP = "omnifuse.components"
DOCS = "docs/extending.md"


@functools.lru_cache(maxsize=1)
def entry_points() -> dict[str, str]:
    """Installed plugins' short names → ``module:attribute`` (group ``omnifuse.components``)."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP)}


def is_plugin(type_name: object, builtin: frozenset[str]) -> bool:
    """Whether a section's ``type`` names a plugin: a dotted path, or an entry point's name."""
    if not isinstance(type_name, str) or type_name in builtin:
        return False
    return "." in type_name or ":" in type_name or type_name in entry_points()


def _import_target(target: str, shown: str) -> object:
    module_name, sep, attr = target.partition(":") if ":" in target else target.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"type {shown!r} is not a dotted path to a class; write it as package.module.ClassName "
            f"(see {DOCS})"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ValueError(
                f"type {shown!r}: there is no module {module_name!r} to import ({exc.name!r} is not found "
                f"on the Python path); install the package that holds it, or add its folder to PYTHONPATH "
                f"(see {DOCS})"
            ) from None
        raise ValueError(f"type {shown!r}: importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while importing: say so, with its own words
        raise ValueError(
            f"type {shown!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        public = sorted(
            n for n in vars(module) if not n.startswith("_") and isinstance(vars(module)[n], type)
        )
        raise ValueError(
            f"type {shown!r}: module {module_name!r} has no attribute {attr!r}; its classes are "
            f"{', '.join(public) or 'none'} (see {DOCS})"
        ) from None


def load_component(type_name: str, kind: str) -> type:
    """The class a plugin ``type`` names, checked against the ``kind``'s contract; ValueError (one
    paragraph: what is wrong and what to do) otherwise."""
    target = entry_points().get(type_name, type_name)
    shown = type_name if target == type_name else f"{type_name} (entry point {target})"
    obj = _import_target(target, shown)
    protocol = PROTOCOLS[kind]
    if not isinstance(obj, type):
        raise ValueError(
            f"type {shown!r} is a {type(obj).__name__}, not a class; name the {kind} class itself (see {DOCS})"
        )
    missing = missing_members(obj, protocol)
    if missing:
        raise ValueError(
            f"type {shown!r}: {obj.__name__} is not a {kind}: it lacks {', '.join(missing)} of the {kind} "
            f"contract (omnifuse.components.{protocol.__name__}; see {DOCS})"
        )
    spec = getattr(obj, "Spec", None)
    if spec is not None and not (isinstance(spec, type) and issubclass(spec, BaseModel)):
        raise ValueError(
            f"type {shown!r}: {obj.__name__}.Spec must be a pydantic model of its recipe options "
            f"(a subclass of omnifuse.recipe.Spec), got {spec!r}"
        )
    return obj


def _option_errors(shown: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(options)"
        msg = "unknown option" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"type {shown!r}: " + "; ".join(parts)


class PluginSpec(Spec):
    """A recipe section whose ``type`` names a class outside omnifuse. The other keys are the class's
    options, validated against its ``Spec`` and stored with its defaults filled in (so the resolved
    recipe a run directory keeps shows them)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: ClassVar[str]
    type: str

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return data
        type_name = data["type"]
        component = load_component(type_name, cls.kind)
        given = {k: v for k, v in data.items() if k != "type"}
        spec = getattr(component, "Spec", None)
        if spec is None:
            if given:
                raise ValueError(
                    f"type {type_name!r}: {component.__name__} declares no options (no Spec class), but the "
                    f"recipe gives {', '.join(sorted(given))}; remove them or add a Spec to the class"
                )
            return {"type": type_name}
        try:
            options = spec.model_validate(given)
        except ValidationError as err:
            raise ValueError(_option_errors(type_name, err)) from None
        return {"type": type_name, **options.model_dump(mode="json")}

    def component(self) -> type:
        """The class (imported already, when the recipe was loaded)."""
        return load_component(self.type, self.kind)

    def options(self) -> dict[str, Any]:
        """The validated options as the class's keyword arguments (pydantic-typed values, not JSON)."""
        spec = getattr(self.component(), "Spec", None)
        if spec is None:
            return {}
        validated = spec.model_validate(self.model_extra or {})
        return {name: getattr(validated, name) for name in type(validated).model_fields}


class EncoderPluginSpec(PluginSpec):
    kind: ClassVar[str] = "encoder"

    @property
    def reads(self) -> str:
        """Which sample part the encoder reads: its class's ``modality`` (default image)."""
        return str(getattr(self.component(), "modality", "image"))


class ConnectorPluginSpec(PluginSpec):
    kind: ClassVar[str] = "connector"


class FusionPluginSpec(PluginSpec):
    kind: ClassVar[str] = "fusion"
