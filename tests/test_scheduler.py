"""The continuous-batching scheduler over fake backends: results equal direct decoding; who gets woken when."""
from __future__ import annotations

import threading

from router.policies import RandomPolicy
from serving.decoding.routed import RoutedEngine, generate_sequential
from serving.decoding.generation import RoutingMode
from serving.decoding.sampling import SamplingParams
from serving.http.scheduler import Scheduler, SchedulerConfig, Ticket
from serving.decoding.stopping import StopRule
from tests.fakes import FakeBackend

VOCAB, EOS = 12, 11


def _pair() -> tuple[FakeBackend, FakeBackend, StopRule]:
    rule = StopRule(frozenset({EOS}), lambda ids: "", 64)
    return FakeBackend(VOCAB, seed=1), FakeBackend(VOCAB, seed=2), rule


def test_non_streaming_ticket_is_woken_once_with_its_result() -> None:
    slm, llm, rule = _pair()
    policy = RandomPolicy(rate=0.3, seed=0)
    params = SamplingParams(max_tokens=20)
    prompts = [[1, 2, 3], [4, 5]]
    want = generate_sequential(slm, llm, policy, prompts, [params] * 2, rule, stream_keys=[1, 2])
    scheduler = Scheduler(RoutedEngine(*_pair()), SchedulerConfig())
    wakes = [0, 0]
    done = [threading.Event(), threading.Event()]

    def notify(i: int):
        def wake() -> None:
            wakes[i] += 1
            if tickets[i].result is not None:
                done[i].set()
        return wake

    tickets = [Ticket(prompts[i], params, policy, RoutingMode.SEQUENTIAL, notify(i), stream=i == 0) for i in (0, 1)]
    try:
        for t in tickets:
            scheduler.submit(t)
        assert all(d.wait(timeout=30) for d in done)
    finally:
        scheduler.close()
    assert [t.result.token_ids for t in tickets] == [g.token_ids for g in want]
    assert wakes[1] == 1  # only when it ended
    assert wakes[0] == len(tickets[0].result.token_ids) > 1  # after every step (one token each, sequential)


class _RefusingEngine(RoutedEngine):
    def add(self, *args, **kwargs):
        raise RuntimeError("engine refused the batch")


def test_a_failing_add_wakes_its_tickets_with_an_error() -> None:
    """Tickets admitted in a round whose engine.add raises are failed, not left waiting forever."""
    scheduler = Scheduler(_RefusingEngine(*_pair()), SchedulerConfig())
    done = threading.Event()
    ticket = Ticket([1, 2, 3], SamplingParams(max_tokens=5), RandomPolicy(rate=0.3, seed=0), RoutingMode.SEQUENTIAL,
                    done.set, stream=False)
    try:
        scheduler.submit(ticket)
        assert done.wait(timeout=30), "the ticket was never woken"
    finally:
        scheduler.close()
    assert ticket.result is None and ticket.error == "internal error while decoding"
