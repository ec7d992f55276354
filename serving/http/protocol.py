"""OpenAI wire types (pydantic models that validate their own fields) and r2r's routing extras."""
from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from r2r.router.policies import PolicyKind
from r2r.serving.decoding.generation import RoutingMode

MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 4
MAX_CHOICES = 8
INT64 = 2**63  # seeds are 64-bit signed integers (as vLLM takes them); torch takes any 64-bit pattern
MAX_TOP_K = 2**31 - 1
MIN_TEMPERATURE = 1e-5  # below it (but above 0, greedy) logits / T overflow float32 and sampling fails


def _encodable(text: str) -> str:
    """JSON can carry lone UTF-16 surrogates ("\\udcff") that no UTF-8 tokenizer can take: a client's mistake."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode at character {exc.start} (a lone UTF-16 surrogate)") from exc
    return text


Text = Annotated[str, AfterValidator(_encodable)]  # text that reaches a tokenizer


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SamplingFields(BaseModel):
    """Every field is validated here, ranges included: what passes can be decoded (NaN and infinities are refused
    in every float field)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None  # None: the served model (as SGLang and vLLM default it)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K)
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)  # also fixes seeded routing (the random policy)
    stop: Text | list[Text] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    # routing extras
    policy: PolicyKind | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    llm_share: float | None = Field(default=None, ge=0.0, le=1.0)
    mode: RoutingMode | None = None
    timeout: float | None = Field(default=None, gt=0.0)  # seconds; the server's --request-timeout caps it

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise ValueError(f"stop must be up to {MAX_STOP_STRINGS} non-empty strings")
        return v

    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None  # chat: bool (+ top_logprobs); completions: the number of top log-probs
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    r2r_token_info: bool = False  # per-token source and router score on stream chunks (the playground)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if 0.0 < v < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return v

    @model_validator(mode="after")
    def _supported(self) -> SamplingFields:
        count = self.logprobs
        if not isinstance(count, bool) and count is not None and not 0 <= count <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        if self.top_logprobs is not None and self.logprobs is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.logprob_count is not None and self.mode == RoutingMode.SPECULATIVE:
            raise ValueError("logprobs need mode 'sequential' (chosen by default when logprobs are asked for): "
                             "speculative routing accepts drafted tokens without every writer's distribution")
        if self.stream and self.n > 1:
            raise ValueError("streaming supports n=1 only")
        return self

    @property
    def logprob_count(self) -> int | None:
        """How many top log-probs per token (0: only the chosen token's), or None when not asked for."""
        if self.logprobs is None or self.logprobs is False:
            return None
        if self.logprobs is True:
            return self.top_logprobs or 0
        return int(self.logprobs)

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class ChatMessage(BaseModel):
    role: Role
    content: Text


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    prompt: Text = Field(min_length=1)
    # condition on the prompt's bytes exactly, also when it ends inside a token (no token healing)
    exact_prompt_boundary: bool = False


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
