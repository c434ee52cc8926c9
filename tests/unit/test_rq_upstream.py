"""A test that fails when RQ code Conveyor overrides, copies or leans on changes upstream.

Conveyor's RQ worker subclasses RQ's worker, job and queue classes, copies two of RQ's
methods (`prepare_job_execution`, `_start_scheduler`) and relies on the order in which RQ's
failure path calls the hooks it overrides (see `adapters/rq/worker.py` and `settling.py`).
A new rq release may change any of them without breaking an import. This records a
fingerprint (sha256 of `inspect.getsource`) of each, and fails naming each one whose source
changed, with what to re-check in Conveyor; once re-checked (and the copies brought up to
date), record the new fingerprint printed by the failure.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import Any, Final

import attrs
import rq


@attrs.frozen
class Upstream:
    """One piece of RQ Conveyor depends on: its dotted name, its source's sha256, and what
    to re-check in Conveyor when it changes."""

    name: str
    sha256: str
    recheck: str


UPSTREAM: Final = (
    Upstream(
        "rq.job.Job.func",
        "2347dd5ec69187328db1cb7da230359a243d1695fe73c78f79272ff12b7184ab",
        (
            "ConveyorRqJob.func and DispatchJob.func: a stored job must resolve to the "
            "dispatcher only, never to what it names"
        ),
    ),
    Upstream(
        "rq.job.Job.success_callback",
        "6d23cf7db33ece09df5f1b9c5455b3d751948fa4858ee02bd4d6234170d85f96",
        "ConveyorRqJob.success_callback: no callback named by data may be imported",
    ),
    Upstream(
        "rq.job.Job.failure_callback",
        "0bccbb92ea7d87643e604791bcb2376b3b840905cd836cda85066cb867a5e482",
        "ConveyorRqJob.failure_callback: no callback named by data may be imported",
    ),
    Upstream(
        "rq.job.Job.stopped_callback",
        "39852cf148dc20288b2ce92adbab6e9daa8e5643807f71396ee91bcaed105359",
        "ConveyorRqJob.stopped_callback: no callback named by data may be imported",
    ),
    Upstream(
        "rq.job.Job.send_webhooks",
        "1c525171cc2b04676e0af7c7550f1de0e0ffdfdf2ec54410706813e7f255571a",
        "ConveyorRqJob.send_webhooks: no webhook named by data may be called",
    ),
    Upstream(
        "rq.job.Job.should_retry",
        "cf765572a37a3d7effe5f1a01b3e41d7e66f6a1e2213b889ccb0b9380a2732f7",
        (
            "ConveyorRqJob.should_retry: RQ's failure path must still ask it to choose retry "
            "over its failed registry"
        ),
    ),
    Upstream(
        "rq.job.Job.retry",
        "4a0f7cec2323d8a5a96b9f8fe13251c7e07b4b6a515dd18c964ef4d8fd6b54cf",
        (
            "ConveyorRqJob.retry and moves.write_settlement: RQ's failure path and sweep must "
            "still call it to move a job they do not dead-letter"
        ),
    ),
    Upstream(
        "rq.job.Job.restore",
        "859daf950a3ede0b132644c6760880100c03629ce3183b18a2c4484f177bce7c",
        ("ConveyorRqJob.restore: the per-process fields it resets, and the hash fields it reads"),
    ),
    Upstream(
        "rq.job.Job.prepare_for_execution",
        "4e8e0eca634da20baf402b30db76a570d2f8da753033df6ed9a2a1b751ce56d0",
        (
            "DispatchJob.prepare_for_execution: our meta starts the attempt in the pipeline "
            "that marks it started"
        ),
    ),
    Upstream(
        "rq.job.Job.perform",
        "c8f482e08e17d34cbc785ec74975c3625d3b7a27299edba8c57c2133db5932bc",
        (
            "dispatcher.execute: get_current_job() must still answer the job RQ performs (the "
            "object the settlement is noted on)"
        ),
    ),
    Upstream(
        "rq.job.Job.save",
        "94a90064c89861130d1a1dbfb7bdb6fb96a05780cdad6f03b6c527d9e5586d9c",
        "moves.write_settlement: save() must still write the meta with the rest of the hash",
    ),
    Upstream(
        "rq.job.Job.to_dict",
        "9e1a56a9cd4b57e5ea32635132969a259bc449eda035f85e8e083a61e4b1a751",
        (
            "submitter.RqSubmitter._describe writes the hash to_dict() makes; moves rely on "
            "retries_left=None not being written"
        ),
    ),
    Upstream(
        "rq.job.Job.get_result_ttl",
        "ad6db88d400dcd1520d08688a897c129d2a784abbf584ef2e27b7252934875f8",
        "moves.write_cancelled: how long a cancelled job is kept",
    ),
    Upstream(
        "rq.job.get_current_job",
        "a3fd249c56ead743a466279576c947c27ef28c68563c8101965c3a3344881cb3",
        "dispatcher.execute finds its job through it",
    ),
    Upstream(
        "rq.queue.Queue.acquire_maintenance_lock",
        "ebdce3e6d60ef39488b775528ed67beb7550f69e00772f31a552ce8e1790aad5",
        "maintenance.ConveyorRqQueue.acquire_maintenance_lock (a 60 s lock)",
    ),
    Upstream(
        "rq.queue.Queue.release_maintenance_lock",
        "f7543e511d8eddb00469477cba8fb625ca922bbb6a2652533358171e26fff655",
        "maintenance.ConveyorRqQueue.release_maintenance_lock (trims the canceled registry)",
    ),
    Upstream(
        "rq.queue.Queue.push_job_id",
        "da2f59b7ff9acf0ce2a95333802cae18b905b18736565bd1136249317b6ce044",
        "moves.write_settlement queues a job back with it (at the head for a retry due now)",
    ),
    Upstream(
        "rq.queue.Queue.enqueue_job",
        "05ff025c22a0312863e83ed2b3c7d413efea011bc766c0cf361be19537f37406",
        "maintenance.RqMaintenance._promote_due queues due jobs with it",
    ),
    Upstream(
        "rq.queue.Queue._enqueue_async_job",
        "3c3efebb37300756911596053a6be90a52d2e0944c3ecd0881bc89b3ab37b2b6",
        (
            "moves.write_settlement does what it does by hand (a pipeline that already holds "
            "commands)"
        ),
    ),
    Upstream(
        "rq.queue.Queue._prepare_for_queue",
        "cd8e2a0821239b0241e8967fdf549990919bcc1927bf450859bf9ef9417eeb76",
        "moves.write_settlement does what it does by hand",
    ),
    Upstream(
        "rq.queue.Queue._persist_job",
        "2e7cc7271d3636b9a087ae9ff904eff4713ea2cbf1aacb2252022100b3cbd87c",
        "moves.write_settlement does what it does by hand",
    ),
    Upstream(
        "rq.queue.Queue.schedule_job",
        "2596db5209e043240c895f12d65ef610b0dd95e10b721d4b35b345f8e9bb9824",
        "moves.write_settlement schedules a retry by hand, scored to the microsecond",
    ),
    Upstream(
        "rq.results.Result.get_key",
        "991ea34dec2931cc1447e2abfaac8c4b69dbc18f290f177e77b5f96347b9f854",
        "store.result_key copies the key of a job's results",
    ),
    Upstream(
        "rq.registry.StartedJobRegistry.cleanup",
        "c5cd78c27fc023d6c0cae928161f09cb9df9f39d14a886e7cb01bb096fe0ccad",
        (
            "settling.SettleUnsettled: the sweep must call exception handlers, then choose by "
            "retries_left between job.retry and the failed registry"
        ),
    ),
    Upstream(
        "rq.registry.FailedJobRegistry.add",
        "f8d6dd39b765af1451ba01b3ff37f0a9037f6f10d66df523796573060698fe9a",
        (
            "settling.settle writes a dead letter's meta itself because add() saves the job "
            "without it"
        ),
    ),
    Upstream(
        "rq.registry.BaseRegistry.requeue",
        "3336aabc2c5cb264e69309f435896772a67e1626c83e84ecd27db46218ddd051",
        "control.RqJobControl.requeue sends dead and cancelled jobs back with it",
    ),
    Upstream(
        "rq.registry.clean_registries",
        "b6c52325526ac8b4be89ce2c0bd455ae925479c62dee543be9ca9ad44f6ed986",
        "the worker's sweep: the started registry with our exception handler",
    ),
    Upstream(
        "rq.scheduler.RQScheduler.work",
        "5d1810bdd43920894b822ad1ce7169c91b89c743fd02b89b91180d98ae12e3a6",
        "worker._ParentBoundScheduler.work runs the parent-death hook first",
    ),
    Upstream(
        "rq.scheduler.RQScheduler.start",
        "7995068483aebe442612de7da988ecce3230775c7658ed87399bfa231387f53c",
        (
            "worker._ParentBoundScheduler: the scheduler process must still call work() on our "
            "instance"
        ),
    ),
    Upstream(
        "rq.scheduler.RQScheduler.enqueue_scheduled_jobs",
        "a31620c83110baeb18b22fe30bd302382870951d53aafad7b0ae3a29f792e463",
        ("a job cancelled while RQ's scheduler queues it must still run nothing (the cancel mark)"),
    ),
    Upstream(
        "rq.serializers.JSONSerializer",
        "a221a00f78549106a3b89ef00bd8022acffb27e98232bf0ecbd2e1ab5ec15b4d",
        "codec.StrictJSONSerializer overrides dumps and loads",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.prepare_job_execution",
        "d08dd32962e3f82af386c1823b4e3fda363425070b640c0485748a9e71ae61cd",
        ("ConveyorBaseWorker.prepare_job_execution is a copy that also reads the cancel marks"),
    ),
    Upstream(
        "rq.worker.base.BaseWorker._start_scheduler",
        "49c229109608aa31132b93b4bccd31d2ea0605e473c0f205f0d61d3bf6cdb7b9",
        "ConveyorBaseWorker._start_scheduler is a copy that starts _ParentBoundScheduler",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.handle_job_failure",
        "7432afe53b9f84ec4dd8fe26da67066658dfbbf5dafa0377a65e1ee1c6cb5337",
        (
            "it must still ask job.should_retry and call job.retry in its pipeline (moves), and "
            "dead-letter otherwise"
        ),
    ),
    Upstream(
        "rq.worker.base.BaseWorker.handle_exception",
        "fffd9b2925ac14324e814e4b203a93984a647829fc900eec02a5917033c5a643",
        (
            "ConveyorBaseWorker.handle_exception skips the error log of a cancelled attempt; "
            "exception handlers must still run before handle_job_failure"
        ),
    ),
    Upstream(
        "rq.worker.base.BaseWorker.handle_work_horse_killed",
        "274a4d21672cd67112e7fa71dcae52c7f9c4dd444e0e76c116758beacbeaa10d",
        (
            "ConveyorBaseWorker.handle_work_horse_killed settles the attempt (and replaces RQ's "
            "log line)"
        ),
    ),
    Upstream(
        "rq.worker.base.BaseWorker.handle_warm_shutdown_request",
        "25d331e215916915e56a210ca774b56a139cbd54f7ae32b7f25d446714303aad",
        "ConveyorBaseWorker.handle_warm_shutdown_request records stop_asked",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.request_stop",
        "f934e7e7e6eecfeea143a69149e630a67b84f0de2c05a4ce0588b8407ece5ee0",
        ("it must still call handle_warm_shutdown_request on every SIGTERM/SIGINT, idle or busy"),
    ),
    Upstream(
        "rq.worker.base.BaseWorker.clean_registries",
        "e2c9790c8156c72cec4703cc89a918b2f94249809d2e7e7e89218b21ad7dfa59",
        "it must still take and release the queue's maintenance lock around the sweep",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.run_maintenance_tasks",
        "3d8a446b5354fce3d656ed6d6470c25a6360435a37c587cbb983fa510783d68d",
        "ConveyorWorker.maintain_heartbeats calls it between heartbeats",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.maintain_heartbeats",
        "b73451c9b97f72474fb3c0295e2fd48fbb2e9a0cb98d65e0f70c45d47c9c74e2",
        "ConveyorWorker.maintain_heartbeats extends it (cancel grace, sweeps)",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.main_work_horse",
        "8967c89b5d8661299f3f9a572ead95852c06a653806773851d4673c0cefeab1b",
        "ConveyorWorker.main_work_horse runs the parent-death hook first",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.perform_job",
        "1f0e40678ae519cf256f4c1709790c703502b23ad7317448ab50e9e46d8b13cd",
        (
            "prepare_job_execution, then the dispatcher under RQ's death penalty, then the "
            "success or failure path"
        ),
    ),
    Upstream(
        "rq.worker.base.BaseWorker._finalize_failure",
        "6d1b8bd1117e9641bbf8373fa3df3dcd77f55fe973de0fa59c917a46839102a5",
        "exception handlers (settling) must run before handle_job_failure",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.get_heartbeat_ttl",
        "8878c9689380486bcfa46fecf716533d559ad117f05dbafabd974172963074a4",
        "ConveyorWorker and ConveyorSimpleWorker override it (the abandoned-job bound)",
    ),
    Upstream(
        "rq.worker.base.BaseWorker.work",
        "04b5cdf8e554d8a21f8a919e7c57228a5efb27aca394d1e76f4923e2f01f6268",
        "ConveyorWorker.work prepares the work-horses before RQ's loop",
    ),
    Upstream(
        "rq.worker.Worker.execute_job",
        "69165f5321397cff3da6510f42b76425eb9dd4caafe60d963d08cfa76f33efc2",
        "ConveyorBaseWorker.execute_job refuses foreign jobs before this forks",
    ),
    Upstream(
        "rq.worker.Worker.monitor_work_horse",
        "218a5b8f3eff05cf04849a49e3fd5a873b7130db39f519c6e3f554ea5d8e3995",
        (
            "a dead horse: handle_work_horse_killed, then handle_job_failure, and only for a "
            "job not FINISHED or FAILED; a kill after the cancel grace must not set "
            "_stopped_job_id"
        ),
    ),
    Upstream(
        "rq.worker.Worker.kill_horse",
        "2fefa0bd4db12a6e71f8a7951695e5c956471bdb59ed42a8b08e6732c59ed300",
        "ConveyorWorker stops an overdue cancelled attempt with it",
    ),
    Upstream(
        "rq.worker.SimpleWorker.execute_job",
        "eae0f23110aeb2806baaacd03977701bd9edb8840b5fab0eb15b090132c467a2",
        "ConveyorBaseWorker.execute_job refuses foreign jobs before this runs them",
    ),
    Upstream(
        "rq.worker.SimpleWorker.get_heartbeat_ttl",
        "f83449c2eebaacb14210b7853d12e07b53a06e407298faef7191fb342325a989",
        "ConveyorSimpleWorker.get_heartbeat_ttl",
    ),
)


def resolve(name: str) -> Any:
    """The function (a property's getter) or class `name` names."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = (
                inspect.getattr_static(found, part)
                if inspect.isclass(found)
                else getattr(found, part)
            )
        if isinstance(found, property):
            found = found.fget
        if isinstance(found, staticmethod | classmethod):
            found = found.__func__
        return found
    raise ImportError(name)


def fingerprint(name: str) -> str:
    return hashlib.sha256(inspect.getsource(resolve(name)).encode()).hexdigest()


def test_the_rq_code_conveyor_overrides_or_copies_is_what_it_was_checked_against() -> None:
    changed: list[str] = []
    for upstream in UPSTREAM:
        try:
            now = fingerprint(upstream.name)
        except (ImportError, AttributeError, TypeError, OSError) as gone:
            changed.append(f"{upstream.name} is gone ({gone!r}): re-check {upstream.recheck}")
            continue
        if now != upstream.sha256:
            changed.append(f"{upstream.name} changed (now {now}): re-check {upstream.recheck}")
    assert not changed, f"rq {rq.__version__} changed code Conveyor depends on:\n" + "\n".join(
        changed
    )


def test_every_fingerprint_names_a_distinct_piece_of_rq() -> None:
    names = [upstream.name for upstream in UPSTREAM]
    assert len(set(names)) == len(names)
    assert all(name.startswith("rq.") for name in names)
