"""The Redis keys of one queue, and of the whole prefix.

Keys of one queue (``B`` = its key base ``{prefix:queue}:``, so every key of a queue shares
one hash tag and one Redis Cluster slot):

- ``B job:<id>``          hash, one field per Job attribute (see `codec.FIELDS`; in the
                          compact layout, all but ``id`` and ``queue``) + ``token``;
                          ``worker`` names the lease's holder, ``history`` is a JSON array of
                          attempt records (see `codec`), the last HISTORY_LIMIT kept. A job
                          that succeeded, was cancelled or expired expires after the result
                          retention, a dead one after the dead retention; PERSIST on requeue
- ``B queued``            zset of the jobs ready to claim, in claim order (`lua/lib/order.lua`)
- ``B active``            zset job id -> lease expiry, ms on the Redis clock
- ``B delayed``           zset job id -> when it is due, ms: retries, and scheduled jobs
- ``B deadlines``         zset job id -> its deadline, ms: the waiting jobs that have one
- ``B cancelling``        set of the active jobs whose cancellation was asked for
- ``B index:<status>``    zset job id -> when it entered that status, us on the Redis clock
- ``B marker``            list holding at most one element: wakes one blocked claimer
- ``B stop:<worker id>``  list: ends that worker's waiting claim (`stop_waiting`), under the
                          tag of the first of its queues by name (on Redis Cluster, one per
                          hash slot of its queues, under the tag of the slot's first queue
                          by name: a waiting claim waits per slot); expires within seconds
- ``B idem:<digest>``     string ``"<fingerprint> <job id>"``: a client's idempotency key
                          (`idempotency_digest`, a SHA-256 of it) as this queue holds it,
                          expiring after the idempotency retention. Per queue: the same key
                          sent to two queues is two keys (so a submit touches one slot)
- ``B paused``            exists while the queue is paused: claims hand out nothing from it
- ``B seq``               counter behind the claim order; reset when the queue empties
- ``B tokens``            counter behind the fencing tokens
- ``B stale``             counter of writes rejected for a stale lease token
- ``B workers``           zset worker id -> when its presence lapses, ms (`heartbeat`)
- ``B unique:<digest>``   string: the id of the job holding a unique key (`unique_digest`)
                          while it is not finished; let go of when it finishes, and free
                          when it names a job gone or finished (`lua/lib/unique.lua`)
- ``B rates``             hash: the queue's rates (`domain.rates`, `lua/lib/rates.lua`):
                          ``in``, ``in_at``, ``out``, ``out_at``, ``drain``, ``weight``,
                          ``busy``; written by submits and claims
- ``B limited``           set of the job types with jobs parked in the queue, each in
                          ``B limited:<type>`` (zset job id -> its claim-order score): jobs a
                          claim set aside, still `queued`, because their type was at its
                          rate or concurrency limit (`lua/lib/limits.lua`)

Keys of the whole prefix ``P``: the registry of queue names, whose keys share one hash tag
with ``P:queues`` (``R`` = ``{P:queues}:``), and, written by older versions only,
``P:idem:<digest>`` (an idempotency key for every queue of the prefix): on a single server a
submit still reads it (never writes it) while such keys may live, until the time in
``P:idem-legacy-until`` (ms; set once, by the first process of this version to start on the
prefix: twice the idempotency retention later if the prefix was in use, else at once, so a
new deployment never reads them); on Redis Cluster it is not read (it would cross slots), so
a repeat of a request made before the upgrade, within its retention, is stored again there.
``P:layout`` says how submits write job hashes, ``compact`` or ``full`` (`layout_key`).

- ``P:queues``            set of the queue names in use
- ``R tags``              hash: a queue tag (`domain.jobs.queue_tag`, how a job id starts)
                          -> the names with that tag, space-separated (nearly always one)
- ``R touched``           hash: name -> its last use (a submit, a pause, a worker's
                          heartbeat every 30 s), ``"<ms> <generation>"``: a name is
                          forgotten only if it was not used since its queue was found
                          idle, nor lately
- ``R generation``        counter behind ``touched``, so that each use is unique
- ``R legacy``            set of the names whose queues may hold jobs whose ids do not
                          start with their tag (made before tags, or chosen by a caller)
- ``R sweep``             exists while a sweep of idle queues is recent (a lock with expiry)
- ``R workers``           hash: worker id -> what it last said of itself, JSON (host, pid,
                          queues, in flight, done; `lua/worker_seen.lua`)
- ``R seen``              zset: worker id -> when its presence lapses, ms; a lapsed one's
                          entries go when a worker joins

The flow limits of a job type (`domain.limits`), global to the prefix, under their own hash
tag ``{P}``: ``{P}:limit:starts:<type>`` (zset ``<id>:<n>`` -> us: a claim's n starts,
the starts in its rate's window), ``{P}:limit:started:<type>`` (how many starts it holds) and
``{P}:limit:slots:<type>`` (zset job id -> when the slot lapses, ms). On one server a
claim, settle or renewal that uses them gets them in KEYS with the queue's keys (two hash
tags in one script). On Redis Cluster no script of a queue gets them: the limits' own
scripts (`lua/reserve.lua` and the others `permits.py` calls) run on their slot, before or
after the queue's, and while a claim is between the two the room it took is held by
permits, ``permit:<reservation>:<n>`` in ``slots`` and ``permit:<reservation>:<granted>``
in ``starts``.

Pub/sub: scripts that finish jobs publish their ids, space-separated, on ``P:finished``.
A channel is no key: on Redis Cluster a PUBLISH reaches the subscribers of every node.

What crosses hash slots, then: nothing a script touches on Redis Cluster (each call's KEYS
are one queue's, the registry's, or the limits': `tests/unit/test_redis_scripts.py` checks
every call the adapter builds). On a single server only: a submission spanning queues (one
script run; a cluster stores it queue by queue), the older ``P:idem:`` keys, a claim, settle
or renewal with the flow limits' keys (a cluster runs a script on their slot apart), and a
waiting claim's one BLPOP over the markers of all its queues, with its first queue's claim
behind it in the same pipeline while work arrives (a cluster waits per slot, and claims
after the wake).

A script receives the fixed keys it touches in KEYS, by the names of `NAMES` (its header
lists them); it derives job hashes and index keys from the key base it reads off the first.
"""

from __future__ import annotations

import hashlib
from typing import Final

import attrs

from domain.jobs import JobStatus

# The registry's keys, by the name its scripts know them by (`R.tags` in Lua): ``P:queues``,
# then the others under its hash tag.
REGISTRY_NAMES: Final = (
    "queues",
    "tags",
    "touched",
    "generation",
    "legacy",
    "sweep",
    "workers",
    "seen",
)

# The keys of one limited job type, by the name its scripts on the limits' own slot know them
# by (``-- KEYS (limits): ...``): ``{P}:limit:<name>:<type>`` (`limits.limit_key`).
LIMIT_NAMES: Final = ("starts", "started", "slots")

# The fixed keys of a queue, by the name scripts know them by (`Q.active` in Lua); each is
# the key base followed by its name.
NAMES: Final = (
    "queued",
    "active",
    "delayed",
    "deadlines",
    "cancelling",
    "marker",
    "paused",
    "seq",
    "tokens",
    "stale",
    "workers",
    "rates",
    "limited",
)


@attrs.frozen
class QueueKeys:
    """The keys of one queue; all share the hash tag ``{prefix:queue}``."""

    name: str  # the queue's
    base: str
    queued: str
    active: str
    delayed: str
    deadlines: str
    cancelling: str
    marker: str
    paused: str
    seq: str
    tokens: str
    stale: str
    workers: str
    rates: str
    limited: str
    # The keys named by each script's KEYS list, made (and encoded) once per queue and
    # script.
    _selected: dict[tuple[str, ...], tuple[bytes, ...]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )

    @classmethod
    def of(cls, prefix: str, queue: str) -> QueueKeys:
        # No ':' either: a script reads the name back off the key base, after its last one.
        if not queue or "{" in queue or "}" in queue or ":" in queue:
            raise ValueError(f"invalid queue name {queue!r}")
        base = f"{{{prefix}:{queue}}}:"
        return cls(queue, base, *(base + name for name in NAMES))

    def named(self, names: tuple[str, ...]) -> tuple[bytes, ...]:
        """The keys called `names`, in that order, encoded (a script's KEYS)."""
        keys = self._selected.get(names)
        if keys is None:
            keys = self._selected[names] = tuple((self.base + name).encode() for name in names)
        return keys

    def job(self, job_id: str) -> str:
        return self.base + "job:" + job_id

    def index(self, status: JobStatus) -> str:
        return self.base + "index:" + status.value


def queues_key(prefix: str) -> str:
    """The set of every queue name used under `prefix`."""
    return f"{prefix}:queues"


@attrs.frozen
class RegistryKeys:
    """The keys of the registry of queue names; all in one Redis Cluster slot (the one of
    ``P:queues``, kept from before the registry had other keys)."""

    queues: str
    tags: str
    touched: str
    generation: str
    legacy: str
    sweep: str
    workers: str
    seen: str

    @classmethod
    def of(cls, prefix: str) -> RegistryKeys:
        queues = queues_key(prefix)
        # `{P:queues}:x` hashes to the slot of `P:queues`: Cluster hashes what is in braces.
        return cls(queues, *(f"{{{queues}}}:{name}" for name in REGISTRY_NAMES[1:]))

    def named(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The keys called `names`, in that order (a registry script's KEYS)."""
        return tuple(getattr(self, name) for name in names)


def finished_channel(prefix: str) -> str:
    """Where scripts publish the ids of the jobs they finished (`lua/lib/finished.lua`)."""
    return f"{prefix}:finished"


def unique_digest(key: str) -> str:
    """What a job's unique key is held under in its queue (``B unique:<digest>``): hashed, so
    no client bytes name a key, and kept in the job's hash as ``unique``."""
    return hashlib.sha256(key.encode()).hexdigest()


def idempotency_digest(key: str) -> str:
    """A client's idempotency key, hashed: no client bytes name a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def idempotency_key(keys: QueueKeys, digest: str) -> str:
    """Where a client's idempotency key (by `idempotency_digest`) is held for one queue
    (``B idem:<digest>``): under the queue's hash tag, so a submit stays one script."""
    return keys.base + "idem:" + digest


def legacy_idempotency_window(prefix: str) -> str:
    """Until when (ms since the epoch) submits on a single server also read the idempotency
    keys an older version held prefix-wide: set once, by the first process of this version
    to start on the prefix (`RedisConnection.verify`)."""
    return f"{prefix}:idem-legacy-until"


def layout_key(prefix: str) -> str:
    """Which layout submits write job hashes in (`codec.encode_job`): ``compact`` or
    ``full``. Set once, by the first process of a version that knows the compact layout to
    start on the prefix (`RedisConnection.verify`): ``full`` if the prefix was in use (an
    older version's processes, which cannot read the compact layout, may still run),
    ``compact`` on a new one. An operator sets it to ``compact`` once no older process runs;
    each process reads it as it starts."""
    return f"{prefix}:layout"


def legacy_idempotency_key(prefix: str, digest: str) -> str:
    """Where an older Conveyor held an idempotency key, for every queue of the prefix: read
    (never written) by submits on a single server until it expires."""
    return f"{prefix}:idem:{digest}"
