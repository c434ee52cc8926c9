"""How one worker process works: its settings, and the order in which it tries its queues."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs


@attrs.frozen(kw_only=True)
class WorkerConfig:
    worker_id: str
    queues: tuple[str, ...]
    concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    batch: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    lease_seconds: float = 30.0
    # How long one claim call waits for work (a stop request ends the wait at once).
    claim_wait: float = 1.0
    recover_interval: float = 1.0
    # While this worker's claims run the queues' maintenance themselves (it is idle or has
    # free slots, and its waiting claims look as each lease lapses or job falls due), its
    # own recovery runs only this often, for what claims leave to it: forgetting finished
    # jobs past their retention (hours) and the sweep of unused queues.
    tidy_interval: float = 60.0
    drain_grace: float = 30.0
    recycle_after_jobs: int = 0  # 0: never
    recycle_rss_mb: int = 0  # 0: never
    backoff_first: float = 0.1
    backoff_cap: float = 5.0
    # One weight per queue: each claim tries the queues in an order drawn by weight (see
    # `claim_order`). None: always in the order of `queues`.
    queue_weights: tuple[int, ...] | None = attrs.field(default=None)
    # How long a handler has to stop by itself once its job's cancellation is requested.
    cancel_grace: float = 5.0
    # How often the worker asks whether any of its running jobs is to be cancelled.
    cancel_poll: float = 0.5
    # How often the worker says it is alive (to the queue: `QueueMonitor.heartbeat`); each
    # heartbeat lasts three intervals, so a worker gone without a word stops counting
    # within 15 s (one that stops says so at once).
    heartbeat_interval: float = 5.0

    @property
    def claim_size(self) -> int:
        """The most jobs one claim asks for: `batch`, and no more than half the slots
        (rounded up). Short jobs end together and free their slots at once; a claim for all
        of them left the process idle while Redis ran it, then Redis idle while the process
        ran the batch. Half at a time, the next claim is on its way while the jobs of the
        last one run."""
        return min(self.batch, (self.concurrency + 1) // 2)

    @queue_weights.validator
    def _one_weight_per_queue(
        self, _: attrs.Attribute[tuple[int, ...] | None], value: tuple[int, ...] | None
    ) -> None:
        if value is not None and (len(value) != len(self.queues) or min(value) < 1):
            raise ValueError("queue_weights needs one weight of at least 1 per queue")


def claim_order(
    queues: Sequence[str], weights: Sequence[int] | None, draw: Callable[[], float]
) -> tuple[str, ...]:
    """The order in which one claim tries `queues`.

    Without weights, as given. With weights, drawn without replacement: each place goes to
    one of the queues not yet placed with a chance proportional to its weight. A queue of
    weight 3 beside one of weight 1 is tried first three times in four, and every queue is
    tried on every claim, so a light queue is served less often but never starves. `draw`
    answers a number in [0, 1).
    """
    if weights is None:
        return tuple(queues)
    pool = list(zip(queues, weights, strict=True))
    order: list[str] = []
    while pool:
        point = draw() * sum(weight for _, weight in pool)
        chosen = len(pool) - 1  # if rounding leaves `point` past the last weight
        for index, (_, weight) in enumerate(pool):
            point -= weight
            if point < 0:
                chosen = index
                break
        order.append(pool.pop(chosen)[0])
    return tuple(order)


def heartbeat_interval(watchdog: float) -> float:
    """How often a child says it is alive: often enough that one late beat is no alarm."""
    return min(1.0, watchdog / 10) if watchdog > 0 else 1.0


def queues_argument(queues: Sequence[str], weights: Sequence[int] | None) -> str:
    """`queues` as the worker's `--queues` takes them: `a,b`, or `a:3,b:1` with weights."""
    if weights is None:
        return ",".join(queues)
    return ",".join(f"{name}:{weight}" for name, weight in zip(queues, weights, strict=True))
