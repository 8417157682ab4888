"""SamplingParams and the batched sampler: greedy, temperature, top-k, top-p, seeds.

Every row of a batch may use different settings. Sampling draws by the exponential race
(argmax of p / E with E ~ Exp(1), equivalent to drawing from p), which lets seeded rows
draw their noise from their own `torch.Generator` while the rest of the batch shares one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kvsaga._validate import is_int, is_number
from kvsaga.errors import InvalidRequest

_EPS = 1e-10  # keeps the exponential noise away from zero
# Temperatures below this are greedy (as vLLM's _SAMPLING_EPS): dividing fp32 logits by
# 1e-38 overflows to inf, whose softmax is NaN, and every such row drew token 0.
GREEDY_TEMPERATURE = 1e-5
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # a seed torch (and the HTTP API) accepts


def _is_collection(x: object) -> bool:
    """None, or an iterable of items that is not itself one item (str, bytes) or a mapping."""
    return x is None or (isinstance(x, Iterable) and not isinstance(x, (str, bytes, Mapping)))


@dataclass
class SamplingParams:
    """How one request samples and when it stops.

    The class defaults are OpenAI's (temperature 1, top_p 1, no top-k); `with_defaults` puts
    a model's generation_config.json values in between.

    Attributes:
        max_tokens: most tokens to generate (>= 1).
        temperature: 0 for greedy; otherwise logits are divided by it. Below
            `GREEDY_TEMPERATURE` (1e-5) it is greedy too (the limit of sampling as the
            temperature falls; a division by so small a number overflows).
        top_k: keep the k most likely tokens; 0 or -1 keeps all.
        top_p: keep the smallest set of tokens whose probability reaches top_p (0, 1].
        seed: makes this request's draws reproducible: its noise comes from its own
            generator, whatever else shares the batch. The logits it draws from may still
            differ in the last bits between batch compositions (or cached and cold
            prefixes), so a repeat gives the same tokens except where two are near-tied.
        stop: strings that end generation (not included in the output text). Of several
            ending in one step's text, the first to complete cuts it (ties: the first
            listed), as in vLLM; it is the output's `stop_reason`.
        stop_token_ids: token ids that end generation, besides EOS. As in vLLM, the token
            that ends it (or EOS) stays in the output ids but its text is not in the output
            text nor the streamed deltas, and no stop string ends in it (with
            `include_stop_str_in_output`, its text is kept and a stop string may end in it).
        ignore_eos: keep generating past EOS.
        include_stop_str_in_output: keep the stop string that ended the text (cut after it,
            not before), and a stop token's text, as vLLM's option does; the text is then
            streamed without holding back a possible stop string's beginning.
        logprobs: None/False: none; True or 0: the chosen token's logprob; k > 0: also the
            k most likely tokens'. Logprobs are of the model's distribution before
            temperature, top-k and top-p.
        n: completions per prompt: only 1; more is refused (`LLM` and kvsaga-serve). For
            n samples add the request n times, with distinct seeds if seeded (vLLM gives
            its i-th child seed + i; one seed n times gives n identical samples).
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: bool | int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """InvalidRequest naming the first field with a bad value (`err.field`); else
        `stop` and `stop_token_ids` become tuples and a `top_k` of -1 becomes 0. Run at
        construction, and again by `LLMEngine.add_request`: the fields may be set after."""
        def bad(name: str, why: str) -> InvalidRequest:
            err = InvalidRequest(f"SamplingParams.{name} {why}, got {getattr(self, name)!r}")
            err.field = name  # the server reports it under the request field of that name
            return err

        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise bad("max_tokens", "must be an int >= 1")
        if not is_number(self.temperature) or not 0.0 <= self.temperature < float("inf"):
            raise bad("temperature", "must be a finite number >= 0")
        if not is_int(self.top_k) or self.top_k < -1:
            raise bad("top_k", "must be an int >= 0 (or -1 for all)")
        if not is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be a number in (0, 1]")
        seed = self.seed
        if seed is not None and (not is_int(seed) or not _INT64_MIN <= seed <= _INT64_MAX):
            raise bad("seed", "must be an int in the int64 range [-2**63, 2**63 - 1] or None")
        if not isinstance(self.stop, str) and not _is_collection(self.stop):
            raise bad("stop", "must be a string, a list of non-empty strings or None")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if not all(isinstance(s, str) and s for s in stop):
            raise bad("stop", "must be non-empty strings")
        if not _is_collection(self.stop_token_ids):
            raise bad("stop_token_ids", "must be a list of non-negative ints")
        stop_token_ids = tuple(self.stop_token_ids or ())
        if not all(is_int(t) and t >= 0 for t in stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative ints")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):  # ("false" is truthy)
                raise bad(name, "must be True or False")
        lp = self.logprobs
        if lp is not None and not isinstance(lp, bool) and (not is_int(lp) or lp < 0):
            raise bad("logprobs", "must be a bool, None or an int >= 0")
        if not is_int(self.n) or self.n < 1:
            raise bad("n", "must be an int >= 1")
        self.stop, self.stop_token_ids = stop, stop_token_ids
        if self.top_k == -1:
            self.top_k = 0

    @classmethod
    def with_defaults(
        cls, defaults: Mapping[str, Any] | None = None, **fields: Any
    ) -> SamplingParams:
        """Params from explicit `fields` (None means unset), then the model's `defaults`
        (`ModelConfig.generation.as_dict()`), then the class defaults (OpenAI's).

        This is the one rule the CLI, `LLM` and kvsaga-serve all follow. vLLM takes a model's
        generation_config.json the same way for these fields, and also applies its penalties
        and min_p, which kvsaga does not implement (loading warns of them:
        `GenerationDefaults.warn_unapplied`).
        """
        merged = dict(defaults or {})
        merged.update((k, v) for k, v in fields.items() if v is not None)
        return cls(**merged)

    @property
    def greedy(self) -> bool:
        """The argmax is taken: temperature below `GREEDY_TEMPERATURE` (0 included)."""
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def num_top_logprobs(self) -> int | None:
        """None: no logprobs; 0: chosen token only; k: chosen plus k alternatives."""
        if self.logprobs is None or self.logprobs is False:
            return None
        return 0 if self.logprobs is True else int(self.logprobs)

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A generator seeded with `seed` (None when unseeded); keep one per request for its
        whole life so successive draws continue one stream."""
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(_folded_seed(self.seed))
        return g


def _folded_seed(seed: int) -> int:
    """`seed` with its high half mixed into its low 32 bits, which are all that torch's CPU
    generator (mt19937) reads: seeds that differ only above bit 31 (clients derive them from
    64-bit hashes) drew the same samples. Seeds in [-2**32, 2**32) are returned unchanged,
    so they draw as they always did; the result stays in the int64 range."""
    high = (seed >> 32) + (seed < 0)  # 0 for those seeds (a negative one sign-extends)
    return seed ^ ((high * 0x9E3779B1) & 0xFFFF_FFFF)  # odd: distinct highs, distinct mixes


@dataclass
class SamplerOutput:
    """What the sampler chose for each row.

    Attributes:
        token_ids: int64 [B].
        logprobs: fp32 [B], log-probability of each chosen token (model distribution).
        top_token_ids: int64 [B, K] or None; the K most likely tokens, K the largest
            `num_top_logprobs` asked for in the batch (rows asking fewer slice it).
        top_logprobs: fp32 [B, K] or None.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    top_token_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


class Sampler:
    """Turns a batch of logits into next tokens, each row by its own `SamplingParams`."""

    def __call__(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None] | None = None,
    ) -> SamplerOutput:
        """Sample one token per row.

        Args:
            logits: [B, V], any float dtype; not modified.
            params: B sampling settings, one per row.
            generators: B generators (None for unseeded rows), from `make_generator`.

        Returns:
            The chosen tokens and their logprobs.

        Raises:
            InvalidRequest: params or generators not one per row.
        """
        b = logits.shape[0]
        if len(params) != b or (generators is not None and len(generators) != b):
            num_gens = None if generators is None else len(generators)
            raise InvalidRequest(
                f"need one SamplingParams (and generator) per logits row: {b} rows, "
                f"{len(params)} params, {num_gens} generators"
            )
        logits = logits.float()
        logprobs_all = torch.log_softmax(logits, dim=-1)  # [B, V]
        token_ids = logits.argmax(dim=-1)
        sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
        if sampled_rows:
            rows = torch.tensor(sampled_rows, device=logits.device)
            sub = [params[i] for i in sampled_rows]
            gens = [generators[i] if generators is not None else None for i in sampled_rows]
            token_ids[rows] = self._sample(logits[rows], sub, gens)
        chosen = logprobs_all.gather(1, token_ids[:, None]).squeeze(1)
        k = max((p.num_top_logprobs or 0) for p in params)
        top_ids = top_lp = None
        if k > 0:
            top_lp, top_ids = logprobs_all.topk(min(k, logits.shape[1]), dim=-1)
        return SamplerOutput(token_ids, chosen, top_ids, top_lp)

    @staticmethod
    def _sample(
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:
        # logits: [S, V] fp32, rows that sample.
        device = logits.device
        temps = torch.tensor([p.temperature for p in params], device=device)
        logits = logits / temps[:, None]
        top_ks = [p.top_k for p in params]
        top_ps = [p.top_p for p in params]
        if any(top_ks) or any(p < 1.0 for p in top_ps):
            logits = _top_k_top_p(logits, top_ks, top_ps)
        probs = torch.softmax(logits, dim=-1)
        noise = torch.empty_like(probs)
        unseeded = [i for i, g in enumerate(generators) if g is None]
        if unseeded:
            noise[unseeded] = torch.empty_like(probs[unseeded]).exponential_()
        for i, g in enumerate(generators):
            if g is not None:
                noise[i].exponential_(generator=g)
        return (probs / noise.clamp_min(_EPS)).argmax(dim=-1)




def _top_k_top_p(logits: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and top-p set.

    Args:
        logits: [S, V] fp32, temperature already applied.
        top_ks: per row; 0 keeps all.
        top_ps: per row, in (0, 1].

    Returns:
        [S, V] masked logits.
    """
    vocab = logits.shape[1]
    device = logits.device
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [S, V]
    k = torch.tensor([t if 0 < t < vocab else vocab for t in top_ks], device=device)
    rank = torch.arange(vocab, device=device)[None, :]
    drop = rank >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    p = torch.tensor(top_ps, device=device)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Mass strictly before each token: a token is kept while that mass is below top_p, so
    # the most likely token always survives. A row with top_p 1 keeps every token: its fp32
    # prefix mass can round to 1 before a large vocabulary's tail, which would then be cut
    # only when a batch neighbour's top-k or top-p ran this pass (a seeded draw depending on
    # its batch).
    before = probs.cumsum(dim=-1) - probs
    cut = (before >= p[:, None]) & (p[:, None] < 1.0)
    sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
