"""The continuous-batching scheduler over fake backends: results equal direct decoding; who gets woken when; a
fault in one request fails that request alone; deadlines, cancellations and close."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from r2r.router.policies import PolicyKind, RandomPolicy, RouteInput
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.decoding.routed import RoutedEngine, generate_sequential, generate_speculative
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.decoding.stopping import StopRule
from r2r.serving.http.published import Published
from r2r.serving.http.scheduler import FAULT, SHUTDOWN, Scheduler, SchedulerConfig, Snapshot, Ticket
from tests.fakes import FakeBackend

VOCAB, EOS = 12, 11


def _pair() -> tuple[FakeBackend, FakeBackend, StopRule]:
    rule = StopRule(frozenset({EOS}), lambda ids: "", 64)
    return FakeBackend(VOCAB, seed=1), FakeBackend(VOCAB, seed=2), rule


class _Waiter:
    """Tickets' notify callbacks: counts wakes and every snapshot seen; `done` once the snapshot is final."""

    def __init__(self) -> None:
        self.wakes, self.seen, self.done = 0, [], threading.Event()
        self.ticket: Ticket | None = None

    def __call__(self) -> None:
        self.wakes += 1
        snap = self.ticket.snapshot
        self.seen.append(snap)
        if snap.done:
            self.done.set()


def _ticket(prompt: list[int], params: SamplingParams, policy, mode=RoutingMode.SEQUENTIAL, stream: bool = False,
            deadline: float | None = None) -> Ticket:
    waiter = _Waiter()
    waiter.ticket = Ticket(prompt, params, policy, mode, waiter, stream=stream, deadline=deadline)
    return waiter.ticket


def _wait_all(tickets: list[Ticket]) -> None:
    for t in tickets:
        assert t.notify.done.wait(timeout=600), f"ticket {t.key} was never finished"


def test_non_streaming_ticket_is_woken_once_with_its_result() -> None:
    slm, llm, rule = _pair()
    policy = RandomPolicy(rate=0.3, seed=0)
    params = SamplingParams(max_tokens=20)
    prompts = [[1, 2, 3], [4, 5]]
    want = generate_sequential(slm, llm, policy, prompts, [params] * 2, rule, stream_keys=[1, 2])
    engine_backends = _pair()
    scheduler = Scheduler(lambda: RoutedEngine(*engine_backends), SchedulerConfig())
    tickets = [_ticket(prompts[i], params, policy, stream=i == 0) for i in (0, 1)]
    try:
        for t in tickets:
            scheduler.submit(t)
        _wait_all(tickets)
    finally:
        scheduler.close()
    assert [t.result.token_ids for t in tickets] == [g.token_ids for g in want]
    assert tickets[1].notify.wakes == 1  # only when it ended
    assert tickets[0].notify.wakes == len(tickets[0].result.token_ids) > 1  # after every step (one token each)


def test_streamed_snapshots_are_whole_and_grow() -> None:
    """Every snapshot a handler can read pairs tokens with their own sources and scores; each extends the last."""
    backends = _pair()
    scheduler = Scheduler(lambda: RoutedEngine(*backends), SchedulerConfig())
    tickets = [_ticket([1 + i, 2, 3], SamplingParams(max_tokens=24), RandomPolicy(rate=0.4, seed=1),
                       RoutingMode.SPECULATIVE if i % 2 else RoutingMode.SEQUENTIAL, stream=True) for i in range(6)]
    try:
        for t in tickets:
            scheduler.submit(t)
        _wait_all(tickets)
    finally:
        scheduler.close()
    for t in tickets:
        prev = Snapshot()
        for snap in t.notify.seen:
            assert isinstance(snap.token_ids, Published), "an immutable prefix of the ticket's record, not a copy"
            assert len(snap.token_ids) == len(snap.sources) == len(snap.scores)
            assert snap.token_ids[:len(prev.token_ids)] == prev.token_ids and snap.scores[:len(prev.scores)] == \
                prev.scores, "a snapshot takes back what an earlier one published"
            prev = snap
        assert list(prev.token_ids) == t.result.token_ids and list(prev.sources) == [s.value for s in t.result.sources]


@dataclass
class _FaultyPolicy:
    """Scores like `inner`, but raises once a request reaches `position` (a bug that only this request meets)."""

    inner: RandomPolicy
    position: int
    kind: PolicyKind = PolicyKind.RANDOM
    needs_hidden: bool = False

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    def scores(self, inputs: RouteInput) -> torch.Tensor:
        if max(inputs.positions) >= self.position:
            raise RuntimeError("a fault only this request meets")
        return self.inner.scores(inputs)


def _run_with_one_bad(mode: RoutingMode, bad, bad_params: SamplingParams | None = None) -> None:
    """Seven requests, the fourth with `bad` (a policy) or `bad_params`: it alone fails, the others get their lone
    outputs, nothing leaks."""
    policy = RandomPolicy(rate=0.3, seed=0)
    params = [SamplingParams(max_tokens=16), SamplingParams(max_tokens=16, temperature=0.8, seed=7)]
    prompts = [[1 + i, 2, 3 + i % 3] for i in range(7)]
    backends = _pair()
    scheduler = Scheduler(lambda: RoutedEngine(*backends), SchedulerConfig(), own_thread=False)
    tickets = [_ticket(p, bad_params or params[i % 2] if i == 3 else params[i % 2], bad if i == 3 else policy, mode)
               for i, p in enumerate(prompts)]
    for t in tickets:
        scheduler.submit(t)  # all queued before the loop runs: admitted, and prefilled, together
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        _wait_all(tickets)
    finally:
        scheduler.close()
        loop.join()
    assert tickets[3].error == FAULT and tickets[3].result is None
    decode = generate_speculative if mode == RoutingMode.SPECULATIVE else generate_sequential
    for i, t in enumerate(tickets):
        if i != 3:
            lone = decode(*_pair()[:2], policy, [prompts[i]], [params[i % 2]], _pair()[2], stream_keys=[t.key])[0]
            assert t.error is None and t.result.token_ids == lone.token_ids, f"request {i} changed by another's fault"
    assert scheduler.metrics.failed == 1 and scheduler.metrics.finished == 6
    assert scheduler.running == 0 and scheduler.active_sequences == 0


def test_a_fault_while_stepping_fails_that_request_alone() -> None:
    for mode in RoutingMode:
        _run_with_one_bad(mode, _FaultyPolicy(RandomPolicy(rate=0.3, seed=0), position=5))


def test_a_fault_while_adding_fails_that_request_alone() -> None:
    """A seed torch cannot take (2**64) raises inside the engine's prefill of the whole admitted batch."""
    _run_with_one_bad(RoutingMode.SEQUENTIAL, RandomPolicy(rate=0.3, seed=0),
                      SamplingParams(max_tokens=16, temperature=0.8, seed=2**64))


def test_a_fault_while_adding_opens_no_sequence() -> None:
    """The engine itself: a batch refused for one request's field leaves no SLM sequence open behind it."""
    slm, llm, rule = _pair()
    engine = RoutedEngine(slm, llm, rule)
    params = [SamplingParams(max_tokens=4), SamplingParams(max_tokens=4, temperature=0.8, seed=2**64)]
    try:
        engine.add([[1, 2], [3, 4]], params, [RandomPolicy(rate=0.3, seed=0)] * 2, [RoutingMode.SEQUENTIAL] * 2,
                   [0, 1])
    except (ValueError, RuntimeError):
        pass
    else:
        raise AssertionError("a 2**64 seed was accepted")
    assert slm.open_sequences == 0 and engine.active == []


def test_a_failing_engine_fails_each_request_with_an_error() -> None:
    """A fault that is no request's own (every add raises): every ticket is woken with an error, none waits."""
    class Refusing(RoutedEngine):
        def add(self, *args, **kwargs):
            raise RuntimeError("engine refused the batch")

    scheduler = Scheduler(lambda: Refusing(*_pair()), SchedulerConfig(), own_thread=False)
    tickets = [_ticket([1, 2, 3], SamplingParams(max_tokens=5), RandomPolicy(rate=0.3, seed=0)) for _ in range(5)]
    for t in tickets:
        scheduler.submit(t)
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        _wait_all(tickets)
    finally:
        scheduler.close()
        loop.join()
    assert all(t.result is None and t.error == FAULT for t in tickets)


def test_deadlines_cancellation_and_close() -> None:
    backends = _pair()
    scheduler = Scheduler(lambda: RoutedEngine(*backends), SchedulerConfig(max_running=1), own_thread=False)
    params = SamplingParams(max_tokens=20)
    policy = RandomPolicy(rate=0.3, seed=0)
    expired = _ticket([1, 2], params, policy, deadline=time.monotonic())  # already past: never decoded
    kept = _ticket([1, 2], params, policy)
    dropped = _ticket([3, 4], params, policy)
    waiting = _ticket([5, 6], params, policy)
    for t in (expired, kept, dropped, waiting):
        scheduler.submit(t)
    scheduler.cancel(dropped)
    assert scheduler.queue_depth == 3, "a cancelled queued request leaves the queue at once"
    scheduler.close()  # the loop never ran: close fails what waits
    assert waiting.error == SHUTDOWN and kept.error == SHUTDOWN and waiting.notify.done.is_set()

    scheduler = Scheduler(lambda: RoutedEngine(*backends), SchedulerConfig(max_running=1), own_thread=False)
    for t in (expired := _ticket([1, 2], params, policy, deadline=time.monotonic()), kept := _ticket([1, 2], params,
                                                                                                      policy)):
        scheduler.submit(t)
    loop = threading.Thread(target=scheduler.run)
    loop.start()
    try:
        _wait_all([expired, kept])
    finally:
        scheduler.close()
        loop.join()
    assert expired.error.status == 408 and expired.error.code == "deadline_exceeded" and kept.result is not None
    assert backends[0].open_sequences == backends[1].open_sequences == 0


def test_close_fails_running_requests() -> None:
    """close() during a step: the step ends, then the running request is failed with 503 and its handler woken."""
    entered, release = threading.Event(), threading.Event()

    class Slow(RoutedEngine):
        def step(self):
            entered.set()
            release.wait()
            return super().step()

    backends = _pair()
    scheduler = Scheduler(lambda: Slow(*backends), SchedulerConfig())
    ticket = _ticket([1, 2, 3], SamplingParams(max_tokens=40), RandomPolicy(rate=0.3, seed=0))
    scheduler.submit(ticket)
    assert entered.wait(timeout=600)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    release.set()
    closer.join()
    assert ticket.notify.done.is_set() and ticket.error == SHUTDOWN
    assert backends[0].open_sequences == backends[1].open_sequences == 0
