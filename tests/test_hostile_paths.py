"""Hostile names and hostile disks (the "second hostile round" issue), met as a user meets them:
``mwork`` run in-process (``mwork.cli.main``) or as a subprocess on the tiny random models.

* a language code (or any name that becomes a file name) is checked by ONE rule,
  ``mwork.files.check_name``, before any work; every output file built from a name goes through
  ``mwork.files.child_path`` and stays inside its output folder (cases of the issue, a property
  test of the rule, and every command that writes files run with a hostile code);
* an explicit output never replaces an input of the same command, a file of another kind or the
  sidecar of a unit set, and a page goes only to a ``.html`` name or a folder
  (``mwork.files.check_output_file``);
* a read-only output folder and a full disk are one line naming the file, not a traceback, and
  earlier outputs stay intact. Tests run as root here, where permission bits do not stop
  anything: a read-only folder is simulated by ``os.access`` answering from the mode bits as for
  an ordinary user (so the test checks the same thing as root and not), and failing writes by
  making them raise (or by ``ulimit -f`` in a subprocess);
* outputs get the usual permissions (0o666 less the umask), safetensors included, and no
  ``.NAME.mwork-lock`` is left after a run.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mwork import files
from mwork.cli import main
from mwork.files import OutputError, check_name, child_path, output_lock, parse_names
from mwork.neurons.neuronset import NeuronSet

M = "tiny-random-llama"
TEST_DATA = Path(__file__).resolve().parent / "data"


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def material(tiny_models, tmp_path_factory):
    """Two NeuronSets of the tiny llama (zh, en), the LAPE file of both (pth/good.pth, written by
    ``mwork convert --to lape``), a reference dictionary file of zh and small text files."""
    model, _ = tiny_models.shared(M)
    root = tmp_path_factory.mktemp("material")
    for seed, lang in enumerate(("zh", "en")):
        gen = torch.Generator().manual_seed(seed)
        ns = NeuronSet.empty_for(model, {"language": lang, "name": lang, "model_id": M})
        ns.masks["ffn"] = torch.rand(ns.masks["ffn"].shape, generator=gen) < 0.1
        ns.save(root / "sets" / f"{lang}.safetensors")
    assert main(["convert", "--to", "lape", "--out", str(root / "pth" / "good.pth"),
                 str(root / "sets" / "zh.safetensors"), str(root / "sets" / "en.safetensors")]) == 0
    assert main(["convert", "--to", "reference", "--out", str(root / "ref" / "zh.txt"),
                 str(root / "sets" / "zh.safetensors")]) == 0
    (root / "c").mkdir()
    (root / "c" / "en.txt").write_text("The quick brown fox jumps over the lazy dog.\nModels read text.\n")
    (root / "c" / "zh.txt").write_text("敏捷的棕色狐狸跳过了懒狗。\n语言模型可以阅读多种语言。\n")
    return root


@pytest.fixture
def work(material, tmp_path, monkeypatch, capsys):
    """A fresh copy of the material as the current folder."""
    for name in ("sets", "pth", "ref", "c"):
        shutil.copytree(material / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    return tmp_path


def run(capsys, *argv) -> tuple[int, str]:
    """``mwork ARGV`` in-process: its exit code and stderr (which must hold no traceback)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.err


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def no_locks(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".mwork-lock")]


# ---- 1: a language code never becomes a path outside the output folder ------------------------------

RULE = "letters, digits, '_' and '-'"


def test_lape_import_with_a_climbing_code_writes_nothing_outside(work, capsys):
    before = tree(work)
    code, err = run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", "../../TRAVLAPE,zh",
                    "--out-dir", "conv/trav")
    assert code == 2
    assert err.startswith("mwork convert: error: --langs: language code '../../TRAVLAPE' is not valid: it contains '/'")
    assert RULE in err and err.count("\n") == 1
    assert tree(work) == before and not list(work.parent.rglob("TRAVLAPE*"))
    no_locks(work)


def test_lape_import_with_an_absolute_code_writes_nothing_there(work, capsys):
    target = work / "abs" / "ABS"
    code, err = run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", f"{target},zh",
                    "--out-dir", "conv/trav")
    assert code == 2 and f"language code '{target}' is not valid: it is an absolute path" in err
    assert not (work / "abs").exists() and not list(work.rglob("ABS*"))


def test_reference_import_with_a_climbing_code_writes_nothing_outside(work, capsys):
    before = tree(work)
    code, err = run(capsys, "convert", "--from", "reference", "ref/zh.txt", "--model", M, "--langs", "../REFTRAV",
                    "--out-dir", "conv/ref")
    assert code == 2 and "--langs: language code '../REFTRAV' is not valid" in err
    assert tree(work) == before and not list(work.parent.rglob("REFTRAV*"))


def test_demo_with_a_climbing_code_is_refused_before_any_stage(work, capsys):
    corpus = work / "dc" / "a" / "b"
    corpus.mkdir(parents=True)
    for lang in ("en", "zh"):
        (corpus / f"{lang}.txt").write_text("some text\n" * 4)
        (corpus / f"{lang}.heldout.txt").write_text("more text\n" * 4)
    before = tree(work)
    code, err = run(capsys, "demo", "--quick", "--model", M, "--langs", "en,../../../DEMOESC", "--corpus-dir",
                    "dc/a/b", "--out", "demo1")
    assert code == 2 and "mwork demo: error: --langs: language code '../../../DEMOESC' is not valid" in err
    assert tree(work) == before and not list(work.parent.parent.rglob("DEMOESC*"))
    # from Python the settings say the same (the one rule, in DemoSettings' checks)
    from mwork.demo_settings import DemoSettings

    with pytest.raises(ValueError, match=r"langs: language code '\.\./x' is not valid"):
        DemoSettings.quick(langs=("en", "../x"), corpus_dir=str(corpus))


def test_names_with_nul_markup_or_unicode_are_refused_naming_the_value(work, capsys):
    for bad, why in (("zh\x00", "NUL"), ("<b>zh", "contains '<>'"), ("中文", "contains '中文'"), ("..", "folder"),
                     ("a\\b", "contains '\\\\'"), ("", None), ("-rf", "starts with")):
        code, err = run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, f"--langs={bad},zh",
                        "--out-dir", "conv/x")
        assert code == 2, bad
        if bad:
            assert f"language code {bad!r} is not valid" in err and why in err, err
        else:  # an empty part of the list is skipped: one language for two in the file
            assert "holds the neurons of 2 languages" in err
    assert not (work / "conv" / "x").exists() or not any((work / "conv" / "x").iterdir())


# ---- the shared rule, as a property ------------------------------------------------------------------

_PIECES = ["a", "Z", "9", "_", "-", ".", "..", "/", "\\", "\x00", "<", ">", "&", '"', "'", " ", ":", "~", "*", "?",
           "é", "中", "ß", "\u202e", "\u0301", "／", "\uff0e", "\n", "\t", "%2e", "C:", "$HOME", "en", "zh-Hans"]


def _random_names(n: int, seed: int = 20240611) -> list[str]:
    rng = random.Random(seed)
    names = []
    for _ in range(n):
        name = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.15:
            name = "/" + name  # absolute
        names.append(name)
    return names + ["", ".", "..", "/", "/etc/passwd", "../../x", "..\\..\\x", "C:\\x", "x/../../y", "a" * 101,
                    "en", "zh-Hans", "zho_Hans", "EN", "0", "x" * 100]


def test_the_path_rule_holds_for_random_names(tmp_path):
    folder = tmp_path / "out"
    valid = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
    accepted = 0
    for name in _random_names(3000):
        if valid.fullmatch(name):
            assert check_name(name) == name
            for suffix in ("", ".safetensors", ".heldout.txt"):
                path = child_path(folder, name, suffix)
                assert path.parent == folder and os.path.dirname(os.path.abspath(path)) == str(folder)
                assert path.name == name + suffix
            accepted += 1
            continue
        with pytest.raises(ValueError) as caught:
            check_name(name, "language code", "--langs")
        message = str(caught.value)
        assert message.startswith("--langs: language code ") and "is not valid" in message
        assert repr(name)[:50] in message and "\n" not in message
        with pytest.raises(ValueError):
            child_path(folder, name, ".safetensors")
    assert 10 < accepted < 3000  # both sides of the rule were exercised
    assert not folder.exists()  # checking builds no folder


def test_parse_names_checks_every_part():
    assert parse_names(" en, zh-Hans ,,fr") == ("en", "zh-Hans", "fr")
    assert parse_names(["en", "zh"]) == ("en", "zh")
    with pytest.raises(ValueError, match=r"^--task-langs: language code '\.\./x'"):
        parse_names("en,../x", flag="--task-langs")
    with pytest.raises(ValueError, match="it is empty"):
        parse_names(["en", ""])
    with pytest.raises(ValueError, match="not text"):
        parse_names(["en", 3])


# ---- every command that writes files, with a hostile code --------------------------------------------

H = "../../ESC"


def _commands(work: Path, hostile: str) -> dict[str, list[str]]:
    out = "a/b/out"
    return {
        "convert-lape": ["convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", f"{hostile},zh",
                         "--out-dir", out],
        "convert-reference": ["convert", "--from", "reference", "ref/zh.txt", "--model", M, "--langs", hostile,
                              "--out-dir", out],
        "demo": ["demo", "--quick", "--model", M, "--langs", f"en,{hostile}", "--out", out],
        "demo-latin": ["demo", "--quick", "--model", M, "--latin-langs", f"en,{hostile}", "--out", out],
        "detect-lape": ["detect", "--method", "lape", "--model", M, "--corpus", "en=c/en.txt", "--corpus",
                        f"{hostile}=c/zh.txt", "--out-dir", out],
        "detect-plnd": ["detect", "--model", M, "--lang", hostile, "--corpus", "c/zh.txt", "--out", f"{out}/zh"],
        "deactivation": ["experiment", "deactivation", "--model", M, "--neurons", "sets", "--langs", f"en,{hostile}",
                         "--texts-dir", "c", "--out", out],
        "methods": ["experiment", "methods", "--model", M, "--corpus", "en=c/en.txt", "--corpus", f"{hostile}=c/zh.txt",
                    "--heldout", "en=c/en.txt", "--heldout", f"{hostile}=c/zh.txt", "--out", out],
        "lens": ["lens", "--model", M, "--langs", f"en,{hostile}", "--out", out],
        "lens-latin": ["lens", "--model", M, "--langs", "en,zh", "--latin-langs", f"en,{hostile}", "--out", out],
        "router-stats": ["stats", "--router", "--model", "tiny-random-olmoe", "--corpus", f"{hostile}=c/zh.txt",
                         "--out", out],
        "steer-target": ["steer", "--model", M, "--neurons", "sets/zh.safetensors", "--target", hostile,
                         "--prompts", "builtin:en", "--out", out],
        "steer-source": ["steer", "--model", M, "--neurons", "sets/zh.safetensors", "--target", "zh", "--source",
                         hostile, "--prompts", "c/en.txt", "--out", out],
        "eval-local-tasks": ["eval", "--make-local-tasks", out, "--data", str(TEST_DATA), "--langs", f"en,{hostile}"],
        "enhance-compare": ["enhance", "compare", "--model", M, "--neurons", "sets/zh.safetensors", "--texts",
                            "c/zh.txt", "--eval", "zh=c/zh.txt", "--task", "xquad", "--task-langs", f"zh,{hostile}",
                            "--out", out],
        "ppl-xquad": ["ppl", "--model", M, "--texts", f"xquad:{hostile}", "--out", f"{out}/ppl.json"],
    }


@pytest.mark.parametrize("name", list(_commands(Path("."), H)))
@pytest.mark.parametrize("hostile", [H, "ABSOLUTE"])
def test_every_writing_command_refuses_a_hostile_code_and_writes_nothing_outside(work, capsys, name, hostile):
    if hostile == "ABSOLUTE":
        hostile = str(work / "ESC")
    argv = _commands(work, hostile)[name]
    before = tree(work)
    code, err = run(capsys, *argv)
    assert code == 2, err
    command = argv[0]
    assert err.startswith(f"mwork {command}: error: ") and err.count("\n") == 1, err
    assert f"language code {hostile!r} is not valid" in err, err  # the one rule (mwork.files.check_name) said it
    outside = {p for p in set(tree(work)) - set(before) if not p.startswith("a/b/out/")}
    assert not outside, f"{name} wrote {sorted(outside)} outside its output folder"
    assert not [p for p in work.parent.rglob("*ESC*")], "a file named by the hostile code exists"
    no_locks(work)


# ---- 3: an output never replaces an input, a file of another kind or a set's sidecar -----------------


def test_lape_export_onto_its_own_input_is_refused(work, capsys):
    (work / "dl2").mkdir()
    shutil.copy(work / "sets" / "zh.safetensors", work / "dl2")
    shutil.copy(work / "sets" / "zh.json", work / "dl2")
    before = tree(work)
    code, err = run(capsys, "convert", "--to", "lape", "--ffn-only", "--out", "dl2/zh.safetensors",
                    "dl2/zh.safetensors")
    assert code == 2
    assert err == ("mwork convert: error: --out dl2/zh.safetensors: writing dl2/zh.safetensors would replace the "
                   "input dl2/zh.safetensors; choose another output name\n")
    assert tree(work) == before
    NeuronSet.load(work / "dl2" / "zh.safetensors")


def test_lape_export_without_suffix_never_replaces_a_sets_sidecar(work, capsys):
    (work / "dl").mkdir()
    for f in ("zh.safetensors", "zh.json"):
        shutil.copy(work / "sets" / f, work / "dl")
    before = tree(work)
    code, err = run(capsys, "convert", "--to", "lape", "--out", "dl/zh", "dl/zh.safetensors")
    assert code == 2 and "writing dl/zh.json (written beside it) would replace dl/zh.json, part of the input " \
                         "dl/zh.safetensors" in err
    # the same when the set is not an input: it is still a set's .json
    code, err = run(capsys, "convert", "--to", "lape", "--out", "dl/zh", "sets/en.safetensors")
    assert code == 2 and "would replace the metadata of the set dl/zh.safetensors (its .json sidecar)" in err
    assert tree(work) == before
    NeuronSet.load(work / "dl" / "zh.safetensors")
    # a fresh name works, and writing it again (same kind) too
    for _ in range(2):
        assert run(capsys, "convert", "--to", "lape", "--out", "dl/both.pth", "dl/zh.safetensors",
                   "sets/en.safetensors")[0] == 0


def test_exports_never_replace_a_file_of_another_kind(work, capsys):
    before = tree(work)
    code, err = run(capsys, "convert", "--to", "lape", "--out", "sets/en.safetensors", "sets/zh.safetensors")
    assert code == 2 and ("sets/en.safetensors is an existing safetensors file, not a torch.save (.pth) file like "
                          "this LAPE neuron file") in err
    code, err = run(capsys, "convert", "--to", "reference", "--out", "pth/good.pth", "sets/zh.safetensors")
    assert code == 2 and "pth/good.pth is an existing torch.save (.pth) file, not a text file" in err
    assert tree(work) == before


def test_ppl_never_replaces_its_texts(work, capsys):
    before = tree(work)
    code, err = run(capsys, "ppl", "--model", M, "--texts", "c/en.txt", "--out", "c/en.txt")
    assert code == 2 and "--out c/en.txt: writing c/en.txt would replace the input c/en.txt" in err
    assert tree(work) == before


@pytest.fixture
def results(work, capsys):
    """A results folder (``mwork stats``) with CSV tables, as dl4."""
    assert run(capsys, "stats", "sets/zh.safetensors", "sets/en.safetensors", "--out", "dl4")[0] == 0
    return work / "dl4"


def test_a_report_page_goes_only_to_a_html_name_or_a_folder(results, capsys):
    work = results.parent
    before = tree(work)
    code, err = run(capsys, "report", "dl4", "--out", "dl4/summary.csv")
    assert code == 2
    assert err == ("mwork report: error: --out dl4/summary.csv: the page is written only to a .html or .htm name (or "
                   "a folder, for FOLDER/index.html), not to a .csv file; e.g. --out dl4/summary.html\n")
    for out in ("dl4/steer.csv", "dl4/page", "sets/zh.json"):
        code, err = run(capsys, "report", "dl4", "--out", out)
        assert code == 2 and "is written only to a .html or .htm name" in err, out
    assert tree(work) == before
    # a folder gets FOLDER/index.html; a .html name is written; the default is DIR/index.html
    (work / "pages").mkdir()
    assert run(capsys, "report", "dl4", "--out", "pages")[0] == 0 and (work / "pages" / "index.html").is_file()
    assert run(capsys, "report", "dl4", "--out", "dl4/summary.html")[0] == 0
    assert run(capsys, "report", "dl4")[0] == 0 and (results / "index.html").is_file()
    assert (results / "summary.csv").read_bytes() == before["dl4/summary.csv"]
    # a .html name that holds something else than a page is not replaced either
    (work / "notes.html").write_text("my notes, not a page\n")
    code, err = run(capsys, "report", "dl4", "--out", "notes.html")
    assert code == 2 and "notes.html is an existing text file, not an HTML file like this page" in err
    no_locks(work)


# ---- 8: read-only outputs and full disks are one line naming the file ---------------------------------


@pytest.fixture
def as_a_user(monkeypatch):
    """``os.access`` answering from the permission bits, as for an ordinary user, also as root
    (where the real answer is always yes): a chmod-ed folder is then read-only for mwork's check
    whoever runs the tests. Returns the folders asked about."""
    asked: list[Path] = []
    real = os.access

    def access(path, mode, *args, **kwargs):
        asked.append(Path(path))
        if mode & os.W_OK and os.path.isdir(path) and not os.stat(path).st_mode & stat.S_IWUSR:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return asked


@pytest.fixture
def read_only(work):
    folder = work / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("argv", [
    ["steer", "--model", M, "--neurons", "sets/zh.safetensors", "--target", "zh", "--prompts", "builtin:en",
     "--out", "ro/steer"],
    ["report", "dl4", "--out", "ro/page.html"],
    ["report", "dl4", "--out", "ro"],
    ["detect", "--model", M, "--lang", "zh", "--corpus", "c/zh.txt", "--out", "ro/zh"],
    ["detect", "--method", "lape", "--model", M, "--corpus", "en=c/en.txt", "--corpus", "zh=c/zh.txt",
     "--out-dir", "ro/sets"],
    ["convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", "zh,en", "--out-dir", "ro"],
    ["convert", "--to", "lape", "--out", "ro/x.pth", "sets/zh.safetensors"],
], ids=["steer", "report", "report-folder", "detect", "detect-lape", "convert-from", "convert-to"])
def test_a_read_only_output_is_one_line_before_any_work(results, read_only, as_a_user, capsys, argv):
    work = results.parent
    code, err = run(capsys, *argv)
    assert code == 2, err
    assert re.fullmatch(rf"mwork {argv[0]}: error: cannot write the output ro\S*: the folder ro is not writable "
                        r"\(read-only\); choose another output or make it writable\n", err), err
    assert read_only in [p.resolve() for p in as_a_user]  # the check asked about the folder: no pass by accident
    assert not list(read_only.iterdir())
    no_locks(work)


def test_a_failing_write_names_the_file_and_keeps_the_old_one(work, capsys, monkeypatch):
    assert run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", "zh,en",
               "--out-dir", "conv")[0] == 0
    before = tree(work / "conv")
    import safetensors
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00half")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full)
        code, err = run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", "zh,en",
                        "--out-dir", "conv")
    assert code == 2
    assert err == ("mwork convert: error: cannot write conv/zh.safetensors: No space left on device; free some space "
                   "(the files written before are kept) and run again\n")
    assert tree(work / "conv") == before  # the earlier outputs, whole; no temporary file left

    real_replace = os.replace

    def denied(src, dst, *args, **kwargs):
        if str(dst).endswith("en.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", denied)
    code, err = run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", "zh,en",
                    "--out-dir", "conv")
    assert code == 2 and err == ("mwork convert: error: cannot write conv/en.json: Permission denied; the folder is "
                                 "not writable: choose another output or make it writable\n")
    assert not [p for p in (work / "conv").iterdir() if ".tmp" in p.name]
    no_locks(work)


def test_an_os_error_outside_mwork_files_is_one_line_too(work, capsys, monkeypatch):
    from mwork.neurons import overlap as stats

    def full(rows, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "dl5/summary.csv")

    monkeypatch.setattr(stats, "summary_rows", full)
    code, err = run(capsys, "stats", "sets/zh.safetensors", "sets/en.safetensors", "--out", "dl5")
    assert code == 2 and err == ("mwork stats: error: cannot write dl5/summary.csv: No space left on device; free "
                                 "some space (the files written before are kept) and run again\n")


def test_a_full_disk_in_a_subprocess_is_one_line_and_keeps_what_was_written(work):
    """``ulimit -f``: writes beyond 8 KiB fail (EFBIG), as on a full disk: the CSV tables are
    written, the first plot is not, and the message names it."""
    script = f"ulimit -f 8; exec {sys.executable} -m mwork.cli stats sets/zh.safetensors sets/en.safetensors --out full"
    done = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["mwork stats: error: cannot write full/per_layer.png: File too large; "
                                                "free some space (the files written before are kept) and run again"]
    assert sorted(p.name for p in (work / "full").iterdir()) == ["counts_per_layer.csv", "jaccard.csv",
                                                                 "jaccard_by_kind.csv", "summary.csv"]
    no_locks(work)


def test_a_full_disk_while_appending_cells_keeps_the_finished_ones(work, capsys, monkeypatch):
    texts = work / "texts"
    texts.mkdir()
    for lang, line in (("en", "The quick brown fox jumps over the lazy dog."), ("zh", "敏捷的棕色狐狸跳过了懒狗。")):
        (texts / f"{lang}.txt").write_text(f"{line}\n{line}\n", encoding="utf-8")
    grid = ["experiment", "deactivation", "--model", M, "--neurons", "sets", "--task", "ppl", "--langs", "en,zh",
            "--out", "grid", "--understanding", "1", "--generation", "1", "--seeds", "0", "--texts-dir", str(texts),
            "--max-length", "16", "--batch-size", "2", "--device", "cpu"]
    real_write = os.write
    appended = []

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith("cells.jsonl"):
            if len(appended) >= 2:
                real_write(fd, bytes(data)[:7])  # half a line reached the disk
                raise OSError(errno.ENOSPC, "No space left on device")
            appended.append(bytes(data))
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", write)
        code, err = run(capsys, *grid)
    assert code == 2
    assert err.count("error") == 1 and (  # around it: the progress bar
        "mwork experiment: error: cannot write grid/cells.jsonl: No space left on device; free some space (the files "
        "written before are kept) and run again\n") in err
    cells = (work / "grid" / "cells.jsonl").read_bytes()
    assert cells == b"".join(appended) and cells.endswith(b"\n")  # the two finished cells, whole; no half line
    code, err = run(capsys, *grid)
    assert code == 0, err
    lines = (work / "grid" / "cells.jsonl").read_bytes().splitlines(keepends=True)
    assert lines[:2] == appended and len(lines) > 2  # kept and reused, the rest computed
    no_locks(work)


# ---- 13: permissions and lock files ------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_usual_permissions(work, capsys, umask, mode):
    old = os.umask(umask)
    try:
        assert run(capsys, "convert", "--from", "lape", "pth/good.pth", "--model", M, "--langs", "zh,en",
                   "--out-dir", "perm")[0] == 0
        assert run(capsys, "convert", "--to", "lape", "--out", "perm/x.pth", "perm/zh.safetensors")[0] == 0
    finally:
        os.umask(old)
    written = sorted((work / "perm").iterdir())
    assert [p.name for p in written] == ["en.json", "en.safetensors", "x.pth", "x.pth.json", "zh.json",
                                         "zh.safetensors"]
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == mode, p


def test_no_lock_file_is_left_and_the_lock_still_excludes(work, capsys):
    assert run(capsys, "convert", "--to", "lape", "--out", "out/x.pth", "sets/zh.safetensors")[0] == 0
    assert run(capsys, "stats", "sets/zh.safetensors", "sets/en.safetensors", "--out", "st")[0] == 0
    assert run(capsys, "convert", "--to", "lape", "--out", "sets/zh.safetensors", "sets/zh.safetensors")[0] == 2
    no_locks(work)
    with output_lock(work / "busy") as target:
        lock = work / ".busy.mwork-lock"
        assert lock.is_file() and f"process {os.getpid()}" in lock.read_text()
        with pytest.raises(ValueError, match=rf"{re.escape(str(target))} is being written by process {os.getpid()}"):
            with output_lock(work / "busy"):
                pass
    assert not lock.exists()
    with output_lock(work / "busy"):  # free again
        pass
    no_locks(work)


def test_a_lock_that_cannot_be_created_names_it(work, monkeypatch):
    real_open = open

    def no_lock(file, *args, **kwargs):
        if str(file).endswith(".mwork-lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_lock)
    with pytest.raises(OutputError, match=r"cannot write .*\.x\.mwork-lock: Permission denied; the folder is not "
                                          "writable"):
        with output_lock(work / "x"):
            pass


def test_file_kinds_are_read_from_the_bytes(work):
    assert files.file_kind(work / "sets" / "zh.safetensors") == "safetensors"
    assert files.file_kind(work / "pth" / "good.pth") == "torch"
    assert files.file_kind(work / "pth" / "good.pth.json") == "json"
    assert files.file_kind(work / "ref" / "zh.txt") == "text"
    (work / "renamed.csv").write_bytes((work / "sets" / "zh.safetensors").read_bytes())
    assert files.file_kind(work / "renamed.csv") == "safetensors"  # the name does not hide what it is
    (work / "empty").write_bytes(b"")
    assert files.file_kind(work / "empty") == "empty"
