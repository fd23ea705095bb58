"""``mwork convert``: NeuronSets to and from LAPE neuron files and the PLND reference code's
neuron dictionaries; a thin shim over ``mwork.neurons.convert``, its options ``ConvertConfig``'s
fields (the files to convert are the positional ``inputs``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwork.config import add_arguments, from_args, option
from mwork.files import parse_names
from mwork.models.loading import DEFAULT_MODEL

FORMATS = ("lape", "reference")
WAYS = ("to", "from_")  # one of them, on the command line a required choice


def _langs(text: str) -> list[str]:
    """The codes of --langs, each checked (it names a file LANG.safetensors), before any work."""
    return list(parse_names(text, flag="--langs"))


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """One conversion: ``to`` a format (NeuronSets -> ``out``) or ``from_`` one (files ->
    ``out_dir/LANG.safetensors``, checked against ``model``'s shape, loaded on the CPU)."""

    to: str | None = option(None, "export NeuronSets to this format", choices=FORMATS)
    from_: str | None = option(None, "import files of this format", flag="--from", choices=FORMATS)
    inputs: tuple[str, ...] = option((), "--to: NeuronSet files; --from: the file(s) to import", positional=True,
                                     nargs="+", metavar="FILE")
    out: str | None = option(None, "--to: the file to write (its shape and languages go to OUT.json)",
                             record=False)
    ffn_only: bool = option(False, "--to lape: export the FFN neurons of sets that also hold attention neurons")
    model: str = option(DEFAULT_MODEL, "--from: the model the neurons belong to (its shape is checked)")
    langs: str | None = option(None, "--from: the languages, comma-separated, in the file's order")
    out_dir: str | None = option(None, "--from: folder for LANG.safetensors", record=False)

    def check(self) -> None:
        """The options of the other direction are errors, not ignored; bad codes fail before the model loads."""
        if (self.to is None) == (self.from_ is None):
            raise ValueError("give one of --to FORMAT (export) and --from FORMAT (import)")
        if self.from_ is not None:
            if self.out or self.ffn_only:
                raise ValueError("--out and --ffn-only are for exporting (--to); importing (--from) writes "
                                 "LANG.safetensors to --out-dir DIR")
            if not self.langs or not self.out_dir:
                raise ValueError("--from needs --langs LANG[,LANG...] (the file's languages, in order) and --out-dir DIR")
            _langs(self.langs)
        elif self.langs or self.out_dir:
            raise ValueError("--langs and --out-dir are for --from; exporting (--to) takes --out FILE")

    def run(self, model: Any = None, tokenizer: Any = None) -> Any:
        """Convert; the written files (``WrittenResult``). Importing loads ``model`` when none is given."""
        from mwork.jobs import WrittenResult
        from mwork.neurons import convert

        self.check()
        direction, fmt = ("to", self.to) if self.to else ("from", self.from_)
        if direction == "from" and model is None:
            from mwork.models.loading import load_model

            model, _ = load_model(self.model, device="cpu")
        if direction == "to":
            paths = convert.export_files(fmt, self.inputs, self.out, ffn_only=self.ffn_only)
        else:
            paths = convert.import_files(fmt, self.inputs, model, _langs(self.langs or ""), self.out_dir,
                                         model_id=self.model)
        folder = paths[0].parent if direction == "to" and paths else Path(self.out_dir or ".")
        return WrittenResult(folder, {str(p): p for p in paths}, data=paths)


def _run(args: argparse.Namespace) -> int:
    for p in from_args(ConvertConfig, args).run().data:
        print(p)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="NeuronSets to/from LAPE .pth files and the PLND reference code's neuron dictionaries",
        description="Export: mwork convert --to lape --out X.pth SET.safetensors [SET ...] (one language per set, in "
        "order; FFN neurons only). Import: mwork convert --from lape X.pth --model M --langs en,fr --out-dir DIR "
        "(the file's languages in order). The same with 'reference' for the five-line dictionary files of the "
        "PLND paper's code (one language per file). Files are read without unpickling or evaluating anything and "
        "checked against the model's shape.")
    others = [name for name in ConvertConfig.__dataclass_fields__ if name not in WAYS]
    add_arguments(p.add_mutually_exclusive_group(required=True), ConvertConfig, exclude=others)
    add_arguments(p, ConvertConfig, exclude=WAYS)
    p.set_defaults(func=_run, output_kinds={"out": "file"})
