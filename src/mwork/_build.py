"""Build step of mwork's wheel, not used at run time: setuptools' ``build_py`` (pyproject.toml's
``[tool.setuptools.cmdclass]``) that also puts ``mwork-lm-eval.pth`` at the root of the wheel, so
``pip install mwork`` (and ``pip install -e .``) installs it into site-packages and the plain
``lm_eval --model mwork`` works without ``mwork eval --install-lm-eval-plugin``.

The line written is ``mwork.tasks.lm_eval_plugin.pth_line()`` (a lazy, standard-library-only import
hook: neither lm_eval nor torch is imported at Python start-up). setuptools loads this file on its
own, without importing ``mwork`` (torch is not in the build environment), so the plugin module is
loaded from its file too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

_PLUGIN_FILE = Path(__file__).resolve().parent / "tasks" / "lm_eval_plugin.py"


def _plugin():
    """``mwork.tasks.lm_eval_plugin`` loaded from its file (it imports only the standard library)."""
    spec = importlib.util.spec_from_file_location("_mwork_lm_eval_plugin_for_build", _PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_py(_build_py):
    """setuptools' ``build_py``, plus ``mwork-lm-eval.pth`` at the root of site-packages."""

    def run(self) -> None:
        super().run()
        # a wheel: the root of build_lib is the root of the wheel (site-packages); an editable
        # wheel (PEP 660): build_py copies nothing, and setuptools points the install command's
        # install_lib at the root of the wheel it is making
        folder = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        plugin = _plugin()
        path = Path(folder, plugin.PTH_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plugin.pth_line(), encoding="utf-8")
