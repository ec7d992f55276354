"""Continuous batching: one loop thread runs the routed engine for every concurrent request.

Between two engine steps the loop admits queued requests (prefilled together), drops cancelled and
expired ones (their sequences closed and KV freed before the next step) and publishes each request's
progress as one immutable `Snapshot`; the HTTP layer reads snapshots only, never engine state.
Admission bounds memory: at most `max_running` sequences and `max_tokens` prompt+completion tokens in
the running batch; the rest wait in a queue of at most `max_queue`, beyond which `submit` refuses (the
server answers 429). Every ticket may carry a deadline: past it, the loop fails it (HTTP 408) before
the next step, queued or running.

Faults stay with the request that causes them. Requests run in *groups*, each over its own engine: the
admission groups take new requests (the token-level engine, and a byte-level one for prompts conditioned
on as exact bytes, which may end mid-token; a cross-tokenizer pair's engine is byte-level and takes
both). When adding requests to a group or stepping it raises, its requests are released and replayed
from their prompts in two new groups (halves), until the request at fault is alone: it alone is failed
(HTTP 500, its traceback logged once). A replay writes the same tokens, since a request's output does
not depend on its batch and every request the server submits carries a seed; a streamed replay is
checked against what was already sent.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from r2r.router.policies import RoutingPolicy
from r2r.serving.decoding.engine import Engine, Pending
from r2r.serving.decoding.generation import Generation, RoutingMode
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.http.published import Published, Record

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


class Closed(Exception):
    """The scheduler is shutting down and takes no more requests."""


@dataclass(frozen=True)
class TicketError:
    """Why a ticket ended without a result, as the server answers it."""

    message: str
    status: int  # HTTP status: 408 past its deadline, 500 a fault while decoding, 503 shutting down
    code: str | None = None


FAULT = TicketError("internal error while decoding this request", 500, "internal_error")
SHUTDOWN = TicketError("the server is shutting down", 503, "shutting_down")
CANCELLED = TicketError("the request was cancelled", 499, "cancelled")


@dataclass(frozen=True)
class Snapshot:
    """What the loop has published for a ticket: replaced whole after each step, never mutated. Its sequences
    are immutable prefixes of the ticket's `Record` (`Published`), so publishing one costs O(new steps)."""

    token_ids: Published | tuple[int, ...] = ()
    sources: Published | tuple[str, ...] = ()
    scores: Published | tuple[float, ...] = ()
    pieces: Published | tuple[bytes, ...] | None = None  # byte-level engines: the bytes each step wrote
    logprobs: Published | tuple[float, ...] = ()  # when asked for
    top_logprobs: Published | tuple[tuple[tuple[int, float], ...], ...] = ()
    result: Generation | None = None  # set when finished (the engine no longer touches it)
    error: TicketError | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


def snapshot_of(record: Record, gen: Generation, with_logprobs: bool, result: bool = False) -> Snapshot:
    """An immutable snapshot of a generation in progress (or finished: `result`): `record` catches up on the
    steps it has not recorded, and the snapshot reads its prefix as it stands."""
    record.catch_up(gen, with_logprobs)
    return Snapshot(**record.view(), result=gen if result else None)


@dataclass(eq=False)
class Ticket:
    """One submitted request. The loop thread writes `snapshot`; handlers only read it."""

    prompt: list[int]
    params: SamplingParams
    policy: RoutingPolicy
    mode: RoutingMode
    notify: Callable[[], None]  # called (from the loop thread) after each publication; must not raise
    prompt_text: str | None = None  # set: condition on these bytes exactly (a byte-level engine)
    stream: bool = True  # publish (and notify) after every step; False: only when it ends
    deadline: float | None = None  # time.monotonic() past which it fails with 408
    routing_key: int | None = None  # the stream key seeded policies draw from (None: `key`); a replay keeps it
    key: int = 0  # set by `submit`: unique in this scheduler
    snapshot: Snapshot = field(default_factory=Snapshot)
    record: Record = field(default_factory=Record, repr=False)  # what snapshots publish (the loop appends)
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    # the loop thread's own state
    group: _Group | None = field(default=None, repr=False)
    request: Pending | None = field(default=None, repr=False)
    replayed: bool = False

    @property
    def stream_key(self) -> int:
        return self.key if self.routing_key is None else self.routing_key

    @property
    def budget(self) -> int:
        return len(self.prompt) + self.params.max_tokens

    @property
    def result(self) -> Generation | None:
        return self.snapshot.result

    @property
    def error(self) -> TicketError | None:
        return self.snapshot.error


@dataclass(eq=False)
class _Group:
    """Requests stepped together over one engine."""

    engine: Engine
    make: Callable[[], Engine]  # a fresh engine of the same kind (for replays)
    admits: bool  # an admission group: replaced by a fresh engine, not dropped, when it fails
    tickets: list[Ticket] = field(default_factory=list)  # added to the engine
    pending: list[Ticket] = field(default_factory=list)  # to add before its next step (a replayed half)


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
    failed: int = 0  # a fault while decoding (500)
    expired: int = 0  # past their deadline (408)
    replays: int = 0  # requests replayed to isolate a fault
    tokens: int = 0
    llm_tokens: int = 0
    steps: int = 0
    batch_size_sum: int = 0  # running requests summed over steps (mean batch = this / steps)
    latency: Histogram = field(default_factory=Histogram)


class Scheduler:
    def __init__(self, make_engine: Callable[[], Engine], cfg: SchedulerConfig,
                 make_byte_engine: Callable[[], Engine] | None = None, own_thread: bool = True,
                 lock: threading.RLock | None = None) -> None:
        """`make_engine`: makes the token-level engine (called now, and again for replays).
        `make_byte_engine`: makes the engine of `prompt_text` tickets (first on their first use); None: the
        token engine is itself byte-level (a cross-tokenizer pair's) and takes them. `lock`: held around
        every engine call (the pair's, so that direct `generate` calls can share its backends).
        `own_thread` False: the caller runs the loop with `run()`, e.g. on the main thread, where torch's
        CPU kernels run up to twice as fast as on a second thread (measured on 2 cores)."""
        self.cfg = cfg
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._main = _Group(make_engine(), make_engine, admits=True)
        self._make_byte = make_byte_engine
        self._byte: _Group | None = None if make_byte_engine is not None else self._main
        self._groups: list[_Group] = [self._main]
        self.metrics = Metrics()
        self._queue: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._cancel: list[Ticket] = []
        self._cv = threading.Condition()
        self._stop = False
        self._looping = False
        self._keys = 0
        self._thread: threading.Thread | None = None
        if own_thread:
            self._thread = threading.Thread(target=self.run, name="r2r-scheduler", daemon=True)
            self._thread.start()

    # -- called from request handlers --------------------------------------------------------
    def submit(self, ticket: Ticket) -> None:
        with self._cv:
            if self._stop:
                raise Closed(SHUTDOWN.message)
            if len(self._queue) >= self.cfg.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(f"the server is at capacity ({len(self._queue)} requests waiting); retry later")
            self._keys += 1
            ticket.key = self._keys
            self.metrics.requests += 1
            self._queue.append(ticket)
            self._cv.notify()

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request (its client went away): a queued one now, a running one before the next step."""
        with self._cv:
            if ticket.snapshot.done or ticket.cancelled:
                return
            ticket.cancelled = True
            if ticket in self._queue:
                self._queue.remove(ticket)
                self.metrics.cancelled += 1
            else:
                self._cancel.append(ticket)
                self._cv.notify()

    def close(self) -> None:
        """Stop the loop after the step in progress; every waiting and running ticket fails with 503."""
        with self._cv:
            self._stop = True
            queued, self._queue = list(self._queue), deque()
            self._cv.notify()
        for t in queued:
            self._end(t, SHUTDOWN)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        elif not self._looping:
            self._fail_running(SHUTDOWN)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def active_sequences(self) -> int:
        return sum(len(g.engine.active) for g in list(self._groups))

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """The scheduling loop; returns after `close()`."""
        self._looping = True
        try:
            while True:
                with self._cv:
                    while not (self._stop or self._queue or self._running or self._cancel):
                        self._cv.wait()
                    if self._stop:
                        return
                    cancels, self._cancel = self._cancel, []
                    expired = self._expired_queued()
                    admitted = self._admit()
                for t in expired:
                    self._expire(t)
                self._drop(cancels)
                self._expire_running()
                self._start(admitted)
                self._step()
        finally:
            self._looping = False
            self._fail_running(SHUTDOWN)

    def _admit(self) -> list[Ticket]:
        admitted: list[Ticket] = []
        in_flight = sum(t.budget for t in self._running)
        while self._queue and len(self._running) + len(admitted) < self.cfg.max_running:
            ticket = self._queue[0]
            if admitted or self._running:
                if in_flight + ticket.budget > self.cfg.max_tokens:
                    break
            self._queue.popleft()
            in_flight += ticket.budget
            admitted.append(ticket)
        return admitted

    def _start(self, tickets: list[Ticket]) -> None:
        self._running += tickets
        if self._byte is None and any(t.prompt_text is not None for t in tickets):
            self._byte = _Group(self._make_byte(), self._make_byte, admits=True)
            self._groups.append(self._byte)
        self._add(self._main, [t for t in tickets if t.prompt_text is None or self._byte is self._main])
        if self._byte is not self._main:
            self._add(self._byte, [t for t in tickets if t.prompt_text is not None])

    def _add(self, group: _Group, tickets: list[Ticket]) -> None:
        """Prefill `tickets` into `group`'s engine (token prompts and exact-byte prompts, one batch each)."""
        if not tickets:
            return
        token = [t for t in tickets if t.prompt_text is None]
        exact = [t for t in tickets if t.prompt_text is not None]
        try:
            with self._lock:
                if token:
                    reqs = group.engine.add([t.prompt for t in token], [t.params for t in token],
                                            [t.policy for t in token], [t.mode for t in token], [t.stream_key for t in token])
                    self._attach(group, token, reqs)
                if exact:
                    reqs = group.engine.add_texts([t.prompt_text for t in exact], [t.params for t in exact],
                                                  [t.policy for t in exact], [t.mode for t in exact],
                                                  [t.stream_key for t in exact], as_bytes=[True] * len(exact))
                    self._attach(group, exact, reqs)
        except Exception as exc:  # noqa: BLE001 - any fault here is isolated, not raised: see the module docstring
            self._replay(group, tickets, exc, "adding")

    @staticmethod
    def _attach(group: _Group, tickets: list[Ticket], reqs: list[Pending]) -> None:
        for t, r in zip(tickets, reqs):
            t.group, t.request = group, r
            group.tickets.append(t)

    def _step(self) -> None:
        for g in [g for g in self._groups if g.pending]:
            pending, g.pending = g.pending, []
            self._add(g, pending)
        stepping = [g for g in self._groups if g.tickets]
        if not stepping:
            return
        self.metrics.steps += 1
        self.metrics.batch_size_sum += len(self._running)
        for g in stepping:
            try:
                with self._lock:
                    finished = g.engine.step()
            except Exception as exc:  # noqa: BLE001 - isolated, not raised: see the module docstring
                self._replay(g, list(g.tickets), exc, "a step")
                continue
            self._publish(g, finished)
        self._groups = [g for g in self._groups if g.admits or g.tickets or g.pending]

    def _publish(self, group: _Group, finished: list[Pending]) -> None:
        done = {id(r) for r in finished}
        for t in list(group.tickets):
            out, ended = t.request.out, id(t.request) in done
            if not (t.stream or ended):
                continue  # a waiting (non-streaming) handler is woken once, with the result
            if ended:  # the engine released it
                group.tickets.remove(t)
                t.group, t.request = None, None
            if len(out.token_ids) <= len(t.snapshot.token_ids) and not ended:
                continue
            if t.replayed and t.stream:  # checked once, when the replay has caught up with what was streamed
                n = len(t.snapshot.token_ids)
                if out.token_ids[:n] != t.record.token_ids[:n]:
                    log.error("request %d: its replay wrote other tokens than were streamed; failing it", t.key)
                    self.metrics.failed += 1
                    self._end(t, FAULT)
                    continue
                t.replayed = False
            if ended:
                self.metrics.finished += 1
                self.metrics.tokens += len(out.token_ids)
                self.metrics.llm_tokens += out.stats.llm_tokens
                self.metrics.latency.observe(time.monotonic() - t.submitted)
                self._running.remove(t)
            t.snapshot = snapshot_of(t.record, out, t.params.logprobs is not None, result=ended)
            t.notify()

    # -- faults, cancellations, deadlines ----------------------------------------------------
    def _replay(self, group: _Group, tickets: list[Ticket], exc: Exception, during: str) -> None:
        """`tickets` met a fault in `group`: release them; fail a lone one, replay more in two halves."""
        if during == "a step":  # the engine's state is suspect: a fresh engine, or none
            for t in list(group.tickets):
                self._release(t)
            group.tickets = []
            if group.admits:
                group.engine = group.make()
        else:
            for t in tickets:
                self._release(t)
        tickets = [t for t in tickets if not t.cancelled]
        if len(tickets) == 1:
            (t,) = tickets
            log.error("request %d failed while %s; failing it alone", t.key, "adding it" if during == "adding"
                      else "stepping it", exc_info=exc)
            self.metrics.failed += 1
            self._end(t, FAULT)
            return
        if not tickets:
            return
        log.warning("%s failed for %d requests (%s: %s); replaying them in halves to find the one at fault",
                    during, len(tickets), type(exc).__name__, exc)
        half = len(tickets) // 2
        for part in (tickets[:half], tickets[half:]):
            replay = _Group(group.make(), group.make, admits=False, pending=part)
            self._groups.append(replay)
            for t in part:
                t.group, t.request, t.replayed = replay, None, True
            self.metrics.replays += len(part)

    def _release(self, t: Ticket) -> None:
        """Take `t`'s request out of its engine, freeing its sequences (best effort after a fault)."""
        if t.request is None:
            return
        try:
            with self._lock:
                t.group.engine.cancel(t.request)
        except Exception:  # noqa: BLE001 - the engine failed already; its sequences may be gone with it
            log.warning("request %d: releasing its sequences failed", t.key, exc_info=True)
        if t in t.group.tickets:
            t.group.tickets.remove(t)
        t.request = None

    def _end(self, t: Ticket, error: TicketError) -> None:
        """Fail `t` (not running any more) with `error` and wake its handler."""
        if t.group is not None:
            self._release(t)
            if t in t.group.pending:
                t.group.pending.remove(t)
            t.group = None
        if t in self._running:
            self._running.remove(t)
        t.snapshot = Snapshot(t.snapshot.token_ids, t.snapshot.sources, t.snapshot.scores, t.snapshot.pieces,
                              t.snapshot.logprobs, t.snapshot.top_logprobs, error=error)
        t.notify()

    def _drop(self, cancels: list[Ticket]) -> None:
        for t in cancels:
            if t in self._running:
                self.metrics.cancelled += 1
                self._end(t, CANCELLED)

    def _expired_queued(self) -> list[Ticket]:
        """Queued tickets past their deadline, taken out of the queue (called holding the lock)."""
        now = time.monotonic()
        expired = [t for t in self._queue if t.deadline is not None and t.deadline <= now]
        for t in expired:
            self._queue.remove(t)
        return expired

    def _expire_running(self) -> None:
        now = time.monotonic()
        for t in [t for t in self._running if t.deadline is not None and t.deadline <= now]:
            self._expire(t)

    def _expire(self, t: Ticket) -> None:
        self.metrics.expired += 1
        waited = time.monotonic() - t.submitted
        self._end(t, TicketError(f"the request did not finish within its deadline ({waited:.1f} s)", 408,
                                 "deadline_exceeded"))

    def _fail_running(self, error: TicketError) -> None:
        for t in list(self._running):
            self._end(t, error)
