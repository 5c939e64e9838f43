"""The docker compose system, checked without a Docker engine: the file against what the
issue asks, the Dockerfile, and the example producer and worker run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgbatch.cli.options import parse_duration
from pgbatch.worker.supervisor import KILL_AFTER

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_postgres_has_a_healthcheck(compose):
    postgres = compose["services"]["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = postgres["environment"]
    user, password, db = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    # Every app service points at that server with those credentials.
    for name in ("migrate", "worker", "producer"):
        dsn = compose["services"][name]["environment"]["PGBATCH_DSN"]
        assert dsn == f"postgresql://{user}:{password}@postgres:5432/{db}"


def test_migrate_runs_once_after_postgres_is_healthy(compose):
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["pgbatch", "migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"


def test_worker_and_producer_start_after_the_migration(compose):
    worker, producer = compose["services"]["worker"], compose["services"]["producer"]
    assert worker["command"][:3] == ["pgbatch", "worker", "workers.emails:app"]
    assert producer["command"][:3] == ["python", "-m", "workers.producer"]
    for service in (worker, producer):
        assert service["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert service["build"] == "."
    # Compose must not SIGKILL the worker before its own graceful shutdown can end.
    assert parse_duration(worker["stop_grace_period"]).total_seconds() > KILL_AFTER


def test_the_image_is_python_slim_with_pgbatch_installed():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile.splitlines()
    assert "RUN pip install ." in dockerfile and "COPY workers ./workers" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".pgbatch" in ignored


def compose_client() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_config_accepts_the_file():
    client = compose_client()
    if client is None:
        pytest.skip("no docker compose client on this machine")
    done = subprocess.run(
        [*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()


def test_the_example_producer_feeds_the_example_worker(pg_dsn, schema, client):
    env = {**os.environ, "PGBATCH_SCHEMA": schema, "PYTHONPATH": str(ROOT)}
    produced = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.producer",
            "--total",
            "300",
            "--rate",
            "100000",
            "--dsn",
            pg_dsn,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert produced.returncode == 0, produced.stderr.decode()
    assert b"done, 300 messages enqueued" in produced.stdout
    env["EMAILS_RELAY_SECONDS"] = "0"
    worked = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgbatch.cli",
            "worker",
            "workers.emails:app",
            "--until-empty",
            "--dsn",
            pg_dsn,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert worked.returncode == 0, worked.stderr.decode()
    stats = client.queue("emails").stats()
    # Every 50th address bounces (user0, user50, ... user250): retried later, not archived.
    assert (stats.archived, stats.ready + stats.delayed) == (294, 6)
