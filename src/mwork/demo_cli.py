"""``mwork demo``: the paper's findings on the default model, offline, in one command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from mwork.config import add_arguments, from_args, option
from mwork.files import parse_names
from mwork.models.loading import DEFAULT_MODEL

XQUAD_LANGS = ("en", "zh", "es", "de", "ru")
DEFAULT_OUT = "mwork-demo"


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """The options of ``mwork demo``: ``run_demo(out, quick=quick, **overrides())``. The
    language lists stay as typed until :meth:`overrides` reads them, so a bad name is the same
    one-line error (before the first stage) from the command line and from Python."""

    out: str = option(DEFAULT_OUT, "output folder; index.html is written there")
    quick: bool = option(False, "small sizes: about 5 minutes on two CPU cores", switch=True)
    model: str = option(DEFAULT_MODEL, "built-in alias, local folder or hub id")
    langs: str | None = option(None, "languages for detection and deactivation, comma-separated (must include en "
                               "and have built-in texts, or files in --corpus-dir)")
    latin_langs: str | None = option(None, "the lens's wordfreq languages for Latin-script tokens (default: every "
                                     "one wordfreq has; en,fr,es,de,it,pt,nl was mwork's old list)")
    corpus_dir: str | None = option(None, "your own texts: <lang>.txt for detection/training and <lang>.heldout.txt "
                                    "for evaluation, one document per line")
    xquad: bool = option(False, "use XQuAD (articles 0-23 detect, 24-47 evaluate): a local copy under "
                         "$MWORK_DATA/xquad, else google/xquad from the hub (needs network)", switch=True)

    def overrides(self) -> dict[str, Any]:
        """The ``run_demo`` keywords these options change (each language list checked here)."""
        from mwork.demo import DemoSettings

        overrides: dict[str, Any] = {"model": self.model, "corpus_dir": self.corpus_dir, "xquad": self.xquad}
        if self.xquad:
            # XQuAD has no French: deactivate the default's languages that it has
            defaults = DemoSettings.quick() if self.quick else DemoSettings()
            overrides["langs"] = XQUAD_LANGS
            overrides["deact_langs"] = tuple(x for x in defaults.deactivation_langs if x in XQUAD_LANGS)
        if self.latin_langs:
            overrides["lens"] = {"latin_langs": parse_names(self.latin_langs, flag="--latin-langs")}
        if self.langs:
            overrides["langs"] = parse_names(self.langs, flag="--langs")  # each names files: checked before any work
            overrides["deact_langs"] = None  # --langs names the deactivation languages too
        return overrides


def _run(args: argparse.Namespace) -> int:
    from mwork.demo import run_demo

    options = from_args(DemoOptions, args)
    # every setting is checked here, before the first stage (a ValueError: one line, exit 2)
    run_demo(options.out, quick=options.quick, **options.overrides())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run lens, neuron detection, deactivation and enhancement on the default model "
                       "and write one HTML report", description=__doc__)
    add_arguments(p, DemoOptions)
    # the default folder is checked and locked (mwork.cli) like a given one
    p.set_defaults(func=_run, out=DEFAULT_OUT)
