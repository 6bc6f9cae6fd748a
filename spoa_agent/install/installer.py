"""`spoa-agent setup` and `spoa-agent uninstall`: the shipped files put in
their places on a Debian/Ubuntu host (layout.py), and taken away again.

Setup is idempotent and never destroys an operator's work: a file it finds
different from what it last installed (or one it never installed) is kept,
and the new version goes beside it as FILE.new. What it installed, with each
file's digest and each directory it created, is recorded in
/var/lib/spoa-agent/setup.json; uninstall removes exactly that, and keeps any
file edited since (and the ban list once it holds bans) unless --purge.

Both first decide everything (a list of Steps), then either print the steps
(--dry-run) or carry them out. Under --root DIR the same tree goes under DIR
and no command runs (no user, no systemctl): a scratch install to look at.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spoa_agent.install import layout
from spoa_agent.install.shipped import EXAMPLE_CONFIG, SHIPPED

# The executable the shipped unit names; setup writes the one it runs from.
SHIPPED_EXECUTABLE = "/opt/spoa-agent/.venv/bin/spoa-agent"
# The distribution's redis-server, which setup installs when given no URL.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SetupError(Exception):
    """Setup or uninstall cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class FileSpec:
    """One file setup puts on the host."""

    path: Path  # on the host
    content: bytes
    mode: int = 0o644
    owner: str | None = None  # chown on the real host; root when None
    group: str | None = None
    # Data the host adds to (the ban list): created once, never replaced.
    data: bool = False


@dataclass(frozen=True)
class DirSpec:
    path: Path
    mode: int = 0o755
    group: str | None = None


@dataclass
class Manifest:
    """What setup installed: each file's digest, each directory it created."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    user_created: bool = False

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(files=dict(raw["files"]), dirs=list(raw["dirs"]),
                       user_created=bool(raw.get("user_created", False)))
        except (ValueError, KeyError, TypeError) as err:
            raise SetupError(f"{path}: not a setup record ({err}); move it away and "
                             "run setup again") from None

    def dumps(self) -> str:
        return json.dumps({"files": self.files, "dirs": self.dirs,
                           "user_created": self.user_created}, indent=2, sort_keys=True) + "\n"


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def agent_executable() -> Path:
    """The spoa-agent of the environment setup runs from (a venv, pipx)."""
    beside = Path(sys.executable).parent / "spoa-agent"
    found = shutil.which("spoa-agent")
    return beside if beside.exists() or found is None else Path(found)


def env_file(redis_url: str | None, redis_password: str | None) -> bytes:
    lines = [
        "# spoa-agent's environment (the unit's EnvironmentFile=). Secrets live here,",
        "# readable by root only, never in agent.toml or the unit.",
        f"SPOA_AGENT_LOG_FILE={layout.AGENT_LOG}",
        f"SPOA_AGENT_REDIS_URL={redis_url or DEFAULT_REDIS_URL}",
        (f"SPOA_AGENT_REDIS_PASSWORD={redis_password}" if redis_password
         else "#SPOA_AGENT_REDIS_PASSWORD="),
    ]
    return ("\n".join(lines) + "\n").encode()


def shipped_bytes(name: str) -> bytes:
    return (SHIPPED / name).read_bytes()


def planned_files(executable: Path, redis_url: str | None,
                  redis_password: str | None) -> list[FileSpec]:
    unit = shipped_bytes("systemd/spoa-agent.service").replace(
        SHIPPED_EXECUTABLE.encode(), str(executable).encode())
    gateway = [FileSpec(layout.GATEWAY_DIR / name, shipped_bytes(name))
               for name in ("haproxy/haproxy.cfg", "haproxy/spoe-agent.conf",
                            "haproxy/hosts.map", "lua/spoa_deny.lua", "lua/spoa_usage.lua",
                            "lua/spoa_oidc.lua")]
    fail2ban = [FileSpec(layout.FAIL2BAN_DIR / name, shipped_bytes(f"fail2ban/{name}"))
                for name in ("filter.d/spoa-agent.conf", "action.d/haproxy-spoa.conf",
                             "jail.d/spoa-agent.local")]
    return [
        FileSpec(layout.AGENT_CONFIG, EXAMPLE_CONFIG.read_bytes(), 0o640,
                 group=layout.AGENT_USER),
        FileSpec(layout.AGENT_ENV, env_file(redis_url, redis_password), 0o600),
        *gateway,
        FileSpec(layout.BANLIST, shipped_bytes("haproxy/banned.lst"),
                 owner=layout.HAPROXY_USER, group=layout.HAPROXY_USER, data=True),
        FileSpec(layout.AGENT_UNIT, unit),
        FileSpec(layout.HAPROXY_DROPIN,
                 shipped_bytes("systemd/haproxy.service.d/spoa-gateway.conf")),
        *fail2ban,
        FileSpec(layout.LOGROTATE, shipped_bytes("logrotate/spoa-agent")),
    ]


# Directories with their own mode; any other parent setup creates gets 0755.
PLANNED_DIRS = {spec.path: spec for spec in (
    DirSpec(layout.CONFIG_DIR, 0o750, group=layout.AGENT_USER),
    DirSpec(layout.GATEWAY_CERTS, 0o700),
    DirSpec(layout.GATEWAY_LOCAL),
    DirSpec(layout.STATE_DIR),
)}


@dataclass(frozen=True)
class Step:
    """One thing setup or uninstall does, as the operator reads it."""

    verb: str  # install, update, unchanged, keep, create, remove, run, skip ...
    what: str
    action: Callable[[], None] | None = None  # None: nothing to do


class Host:
    """The host setup works on: / or a scratch root. Owners and groups are set
    only on the real one, where the users exist."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real = root == Path("/")

    def at(self, path: Path) -> Path:
        return layout.under(self.root, path)

    def chown(self, path: Path, owner: str | None, group: str | None) -> None:
        if self.real and (owner or group):
            uid = pwd.getpwnam(owner).pw_uid if owner else -1
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.chown(path, uid, gid)

    def user_exists(self, name: str) -> bool:
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False


def _run(argv: list[str]) -> Callable[[], None]:
    def run() -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise SetupError(f"{' '.join(argv)} failed ({result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()}")
    return run


def _command(host: Host, argv: list[str]) -> Step:
    if not host.real:
        return Step("skip", f"{' '.join(argv)}  (--root: nothing runs)")
    return Step("run", " ".join(argv), _run(argv))


class Setup:
    """Decides every step of a setup; `steps` in order, then `carry_out`."""

    def __init__(self, root: Path, redis_url: str | None = None,
                 redis_password: str | None = None,
                 executable: Path | None = None) -> None:
        self.host = Host(root)
        self.executable = executable or agent_executable()
        self.files = planned_files(self.executable, redis_url, redis_password)
        self.redis_url = redis_url
        manifest_path = self.host.at(layout.MANIFEST)
        self.previous = Manifest.read(manifest_path) or Manifest()
        self.manifest = Manifest(dict(self.previous.files), list(self.previous.dirs),
                                 self.previous.user_created)
        self.changed_units = False

    def steps(self) -> list[Step]:
        if self.host.real and not shutil.which("haproxy"):
            raise SetupError("HAProxy is not installed: apt-get install haproxy, then run "
                             "setup again")
        steps: list[Step] = []
        steps += self._user()
        steps += self._redis_package()
        for spec in self.files:
            steps += self._directories_for(spec.path.parent)
            steps += self._file(spec)
        for directory in PLANNED_DIRS:
            steps += self._directories_for(directory)
        # Anything carried out (not only printed) changes the host: then the
        # services pick it up.
        steps += self._services(any(step.action is not None for step in steps))
        steps += self._manifest()
        return steps

    # --- commands before the files ---------------------------------------

    def _user(self) -> list[Step]:
        if self.host.real and self.host.user_exists(layout.AGENT_USER):
            return [Step("unchanged", f"user {layout.AGENT_USER}")]
        if self.host.real:
            self.manifest.user_created = True
        return [_command(self.host, ["useradd", "--system", "--home-dir", "/nonexistent",
                                     "--no-create-home", "--shell", "/usr/sbin/nologin",
                                     layout.AGENT_USER])]

    def _redis_package(self) -> list[Step]:
        if self.redis_url:
            return []
        if self.host.real and shutil.which("redis-server"):
            return [Step("unchanged", "redis-server (the distribution's)")]
        return [_command(self.host, ["apt-get", "install", "-y", "redis-server"])]

    # --- files and directories ---------------------------------------------

    def _directories_for(self, path: Path) -> list[Step]:
        """Steps creating `path` and its missing parents, outermost first."""
        missing = []
        for directory in [path, *path.parents]:
            if self.host.at(directory).exists() or str(directory) in self.manifest.dirs:
                break
            missing.append(directory)
        steps = []
        for directory in reversed(missing):
            spec = PLANNED_DIRS.get(directory, DirSpec(directory))
            self.manifest.dirs.append(str(directory))
            steps.append(Step("create", f"{directory}/",
                              self._mkdir(directory, spec.mode, spec.group)))
        return steps

    def _mkdir(self, directory: Path, mode: int, group: str | None) -> Callable[[], None]:
        def make() -> None:
            target = self.host.at(directory)
            target.mkdir(mode=mode)
            target.chmod(mode)  # mkdir's mode is cut by the umask
            self.host.chown(target, None, group)
        return make

    def _file(self, spec: FileSpec) -> list[Step]:
        target = self.host.at(spec.path)
        key = str(spec.path)
        new_digest = digest(spec.content)
        if not target.exists():
            self.manifest.files[key] = new_digest
            self._note_change(spec)
            return [Step("install", key, self._write(target, spec))]
        current = digest(target.read_bytes())
        if current == new_digest or spec.data:
            self.manifest.files.setdefault(key, new_digest)
            return [Step("unchanged", key)]
        if self.previous.files.get(key) == current:  # ours, not edited since
            self.manifest.files[key] = new_digest
            self._note_change(spec)
            return [Step("update", key, self._write(target, spec))]
        # Edited by the operator, or there before setup: theirs stays.
        beside = FileSpec(spec.path.with_name(spec.path.name + ".new"), spec.content,
                          spec.mode, spec.owner, spec.group)
        beside_target = self.host.at(beside.path)
        self.manifest.files[str(beside.path)] = new_digest
        if beside_target.exists() and digest(beside_target.read_bytes()) == new_digest:
            return [Step("keep", f"{key} (edited; the shipped version is in {beside.path})")]
        return [Step("keep", f"{key} (edited); the shipped version goes to {beside.path}: "
                             "compare and merge", self._write(beside_target, beside))]

    def _note_change(self, spec: FileSpec) -> None:
        if spec.path in (layout.AGENT_UNIT, layout.HAPROXY_DROPIN):
            self.changed_units = True

    def _write(self, target: Path, spec: FileSpec) -> Callable[[], None]:
        def write() -> None:
            # A new file under a temporary name, then renamed over: a reader
            # (HAProxy reloading, systemd) never sees half a file.
            partial = target.with_name(f".{target.name}.spoa-setup")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, spec.mode)
            with os.fdopen(fd, "wb") as out:
                out.write(spec.content)
            partial.chmod(spec.mode)
            self.host.chown(partial, spec.owner, spec.group)
            partial.replace(target)
        return write

    # --- services --------------------------------------------------------------

    def _services(self, changed: bool) -> list[Step]:
        if not changed:
            return []
        steps = [_command(self.host, ["systemctl", "daemon-reload"]),
                 _command(self.host, ["systemctl", "enable", "spoa-agent.service"]),
                 _command(self.host, ["systemctl", "restart", "spoa-agent.service"])]
        if not self.host.real or shutil.which("fail2ban-client"):
            steps.append(_command(self.host, ["systemctl", "reload-or-restart",
                                              "fail2ban.service"]))
        return steps

    def _manifest(self) -> list[Step]:
        text = self.manifest.dumps()
        target = self.host.at(layout.MANIFEST)
        if target.exists() and target.read_text() == text:
            return []

        def write() -> None:
            target.write_text(text)
        return [Step("record", str(layout.MANIFEST), write)]

    def next_steps(self) -> list[str]:
        """What is left to the operator, once the steps are done."""
        notes = []
        if self.changed_units:
            notes.append("HAProxy runs the gateway's config from its next start: "
                         "systemctl restart haproxy (your /etc/haproxy/haproxy.cfg is kept; "
                         f"add your own sections in {layout.GATEWAY_LOCAL}/*.cfg)")
        notes.append(f"TLS: put a PEM (certificate, chain, key) in {layout.GATEWAY_CERTS}/ and "
                     f"uncomment TLS_CERT_DIR in {layout.HAPROXY_DROPIN}")
        notes.append("then check the whole deployment: spoa-agent doctor")
        if self.executable.is_relative_to("/home") or self.executable.is_relative_to("/root"):
            notes.insert(0, f"{self.executable} is under a home directory, which the unit's "
                            "ProtectHome=yes hides from the service: install into "
                            "/opt/spoa-agent/.venv instead")
        return notes


class Uninstall:
    """Removes what the setup record names, and nothing else."""

    def __init__(self, root: Path, purge: bool = False) -> None:
        self.host = Host(root)
        self.purge = purge
        manifest = Manifest.read(self.host.at(layout.MANIFEST))
        if manifest is None:
            raise SetupError(f"no setup record at {self.host.at(layout.MANIFEST)}: "
                             "nothing that setup installed to remove")
        self.manifest = manifest

    def steps(self) -> list[Step]:
        steps: list[Step] = []
        if self.host.real and self.host.at(layout.AGENT_UNIT).exists():
            steps.append(_command(self.host, ["systemctl", "disable", "--now",
                                              "spoa-agent.service"]))
        for name, recorded in self.manifest.files.items():
            steps += self._file(Path(name), recorded)
        steps.append(Step("remove", str(layout.MANIFEST), self._unlink(layout.MANIFEST)))
        steps += self._directories()
        if self.host.real:
            steps.append(_command(self.host, ["systemctl", "daemon-reload"]))
        if self.manifest.user_created and self.purge:
            steps.append(_command(self.host, ["userdel", layout.AGENT_USER]))
        return steps

    def _file(self, path: Path, recorded: str) -> list[Step]:
        target = self.host.at(path)
        if not target.exists():
            return [Step("gone", str(path))]
        if self._removes(path, recorded):
            return [Step("remove", str(path), self._unlink(path))]
        what = "bans" if path == layout.BANLIST else "edits"
        return [Step("keep", f"{path} (holds your {what}; --purge removes it)")]

    def _unlink(self, path: Path) -> Callable[[], None]:
        def unlink() -> None:
            self.host.at(path).unlink(missing_ok=True)
        return unlink

    def _directories(self) -> list[Step]:
        """The directories setup created, innermost first, each only when
        nothing but what uninstall removes is in it."""
        removed = {self.host.at(Path(name)) for name, recorded in self.manifest.files.items()
                   if self._removes(Path(name), recorded)} | {self.host.at(layout.MANIFEST)}
        steps = []
        for name in sorted(self.manifest.dirs, key=lambda d: d.count("/"), reverse=True):
            target = self.host.at(Path(name))
            if not target.exists():
                continue
            if any(not p.is_dir() and p not in removed for p in target.rglob("*")):
                steps.append(Step("keep", f"{name}/ (not empty)"))
                continue
            steps.append(Step("remove", f"{name}/", self._rmdir(Path(name))))
        return steps

    def _removes(self, path: Path, recorded: str) -> bool:
        target = self.host.at(path)
        return not target.exists() or self.purge or digest(target.read_bytes()) == recorded

    def _rmdir(self, directory: Path) -> Callable[[], None]:
        def rmdir() -> None:
            target = self.host.at(directory)
            if target.exists() and not any(target.iterdir()):
                target.rmdir()
        return rmdir


def carry_out(steps: Iterable[Step], report: Callable[[Step], None]) -> None:
    for step in steps:
        if step.action is not None:
            step.action()
        report(step)
