"""Readers, one module per source format (and the synthetic generator); each registers its
catalog entries and path loaders on import."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
