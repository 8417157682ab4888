"""ModelConfig: the architecture of a Llama-class decoder, read from config.json or GGUF.

Both sources are normalised to one frozen dataclass, so the model, the KV cache sizing and the
scheduler never look at a file format again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvsaga import envs
from kvsaga._validate import check_positive_int
from kvsaga.config import KVSpec
from kvsaga.errors import InvalidRequest, KVSagaError

log = logging.getLogger("kvsaga.engine")

# HF `model_type` (or GGUF `general.architecture`) -> our architecture name.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
}
# RoPE variants the model implements (see kvsaga/engine/rope.py).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# The GGUF keys of the tokens that end generation, as llama.cpp collects them: end of
# sequence, end of turn (<|eot_id|>, <|im_end|>) and end of message (Llama 3.1's <|eom_id|>,
# written after a tool call in ipython mode; its HF generation_config.json lists it too).
_GGUF_END_KEYS = ("eos_token_id", "eot_token_id", "eom_token_id")


def gguf_end_token_ids(meta: Mapping[str, Any]) -> tuple[int, ...]:
    """The ids of every token that ends generation in a GGUF file's metadata, in key order."""
    ids = (meta.get(f"tokenizer.ggml.{key}") for key in _GGUF_END_KEYS)
    return tuple(dict.fromkeys(i for i in ids if i is not None))


class ModelLoadError(KVSagaError, ValueError):
    """A model directory or file cannot be loaded: missing, unsupported, or inconsistent."""


# Sampling fields of generation_config.json that vLLM applies and kvsaga's sampler does not
# implement, each with the value that changes nothing.
UNAPPLIED_NEUTRAL: dict[str, float] = {
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "min_p": 0.0,
}


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """The sampling defaults a model's authors ship in `generation_config.json`.

    kvsaga applies temperature, top_p, top_k and max_new_tokens to every request that does
    not set the field (`SamplingParams.with_defaults`), as vLLM does; fields the file lacks
    stay None and fall back to OpenAI's defaults (temperature 1, top_p 1, no top-k). vLLM
    also applies the file's penalties and min_p, which kvsaga's sampler does not implement:
    they are read into `unapplied` so that loading can say so (`warn_unapplied`) rather than
    sample differently without a word.

    Attributes:
        temperature / top_p / top_k: as in `SamplingParams`.
        max_tokens: the file's `max_new_tokens`.
        unapplied: (name, value) of each `UNAPPLIED_NEUTRAL` field the file sets to another
            value.
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    unapplied: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_generation_config(cls, gen: Mapping[str, Any] | None) -> GenerationDefaults:
        """Read the fields; values of the wrong type raise ModelLoadError."""
        if not gen:
            return cls()
        try:
            read = {n: _opt(float, gen.get(n)) for n in UNAPPLIED_NEUTRAL}
            return cls(
                temperature=_opt(float, gen.get("temperature")),
                top_p=_opt(float, gen.get("top_p")),
                top_k=_opt(int, gen.get("top_k")),
                max_tokens=_opt(int, gen.get("max_new_tokens")),
                unapplied=tuple((n, v) for n, v in read.items()
                                if v is not None and v != UNAPPLIED_NEUTRAL[n]),
            )
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"invalid value in generation_config.json: {e}") from None

    def as_dict(self) -> dict[str, float | int]:
        """The fields kvsaga applies that are set."""
        names = ("temperature", "top_p", "top_k", "max_tokens")
        return {n: v for n in names if (v := getattr(self, n)) is not None}

    def warn_unapplied(self) -> None:
        """Log a warning naming each sampling default of the model's that kvsaga ignores."""
        if self.unapplied:
            fields = ", ".join(f"{n}={v:g}" for n, v in self.unapplied)
            log.warning("the model's generation_config.json sets %s, which kvsaga does not "
                        "apply (it samples without penalties or min_p; vLLM applies them)",
                        fields)


def _opt(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """How RoPE frequencies are rescaled for long context.

    Attributes:
        rope_type: "default" (none), "linear" (positions / factor) or "llama3" (Llama 3.1's
            band-wise rescale of the inverse frequencies).
        factor: the scaling factor; 1.0 for "default".
        low_freq_factor, high_freq_factor, original_max_position_embeddings: "llama3" only.
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelLoadError(
                f"unsupported rope scaling type {self.rope_type!r}; "
                f"supported: {list(SUPPORTED_ROPE_TYPES)}"
            )
        if not self.factor > 0:
            raise ModelLoadError(f"rope scaling factor must be > 0, got {self.factor!r}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ModelLoadError(
                "llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
                f"{self.high_freq_factor!r} <= {self.low_freq_factor!r}"
            )


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Architecture of a Llama-class decoder-only model.

    Attributes:
        architecture: "llama", "mistral" or "qwen2".
        vocab_size: rows of the embedding and of the LM head.
        hidden_size: width of the residual stream.
        intermediate_size: width of the SwiGLU MLP.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA when fewer than `num_heads`).
        head_dim: width of one head.
        rms_norm_eps: epsilon of every RMSNorm.
        rope_theta: RoPE base.
        rope_scaling: RoPE rescaling; `RopeScaling()` when none.
        max_position_embeddings: longest context the model supports (for mistral, capped
            at its sliding window).
        tie_word_embeddings: the LM head reuses the embedding matrix.
        attention_bias: q/k/v projections have a bias (qwen2; llama's `attention_bias`).
        attention_out_bias: the output projection has a bias (llama's `attention_bias` only).
        bos_token_id: beginning-of-sequence token, if any.
        eos_token_ids: every token that ends generation (Llama 3 has several).
        generation: sampling defaults from generation_config.json (none for GGUF files).
        sliding_window: mistral's attention window, if it has one. kvsaga attends to the
            whole context, which is the same as the window only while the context fits in it,
            so no context may be longer (`check_max_model_len`).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES.values():
            raise ModelLoadError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES.values())}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            check_positive_int(f"ModelConfig.{name}", getattr(self, name), ModelLoadError)
        check_positive_int("ModelConfig.sliding_window", self.sliding_window, ModelLoadError,
                           none_ok=True)
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ModelLoadError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ModelLoadError(
                f"rms_norm_eps and rope_theta must be > 0, got {self.rms_norm_eps!r}, "
                f"{self.rope_theta!r}"
            )

    @property
    def q_size(self) -> int:
        """Width of the query projection's output."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (and of the value) projection's output."""
        return self.num_kv_heads * self.head_dim

    def kv_spec(self, dtype: str, block_size: int) -> KVSpec:
        """The shape of this model's KV block in `dtype` (named as `KVSpec` names it): read
        from the config alone, so that a KV budget is checked before the weights load."""
        return KVSpec(self.num_layers, self.num_kv_heads, self.head_dim, dtype, block_size)

    @property
    def max_context_len(self) -> int:
        """The longest context the model was trained for, and the default max_model_len:
        `max_position_embeddings`, times the factor for linear RoPE scaling, whose
        `max_position_embeddings` is the length before the positions were scaled (as vLLM
        reads it; llama3 scaling's is the scaled length already). Never past a sliding
        window: kvsaga attends to the whole context, which is the model's attention only
        within the window (`check_max_model_len`), and the factor scales positions, not it."""
        limit = self.max_position_embeddings
        if self.rope_scaling.rope_type == "linear":
            limit = int(limit * self.rope_scaling.factor)
        if self.sliding_window is not None:
            limit = min(limit, self.sliding_window)
        return limit

    def _context_source(self) -> str:
        """`max_context_len` and where it comes from, for messages."""
        if self.rope_scaling.rope_type == "linear":
            return (f"context of {self.max_context_len} (max_position_embeddings, a GGUF's "
                    f"context_length, of {self.max_position_embeddings} times its linear "
                    f"RoPE factor {self.rope_scaling.factor:g})")
        return ("max_position_embeddings (a GGUF's context_length) of "
                f"{self.max_position_embeddings}")

    def check_max_model_len(self, max_model_len: int | None, warn: bool = True) -> None:
        """Refuse a context longer than this model can give right answers for, before the
        weights load.

        Past a sliding window kvsaga's full attention computes something other than the
        model, so that is always refused. Past `max_context_len` the computation is exact
        but the model never saw such positions: refused, as vLLM refuses it, unless
        $KVSAGA_ALLOW_LONG_MAX_MODEL_LEN is set (then a warning when `warn`).

        Raises:
            InvalidRequest: naming `max_model_len` and the limit it exceeds.
        """
        if max_model_len is None:
            return
        window = self.sliding_window
        if window is not None and max_model_len > window:
            raise InvalidRequest(
                f"max_model_len={max_model_len} exceeds {self.architecture}'s sliding window of "
                f"{window} tokens; kvsaga has no windowed attention, so past the window its "
                f"output would not be the model's: use at most {window}")
        limit = self.max_context_len
        if max_model_len <= limit:
            return
        why = f"max_model_len={max_model_len} exceeds the model's {self._context_source()}"
        if not envs.KVSAGA_ALLOW_LONG_MAX_MODEL_LEN:
            raise InvalidRequest(
                f"{why}; use at most {limit}, or set KVSAGA_ALLOW_LONG_MAX_MODEL_LEN=1 to "
                "allow it (positions the model was not trained on: output of unknown quality)")
        if warn:
            log.warning("%s; allowed by KVSAGA_ALLOW_LONG_MAX_MODEL_LEN: positions past %d "
                        "were not in the model's training, output of unknown quality",
                        why, limit)

    @classmethod
    def from_hf_config(
        cls, cfg: Mapping[str, Any], generation_cfg: Mapping[str, Any] | None = None
    ) -> ModelConfig:
        """Build from a parsed HF `config.json` (and optionally `generation_config.json`).

        Args:
            cfg: the parsed config.json.
            generation_cfg: the parsed generation_config.json; its eos ids are merged in and
                its sampling fields become `generation`.

        Returns:
            The config.

        Raises:
            ModelLoadError: unsupported `model_type`, missing or invalid fields.
        """
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"unsupported model_type {model_type!r} in config.json; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        arch = SUPPORTED_ARCHITECTURES[model_type]
        try:
            hidden = _field_int(cfg, "hidden_size")
            num_heads = _field_int(cfg, "num_attention_heads")
            if num_heads <= 0:  # (before it divides hidden_size)
                raise ModelLoadError(
                    f"config.json: num_attention_heads must be > 0, got {num_heads}")
            head_dim = cfg.get("head_dim") or hidden // num_heads
            max_pos = int(cfg.get("max_position_embeddings", 2048))
            window = None
            if arch == "mistral" and cfg.get("sliding_window"):
                # Within the window, sliding-window attention is full attention: capping the
                # context at the window keeps this exact without a windowed kernel.
                window = _field_int(cfg, "sliding_window")
                max_pos = min(max_pos, window)
            if arch == "qwen2" and cfg.get("use_sliding_window"):
                raise ModelLoadError("qwen2 with use_sliding_window=true is not supported")
            if cfg.get("mlp_bias"):
                raise ModelLoadError("mlp_bias=true is not supported")
            if cfg.get("hidden_act", "silu") != "silu":
                raise ModelLoadError(f"unsupported hidden_act {cfg.get('hidden_act')!r}")
            llama_bias = bool(cfg.get("attention_bias", False))
            rope_theta, scaling = _hf_rope(cfg)
            eos = _as_ids(cfg.get("eos_token_id"))
            if generation_cfg:
                eos += tuple(i for i in _as_ids(generation_cfg.get("eos_token_id")) if i not in eos)
            return cls(
                architecture=arch,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
                head_dim=int(head_dim),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=scaling,
                max_position_embeddings=max_pos,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=arch == "qwen2" or llama_bias,
                attention_out_bias=arch != "qwen2" and llama_bias,
                bos_token_id=_first_id(cfg.get("bos_token_id")),
                eos_token_ids=eos,
                generation=GenerationDefaults.from_generation_config(generation_cfg),
                sliding_window=window,
            )
        except KeyError as e:
            raise ModelLoadError(f"config.json lacks required field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(f"invalid value in config.json: {e}") from None

    @classmethod
    def from_gguf_metadata(
        cls, meta: Mapping[str, Any], tensor_names: set[str], embedding_rows: int | None = None
    ) -> ModelConfig:
        """Build from GGUF metadata (llama.cpp key names).

        Args:
            meta: metadata key -> value (strings decoded, arrays as lists).
            tensor_names: names of the tensors in the file (decides tied embeddings).
            embedding_rows: rows of `token_embd.weight`, used when the vocab size is not stored.

        Returns:
            The config.

        Raises:
            ModelLoadError: unsupported architecture or missing keys.
        """
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"unsupported GGUF architecture {arch!r}; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )

        def key(name: str, default: Any = KeyError) -> Any:
            full = f"{arch}.{name}"
            if full in meta:
                return meta[full]
            if default is KeyError:
                raise ModelLoadError(f"GGUF metadata lacks required key {full!r}")
            return default

        def count(name: str, default: Any = KeyError) -> int:
            """An integer key, named in the error when it is not one (a per-layer list of
            equal counts counts as one)."""
            value = key(name, default)
            if isinstance(value, list) and value and len(set(value)) == 1:
                value = value[0]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelLoadError(
                    f"GGUF metadata key {arch}.{name} must be an integer, got {value!r}"
                    + (" (per-layer counts that differ are not supported)"
                       if isinstance(value, list) else "")
                )
            return int(value)

        hidden = count("embedding_length")
        num_heads = count("attention.head_count")
        if num_heads <= 0:  # (before it divides embedding_length)
            raise ModelLoadError(f"GGUF metadata key {arch}.attention.head_count must be > 0, "
                                 f"got {num_heads}")
        num_kv_heads = count("attention.head_count_kv", num_heads)
        vocab = key("vocab_size", None)
        if vocab is None:
            tokens = meta.get("tokenizer.ggml.tokens")
            vocab = embedding_rows if embedding_rows is not None else len(tokens or ())
        return cls(
            architecture=SUPPORTED_ARCHITECTURES[arch],
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=count("feed_forward_length"),
            num_layers=count("block_count"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=count("attention.key_length", hidden // num_heads),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rope_scaling=_gguf_rope_scaling(meta, arch),
            max_position_embeddings=int(key("context_length", 2048)),
            tie_word_embeddings="output.weight" not in tensor_names,
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            attention_out_bias="blk.0.attn_output.bias" in tensor_names,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=gguf_end_token_ids(meta),
        )


def _gguf_rope_scaling(meta: Mapping[str, Any], arch: str) -> RopeScaling:
    """A GGUF file's RoPE scaling, read as llama.cpp reads it: the type defaults to linear;
    the factor is `rope.scaling.factor`, or else the older `rope.scale_linear` (files
    converted before that key was renamed); a factor absent, 0 or 1 means none, and type
    "none" never scales."""
    scaling_type = meta.get(f"{arch}.rope.scaling.type") or "linear"
    if scaling_type == "none":
        return RopeScaling()
    if scaling_type != "linear":
        raise ModelLoadError(f"unsupported GGUF rope scaling type {scaling_type!r}")
    for name in (f"{arch}.rope.scaling.factor", f"{arch}.rope.scale_linear"):
        factor = meta.get(name)
        if factor is not None:
            break
    else:
        return RopeScaling()
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise ModelLoadError(f"GGUF metadata key {name} must be a number, got {factor!r}")
    if factor in (0, 1):
        return RopeScaling()
    return RopeScaling("linear", float(factor))


def _hf_rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling]:
    """(rope_theta, scaling) from either transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling` pair."""
    params = dict(cfg.get("rope_parameters") or {})
    legacy = dict(cfg.get("rope_scaling") or {})
    params = {**legacy, **params}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, RopeScaling()
    factor = float(params.get("factor", 1.0))
    if rope_type == "linear":
        return theta, RopeScaling("linear", factor)
    if rope_type == "llama3":
        where = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
        missing = [k for k in _LLAMA3_KEYS if params.get(k) is None]
        if missing:
            raise ModelLoadError(
                f"config.json lacks required field {where}.{missing[0]} (llama3 rope scaling)")
        return theta, RopeScaling(
            "llama3",
            factor,
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    return theta, RopeScaling(str(rope_type), factor)  # raises: unsupported type


_LLAMA3_KEYS = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _field_int(cfg: Mapping[str, Any], name: str) -> int:
    """`cfg[name]` as an int; a value that is none (null) names the field."""
    value = cfg[name]
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ModelLoadError(f"config.json: {name} must be an integer, got {value!r}") from None


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _first_id(value: Any) -> int | None:
    ids = _as_ids(value)
    return ids[0] if ids else None
