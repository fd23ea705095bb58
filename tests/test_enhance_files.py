"""Enhancement files: checkpoints never unpickle, broken files get a sentence, writes are atomic."""

from __future__ import annotations

import json
import math

import pytest
import torch

import mwork
from mwork.cli import main
from mwork.experiments.checkpoints import LEGACY_CHECKPOINT_FILE, read_checkpoint, save_checkpoint
from mwork.neurons.delta import DELTA_FILE, META_FILE, NeuronDelta
from mwork.experiments.enhance import CHECKPOINT_FILE, enhance
from mwork.files import atomic_write, write_text
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet

TEXTS = ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
         "Bonjour le monde, le renard brun saute.", "El rápido zorro marrón salta sobre el perro perezoso."]
FAST = dict(lr=1e-2, batch_size=2, grad_accum=1, warmup_ratio=0.0, progress=False)


def _neurons(model):
    counts = get_adapter(model).neuron_counts()
    return NeuronSet.from_indices(model, {"ffn": {0: [1, 5]}, "q": {1: [0, counts["q"] - 1]}, "v": {0: [2]}})


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models.shared("tiny-random-gpt2", torch.float64)


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_pickle(path, marker):
    torch.save({"fingerprint": {}, "step": 0, "payload": _Payload(marker)}, path)
    # the file really is dangerous: loading it the old way runs the payload
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_crafted_pickle_checkpoint_is_refused_and_runs_nothing(gpt2, tmp_path, capsys):
    model, tok = gpt2
    ns = _neurons(model)
    marker = tmp_path / "pwned"
    # an old-style OUT/checkpoint.pt (a pickle) is never loaded, with or without --resume
    out = tmp_path / "legacy"
    out.mkdir()
    _crafted_pickle(out / LEGACY_CHECKPOINT_FILE, marker)
    for resume in (True, False):
        with pytest.raises(ValueError, match=r"checkpoint\.pt .*pickle.*start the run over"):
            enhance(model, tok, ns, TEXTS, out, max_steps=2, resume=resume, **FAST)
    assert not marker.exists()
    # the same bytes where the checkpoint now lives: not a safetensors file, refused
    out2 = tmp_path / "crafted"
    out2.mkdir()
    _crafted_pickle(out2 / CHECKPOINT_FILE, marker)
    with pytest.raises(ValueError, match=r"checkpoint\.safetensors is not a readable mwork checkpoint.*start the run over"):
        enhance(model, tok, ns, TEXTS, out2, max_steps=2, resume=True, **FAST)
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickle"):
        read_checkpoint(out / LEGACY_CHECKPOINT_FILE)
    # the command line: exit 2, one sentence naming the file, nothing run
    ns.save(tmp_path / "ns.safetensors")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    args = ["enhance", "--model", "tiny-random-gpt2", "--neurons", str(tmp_path / "ns.safetensors"), "--texts",
            str(tmp_path / "texts.txt"), "--steps", "2", "--no-progress", "--resume"]
    for folder in (out, out2):
        assert main(args + ["--out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and "start the run over" in err and "Traceback" not in err
    assert not marker.exists()


def test_broken_checkpoint_gets_a_sentence(gpt2, tmp_path):
    model, tok = gpt2
    ns = _neurons(model)
    out = tmp_path / "run"
    enhance(model, tok, ns, TEXTS, out, max_steps=3, stop_after=1, **FAST)
    ckpt = out / CHECKPOINT_FILE
    good = ckpt.read_bytes()
    for broken in (good[: len(good) // 2], good[:5], b"\x00garbage" * 7, b""):
        ckpt.write_bytes(broken)
        with pytest.raises(ValueError, match=rf"{ckpt.name} is not a readable mwork checkpoint .*delete it"):
            enhance(model, tok, ns, TEXTS, out, max_steps=3, resume=True, **FAST)
    # a safetensors file that is not a checkpoint (a NeuronSet)
    ns.save(ckpt)
    with pytest.raises(ValueError, match="not a checkpoint this mwork can read"):
        enhance(model, tok, ns, TEXTS, out, max_steps=3, resume=True, **FAST)
    ckpt.write_bytes(good)  # the intact checkpoint still resumes
    done = enhance(model, tok, ns, TEXTS, out, max_steps=3, resume=True, **FAST)
    assert done.meta["finished"]


def test_resume_refuses_other_base_weights(gpt2, tmp_path, fresh_tiny):
    model, tok = fresh_tiny("tiny-random-gpt2", torch.float64)
    ns = _neurons(model)
    enhance(model, tok, ns, TEXTS, tmp_path, max_steps=3, stop_after=1, **FAST)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # same shapes, other weights
    with pytest.raises(ValueError, match=r"differs in \['model_sha256'\]"):
        enhance(model, tok, ns, TEXTS, tmp_path, max_steps=3, resume=True, **FAST)


def test_checkpoint_round_trips_without_pickle(tmp_path):
    state = {"step": 3, "nested": {"t": torch.arange(6, dtype=torch.float64).reshape(2, 3), "none": None},
             "optimizer": {"state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.ones(3)}, 5: {}},
                           "param_groups": [{"lr": 0.1 + 1e-17, "betas": (0.9, 0.999), "params": [0, 5]}]},
             "rng": {"cpu": torch.get_rng_state()}, "history": {"losses": [1 / 3, 2.5e-300]}, "inf": math.inf,
             "flags": [True, "x", (1, 2)], "bf16": torch.ones(2, dtype=torch.bfloat16)}
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, state)
    back = read_checkpoint(path)

    def same(a, b):
        if torch.is_tensor(a):
            return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert same(state, back)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file, its state JSON in the header
        assert json.loads(f.metadata()["mwork_checkpoint"])["format_version"] == 1
    with pytest.raises(TypeError, match="without pickle"):
        save_checkpoint(tmp_path / "x.safetensors", {"obj": object()})


def test_broken_delta_gets_a_sentence(gpt2, tmp_path, capsys):
    model, tok = gpt2
    out = tmp_path / "delta"
    res = enhance(model, tok, _neurons(model), TEXTS, out, max_steps=1, **FAST)
    st, meta = out / DELTA_FILE, out / META_FILE
    good, good_meta = st.read_bytes(), meta.read_bytes()
    for broken in (good[: len(good) - 7], b"not a delta at all"):
        st.write_bytes(broken)
        with pytest.raises(ValueError, match=rf"{DELTA_FILE} is not a readable mwork delta .*train the delta again"):
            mwork.load_model("tiny-random-gpt2", device="cpu", delta=out)
        assert main(["enhance", "apply", "--model", "tiny-random-gpt2", "--delta", str(out), "--out",
                     str(tmp_path / "merged")]) == 2
        err = capsys.readouterr().err
        assert str(st) in err and "Traceback" not in err
    st.write_bytes(good)
    meta.write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=rf"{META_FILE} is not a readable delta record"):
        NeuronDelta.load(out, model)
    meta.write_bytes(good_meta)
    again = NeuronDelta.load(out, model)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in res.delta.state_dict().items())


def test_writes_are_atomic(gpt2, tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    # a delta whose rewrite fails half-way is still the old delta, and no temporary file is left
    model, tok = gpt2
    out = tmp_path / "delta"
    res = enhance(model, tok, _neurons(model), TEXTS, out, max_steps=1, **FAST)
    before = (out / DELTA_FILE).read_bytes()
    import safetensors.torch

    def torn(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn)
    with pytest.raises(OSError, match="disk full"):
        res.delta.save(out)
    assert (out / DELTA_FILE).read_bytes() == before
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    NeuronDelta.load(out, model)


def test_output_folder_problems_are_found_before_training(gpt2, tmp_path):
    model, tok = gpt2
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "fr"):
        with pytest.raises(ValueError, match="output folder"):
            enhance(model, tok, _neurons(model), TEXTS, bad, max_steps=1, **FAST)
