"""mwork: how large language models handle languages other than English, and how to change it."""

from mwork.models import DEFAULT_MODEL, get_adapter, load_model

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "get_adapter", "load_model", "__version__"]
