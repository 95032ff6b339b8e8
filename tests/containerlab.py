"""Podman for tests/test_container.py: the images compose.yaml starts from, made on this machine, and the
stack brought up and torn down with podman-compose.

No image registry is reachable from the test machines, so the harness makes the images that Dockerfile and
compose.yaml name, under those names, from Debian's own packages:

* ``debian:bookworm-slim``: a bookworm ``minbase`` made by mmdebstrap (with python3, python3-venv and
  ca-certificates already in, which the Dockerfile's apt-get then finds installed) and imported. It trusts
  the certificate authorities this machine added (/usr/local/share/ca-certificates), so that pip and apt
  inside a build reach the package registries the way the machine does;
* ``redis:7`` and ``nginx:stable``: Debian's redis-server and nginx on that base, run as the official
  images run them (same commands, /data, conf.d, logs on stdout).

Each is made once and kept (about 35 s for the base, then 30 s for the two services, built beside the
server's image); a label holds a digest of its recipe, and of the machine's certificates for the base, so
that a change makes it again. An image of that name without the label (a real one, pulled where a registry
is reachable) is used as it is.

What this machine needs and users do not stays here, never in Dockerfile or compose.yaml: ``runc`` as the
runtime and explicit ulimits (podman's defaults raise the open-file limit beyond what this machine's
containers may have) through a containers.conf of the harness's own (CONTAINERS_CONF), and the Docker
image format (BUILDAH_FORMAT), in which the Dockerfile's HEALTHCHECK is kept.

By hand, as root: ``python3 tests/containerlab.py images`` makes the images; then with
``CONTAINERS_CONF`` set as it prints, ``podman-compose up -d`` runs compose.yaml as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
REDIS_IMAGE = "docker.io/library/redis:7"
NGINX_IMAGE = "docker.io/library/nginx:stable"
SERVER_IMAGE = "localhost/rover-stream:latest"  # compose.yaml's `image:` for the built server
RECIPE_LABEL = "org.rover-stream.test-recipe"

#: Where this machine's own certificate authorities are (a TLS-intercepting proxy's, a company's).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")

CONTAINERS_CONF = """\
# tests/containerlab.py: what podman needs on the test machines, and only there.
[containers]
# podman's default raises nofile (and nproc) beyond this machine's hard limits: runc then fails with
# "error setting rlimit type 7: operation not permitted".
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun refuses this machine's cgroup layout; runc runs.
runtime = "runc"
"""

MMDEBSTRAP = [
    "mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
    # What the real bookworm-slim leaves out too.
    "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--customize-hook=if [ -d /usr/local/share/ca-certificates ]; then "
    'cp -r /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"; fi',
    '--customize-hook=chroot "$1" update-ca-certificates',
]

REDIS_DOCKERFILE = """\
FROM debian:bookworm-slim
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
"""

NGINX_DOCKERFILE = """\
FROM debian:bookworm-slim
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \\
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \\
    && ln -sf /dev/stdout /var/log/nginx/access.log \\
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""


class PodmanError(RuntimeError):
    pass


class Lab:
    """podman and podman-compose with the harness's configuration; every command's output goes to ``log``."""

    def __init__(self, workdir: Path, project: str = "rover-stream-test") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.project = project
        self.log_path = workdir / "podman.log"
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "BUILDAH_FORMAT": "docker"}
        self.timings: dict[str, float] = {}

    # -- running commands ------------------------------------------------------------------------------------

    def _log(self, text: str) -> None:
        with open(self.log_path, "a") as log:
            log.write(text)

    def run(self, *command: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        self._log(f"\n$ {' '.join(command)}\n")
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                    env={**self.env, **(env or {})}, cwd=cwd, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            self._log(f"(timed out after {timeout} s)\n")
            raise PodmanError(f"{command[0]} {command[1] if len(command) > 1 else ''} took over {timeout} s; "
                              f"log: {self.log_path}") from exc
        self._log(result.stdout + result.stderr + f"(exit {result.returncode})\n")
        if check and result.returncode != 0:
            raise PodmanError(f"{' '.join(command)} exited with {result.returncode}:\n"
                              f"{(result.stdout + result.stderr)[-3000:]}")
        return result

    def start(self, *command: str, name: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """A long command in the background (builds run side by side), its output in a log of its own."""
        log = open(self.workdir / f"{name}.log", "wb")
        self._log(f"\n$ {' '.join(command)}   (output in {name}.log)\n")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                cwd=cwd, stdin=subprocess.DEVNULL)
        log.close()
        return proc

    def finish(self, proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise PodmanError(f"{name} took over {timeout} s:\n{self.tail(name)}") from None
        if code != 0:
            raise PodmanError(f"{name} exited with {code}:\n{self.tail(name)}")

    def tail(self, name: str, size: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args, timeout=timeout, check=check)

    @staticmethod
    def dotenv() -> dict[str, str]:
        """The variables of the .env beside compose.yaml (podman-compose 1.0.3 lets them win over the
        environment, unlike Docker Compose)."""
        path = COMPOSE_FILE.parent / ".env"
        values = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                name, equals, value = line.strip().removeprefix("export ").partition("=")
                if equals and not name.startswith("#"):
                    values[name.strip()] = value.strip().strip("'\"")
        return values

    def compose(self, *args: str, env: dict[str, str], timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("podman-compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args, env=env,
                        timeout=timeout, check=check, cwd=ROOT)

    # -- images ----------------------------------------------------------------------------------------------

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels ({} when it has none), or None when there is no such image."""
        result = self.podman("image", "inspect", image, check=False)
        if result.returncode != 0:
            return None
        config = json.loads(result.stdout)[0].get("Config") or {}
        return config.get("Labels") or {}

    def _wanted(self, image: str, recipe: str) -> bool:
        labels = self.image_labels(image)
        if labels is None:
            return True
        if RECIPE_LABEL not in labels:
            return False  # not ours (a real image): use it as it is
        return labels[RECIPE_LABEL] != recipe

    def base_recipe(self) -> str:
        digest = hashlib.sha256("\0".join(MMDEBSTRAP).encode())
        if LOCAL_CA_DIR.is_dir():
            for path in sorted(LOCAL_CA_DIR.rglob("*")):
                if path.is_file():
                    digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:24]

    def ensure_base_image(self) -> None:
        recipe = self.base_recipe()
        if not self._wanted(BASE_IMAGE, recipe):
            return
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rover-rootfs-", dir="/var/tmp") as temp:
            tarball = Path(temp) / "rootfs.tar"
            self.run(*MMDEBSTRAP, "bookworm", str(tarball), timeout=300)
            self.podman("import", "--change", 'CMD ["bash"]', "--change", f"LABEL {RECIPE_LABEL}={recipe}",
                        str(tarball), BASE_IMAGE, timeout=120)
        self.timings["base image"] = time.monotonic() - started

    def _service_builds(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        base = self.image_labels(BASE_IMAGE)
        base_id = self.podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()
        assert base is not None
        builds = []
        for image, dockerfile in ((REDIS_IMAGE, REDIS_DOCKERFILE), (NGINX_IMAGE, NGINX_DOCKERFILE)):
            recipe = hashlib.sha256(f"{base_id}\0{dockerfile}".encode()).hexdigest()[:24]
            if not self._wanted(image, recipe):
                continue
            context = self.workdir / image.rsplit("/", 1)[-1].replace(":", "-")
            context.mkdir(exist_ok=True)
            (context / "Dockerfile").write_text(dockerfile + f"LABEL {RECIPE_LABEL}={recipe}\n")
            name = f"build-{context.name}"
            builds.append((name, self.start("podman", "build", "--pull=never", "-t", image, str(context),
                                            name=name)))
        return builds

    def build(self, env: dict[str, str]) -> None:
        """The base image, then redis, nginx and the server's image (compose.yaml's build) side by side."""
        self.ensure_base_image()
        started = time.monotonic()
        previous = self.podman("image", "inspect", "--format", "{{.Id}}", SERVER_IMAGE, check=False).stdout.strip()
        builds = self._service_builds()
        builds.append(("compose-build", self.start("podman-compose", "-f", str(COMPOSE_FILE), "-p", self.project,
                                                   "--podman-build-args=--pull=never", "build", name="compose-build",
                                                   env=env, cwd=ROOT)))
        try:
            for name, proc in builds:
                self.finish(proc, name, timeout=max(30.0, 420 - (time.monotonic() - started)))
        finally:
            for _, proc in builds:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        self.timings["builds"] = time.monotonic() - started
        current = self.podman("image", "inspect", "--format", "{{.Id}}", SERVER_IMAGE, check=False).stdout.strip()
        if previous and previous != current:  # each change of the code leaves an image of the venv behind
            self.podman("rmi", previous, check=False)

    # -- the stack -------------------------------------------------------------------------------------------

    def containers(self) -> list[dict[str, object]]:
        result = self.podman("ps", "--all", "--format", "json", "--filter",
                             f"label=io.podman.compose.project={self.project}")
        return json.loads(result.stdout or "[]")  # type: ignore[no-any-return]

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def up(self, env: dict[str, str]) -> None:
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", env=env, timeout=120)
        self.timings["up"] = time.monotonic() - started

    def published_port(self, service: str, port: int) -> int:
        """The loopback port the service's ``port`` is published on."""
        out = self.podman("port", self.container(service), f"{port}/tcp").stdout.strip()
        address, _, published = out.splitlines()[0].rpartition(":")
        if address != "127.0.0.1":
            raise PodmanError(f"{service}'s port {port} is published on {address}, not 127.0.0.1 only")
        return int(published)

    def container_env(self, service: str) -> dict[str, str]:
        result = self.podman("container", "inspect", self.container(service))
        pairs = json.loads(result.stdout)[0]["Config"]["Env"]
        return dict(pair.split("=", 1) for pair in pairs)

    def logs(self, service: str, size: int = 4000) -> str:
        result = self.podman("logs", self.container(service), check=False)
        return (result.stdout + result.stderr)[-size:]

    def down(self, env: dict[str, str]) -> None:
        """Containers, network and volumes of the project, whatever state they are in (images stay)."""
        self.compose("down", "-v", "-t", "5", env=env, timeout=120, check=False)
        leftovers = [str(c["Id"]) for c in self.containers()]
        if leftovers:
            self.podman("rm", "--force", "--volumes", "--time", "2", *leftovers, check=False)
        self.podman("network", "rm", "--force", f"{self.project}_default", check=False)
        volumes = self.podman("volume", "ls", "--quiet", "--filter",
                              f"label=io.podman.compose.project={self.project}", check=False).stdout.split()
        if volumes:
            self.podman("volume", "rm", "--force", *volumes, check=False)


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["images"]:
        print("usage: python3 tests/containerlab.py images", file=sys.stderr)
        return 2
    workdir = Path("/var/tmp/rover-stream-containerlab")
    lab = Lab(workdir)
    lab.ensure_base_image()
    builds = lab._service_builds()
    for name, proc in builds:
        lab.finish(proc, name, timeout=420)
    print(f"Images ready: {BASE_IMAGE}, {REDIS_IMAGE}, {NGINX_IMAGE}. Now, e.g.:\n"
          f"  export CONTAINERS_CONF={workdir / 'containers.conf'} BUILDAH_FORMAT=docker\n"
          "  podman-compose up -d")
    return 0


if __name__ == "__main__":
    if shutil.which("podman") is None:
        sys.exit("podman is not installed")
    sys.exit(main(sys.argv[1:]))
