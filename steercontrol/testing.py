"""Small models built offline, for tests, examples and quick checks.

Nothing here downloads anything: the models are built from configs with
seeded random weights, and the tokenizer maps each byte to one token.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from torch import nn

from steercontrol.models import SteerableModel, wrap_model

__all__ = ["byte_tokenizer", "tiny_model", "tiny_model_from_name", "TinyFamily", "TINY_FAMILIES"]

TinyFamily = Literal["gpt2", "llama", "gpt_neox", "gemma", "gemma3"]

TINY_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "gpt_neox", "gemma", "gemma3")
"""Every family :func:`tiny_model` builds, for tests that cover each layout."""


def byte_tokenizer() -> Any:
    """Return a fast tokenizer with one token per byte and a padding token.

    The vocabulary has 257 entries: the 256 byte symbols of the byte-level
    pre-tokenizer and ``<pad>``, which also serves as the end-of-text token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<pad>"] = len(vocab)
    # A BPE model with no merges splits every word into single bytes.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<pad>")


def tiny_model(
    family: TinyFamily = "llama",
    *,
    n_layers: int = 4,
    hidden_size: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SteerableModel:
    """Build a small causal language model with seeded random weights.

    Parameters
    ----------
    family : {"gpt2", "llama", "gpt_neox", "gemma", "gemma3"}
        Architecture, built from its transformers config class. ``"gemma3"``
        alternates sliding-window and global attention, with a window shorter
        than most test prompts.
    n_layers : int
        Number of decoder blocks.
    hidden_size : int
        Residual width; must be divisible by 4 (the number of heads).
    seed : int
        Seed of the weight initialisation.
    dtype : torch.dtype
        Parameter type.

    Returns
    -------
    SteerableModel
        With :func:`byte_tokenizer` as its tokenizer.
    """
    import transformers

    vocab_size = 260
    common: dict[str, Any] = {"vocab_size": vocab_size, "pad_token_id": 256, "eos_token_id": 256, "bos_token_id": 256}
    configs: dict[str, Any] = {
        "gpt2": lambda: transformers.GPT2Config(
            n_layer=n_layers, n_embd=hidden_size, n_head=4, n_positions=256, **common
        ),
        "llama": lambda: transformers.LlamaConfig(
            num_hidden_layers=n_layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(
            num_hidden_layers=n_layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        ),
        "gemma": lambda: transformers.GemmaConfig(
            num_hidden_layers=n_layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden_size // 4,
            max_position_embeddings=256,
            **common,
        ),
        "gemma3": lambda: transformers.Gemma3TextConfig(
            num_hidden_layers=n_layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden_size // 4,
            max_position_embeddings=256,
            sliding_window=8,
            layer_types=[("sliding_attention", "full_attention")[layer % 2] for layer in range(n_layers)],
            **common,
        ),
    }
    if family not in configs:
        raise ValueError(f"Unknown tiny model family {family!r}; expected one of {', '.join(configs)}.")
    config = configs[family]()
    config._attn_implementation = "eager"

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _widen_initialisation(model, seed)
    model = model.to(dtype)
    return wrap_model(model, byte_tokenizer(), name=f"tiny-{family}-{n_layers}x{hidden_size}-seed{seed}")


_TINY_NAME = re.compile(r"tiny-(?P<family>[a-z0-9_]+?)(?:-(?P<layers>\d+)x(?P<hidden>\d+))?")


def tiny_model_from_name(name: str) -> SteerableModel | None:
    """Build the tiny model that ``tiny-<family>`` or ``tiny-<family>-<layers>x<hidden>`` names.

    Returns None when ``name`` has another form or an unknown family, so the
    caller can load it as a real model instead. Without a size the model has
    4 blocks of hidden size 32, like :func:`tiny_model`.

    Examples
    --------
    >>> tiny_model_from_name("tiny-gpt2-2x16").n_layers
    2
    >>> tiny_model_from_name("smollm2-135m") is None
    True
    """
    match = _TINY_NAME.fullmatch(name)
    if match is None or match["family"] not in TINY_FAMILIES:
        return None
    layers = int(match["layers"] or 4)
    hidden = int(match["hidden"] or 32)
    return tiny_model(match["family"], n_layers=layers, hidden_size=hidden)  # type: ignore[arg-type]


def _widen_initialisation(model: nn.Module, seed: int) -> None:
    # Default initialisations (std 0.02) make blocks nearly the identity, so
    # steering effects would be too small to tell apart in tests.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and "norm" not in name and "ln" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)


class _LinearBlock(nn.Module):
    """A block that maps each token's state by a fixed matrix: x -> M x."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(matrix.clone(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states @ self.weight.T


class PlantedLinearLM(nn.Module):
    """A causal LM whose blocks are known linear maps and whose final norm is the identity.

    Tokens do not interact, so the frozen-context dynamics of the last token
    are x_{k+1} = M_k x_k exactly, and every gain has a closed form.
    """

    def __init__(self, matrices: list[torch.Tensor], vocab_size: int = 260) -> None:
        super().__init__()
        hidden = matrices[0].shape[0]
        self.config = _PlantedConfig(hidden_size=hidden, num_hidden_layers=len(matrices))
        generator = torch.Generator().manual_seed(7)
        self.embed = nn.Embedding(vocab_size, hidden)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab_size, hidden, generator=generator))
        self.layers = nn.ModuleList(_LinearBlock(m) for m in matrices)
        self.norm = nn.Identity()
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> Any:
        from types import SimpleNamespace

        hidden = self.embed(input_ids).to(self.lm_head.weight.dtype)
        for layer in self.layers:
            hidden = layer(hidden)
        logits = self.lm_head(self.norm(hidden))
        # Tokens never interact, so the returned cache is empty.
        return SimpleNamespace(logits=logits, cache=SimpleNamespace(layers=[]) if use_cache else None)


class _PlantedConfig:
    model_type = "steercontrol_planted"
    max_position_embeddings = 4096

    def __init__(self, hidden_size: int, num_hidden_layers: int) -> None:
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.name_or_path = "planted-linear"


def planted_linear_model(
    *,
    n_layers: int = 6,
    hidden_size: int = 16,
    rank: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[SteerableModel, list[torch.Tensor], torch.Tensor]:
    """Build a model whose blocks are planted linear maps.

    With ``rank`` r, every M_k = I + U S_k U^T for one orthonormal U (hidden x r),
    and :func:`planted_directions` returns directions in span(U), so the
    states that injections can reach span at most r dimensions.

    Returns
    -------
    model : SteerableModel
        The wrapped model, with :func:`byte_tokenizer`.
    matrices : list of torch.Tensor
        M_0..M_{L-1}, each (hidden, hidden).
    subspace : torch.Tensor
        U, (hidden, r), or the identity when ``rank`` is None.
    """
    from steercontrol import models

    generator = torch.Generator().manual_seed(seed)
    if rank is None:
        subspace = torch.eye(hidden_size, dtype=torch.float64)
        matrices = [
            torch.eye(hidden_size, dtype=torch.float64)
            + 0.3 * torch.randn(hidden_size, hidden_size, generator=generator, dtype=torch.float64)
            for _ in range(n_layers)
        ]
    else:
        subspace, _ = torch.linalg.qr(torch.randn(hidden_size, rank, generator=generator, dtype=torch.float64))
        matrices = [
            torch.eye(hidden_size, dtype=torch.float64)
            + subspace @ (0.5 * torch.randn(rank, rank, generator=generator, dtype=torch.float64)) @ subspace.T
            for _ in range(n_layers)
        ]
    models._LAYOUTS.setdefault("steercontrol_planted", ("layers", "norm", ""))
    lm = PlantedLinearLM(matrices).to(dtype)
    return (
        wrap_model(lm, byte_tokenizer(), name=f"planted-linear-{n_layers}x{hidden_size}-seed{seed}"),
        matrices,
        subspace,
    )
