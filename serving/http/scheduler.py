"""Continuous batching: one loop thread runs the routed engine for every concurrent request.

Between two engine steps the loop admits queued requests (prefilled together), drops
cancelled ones (their sequences closed and KV freed before the next step) and publishes
each request's new tokens. Admission bounds memory: at most `max_running` sequences and
`max_tokens` prompt+completion tokens in the running batch; the rest wait in a queue of at
most `max_queue`, beyond which `submit` refuses (the server answers 429).

Requests whose prompt is conditioned on as exact bytes (it may end mid-token) run on a
byte-level engine (`CrossEngine`), stepped in the same loop: the pair's own engine for a
cross-tokenizer pair, else one made on first use over the same backends.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from router.policies import RoutingPolicy
from serving.byte_level.cross_tokenizer import CrossEngine, CrossRequest
from serving.decoding.engine import Engine, Request
from serving.decoding.generation import Generation, RoutingMode
from serving.decoding.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    max_running: int = 32
    max_tokens: int = 65536  # prompt + max_tokens summed over running requests
    max_queue: int = 256

    def __post_init__(self) -> None:
        if min(self.max_running, self.max_tokens, self.max_queue) < 1:
            raise ValueError(f"scheduler limits must be positive: {self}")


class QueueFull(Exception):
    """The waiting queue is at its limit."""


@dataclass
class Ticket:
    """One submitted request and what the loop has published for it."""

    prompt: list[int]
    params: SamplingParams
    policy: RoutingPolicy
    mode: RoutingMode
    notify: Callable[[], None]  # called (from the loop thread) after each publication
    prompt_text: str | None = None  # set: condition on these bytes exactly (a byte-level engine)
    stream: bool = True  # publish (and notify) after every step; False: only when it ends
    key: int = 0
    engine: Engine | None = None  # the engine running it
    request: Request | CrossRequest | None = None
    tokens: list[int] = field(default_factory=list)  # published so far
    sources: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    result: Generation | None = None  # set when finished
    error: str | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)

    @property
    def budget(self) -> int:
        return len(self.prompt) + self.params.max_tokens


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    """Cumulative-bucket histogram in the Prometheus sense."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))] += 1
        self.total += value
        self.n += 1


@dataclass
class Metrics:
    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    rejected: int = 0
    tokens: int = 0
    llm_tokens: int = 0
    steps: int = 0
    batch_size_sum: int = 0  # running requests summed over steps (mean batch = this / steps)
    latency: Histogram = field(default_factory=Histogram)


class Scheduler:
    def __init__(self, engine: Engine, cfg: SchedulerConfig, byte_engine: Callable[[], CrossEngine] | None = None,
                 own_thread: bool = True) -> None:
        """`byte_engine`: makes the engine of `prompt_text` tickets (called once, on first use).
        `own_thread` False: the caller runs the loop with `run()`, e.g. on the main thread, where
        torch's CPU kernels run up to twice as fast as on a second thread (measured on 2 cores)."""
        self.engine, self.cfg = engine, cfg
        self._make_byte_engine = byte_engine
        self._byte_engine: CrossEngine | None = None
        self.metrics = Metrics()
        self._queue: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._cancel: list[Ticket] = []
        self._cv = threading.Condition()
        self._stop = False
        self._keys = 0
        self._thread: threading.Thread | None = None
        if own_thread:
            self._thread = threading.Thread(target=self.run, name="r2r-scheduler", daemon=True)
            self._thread.start()

    # -- called from request handlers --------------------------------------------------------
    def submit(self, ticket: Ticket) -> None:
        with self._cv:
            if len(self._queue) >= self.cfg.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(f"the server is at capacity ({len(self._queue)} requests waiting); retry later")
            self._keys += 1
            ticket.key = self._keys
            self.metrics.requests += 1
            self._queue.append(ticket)
            self._cv.notify()

    def cancel(self, ticket: Ticket) -> None:
        with self._cv:
            if ticket.result is None and not ticket.cancelled:
                ticket.cancelled = True
                self._cancel.append(ticket)
                self._cv.notify()

    def close(self) -> None:
        """Stop the loop (after the step in progress)."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def active_sequences(self) -> int:
        return sum(len(e.active) for e in self._engines)

    @property
    def _engines(self) -> list[Engine]:
        return [self.engine] + ([self._byte_engine] if self._byte_engine not in (None, self.engine) else [])

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """The scheduling loop; returns after `close()`."""
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._running and not self._cancel:
                    self._cv.wait()
                if self._stop:
                    return
                cancels, self._cancel = self._cancel, []
                admitted = self._admit()
            try:
                self._drop(cancels)
                self._start(admitted)
                if self._running:
                    self.metrics.batch_size_sum += len(self._running)
                    finished = [r for e in self._engines if e.active for r in e.step()]
                    self.metrics.steps += 1
                    self._publish(finished)
            except Exception:  # keep serving: fail the requests in flight, not the server
                log.exception("engine step failed")
                self._fail_all("internal error while decoding")

    def _admit(self) -> list[Ticket]:
        admitted: list[Ticket] = []
        in_flight = sum(t.budget for t in self._running)
        while self._queue and len(self._running) + len(admitted) < self.cfg.max_running:
            ticket = self._queue[0]
            if ticket.cancelled:
                self._queue.popleft()
                continue
            if admitted or self._running:
                if in_flight + ticket.budget > self.cfg.max_tokens:
                    break
            self._queue.popleft()
            in_flight += ticket.budget
            admitted.append(ticket)
        return admitted

    def _start(self, tickets: list[Ticket]) -> None:
        live = [t for t in tickets if not t.cancelled]
        self._running += live  # before adding: if an add raises, _fail_all must still wake these tickets
        tokens = [t for t in live if t.prompt_text is None]
        if tokens:
            reqs = self.engine.add([t.prompt for t in tokens], [t.params for t in tokens],
                                   [t.policy for t in tokens], [t.mode for t in tokens], [t.key for t in tokens])
            for t, r in zip(tokens, reqs):
                t.engine, t.request = self.engine, r
        exact = [t for t in live if t.prompt_text is not None]
        if exact:
            if self._byte_engine is None:
                self._byte_engine = self._make_byte_engine()
            reqs = self._byte_engine.add_texts([t.prompt_text for t in exact], [t.params for t in exact],
                                               [t.policy for t in exact], [t.mode for t in exact],
                                               [t.key for t in exact], as_bytes=[True] * len(exact))
            for t, r in zip(exact, reqs):
                t.engine, t.request = self._byte_engine, r

    def _drop(self, cancels: list[Ticket]) -> None:
        for t in cancels:
            if t.request is not None and t in self._running:
                t.engine.cancel(t.request)
                self._running.remove(t)
                self.metrics.cancelled += 1
                t.notify()

    def _publish(self, finished: list[Request | CrossRequest]) -> None:
        done_ids = {id(r) for r in finished}
        for t in self._running:
            out, done = t.request.out, id(t.request) in done_ids
            if not (t.stream or done):
                continue  # a waiting (non-streaming) handler is woken once, with the result
            if len(out.token_ids) > len(t.tokens):
                t.tokens = list(out.token_ids)
                t.sources = [s.value for s in out.sources]
                t.scores = list(out.scores)
            if done:
                t.result = out
                self.metrics.finished += 1
                self.metrics.tokens += len(out.token_ids)
                self.metrics.llm_tokens += out.stats.llm_tokens
                self.metrics.latency.observe(time.monotonic() - t.submitted)
            t.notify()
        self._running = [t for t in self._running if t.result is None]

    def _fail_all(self, message: str) -> None:
        for t in self._running:
            if t.request is not None:
                t.engine.cancel(t.request)
            t.error = message
            t.notify()
        self._running = []
