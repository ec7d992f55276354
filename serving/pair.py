"""Model pairs: presets and explicit SLM/LLM directories, loaded behind backends with one tokenizer."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import torch

from r2r.router.checkpoint import LearnedPolicy, load_router
from r2r.router.policies import PolicyKind, RoutingPolicy, make_policy
from r2r.serving.backends.base import Backend
from r2r.serving.backends.shared_body import materialize_weights
from r2r.serving.backends.threads import PassThreads
from r2r.serving.decoding.generation import Generation, RoutingMode
from r2r.serving.real_models import CACHE_DIR, GEMMA3_DIR, SMOLLM2_DIR
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.routed import generate_sequential, generate_speculative
from r2r.serving.decoding.stopping import StopRule

log = logging.getLogger(__name__)


# The embedded pair's folder sits beside this package's in both layouts: <repo>/models next to <repo>/serving, and
# site-packages/r2r/models next to site-packages/r2r/serving in an installed wheel (pyproject's package-dir).
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_CONFIDENCE_THRESHOLD = 0.1  # confidence/entropy routing when no threshold is given


@dataclass(frozen=True)
class PairSpec:
    name: str
    slm: Path
    llm: Path
    router: Path | None = None  # a trained router checkpoint for this SLM


PRESETS: dict[str, PairSpec] = {
    "testbed": PairSpec("testbed", MODELS_DIR / "testbed" / "slm", MODELS_DIR / "testbed" / "llm",
                        MODELS_DIR / "testbed" / "router"),
    # the same SLM routed to the LLM with another tokenizer (exact byte-level handoff), its router trained on
    # labels from this pair
    "testbed-x": PairSpec("testbed-x", MODELS_DIR / "testbed" / "slm", MODELS_DIR / "testbed" / "llm-x",
                          MODELS_DIR / "testbed" / "router-x"),
    # GPU pair of the published method; hub ids are fetched on first use (needs hub access), serve it with
    # --backend sglang; a router comes from `r2r label` + `r2r train-router` on this pair (--router DIR)
    # real pair with different tokenizers (byte-level BPE vs SentencePiece): `r2r models fetch smol-gemma` first
    "smol-gemma": PairSpec("smol-gemma", CACHE_DIR / SMOLLM2_DIR, CACHE_DIR / GEMMA3_DIR),
    "r1-1.5b-32b": PairSpec("r1-1.5b-32b", Path("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"),
                            Path("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B")),
}


def resolve_pair(pair: str | None, slm: str | None, llm: str | None, router: str | None = None) -> PairSpec:
    """A preset by name, or explicit directories; --router overrides the preset's router."""
    if slm or llm:
        if not (slm and llm):
            raise ValueError("give both --slm and --llm, or a --pair preset")
        spec = PairSpec("custom", Path(slm), Path(llm))
    else:
        name = pair or "testbed"
        if name not in PRESETS:
            raise ValueError(f"unknown pair {name!r}; presets: {', '.join(PRESETS)}")
        spec = PRESETS[name]
    return replace(spec, router=Path(router)) if router else spec


@dataclass
class ModelPair:
    """The two backends of a routed pair and their tokenizers (the SLM's unless the LLM's differs).

    Thread-safe: the backends hold one resident batch each, so one caller at a time decodes on them. `generate`
    holds `lock` for its whole run (concurrent callers take turns, each getting what it would get alone), and
    the server's scheduler holds it around each engine step; join prompts into one `generate` call to batch
    them."""

    spec: PairSpec
    slm: Backend
    llm: Backend
    tokenizer: object  # the SLM's transformers tokenizer: prompts and token-level outputs use it
    llm_tokenizer: object | None = None  # set when the LLM's tokenizer differs: cross-tokenizer routing
    _router: LearnedPolicy | None = field(default=None, repr=False)
    _byte_models: tuple | None = field(default=None, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def cross(self) -> bool:
        """Different tokenizers: decoding shares bytes, not token ids (serving.byte_level.cross_tokenizer)."""
        return self.llm_tokenizer is not None

    def byte_models(self) -> tuple:
        """(SLM, LLM) as `ByteLevelLM`s over this pair's backends, built once."""
        if self._byte_models is not None:
            return self._byte_models
        from r2r.serving.byte_level.probabilities import ByteLevelLM

        with self.lock:
            if self._byte_models is None:
                self._byte_models = (ByteLevelLM(self.slm, self.tokenizer),
                                     ByteLevelLM(self.llm, self.llm_tokenizer or self.tokenizer))
        return self._byte_models

    def byte_engine(self):
        """A byte-level engine over this pair (cross pairs; exact prompt boundaries on any pair)."""
        from r2r.serving.byte_level.cross_tokenizer import CrossEngine

        return CrossEngine(*self.byte_models(), context_length=self.context_length)

    def engine(self):
        """The decoding engine the scheduler drives: token-level, or byte-level for a cross pair."""
        if self.cross:
            return self.byte_engine()
        from r2r.serving.decoding.routed import RoutedEngine

        return RoutedEngine(self.slm, self.llm, self.stop_rule())

    def decode_output(self, gen: Generation, n: int | None = None) -> str:
        """The text of the first n output steps (all by default), special tokens dropped."""
        if gen.pieces is not None:
            return b"".join(gen.pieces[:n]).decode("utf-8", errors="replace")
        ids = gen.token_ids[:n]
        return self.tokenizer.decode([i for i in ids if i not in self.eos_ids], skip_special_tokens=False)

    @property
    def default_policy(self) -> PolicyKind:
        """Learned when the pair has a router checkpoint, else entropy routing."""
        has_router = self.spec.router is not None and (self.spec.router / "router.json").exists()
        return PolicyKind.LEARNED if has_router else PolicyKind.ENTROPY

    def learned_policy(self) -> LearnedPolicy:
        """The pair's trained router (loaded once), checked against this SLM."""
        if self._router is not None:
            return self._router
        if self.spec.router is None:
            raise ValueError("this pair has no trained router; pass --router DIR")
        with self.lock:
            if self._router is not None:
                return self._router
            table = self.slm.embed(torch.arange(self.slm.vocab_size))
            self._router = load_router(self.spec.router, self.slm.fingerprint, table, self.slm.returned_top_k)
        return self._router

    def policy(self, kind: PolicyKind | str, threshold: float | None = None, llm_share: float | None = None,
               seed: int = 0) -> RoutingPolicy:
        """A routing policy for this pair. `llm_share` is the random policy's rate, or a budget the
        learned router's threshold is set to (from its validation calibration)."""
        kind = PolicyKind(kind)
        if kind == PolicyKind.LEARNED:
            router = self.learned_policy()
            if threshold is not None and llm_share is not None:
                raise ValueError("give either a threshold or an llm_share, not both")
            if llm_share is not None:
                return router.with_threshold(router.threshold_for_share(llm_share))
            return router.with_threshold(threshold) if threshold is not None else router
        if llm_share is not None and kind != PolicyKind.RANDOM:
            raise ValueError(f"llm_share applies to the learned and random policies, not {kind.value}")
        if threshold is None and kind in (PolicyKind.CONFIDENCE, PolicyKind.ENTROPY):
            threshold = DEFAULT_CONFIDENCE_THRESHOLD
        return make_policy(kind, threshold=threshold, rate=llm_share, seed=seed)

    @property
    def eos_ids(self) -> frozenset[int]:
        eos = self.tokenizer.eos_token_id
        return frozenset() if eos is None else frozenset({eos})

    @property
    def context_length(self) -> int:
        return min(self.slm.max_length, self.llm.max_length)

    def stop_rule(self) -> StopRule:
        return StopRule(self.eos_ids, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False),
                        self.context_length)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the model {self.spec.slm} has no chat template; use /v1/completions")
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def check_sampling(self, params: list[SamplingParams]) -> None:
        """Backends without full-vocabulary distributions (SGLang) sample exactly only within their top-k;
        anything else is refused rather than silently approximated."""
        for b in (self.slm, self.llm):
            if b.exact_full_distribution:
                continue
            for p in params:
                if not p.greedy and not 1 <= p.top_k <= b.returned_top_k:
                    raise ValueError(f"{b.model_id} returns top-{b.returned_top_k} log-probs: sampling needs "
                                     f"top_k in 1..{b.returned_top_k} to be exact (or temperature 0)")

    def check_prompt(self, ids: list[int]) -> None:
        """User-facing validation of a prompt against the context."""
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise ValueError(f"the prompt has {len(ids)} tokens; the context is {self.context_length}")

    def generate(self, policy: RoutingPolicy, prompts: list[list[int]], params: list[SamplingParams],
                 mode: RoutingMode = RoutingMode.SPECULATIVE) -> list[Generation]:
        """Routed decoding of token-id prompts on this pair (speculative by default: same output, fewer LLM passes).
        Safe from several threads: a call waits for the one running (see the class docstring)."""
        for ids in prompts:
            self.check_prompt(ids)
        self.check_sampling(params)
        with self.lock:
            if self.cross:
                from r2r.serving.decoding.engine import run_engine

                return run_engine(self.engine(), prompts, params, [policy] * len(prompts), mode)
            decode = generate_speculative if mode == RoutingMode.SPECULATIVE else generate_sequential
            return decode(self.slm, self.llm, policy, prompts, params, self.stop_rule())


def resolve_model_dir(path: Path, role: str) -> Path:
    """A local directory, or an `org/name` hub id downloaded once into the HF cache."""
    if path.is_dir() or path.is_absolute() or len(path.parts) != 2:
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model"]))
    except Exception as exc:  # the hub client raises many types for offline/unknown repos; all mean "not here"
        raise FileNotFoundError(f"{role} model {path} is neither a directory nor a reachable hub id "
                                f"({type(exc).__name__})") from exc


def _check_model_dir(path: Path, role: str) -> None:
    if not path.is_dir():
        hint = ""
        if path.parent == CACHE_DIR:
            hint = " (run `r2r models fetch smol-gemma`)"
        elif MODELS_DIR in path.parents:
            hint = (" (the embedded pair comes with r2r: in a clone of the repository under models/testbed, in an "
                    "installed wheel as r2r/models; reinstall r2r from either)")
        raise FileNotFoundError(f"{role} model directory not found: {path}{hint}")
    for name in ("config.json",):
        if not (path / name).exists():
            raise FileNotFoundError(f"{role} model at {path} is missing {name}")
    materialize_weights(path)
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"{role} model at {path} has no weights (*.safetensors)")


class BackendKind(str, Enum):
    HF = "hf"  # transformers, CPU or CUDA
    SGLANG = "sglang"  # SGLang engines: GPUs (a CPU runs them for tests, `make test-sglang`)


@dataclass(frozen=True)
class BackendChoice:
    """Which runtime serves the pair. SGLang: both engines on the same GPUs, the LLM with tensor parallelism."""

    kind: BackendKind = BackendKind.HF
    pass_threads: PassThreads | None = None  # hf on CPU: threads per pass by its size
    llm_tp: int = 1
    slm_mem_fraction: float = 0.15
    llm_mem_fraction: float = 0.65

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", BackendKind(self.kind))
        except ValueError as exc:
            raise ValueError(f"unknown backend {self.kind!r}; use {' or '.join(k.value for k in BackendKind)}") from exc
        if self.llm_tp < 1:
            raise ValueError(f"--llm-tp must be positive, got {self.llm_tp}")


def _backends(spec: PairSpec, device: str | None, choice: BackendChoice) -> tuple[Backend, Backend]:
    if choice.kind == BackendKind.HF:
        from r2r.serving.backends.hf import HFBackend

        return (HFBackend(spec.slm, device, pass_threads=choice.pass_threads),
                HFBackend(spec.llm, device, pass_threads=choice.pass_threads))
    from r2r.serving.backends.sglang import SGLangBackend, SGLangConfig, SGLangDevice, require_sglang

    sgl_device = SGLangDevice(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    require_sglang(sgl_device)  # before either engine starts: one line, not a traceback, where it cannot
    slm = SGLangBackend(SGLangConfig(str(spec.slm), device=sgl_device, mem_fraction_static=choice.slm_mem_fraction))
    try:
        llm = SGLangBackend(SGLangConfig(str(spec.llm), device=sgl_device, tp_size=choice.llm_tp,
                                         mem_fraction_static=choice.llm_mem_fraction))
    except BaseException:
        slm.shutdown()
        raise
    return slm, llm


def load_pair(spec: PairSpec, device: str | None = None, backend: BackendChoice | None = None) -> ModelPair:
    """Load both models behind backends and check that they share the SLM's tokenizer."""
    from transformers import AutoTokenizer

    spec = replace(spec, slm=resolve_model_dir(spec.slm, "SLM"), llm=resolve_model_dir(spec.llm, "LLM"))
    _check_model_dir(spec.slm, "SLM")
    _check_model_dir(spec.llm, "LLM")
    tokenizer = AutoTokenizer.from_pretrained(spec.slm)
    llm_tokenizer = AutoTokenizer.from_pretrained(spec.llm)
    cross = tokenizer.get_vocab() != llm_tokenizer.get_vocab()
    choice = backend or BackendChoice()
    if cross and choice.kind != BackendKind.HF:
        raise ValueError("cross-tokenizer pairs need full next-token distributions: use --backend hf")
    slm, llm = _backends(spec, device, choice)
    for role, b, tok in (("SLM", slm, tokenizer), ("LLM", llm, llm_tokenizer)):
        if len(tok) > b.vocab_size:
            raise ValueError(f"the tokenizer has {len(tok)} tokens but the {role} ({b.model_id}) "
                             f"only {b.vocab_size}: they do not belong together")
    if cross:
        log.info("the SLM and LLM tokenizers differ: routing through exact byte-level handoff")
    return ModelPair(spec, slm, llm, tokenizer, llm_tokenizer if cross else None)
