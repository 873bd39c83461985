"""The compiled pipeline in its real images: `kfp.local.DockerRunner` against Docker or Podman.

Each task runs in the image its YAML names (built locally by `./build.sh images`), as the
image's user 1000, on the host network; a file:// model store is mounted at its own path, as
kfp mounts the pipeline root. The database DSN and the HMAC key reach only the tasks whose
platform spec maps a Secret to them, as `use_secret_as_env` does on a cluster: the values go
into the in-memory copy of the YAML, never into a file, a parameter or a log line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from feedback_loop.errors import FeedbackLoopError

# The Secrets the manifests name, and the local value of each of their keys.
Secrets = Mapping[str, Mapping[str, str]]
# In a checkout: the Podman settings ./build.sh uses (host network, limits this host allows).
PODMAN_CONF = Path(__file__).resolve().parents[1] / "images" / "podman" / "containers.conf"


def with_secrets(pipeline_yaml: str, secrets: Secrets) -> str:
    """The pipeline YAML with each executor's Secret-mapped env vars set from `secrets`."""
    docs = list(yaml.safe_load_all(pipeline_yaml))
    spec = docs[0]
    platform = docs[1] if len(docs) > 1 else {}
    executors = (platform or {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    for name, config in executors.items():
        env = []
        for mapping in config.get("secretAsEnv", []):
            secret = mapping["secretName"]
            for pair in mapping["keyToEnv"]:
                value = secrets.get(secret, {}).get(pair["secretKey"])
                if value is None and not mapping.get("optional", False):
                    raise FeedbackLoopError(
                        f"task {name.removeprefix('exec-')} needs key {pair['secretKey']!r} of Secret {secret!r}, which has no local value"
                    )
                if value is not None:
                    env.append({"name": pair["envVar"], "value": value})
        if env:
            container = spec["deploymentSpec"]["executors"][name]["container"]
            container["env"] = [*container.get("env", []), *env]
    return yaml.safe_dump_all(docs, sort_keys=False)


@contextlib.contextmanager
def reachable_dsn(dsn: str) -> Iterator[str]:
    """The DSN as a container on the host network reaches it. A Unix-socket DSN (the embedded
    PostgreSQL listens on nothing else, in a folder only its own user may enter) is relayed
    over TCP on 127.0.0.1 while the context lasts, as a cluster reaches its database; any
    other DSN is yielded as given."""
    import asyncio
    import threading

    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(dsn)
    host = params.get("host") or "/var/run/postgresql"  # libpq's default: the socket
    if not host.startswith("/"):
        yield dsn
        return
    path = f"{host}/.s.PGSQL.{params.get('port', '5432')}"

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_unix_connection(path)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(relay, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name="postgres-relay", daemon=True)
    thread.start()
    async def shutdown() -> None:
        server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        yield make_dsn(**{**params, "host": "127.0.0.1", "port": str(server.sockets[0].getsockname()[1])})
    finally:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def images(pipeline_yaml: str) -> dict[str, str]:
    """Task executor -> the image it runs in."""
    spec = next(yaml.safe_load_all(pipeline_yaml))
    return {name.removeprefix("exec-"): e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def open_to_image_user(*folders: Path) -> None:
    """Lets the images' user write where the host process wrote (the pipeline root, the model store)."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for path in [folder, *folder.rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            path.chmod(mode | (0o777 if path.is_dir() else 0o666))


@contextlib.contextmanager
def engine() -> Iterator[str]:
    """Yields a Docker API address: DOCKER_HOST or Docker's socket when one answers, else a
    `podman system service` started for the run (CONTAINER_ENGINE=podman|docker picks)."""
    choice = os.environ.get("CONTAINER_ENGINE", "")
    if choice != "podman" and _answers(os.environ.get("DOCKER_HOST")):
        yield os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return
    if choice == "docker" or not shutil.which("podman"):
        raise FeedbackLoopError(
            "no container engine answers: start Docker (or set DOCKER_HOST), or install Podman (apt-get install podman runc)"
        )
    with tempfile.TemporaryDirectory(prefix="feedback-loop-podman-") as scratch:
        address = f"unix://{scratch}/podman.sock"
        env = dict(os.environ)
        if "CONTAINERS_CONF" not in env and PODMAN_CONF.is_file():
            env["CONTAINERS_CONF"] = str(PODMAN_CONF)
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        try:
            deadline = time.monotonic() + 30
            while not _answers(address):
                if service.poll() is not None or time.monotonic() > deadline:
                    detail = service.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if service.stderr else []
                    raise FeedbackLoopError(f"podman system service did not answer on {address}: {' '.join(detail) or 'timed out'}")
                time.sleep(0.2)
            previous = os.environ.get("DOCKER_HOST")
            os.environ["DOCKER_HOST"] = address  # kfp's DockerRunner calls docker.from_env()
            try:
                yield address
            finally:
                if previous is None:
                    os.environ.pop("DOCKER_HOST", None)
                else:
                    os.environ["DOCKER_HOST"] = previous
        finally:
            service.terminate()
            service.wait(timeout=30)


def _answers(address: str | None) -> bool:
    try:
        import docker
    except ImportError:
        raise FeedbackLoopError("the docker Python package is missing: pip install 'feedback-loop[dev]'") from None
    try:
        client = docker.DockerClient(base_url=address) if address else docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 (any failure means: not this engine)
        return False


def missing_images(address: str, wanted: set[str]) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=address)
    try:
        present = {tag for image in client.images.list() for tag in image.tags}
    finally:
        client.close()
    return sorted(wanted - present)


def _run_task(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """One task's container, its log streamed, its exit status returned. kfp 2.17 starts it with
    auto_remove and reads a container already gone as status 0, so a failed task passed."""
    container = client.containers.run(image=image, command=command, detach=True, volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


@contextlib.contextmanager
def _exit_status_kept() -> Iterator[None]:
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = _run_task
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def run_pipeline(
    pipeline_root: Path, arguments: dict[str, Any], secrets: Secrets, shared: list[Path], yaml_path: Path, **kwargs: Any
) -> Path:
    """local.run_pipeline with each task in its image; the `shared` folders (the model store) are
    mounted at the same path, as kfp mounts the pipeline root. Returns the run's folder."""
    from docker.types import Mount
    from kfp import local as kfp_local

    from feedback_loop import local

    if not yaml_path.exists():
        raise FeedbackLoopError(f"{yaml_path} is missing: run `feedback-loop compile` first")
    text = yaml_path.read_text()
    open_to_image_user(pipeline_root, *shared)
    with engine() as address, _exit_status_kept():
        missing = missing_images(address, set(images(text).values()))
        if missing:
            raise FeedbackLoopError(f"images not built: {', '.join(missing)}: run ./build.sh images")
        runner = kfp_local.DockerRunner(
            network_mode="host", mounts=[Mount(target=str(p), source=str(p), type="bind") for p in shared]
        )
        return local.run_pipeline(pipeline_root, arguments, yaml_path, runner=runner, yaml_text=with_secrets(text, secrets), **kwargs)
