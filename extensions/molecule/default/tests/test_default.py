"""What a deploy of 2.0.0 leaves on each systemd host, and through nginx on the controller.

Run by molecule's testinfra verifier over the scenario's inventory (SSH into each container);
the load-balancer test runs once, on the controller, from what devtools/molecule_env.py wrote.
"""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

RELEASE_ROOT = "/srv/app"
VERSION = "2.0.0"
PORT = 8000


def molecule_env() -> dict:
    path = os.environ.get("SAFEDEPLOY_MOLECULE_ENV") or str(
        Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / ".build" / "molecule-env" / "env.json"
    )
    return json.loads(Path(path).read_text())


def test_gunicorn_unit_is_active_and_enabled(host):
    service = host.service("gunicorn")
    assert service.is_running
    assert service.is_enabled
    unit = host.file("/etc/systemd/system/gunicorn.service")
    assert unit.exists
    assert "Type=notify" in unit.content_string
    assert f"{RELEASE_ROOT}/current/venv/bin/gunicorn shopsite.wsgi:application" in unit.content_string


def test_gunicorn_runs_as_the_service_user(host):
    main_pid = host.check_output("systemctl show --property MainPID --value gunicorn")
    assert main_pid not in ("", "0")
    assert host.check_output(f"ps -o user= -p {main_pid}") == "www-data"


def test_port_8000_listens(host):
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_current_points_at_the_new_release(host):
    current = host.file(f"{RELEASE_ROOT}/current")
    assert current.is_symlink
    assert current.linked_to == f"{RELEASE_ROOT}/releases/{VERSION}"
    assert host.file(f"{RELEASE_ROOT}/releases/{VERSION}/.safedeploy-staged").exists


def test_the_host_serves_the_new_release(host):
    body = host.check_output(f"curl -fsS --max-time 10 http://127.0.0.1:{PORT}/healthz")
    assert json.loads(body)["version"] == VERSION


def test_app_env_is_private(host):
    env = host.file(f"{RELEASE_ROOT}/shared/app.env")
    assert env.exists
    assert env.user == "root"
    assert env.mode == 0o600
    assert not env.mode & 0o007
    # the names only: the values are secrets
    names = host.check_output(f"cut -d= -f1 {RELEASE_ROOT}/shared/app.env").split()
    assert {"PGHOST", "PGPASSWORD", "DJANGO_SECRET_KEY"} <= set(names)


def test_the_database_has_every_migration_of_the_new_release(host):
    """migrate --check (exit 1 when something is unapplied) with the app's own environment."""
    result = host.run(
        f"cd {RELEASE_ROOT}/current && set -a && . {RELEASE_ROOT}/shared/app.env && set +a"
        " && exec venv/bin/python manage.py migrate --check --noinput"
    )
    assert result.rc == 0, result.stdout + result.stderr


def test_the_migration_host_kept_a_private_snapshot(host):
    """The first host migrated, after pg_dump (client 15 in the image) took a snapshot there."""
    if host.backend.get_hostname() != "app1":
        return
    names = host.check_output("ls -1 /var/backups/safedeploy").split()
    snapshots = [name for name in names if name.startswith(f"predeploy-shop-{VERSION}") and name.endswith(".dump")]
    assert snapshots, names
    assert host.file(f"/var/backups/safedeploy/{snapshots[0]}").mode == 0o600


def test_nothing_is_left_drained_and_nginx_serves_every_request():
    """Runs once, on the controller: every host back in the pool, 30 requests through nginx all 2xx."""
    env = molecule_env()
    upstream = Path(env["nginx_upstream_file"]).read_text()
    servers = [line for line in upstream.splitlines() if line.strip().startswith("server ")]
    assert len(servers) == len(env["hosts"]), upstream
    assert not [line for line in servers if " down" in line], upstream
    statuses, versions = {}, set()
    for request in range(30):
        try:
            with urllib.request.urlopen(f"{env['lb_url']}/healthz", timeout=10) as response:
                statuses[request] = response.status
                versions.add(json.load(response)["version"])
        except urllib.error.HTTPError as exc:
            statuses[request] = exc.code
    assert all(200 <= status < 300 for status in statuses.values()), statuses
    assert versions == {VERSION}
