"""A record's artifact as a person sees it: the Prefect UI in headless Chromium.

A real ``prefect server start`` runs on a free port with its own PREFECT_HOME;
the example flow runs against it in a subprocess with its own environment (the
test session's harness server is not involved) and stores a record; Chromium
renders the record's artifact page and the Artifacts page.

Set WRITE_ARTIFACT_SCREENSHOT=docs/artifact.png to also save a screenshot of
the artifact page (relative paths are taken from the repository's root).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from prefect_incomplete import IncompleteExecution
from prefect_incomplete.store import Store

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the example lives in flows/, beside the package

from flows.services import MailServer, OrdersAPI, free_port  # noqa: E402  (ROOT)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "WRITE_ARTIFACT_SCREENSHOT"
SERVER_START_SECONDS = 90

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium",
)


@dataclass(frozen=True)
class Stored:
    """The UI server and the record the example flow stored through it."""

    url: str
    record: IncompleteExecution
    artifact_id: str


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any PREFECT_ variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | settings


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the server answers /api/health; fail with its log if it dies."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(
                f"prefect server exited {server.returncode}:\n{log.read_text()}"
            )
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy in {SERVER_START_SECONDS} s")


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` on a free port, with the UI calling it back."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("ui-server-home")
    log = home / "server.log"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_UI_API_URL=f"{url}/api")
    command = [
        str(Path(sys.executable).with_name("prefect")),
        *("server", "start", "--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    try:
        wait_for_health(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def stored(ui_server: str, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    """Run the example flow on the bad rows' day against the UI server."""
    work = tmp_path_factory.mktemp("ui-flow")
    store_url = f"sqlite:///{work / 'incomplete.db'}"
    env = clean_env(
        PREFECT_API_URL=f"{ui_server}/api",
        PREFECT_HOME=str(work / "client-home"),
        PREFECT_INCOMPLETE_DATABASE_URL=store_url,
    )
    with OrdersAPI() as api, MailServer() as mail:
        command = [
            *(sys.executable, "-m", "flows.sync_orders", "--day", "2026-12-02"),
            *("--api-url", api.url, "--smtp-port", str(mail.port)),
            *("--receipts-dir", str(work / "receipts")),
        ]
        run = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("Incomplete: Incomplete execution"), run.stdout

    (record,) = Store(store_url).list()
    key = f"incomplete-{record.id}"
    found = httpx.post(
        f"{ui_server}/api/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}},
        timeout=10,
    )
    found.raise_for_status()
    (artifact,) = found.json()
    return Stored(ui_server, record, artifact["id"])


def chromium(url: str, profile: Path, *options: str) -> str:
    """Run headless Chromium on `url` with `options`; what it printed."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *options,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_artifact_page_shows_kind_step_and_resume_command(
    stored: Stored, tmp_path: Path
) -> None:
    """The artifact page renders the record: DataError, its step, how to resume."""
    page = f"{stored.url}/artifacts/artifact/{stored.artifact_id}"

    dom = chromium(page, tmp_path / "profile", "--dump-dom")

    step = stored.record.failed_steps[0]
    assert (step.key, step.kind) == ("validate_order[2]", "DataError")
    assert "DataError" in dom
    assert "validate_order[2]" in dom
    assert "validate_order[3]" in dom
    assert f"prefect-incomplete resume {stored.record.short_id}" in dom
    assert "Can't connect to Server API" not in dom

    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        path = ROOT / target
        chromium(
            page,
            tmp_path / "shot-profile",
            f"--screenshot={path}",
            "--window-size=1280,2000",
        )
        assert path.read_bytes().startswith(b"\x89PNG")


def test_artifacts_page_lists_the_record(stored: Stored, tmp_path: Path) -> None:
    """The Artifacts page lists the record's artifact and the flow's table by key."""
    dom = chromium(f"{stored.url}/artifacts", tmp_path / "profile", "--dump-dom")

    assert f"incomplete-{stored.record.id}" in dom
    assert "incomplete-sync-orders" in dom
