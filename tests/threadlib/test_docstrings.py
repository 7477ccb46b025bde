"""Every public module, class, function, method and property of threadlib
has a docstring, threadlib._kernel included (its classes are exported
through threadlib.lowlevel). Public means: no leading underscore on the
name or on any package along the module's path below threadlib._kernel."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import threadlib


def _modules() -> list[types.ModuleType]:
    found = [threadlib]
    for info in pkgutil.walk_packages(threadlib.__path__, "threadlib."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") and p != "_kernel" for p in parts) or parts[0] == "apps":
            continue  # private, or the programs (installed as threadlib.apps), not the library
        found.append(importlib.import_module(info.name))
    return found


def _public_objects(module: types.ModuleType) -> dict[str, object]:
    """The functions and classes the module defines or lists in __all__."""
    names = set(getattr(module, "__all__", ()))
    names.update(n for n, obj in vars(module).items()
                 if not n.startswith("_") and getattr(obj, "__module__", None) == module.__name__)
    return {n: getattr(module, n) for n in sorted(names)
            if inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n))}


def _members(cls: type) -> dict[str, object]:
    """The public methods, properties, class- and staticmethods a class
    defines, or inherits from a private base (public bases are checked on
    their own)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass is not cls and not (klass.__name__.startswith("_") and klass.__module__.startswith("threadlib")):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, property) or inspect.isfunction(attr):
                members[name] = attr
    return members


def test_every_public_name_has_a_docstring():
    missing = []
    modules = _modules()
    assert len(modules) > 25 and any(m.__name__ == "threadlib._kernel.scheduler" for m in modules)
    for module in modules:
        if not (module.__doc__ or "").strip():
            missing.append(module.__name__)
        for name, obj in _public_objects(module).items():
            if getattr(obj, "__module__", module.__name__) != module.__name__:
                continue  # a re-export: checked where it is defined
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for member, attr in _members(obj).items():
                    if not (attr.__doc__ or "").strip():
                        missing.append(f"{module.__name__}.{name}.{member}")
    assert not missing, "no docstring:\n  " + "\n  ".join(missing)
