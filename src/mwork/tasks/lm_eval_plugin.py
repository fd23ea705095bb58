"""Making ``lm_eval --model mwork`` work with the installed lm-eval.

lm-eval 0.4.13 finds models only in its registry (``lm_eval.api.registry.model_registry``); it
has no plugin discovery (no entry-point group, no option that imports a module), so a model
defined outside lm-eval is known only once its module is imported. Two ways in:

* ``mwork-lm-eval.pth`` in the environment's site-packages: mwork's wheel ships it (``mwork._build``
  writes ``pth_line()`` at the wheel's root), so ``pip install mwork`` and ``pip install -e .`` put
  it there; ``install_lm_eval_plugin()`` (``mwork eval --install-lm-eval-plugin``) writes it where
  mwork was installed otherwise (or into another ``--site-dir``). Python runs its one line
  at start-up: it adds an import hook (standard library only, nothing imported) that, when
  ``lm_eval.models`` is imported, registers ``mwork`` as a *lazy* entry of lm-eval's registry
  (``"mwork.tasks.lm_eval_backend:MworkLM"``, lm-eval's own placeholder form), so mwork and torch
  load only when ``--model mwork`` is asked for. Then the plain ``lm_eval`` command knows it.
* ``mwork-lm-eval ARGS`` (a console script of mwork): registers the backend and runs lm-eval's
  command line with ARGS, for environments where the ``.pth`` file is not installed.

From Python, ``import mwork.tasks.lm_eval_backend`` registers it (or pass an ``MworkLM`` object
to ``lm_eval.simple_evaluate``).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PTH_NAME = "mwork-lm-eval.pth"
BACKEND = "mwork.tasks.lm_eval_backend:MworkLM"

HOOK_SOURCE = '''
import sys


class _MworkLmEvalHook:
    """Register mwork's lm-eval backend (--model mwork) lazily when lm_eval.models is imported."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "lm_eval.models":
            return None
        import importlib.util

        if cls in sys.meta_path:
            sys.meta_path.remove(cls)  # once per process; and no recursion into this finder
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            from lm_eval.api.registry import model_registry

            if "mwork" not in model_registry:
                model_registry.register("mwork", target="%s")

        spec.loader.exec_module = exec_module
        return spec


if "lm_eval.models" not in sys.modules:
    sys.meta_path.insert(0, _MworkLmEvalHook)
''' % BACKEND


def pth_line() -> str:
    """The one line of ``mwork-lm-eval.pth`` (a ``.pth`` line that starts with ``import`` is run)."""
    return f"import sys; exec({HOOK_SOURCE!r}, {{'__name__': 'mwork_lm_eval_hook'}})\n"


def default_site_dir() -> Path:
    """This environment's site-packages (``sysconfig``'s purelib)."""
    return Path(sysconfig.get_paths()["purelib"])


def install_lm_eval_plugin(site_dir: str | Path | None = None) -> Path:
    """Write ``mwork-lm-eval.pth`` into ``site_dir`` (default: this environment's site-packages),
    so that ``lm_eval --model mwork`` works; return its path. Safe to run again."""
    from mwork.files import write_text

    folder = Path(site_dir) if site_dir is not None else default_site_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"no site-packages folder at {folder}: pass the folder of the environment to use")
    path = folder / PTH_NAME
    write_text(path, pth_line())
    return path


def register() -> None:
    """Register the backend in this process (imports it)."""
    import mwork.tasks.lm_eval_backend  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """``mwork-lm-eval ARGS``: lm-eval's command line with ``--model mwork`` known."""
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
