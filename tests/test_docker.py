"""docker/: the compose stack is consistent (services, dependencies, environment wiring, ports, volumes) and
the image definition installs what the project needs. No Docker engine runs here, so (slow) the stack's
MLflow and Prefect server commands run against a real PostgreSQL from the system packages instead."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from lewm.config import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
PROJECT_SERVICES = ("mlflow", "prefect-server", "prefect-worker", "deployments")


def interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` interpolation, with every variable unset."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate((DOCKER / "compose.yaml").read_text()))


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def option(args: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else dict(env)


def test_every_service_has_an_image_and_the_project_ones_share_one_build(compose):
    services = compose["services"]
    assert set(services) == {"postgres", *PROJECT_SERVICES}
    assert all("image" in s or "build" in s for s in services.values())
    for name in PROJECT_SERVICES:
        service = services[name]
        assert service["image"] == "lewm:latest", name
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == PROJECT_ROOT and (context / service["build"]["dockerfile"]).is_file()


def test_dependencies_exist_and_wait_for_health(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    assert set(services["prefect-worker"]["depends_on"]) == {"prefect-server", "mlflow"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}
    assert set(services["prefect-server"]["depends_on"]) == {"postgres"}


def test_servers_use_postgres_with_its_credentials(compose):
    services = compose["services"]
    pg = environment(services["postgres"])
    backend = urlsplit(option(command(services["mlflow"]), "--backend-store-uri"))
    assert backend.scheme == "postgresql" and backend.hostname == "postgres" and backend.port == 5432
    assert (backend.username, backend.password, backend.path) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], f"/{pg['POSTGRES_DB']}")
    prefect_db = urlsplit(environment(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert prefect_db.scheme == "postgresql+asyncpg" and prefect_db.hostname == "postgres"
    assert (prefect_db.username, prefect_db.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    # the Prefect database is created by the init script postgres runs on first start
    init = next(c for c in services["postgres"]["configs"]
                if c["target"].startswith("/docker-entrypoint-initdb.d/"))
    script = compose["configs"][init["source"]]["content"]
    assert f"CREATE DATABASE {prefect_db.path.lstrip('/')};" in script


def test_worker_reaches_both_servers_by_environment(compose):
    services = compose["services"]
    mlflow_args = command(services["mlflow"])
    prefect_args = command(services["prefect-server"])
    for name in ("prefect-worker", "deployments"):
        env = environment(services[name])
        api = urlsplit(env["PREFECT_API_URL"])
        prefect_port = int(option(prefect_args, "--port"))
        assert (api.hostname, api.port, api.path) == ("prefect-server", prefect_port, "/api")
        tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
        assert (tracking.hostname, tracking.port) == ("mlflow", int(option(mlflow_args, "--port")))
        # MLflow rejects unknown Host headers (DNS-rebinding protection): the service name must be allowed
        assert tracking.netloc in option(mlflow_args, "--allowed-hosts").split(",")
    assert "--serve-artifacts" in mlflow_args
    assert option(mlflow_args, "--host") == option(prefect_args, "--host") == "0.0.0.0"


def test_deployments_target_the_workers_pool_and_directory(compose):
    services = compose["services"]
    worker, deployments = command(services["prefect-worker"]), command(services["deployments"])
    assert worker[:3] == ["prefect", "worker", "start"] and option(worker, "--type") == "process"
    assert deployments[:3] == ["python", "-m", "pipelines.serve"]
    assert option(deployments, "--work-pool") == option(worker, "--pool")
    workdir = re.search(r"^WORKDIR (\S+)$", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    assert option(deployments, "--working-dir") == workdir
    mounts = {m.split(":")[1] for m in services["prefect-worker"]["volumes"]}
    assert {f"{workdir}/data", f"{workdir}/runs"} <= mounts  # pipeline outputs outlive the container


def test_ports_are_local_and_match_the_servers(compose):
    services = compose["services"]
    for name, port in (("mlflow", option(command(services["mlflow"]), "--port")),
                       ("prefect-server", option(command(services["prefect-server"]), "--port"))):
        (mapping,) = services[name]["ports"]
        host_ip, host_port, container_port = mapping.split(":")
        assert host_ip == "127.0.0.1" and container_port == port == host_port
    assert "ports" not in services["postgres"]  # reachable from the stack only


def test_named_volumes_and_configs_are_declared(compose):
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"]
    assert used == declared


def test_dockerfile_installs_the_pinned_project_with_headless_rendering():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "libosmesa6" in text and "MUJOCO_GL=osmesa" in text
    assert 'pip install -c constraints.txt -e ".[dev]"' in text  # dev extra: psycopg for MLflow
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for line in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for source in line.split():
            assert (PROJECT_ROOT / source).exists(), source
            top = source.split("/")[0]
            assert f"!{source}" in ignored or f"!{top}/**" in ignored, f"{source} is not in the build context"


def test_docker_compose_config_accepts_the_file():
    """Docker's own validation, where the compose plugin is installed (it needs no engine)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the docker compose plugin is not installed")
    subprocess.run([docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"], check=True,
                   timeout=60)


# ------------------------------------------------------------------------------ real PostgreSQL (slow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binaries() -> Path | None:
    initdb = shutil.which("initdb") or next(iter(sorted(glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on a free local port, with the stack's user and databases; as the
    `postgres` system user when the tests run as root (PostgreSQL refuses to run as root)."""
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg (dev extra) is needed for MLflow on PostgreSQL")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="lewm-pg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    port = free_port()
    data = root / "data"
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "lewm", "-A", "trust")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        for database in ("mlflow", "prefect"):
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "lewm", database)
        yield f"lewm@127.0.0.1:{port}"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")  # throw-away data
        shutil.rmtree(root, ignore_errors=True)


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}: {log.read_text()[-2000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str], log: Path):
    with log.open("w") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:  # the server and the workers it started, which share its new session
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def stack_command(compose: dict, name: str, replacements: dict[str, str]) -> list[str]:
    """The compose service's command with host names, ports and paths replaced for this machine."""
    args = command(compose["services"][name])
    for old, new in replacements.items():
        args = [arg.replace(old, new) for arg in args]
    return args


@pytest.mark.slow
def test_mlflow_server_of_the_stack_on_postgres(compose, postgres, tmp_path, monkeypatch):
    """The stack's `mlflow server` command on PostgreSQL: a run with metrics and an artifact, a registered
    model with the champion alias loaded back, all stored in the database; unknown Host headers refused."""
    import httpx
    import mlflow
    import mlflow.pytorch
    import torch

    from lewm.registry import load_champion, register, set_champion

    port = free_port()
    args = stack_command(compose, "mlflow", {
        "@postgres:5432": f"@{postgres.split('@')[1]}", "--host=0.0.0.0": "--host=127.0.0.1",
        "--port=5000": f"--port={port}", "127.0.0.1:5000": f"127.0.0.1:{port}",
        "/mlartifacts": str(tmp_path / "artifacts"),
    })
    args[0] = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    url = f"http://127.0.0.1:{port}"
    previous_uri = mlflow.get_tracking_uri()
    with server(args, env, tmp_path / "mlflow.log") as process:
        wait_for(f"{url}/health", process, tmp_path / "mlflow.log")
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(search, headers={"Host": "mlflow:5000"}).status_code == 200
        assert httpx.get(search, headers={"Host": "attacker.example"}).status_code == 403
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # as the stack's worker sees it
        try:
            mlflow.set_tracking_uri(url)
            mlflow.set_experiment("stack-test")
            module = torch.nn.Linear(1, 1, bias=False)
            torch.nn.init.constant_(module.weight, 3.0)
            with mlflow.start_run() as run:
                mlflow.log_metrics({"val/pred_loss": 0.5}, step=1)
                mlflow.pytorch.log_model(module, name="model", serialization_format="pickle",
                                         pip_requirements=["torch"])
            set_champion("stack-model", register(run.info.run_id, "stack-model"))
            assert load_champion("stack-model").weight.item() == 3.0
        finally:
            mlflow.set_tracking_uri(previous_uri)
    assert list((tmp_path / "artifacts").rglob("MLmodel"))  # artifacts went through the server's proxy
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"postgresql://{postgres}/mlflow")
    with engine.connect() as connection:
        query = "select count(*) from registered_model_aliases where alias = 'champion'"
        assert connection.execute(sqlalchemy.text(query)).scalar() == 1
        assert connection.execute(sqlalchemy.text("select count(*) from runs")).scalar() == 1
    engine.dispose()


@pytest.mark.slow
def test_prefect_server_of_the_stack_on_postgres(compose, postgres, tmp_path):
    """The stack's `prefect server start` with its PostgreSQL URL: it migrates the database and serves."""
    port = free_port()
    args = stack_command(compose, "prefect-server", {"0.0.0.0": "127.0.0.1", "4200": str(port)})
    args[0] = str(Path(sys.executable).parent / "prefect")
    db_url = environment(compose["services"]["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_DATABASE_CONNECTION_URL=db_url.replace("postgres:5432", postgres.split("@")[1]),
               PREFECT_HOME=str(tmp_path / "home"), PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    with server(args, env, tmp_path / "prefect.log") as process:
        wait_for(f"http://127.0.0.1:{port}/api/health", process, tmp_path / "prefect.log")
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"postgresql://{postgres}/prefect")
    with engine.connect() as connection:
        tables = sqlalchemy.inspect(connection).get_table_names()
    engine.dispose()
    assert {"flow_run", "deployment", "work_pool"} <= set(tables)
