"""The host side of the molecule scenario (extensions/molecule/default): three systemd hosts.

``up`` prepares, idempotently and each step bounded in time, everything the scenario needs
on this machine (the controller); molecule then creates the three containers itself::

    apt packages    podman, runc, debootstrap, openssh-client when missing (root: apt-get)
    containers.conf /etc/containers/containers.conf: runtime runc, ulimits (keys added only if absent)
    image           bookworm + systemd + sshd + python3, built offline with debootstrap and
                    `podman import`, tagged with a hash of its recipe and reused while it matches
    network         podman network safedeploy-molecule with its own /24 (hosts .11-.13)
    wheelhouse      the sample app's requirements as wheels (devtools.sandbox), mounted read-only
    artifacts       shop-1.0.0.tar.gz and shop-2.0.0.tar.gz (devtools.build_release)
    postgresql      devtools.pgcluster on a free port, reachable from the containers' subnet only
                    (pg_hba, scram); role shop_app, database shop; secrets in files 0600
    nginx           on the host, upstream = the three containers' :8000
    ssh key         the scenario's key for root in the containers (authorized_keys mounted read-only)
    env.json        what the scenario reads (its inventory and playbooks load it)

Everything lives in ``.build/molecule-env/`` (``--dir``); the wheelhouse is cached beside it in
``.build/molecule-cache/`` so that ``down --purge`` does not throw it away.

    python -m devtools.molecule_env up
    python -m devtools.molecule_env status
    python -m devtools.molecule_env down [--purge]   # containers, network, nginx, PostgreSQL

``down`` stops whatever ``up`` and molecule started, even after a molecule run that failed
midway; ``--purge`` also deletes the directory (the database with it), so the next ``up``
starts from an empty database. The image is kept (``--purge-image`` removes it too).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from devtools.pgcluster import Cluster, free_port
from devtools.sandbox import RELEASES, Sandbox, SandboxError, _read_env, _write, _write_private

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".build" / "molecule-env"
CACHE_DIR = REPO / ".build" / "molecule-cache"
ENV_FILE_NAME = "env.json"

NETWORK = "safedeploy-molecule"
LABEL = "safedeploy.molecule"  # on the network and on the containers (extensions/molecule/default/create.yml)
CONTAINER_PREFIX = "safedeploy-molecule-"
HOSTS = (("app1", 11), ("app2", 12), ("app3", 13))  # molecule platform name, last octet of its address
APP_PORT = 8000
DB_NAME = "shop"
DB_USER = "shop_app"
WHEELHOUSE_MOUNT = "/wheelhouse"
# candidates for the network's subnet: the first /24 that no route and no podman network uses
SUBNET_CANDIDATES = [f"10.213.{i}.0/24" for i in range(0, 250, 7)]

# -- the image ------------------------------------------------------------------------------------
SUITE = "bookworm"  # pinned: later systemd releases drop cgroup v1, which this machine has
IMAGE_REPOSITORY = "localhost/safedeploy-molecule-systemd"
IMAGE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "openssh-server", "iproute2",
    "procps", "curl", "ca-certificates", "libpq5", "python3-packaging",
    # pg_snapshot runs pg_dump on the migration host; bookworm's client is 15, like the host's server
    "postgresql-client-15",
)
# written into the root file system before `podman import`; part of the image's hash
IMAGE_FILES = {
    "etc/ssh/sshd_config.d/molecule.conf": (
        "# safedeploy molecule image: root logs in with the scenario's key only\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    ),
    # podman's systemd mode mounts /run and /tmp; nothing in a container has a console
    "etc/systemd/system/getty@tty1.service": None,  # None: masked (a link to /dev/null)
    "etc/systemd/system/console-getty.service": None,
}
# what must be there -> the Debian package that brings it. netavark sets up the network's bridge and
# needs iptables (neither is a hard dependency of podman); crun (podman's first choice) fails on this
# machine's hybrid cgroups, so runc, and --runtime runc in create.yml.
APT_PACKAGES = {
    "podman": "podman", "runc": "runc", "/usr/lib/podman/netavark": "netavark", "iptables": "iptables",
    "conmon": "conmon", "debootstrap": "debootstrap", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
}

TIMEOUT_APT = 900
TIMEOUT_DEBOOTSTRAP = 900
TIMEOUT_PODMAN = 120


class EnvError(Exception):
    """Something the user must fix; the message says what."""


def log(message: str) -> None:
    print(f"molecule-env: {message}", flush=True)


def run(argv: list[str], *, timeout: float = TIMEOUT_PODMAN, check: bool = True, what: str | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command with a deadline; a failure raises EnvError with its output."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        result = subprocess.run(argv, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"{what or shlex.join(argv)} did not finish within {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise EnvError(f"{argv[0]} is not installed ({what or shlex.join(argv)})") from exc
    if check and result.returncode != 0:
        output = ((result.stderr or "") + (result.stdout or "")).strip()[-3000:]
        raise EnvError(f"{what or shlex.join(argv)} failed (rc={result.returncode}): {output}")
    return result


# -- system packages and podman's configuration ---------------------------------------------------
def ensure_system_packages() -> str:
    def present(command: str) -> bool:
        if command.startswith("/"):
            return os.access(command, os.X_OK)
        return bool(shutil.which(command) or os.access(f"/usr/sbin/{command}", os.X_OK))

    missing = sorted({package for command, package in APT_PACKAGES.items() if not present(command)})
    if not missing:
        return "present: " + ", ".join(sorted(set(APT_PACKAGES.values())))
    if os.geteuid() != 0:
        raise EnvError(f"missing Debian packages {' '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], timeout=TIMEOUT_APT, env=env, what="apt-get update")
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        timeout=TIMEOUT_APT, env=env, what=f"apt-get install {' '.join(missing)}")
    still = sorted(command for command in APT_PACKAGES if not present(command))
    if still:
        raise EnvError(f"apt-get install {' '.join(missing)} did not bring {', '.join(still)}")
    return f"installed {' '.join(missing)}"


def hard_nofile() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1048576


def podman_run_args() -> list[str]:
    """What create.yml passes to `podman run` besides containers.conf, so an existing file cannot break it."""
    nofile = hard_nofile()
    return ["--runtime", "runc", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=32768:32768"]


def ensure_containers_conf(path: Path = Path("/etc/containers/containers.conf")) -> str:
    """Add runtime = "runc" and default_ulimits where absent; never change a value someone set."""
    nofile = hard_nofile()
    wanted = {
        "containers": ("default_ulimits", f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]'),
        "engine": ("runtime", 'runtime = "runc"'),
    }
    text = path.read_text() if path.exists() else ""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EnvError(f"{path} is not valid TOML ({exc}): fix it or move it away") from exc
    added, kept = [], []
    lines = text.splitlines()
    for section, (key, line) in wanted.items():
        if key in parsed.get(section, {}):
            kept.append(f"{section}.{key}={parsed[section][key]!r}")
            continue
        header = next((i for i, current in enumerate(lines) if current.strip() == f"[{section}]"), None)
        if header is None:
            lines += ["", f"[{section}]", line]
        else:
            lines.insert(header + 1, line)
        added.append(f"{section}.{key}")
    if not added:
        return f"{path}: kept ({', '.join(kept)}); create.yml passes --runtime/--ulimit anyway"
    if os.geteuid() != 0:
        raise EnvError(f"{path} lacks {', '.join(added)} and we are not root to add them")
    path.parent.mkdir(parents=True, exist_ok=True)
    new_text = "\n".join(lines).lstrip("\n") + "\n"
    tomllib.loads(new_text)  # never write a file podman could not read
    _write(path, new_text)
    return f"{path}: added {', '.join(added)}"


# -- the image --------------------------------------------------------------------------------------
def image_recipe_hash() -> str:
    recipe = json.dumps({"suite": SUITE, "variant": "minbase", "packages": sorted(IMAGE_PACKAGES),
                         "files": IMAGE_FILES, "cmd": "/sbin/init"}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def image_name() -> str:
    return f"{IMAGE_REPOSITORY}:{image_recipe_hash()}"


def debian_mirror() -> str:
    """The Debian mirror apt uses here (debootstrap must reach the same one)."""
    sources = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri
    return "http://deb.debian.org/debian"


def ensure_image() -> str:
    name = image_name()
    if run(["podman", "image", "exists", name], check=False).returncode == 0:
        return f"{name} (reused)"
    if os.geteuid() != 0:
        raise EnvError("building the image needs root (debootstrap)")
    started = time.monotonic()
    rootfs = Path(tempfile.mkdtemp(prefix="safedeploy-rootfs.", dir="/var/tmp"))
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}", SUITE, str(rootfs),
             debian_mirror()], timeout=TIMEOUT_DEBOOTSTRAP, what=f"debootstrap {SUITE}")
        for relative, content in IMAGE_FILES.items():
            target = rootfs / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            if content is None:
                target.symlink_to("/dev/null")
            else:
                target.write_text(content)
        shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            run(["podman", "import", "--change", 'CMD ["/sbin/init"]', "--change", "STOPSIGNAL SIGRTMIN+3",
                 "-", name], stdin=tar.stdout, timeout=600, what="podman import")
        finally:
            tar.stdout.close()
            if tar.wait(timeout=60) != 0:
                raise EnvError(f"tar of {rootfs} failed (rc={tar.returncode})")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    # older recipes of the same image are of no use any more
    listed = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPOSITORY], check=False)
    for old in listed.stdout.split():
        if old != name:
            run(["podman", "rmi", "--force", old], check=False)
    return f"{name} (built in {time.monotonic() - started:.0f}s)"


# -- the network ----------------------------------------------------------------------------------
def _routes() -> list[ipaddress.IPv4Network]:
    networks = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return networks
    for line in lines:
        fields = line.split()
        destination, mask = (int(fields[1], 16), int(fields[7], 16))
        if mask == 0:
            continue  # the default route overlaps everything
        address = ipaddress.IPv4Address(destination.to_bytes(4, "little"))
        netmask = ipaddress.IPv4Address(mask.to_bytes(4, "little"))
        networks.append(ipaddress.IPv4Network(f"{address}/{netmask}", strict=False))
    return networks


def _network_info(name: str) -> dict | None:
    result = run(["podman", "network", "inspect", name], check=False)
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout)
    return data[0] if data else None


def _podman_subnets() -> list[ipaddress.IPv4Network]:
    names = run(["podman", "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    found = []
    for name in names:
        info = _network_info(name) or {}
        for subnet in info.get("subnets") or []:
            try:
                found.append(ipaddress.ip_network(subnet["subnet"]))
            except (KeyError, ValueError):
                continue
    return found


def ensure_network() -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Address, str]:
    info = _network_info(NETWORK)
    if info is None:
        used = _routes() + _podman_subnets()
        subnet = next((ipaddress.ip_network(c) for c in SUBNET_CANDIDATES
                       if not any(ipaddress.ip_network(c).overlaps(u) for u in used if u.version == 4)), None)
        if subnet is None:
            raise EnvError(f"every candidate subnet ({SUBNET_CANDIDATES[0]} ...) is in use by a route or a network")
        gateway = subnet.network_address + 1
        run(["podman", "network", "create", "--disable-dns", "--subnet", str(subnet), "--gateway", str(gateway),
             "--label", f"{LABEL}=1", NETWORK], what=f"podman network create {NETWORK}")
        info = _network_info(NETWORK)
        state = "created"
    else:
        state = "reused"
    try:
        entry = info["subnets"][0]
        subnet = ipaddress.ip_network(entry["subnet"])
        gateway = ipaddress.ip_address(entry["gateway"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EnvError(f"podman network {NETWORK} has no usable subnet/gateway ({info}): "
                       f"remove it (podman network rm {NETWORK}) and run up again") from exc
    return subnet, gateway, state


# -- PostgreSQL reachable from the containers --------------------------------------------------
class SubnetCluster(Cluster):
    """devtools.pgcluster's cluster, listening beyond loopback; pg_hba lets in one subnet (scram).

    The podman bridge (and so its gateway address) exists only while a container runs on it, so the
    server listens on every address and pg_hba.conf decides: loopback and the containers' subnet.
    """

    def start(self) -> None:
        self.sockdir.mkdir(parents=True, exist_ok=True)
        self._chown(self.sockdir)
        self.logfile.touch()
        self._chown(self.logfile)
        options = (
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=* "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run([self.bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.datadir), "-l", str(self.logfile),
                   "-o", options])
        self._write_state()

    def allow_subnet(self, subnet: ipaddress.IPv4Network) -> bool:
        hba = self.datadir / "pg_hba.conf"
        line = f"host    all             all             {subnet}            scram-sha-256"
        text = hba.read_text()
        if line in text.splitlines():
            return False
        hba.write_text(text.rstrip("\n") + f"\n# safedeploy molecule containers\n{line}\n")
        if self.running():
            self._run([self.bin("pg_ctl"), "reload", "-D", str(self.datadir)])
        return True


# -- the environment ------------------------------------------------------------------------------
class MoleculeEnv(Sandbox):
    """The sandbox's wheelhouse, artifacts and nginx (devtools.sandbox), for container hosts."""

    def __init__(self, base: Path = DEFAULT_DIR):
        base = Path(base).absolute()
        saved = _load_json(base / ENV_FILE_NAME)
        # nginx listens on every address (see render_nginx_conf): a port free on all of them
        super().__init__(base, lb_port=saved.get("lb_port") or free_port("0.0.0.0"), app_port=APP_PORT)
        self.env_file = self.base / ENV_FILE_NAME
        self.wheelhouse = CACHE_DIR / "wheelhouse"
        self.ssh_dir = self.base / "ssh"
        self.ssh_key = self.ssh_dir / "id_ed25519"
        self.reports = self.base / "reports"
        self.release_env_file = self.secrets_dir / "release_environment.json"
        self.addresses: dict[str, str] = saved.get("hosts", {})

    # nginx: the upstream is the containers; listen beyond loopback so that the role's check
    # "serves through the load balancer", which runs on the app host, reaches it from a container
    def upstream_lines(self, drained: set[str] = frozenset()) -> str:
        return "".join(f"server {address}:{self.app_port} max_fails=1 fail_timeout=2s"
                       f"{' down' if name in drained else ''};\n" for name, address in self.addresses.items())

    def render_nginx_conf(self) -> str:
        text = super().render_nginx_conf()
        loopback = f"listen 127.0.0.1:{self.lb_port};"
        if loopback not in text:
            raise EnvError(f"devtools/nginx/nginx.conf.in changed: no '{loopback}' to widen")
        return text.replace(loopback, f"listen {self.lb_port};")

    def ensure_ssh_key(self) -> str:
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.ssh_dir, 0o700)
        if self.ssh_key.exists() and self.ssh_key.with_suffix(".pub").exists():
            return f"{self.ssh_key} (reused)"
        self.ssh_key.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "safedeploy-molecule", "-f", str(self.ssh_key)],
            what="ssh-keygen")
        os.chmod(self.ssh_key.with_suffix(".pub"), 0o644)
        return f"{self.ssh_key} (new)"

    def ensure_db(self, subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address) -> tuple[Cluster, str]:
        pg_dir = self.pg_dir
        first = not (pg_dir / "cluster.json").exists()
        cluster = SubnetCluster(pg_dir, port=None if not first else free_port("0.0.0.0"))
        if not cluster.initialized():
            cluster.init()
        cluster.allow_subnet(subnet)
        if not cluster.running():
            cluster.start()
        saved = _read_env(self.db_env_file) if self.db_env_file.exists() else {}
        password = saved.get("PGPASSWORD") or secrets.token_hex(16)
        secret_key = saved.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(48)
        cluster.create_role(DB_USER, password)  # over stdin, never on a command line
        cluster.create_database(DB_NAME, owner=DB_USER)
        local = cluster.env(DB_USER, password, DB_NAME)
        local["DJANGO_SECRET_KEY"] = secret_key
        _write_private(self.db_env_file, "".join(f"{key}={value}\n" for key, value in local.items()))
        # what the app hosts get (the role writes it to shared/app.env, 0600): the gateway, seen from a container
        remote = dict(local, PGHOST=str(gateway))
        _write_private(self.release_env_file, json.dumps(remote, indent=2) + "\n")
        return cluster, f"{cluster.bindir}, port {cluster.port} on every address; pg_hba: {subnet} (scram)"

    def build_artifacts_paths(self) -> dict[str, str]:
        self.build_artifacts()
        return {version: str(self.artifacts / f"shop-{version}.tar.gz") for _, version in RELEASES}

    def up(self) -> None:
        """Prepare everything the scenario needs (see the module docstring); idempotent."""
        started = time.monotonic()
        if sys.version_info[:2] != (3, 11):
            raise EnvError(f"the wheelhouse is built by this interpreter ({sys.version.split()[0]}) for the "
                           "containers' Python 3.11 (bookworm): run with a Python 3.11 venv")
        self.base.mkdir(parents=True, exist_ok=True)
        for directory in (self.secrets_dir, self.reports):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        log(f"packages:   {ensure_system_packages()}")
        log(f"podman:     {ensure_containers_conf()}")
        image = ensure_image()
        log(f"image:      {image}")
        subnet, gateway, state = ensure_network()
        self.addresses = {name: str(subnet.network_address + octet) for name, octet in HOSTS}
        log(f"network:    {NETWORK} {subnet} gateway {gateway} ({state}); hosts "
            + ", ".join(f"{n}={a}" for n, a in self.addresses.items()))
        log(f"wheelhouse: {self.ensure_wheelhouse()}")
        artifacts = self.build_artifacts_paths()
        log(f"artifacts:  {', '.join(artifacts.values())}")
        _, db_text = self.ensure_db(subnet, gateway)
        log(f"postgresql: {db_text}")
        log(f"ssh key:    {self.ensure_ssh_key()}")
        # a fresh pool every up: a run that failed midway may have left a host drained
        self.nginx_dir.mkdir(parents=True, exist_ok=True)
        pool_changed = _write(self.upstream_file, self.upstream_lines())
        nginx_state = self.ensure_nginx()
        if pool_changed and "running" in nginx_state:
            self._nginx("-s", "reload")
            nginx_state += ", pool reset"
        log(f"nginx:      {nginx_state.replace('127.0.0.1:', 'every address, port ')}")
        env = {
            "dir": str(self.base),
            "image": image_name(),
            "network": NETWORK,
            "subnet": str(subnet),
            "gateway": str(gateway),
            "label": LABEL,
            "container_prefix": CONTAINER_PREFIX,
            "podman_run_args": podman_run_args(),
            "hosts": self.addresses,
            "app_port": self.app_port,
            "lb_port": self.lb_port,
            "lb_url": f"http://127.0.0.1:{self.lb_port}",
            # the role's check through the load balancer runs on the app host: the gateway, seen from there
            "lb_url_from_hosts": f"http://{gateway}:{self.lb_port}",
            "nginx_upstream_file": str(self.upstream_file),
            "nginx_reload_command": shlex.join(self.nginx_argv("-s", "reload")),
            "wheelhouse": str(self.wheelhouse),
            "wheelhouse_mount": WHEELHOUSE_MOUNT,
            "artifacts": artifacts,
            "pg_port": Cluster(self.pg_dir).port,
            "release_environment_file": str(self.release_env_file),
            "ssh_private_key": str(self.ssh_key),
            "ssh_public_key": str(self.ssh_key.with_suffix(".pub")),
            "reports": str(self.reports),
        }
        _write(self.env_file, json.dumps(env, indent=2) + "\n")
        log(f"ready in {time.monotonic() - started:.0f}s: {self.env_file}")

    # -- status / down ----------------------------------------------------------------------------
    def containers(self) -> list[str]:
        if not shutil.which("podman"):
            return []
        result = run(["podman", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}"], check=False)
        return result.stdout.split()

    def status_lines(self) -> tuple[int, list[str]]:
        lines = []
        cluster = Cluster(self.pg_dir) if (self.pg_dir / "data").exists() else None
        pg_up = bool(cluster and cluster.running())
        lines.append(f"postgresql  {'running on port ' + str(cluster.port) if pg_up else 'stopped'}")
        pid = self.nginx_pid()
        lines.append(f"nginx       {'running pid=' + str(pid) + ' port ' + str(self.lb_port) if pid else 'stopped'}")
        network = _network_info(NETWORK) if shutil.which("podman") else None
        lines.append(f"network     {NETWORK + ' ' + network['subnets'][0]['subnet'] if network else 'absent'}")
        lines.append(f"containers  {' '.join(self.containers()) or 'none'}")
        lines.append(f"image       {image_name()}")
        return (0 if pg_up and pid and network else 3), lines

    def down(self, purge: bool = False, purge_image: bool = False) -> None:
        """Every step is tried, even after one failed: nothing may stay running. Errors are raised at the end."""
        errors = []

        def step(name: str, action) -> None:
            try:
                log(f"{name + ':':<11} {action()}")
            except (EnvError, RuntimeError, OSError, subprocess.SubprocessError, SystemExit) as exc:
                errors.append(f"{name}: {exc}")
                log(f"{name + ':':<11} FAILED: {exc}")

        def containers() -> str:
            names = self.containers()
            if names:
                run(["podman", "rm", "--force", "--time", "2", *names], timeout=180)
            return f"removed {' '.join(names)}" if names else "none"

        def network() -> str:
            if not shutil.which("podman") or _network_info(NETWORK) is None:
                return "none"
            run(["podman", "network", "rm", "--force", NETWORK])
            return f"removed {NETWORK}"

        def postgresql() -> str:
            if not (self.pg_dir / "data").exists():
                return "none"
            cluster = Cluster(self.pg_dir)
            if purge:
                cluster.destroy()
                return "destroyed"
            cluster.stop()
            return "stopped"

        step("containers", containers)
        step("network", network)
        step("nginx", self.stop_nginx)
        step("postgresql", postgresql)
        if purge:
            shutil.rmtree(self.base, ignore_errors=True)
            log(f"removed {self.base}")
        if purge_image and shutil.which("podman"):
            run(["podman", "rmi", "--force", image_name()], check=False)
            log(f"image:      removed {image_name()}")
        if errors:
            raise EnvError("teardown incomplete: " + "; ".join(errors))


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.molecule_env", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default: {DEFAULT_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="prepare what the scenario needs (idempotent)")
    sub.add_parser("status", help="print what runs (exit 0 when PostgreSQL, nginx and the network are up)")
    down = sub.add_parser("down", help="remove the containers and the network, stop nginx and PostgreSQL")
    down.add_argument("--purge", action="store_true", help="then delete the state directory (database included)")
    down.add_argument("--purge-image", action="store_true", help="remove the image too")
    sub.add_parser("image", help="only build (or find) the image; print its name")
    args = parser.parse_args(argv)
    env = MoleculeEnv(args.dir)
    try:
        if args.command == "up":
            env.up()
        elif args.command == "down":
            env.down(purge=args.purge, purge_image=args.purge_image)
        elif args.command == "image":
            ensure_system_packages()
            print(ensure_image())
        else:
            code, lines = env.status_lines()
            print("\n".join(lines))
            return code
    except (EnvError, SandboxError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"molecule-env {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
