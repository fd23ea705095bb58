"""Model loading and architecture adapters."""

from mwork.models.adapters import KINDS, Adapter, UnsupportedModelError, get_adapter, supported_model_types
from mwork.models import families as _families  # noqa: F401,I001  (registers mwork's own families: here, above the adapters)
from mwork.models.loading import BUILTIN_ALIASES, DEFAULT_MODEL, cache_dir, load_model
from mwork.models.tiny import TINY_ALIASES

__all__ = [
    "KINDS", "Adapter", "UnsupportedModelError", "get_adapter", "supported_model_types",
    "BUILTIN_ALIASES", "DEFAULT_MODEL", "cache_dir", "load_model", "TINY_ALIASES",
]
