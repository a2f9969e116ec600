"""How long a resume takes to start: from `resume()` to the resumed run's first step.

For each of the three ways a resume starts a run (``local``, ``deployment``,
``event``), the script stores fresh incomplete executions of the flow in
`_latency_flows.py` (its ``price[2]`` step fails with a `DataError`), then
resumes them one at a time with the corrected input. Each sample is the time
from a UTC wall-clock reading taken just before `resume()` to the start of
the first task run of the new flow run, the replayed ``fetch[1]``, as the
Prefect API reports it (its ``start_time``, else its first Running or
Completed state). Also shown, as medians, the moments between: `resume()`
returned, the server had the flow run, a runner took it (Pending), and it
was Running.

Everything runs on 127.0.0.1: a ``prefect server start`` subprocess on a free
port with its own PREFECT_HOME, and, for ``deployment`` and ``event``, a
subprocess that serves the flow with `resume_trigger` and executes its runs,
once per runner poll frequency given. All processes share one SQLite record
store in a temporary directory. The records of those two paths come from runs
of the deployment, so they carry its id; their resumes alternate, and each
waits a random part of the poll interval first, so that the samples do not
all fall at the same point of the runner's poll loop.

    .venv/bin/python benchmarks/resume_latency.py [--repetitions 5] [--poll 1 10]

The runner is `prefect.serve` of ``orders.to_deployment(...)``; ``--serve
flow`` uses ``orders.serve(...)`` instead, whose runner hands the flow to each
run's process with cloudpickle.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

HERE = Path(__file__).resolve().parent
FIX = {"price[2].order": {"id": 2, "qty": 3}}
FIRST_STEP = "fetch[1] (replayed)"
DEPLOYED_PATHS = ("deployment", "event")
TIMEOUT = 180.0


@dataclass(frozen=True)
class Sample:
    """Seconds from just before `resume()` to each moment of one resume."""

    returned: float
    created: float
    pending: float
    running: float
    first_step: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument(
        "--poll",
        type=int,
        nargs="+",
        default=[1, 10],
        help="PREFECT_RUNNER_POLL_FREQUENCY values to serve with (10: default)",
    )
    parser.add_argument("--serve", choices=["deployment", "flow"], default="deployment")
    args = parser.parse_args()

    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="resume-latency-"))
    rows: list[tuple[str, str, list[Sample]]] = []
    with ExitStack() as stack:
        api_url = start_server(stack, tmp)
        configure_this_process(tmp, api_url)
        from prefect.client.orchestration import get_client

        client = stack.enter_context(get_client(sync_client=True))
        rows.append(("local", "-", measure_local(client, args.repetitions)))
        for poll in args.poll:
            with ExitStack() as runner_stack:
                runner = start_runner(runner_stack, tmp, poll, args.serve)
                samples = measure_deployed(client, args.repetitions, poll, runner)
                rows += [(path, f"{poll} s", samples[path]) for path in DEPLOYED_PATHS]
                time.sleep(5)  # the last run's process exits, or shutdown cancels it
    report(rows, args.repetitions, time.monotonic() - began, tmp)


# -- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(tmp: Path, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(tmp / "client-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_INCOMPLETE_DATABASE_URL": f"sqlite:///{tmp / 'incomplete.db'}",
    }
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def spawn(
    stack: ExitStack, command: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group; the stack ends the group."""
    output = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(
        command,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(stop, process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process group of `process`, killing it after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        with suppress(ProcessLookupError):  # children may outlive the leader
            os.killpg(process.pid, signal.SIGKILL)
        return


def start_server(stack: ExitStack, tmp: Path) -> str:
    """A Prefect server on a free port of 127.0.0.1; gives its API URL."""
    import httpx

    port = free_port()
    env = base_env(tmp, None) | {
        "PREFECT_HOME": str(tmp / "server-home"),
        "PREFECT_UI_ENABLED": "false",
    }
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = spawn(stack, command, env, tmp / "server.log")
    api_url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited; see {tmp / 'server.log'}")
        try:
            return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, "the Prefect server to answer", timeout=120)
    return api_url


def start_runner(
    stack: ExitStack, tmp: Path, poll: int, how: str
) -> subprocess.Popen[bytes]:
    """Serve the flow with the resume trigger in a subprocess polling every `poll` s."""
    env = base_env(tmp, os.environ["PREFECT_API_URL"])
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(poll)
    command = [sys.executable, str(HERE / "_latency_flows.py"), how]
    return spawn(stack, command, env, tmp / f"runner-poll-{poll}.log")


def configure_this_process(tmp: Path, api_url: str) -> None:
    for name in [n for n in os.environ if n.startswith("PREFECT_")]:
        del os.environ[name]
    os.environ.update(base_env(tmp, api_url))
    os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"  # the failures are on purpose
    sys.path.insert(0, str(HERE))


# -- measuring ------------------------------------------------------------------


def measure_local(client: Any, repetitions: int) -> list[Sample]:
    """Resume in this process records of runs made in this process."""
    import _latency_flows as flows

    samples = []
    for _ in range(repetitions + 1):  # the first one warms up imports and clients
        state = flows.orders(return_state=True)
        record = record_of(state.state_details.flow_run_id)
        samples.append(measure(client, record.id, "local"))
    return samples[1:]


def measure_deployed(
    client: Any, repetitions: int, poll: int, runner: subprocess.Popen[bytes]
) -> dict[str, list[Sample]]:
    """Resume records of runs of the served deployment, by each path in turn."""
    records = deployed_records(client, len(DEPLOYED_PATHS) * repetitions, runner)
    samples: dict[str, list[Sample]] = {path: [] for path in DEPLOYED_PATHS}
    for index, record_id in enumerate(records):
        path = DEPLOYED_PATHS[index % len(DEPLOYED_PATHS)]
        time.sleep(random.uniform(0, poll))
        samples[path].append(measure(client, record_id, path))
    return samples


def deployed_records(
    client: Any, count: int, runner: subprocess.Popen[bytes]
) -> list[UUID]:
    """Run the deployment `count` times, as the runner executes it; their records."""
    import _latency_flows as flows
    from prefect.deployments import run_deployment

    name = f"{flows.FLOW_NAME}/{flows.DEPLOYMENT_NAME}"
    wait_for(lambda: deployment_exists(client, name, runner), f"deployment {name}")
    runs = [run_deployment(name, timeout=0, as_subflow=False) for _ in range(count)]
    records = []
    for run in runs:
        state = final_run(client, run.id).state
        if state.name != "Incomplete":
            raise RuntimeError(
                f"run {run.id} of {name} ended {state.name}, not Incomplete: "
                f"{state.message}; see the runner's log"
            )
        records.append(record_of(run.id).id)
    return records


def deployment_exists(client: Any, name: str, runner: subprocess.Popen[bytes]) -> bool:
    from prefect.exceptions import ObjectNotFound

    if runner.poll() is not None:
        raise RuntimeError("the serving subprocess exited; see its log")
    try:
        client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


def measure(client: Any, record_id: UUID, path: str) -> Sample:
    """Resume one record by `path`; the seconds to each moment of its new run."""
    from prefect_incomplete.resume import resume

    before = datetime.now(UTC)
    started = resume(record_id, via=path, set_inputs=FIX)  # type: ignore[arg-type]
    returned = (datetime.now(UTC) - before).total_seconds()

    run_id = started.flow_run_id or triggered_run(client, record_id)
    run = final_run(client, run_id)
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"the resumed run {run_id} ended {run.state}")
    pending = first_state(client.read_flow_run_states(run_id), "PENDING")
    return Sample(
        returned=returned,
        created=(run.created - before).total_seconds(),
        pending=(pending - before).total_seconds() if pending else float("nan"),
        running=(run.start_time - before).total_seconds(),
        first_step=(first_step_start(client, run_id) - before).total_seconds(),
    )


def record_of(flow_run_id: UUID) -> Any:
    """The record that the run `flow_run_id` stored."""
    import _latency_flows as flows

    from prefect_incomplete.store import Store

    for record in Store().list(flow=flows.FLOW_NAME):
        if record.flow_run_id == flow_run_id:
            return record
    raise RuntimeError(f"flow run {flow_run_id} stored no incomplete execution")


def triggered_run(client: Any, record_id: UUID) -> UUID:
    """The flow run that the resume trigger created for `record_id`."""
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    from prefect_incomplete.store import Store

    deployment_id = Store().get(str(record_id)).deployment_id
    wanted = f"prefect-incomplete.record.{record_id}"
    found: list[UUID] = []

    def created() -> bool:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment_id]}),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=20,
        )
        found.extend(
            run.id
            for run in runs
            if run.parameters.get("incomplete_execution_id") == wanted
        )
        return bool(found)

    wait_for(created, f"the resume trigger to create a run for {record_id}")
    if len(found) > 1:
        raise RuntimeError(f"one resume event created {len(found)} runs: {found}")
    return found[0]


def final_run(client: Any, flow_run_id: UUID) -> Any:
    """The flow run once it is in a final state."""
    runs: list[Any] = []

    def final() -> bool:
        runs[:] = [client.read_flow_run(flow_run_id)]
        return runs[0].state is not None and runs[0].state.is_final()

    wait_for(final, f"flow run {flow_run_id} to end")
    return runs[0]


def first_step_start(client: Any, flow_run_id: UUID) -> datetime:
    """When the run's replayed first step started, as the Prefect API records it."""
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter

    starts: list[datetime] = []

    def recorded() -> bool:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
            task_run_filter=TaskRunFilter(name={"any_": [FIRST_STEP]}),
        )
        done = [t for t in task_runs if t.state and t.state.name == "Replayed"]
        if not done:
            return False
        (task_run,) = done
        start = task_run.start_time or first_state(
            client.read_task_run_states(task_run.id), "RUNNING", "COMPLETED"
        )
        if start is not None:
            starts.append(start)
        return start is not None

    wait_for(recorded, f"task run {FIRST_STEP} of flow run {flow_run_id}")
    return starts[0]


def first_state(states: list[Any], *types: str) -> datetime | None:
    """The timestamp of the earliest of `states` whose type is one of `types`."""
    return min((s.timestamp for s in states if s.type.value in types), default=None)


def wait_for(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting {timeout:.0f} s for {what}")
        time.sleep(0.1)


# -- report ---------------------------------------------------------------------


def report(
    rows: list[tuple[str, str, list[Sample]]],
    repetitions: int,
    seconds: float,
    tmp: Path,
) -> None:
    moments = [f.name for f in fields(Sample)][:-1]
    print(f"resume() to the first step of the resumed run, {repetitions} resumes each")
    print(
        f"{'path':<11}{'poll':>5}  {'median':>7}{'min':>7}{'max':>7}   medians:"
        + "".join(f"{name:>9}" for name in moments)
    )
    for path, poll, samples in rows:
        first = [s.first_step for s in samples]
        print(
            f"{path:<11}{poll:>5}  "
            f"{statistics.median(first):7.2f}{min(first):7.2f}{max(first):7.2f}"
            + " " * 11
            + "".join(f"{median(samples, name):9.2f}" for name in moments)
        )
    print(f"seconds; whole script {seconds:.0f} s; logs in {tmp}")


def median(samples: list[Sample], name: str) -> float:
    return statistics.median(getattr(s, name) for s in samples)


if __name__ == "__main__":
    main()
