"""The built tarball is what users install: build it, install it elsewhere, use it."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = ["django_migration_plan", "django_migrate_once", "django_backfill", "pg_snapshot", "http_healthcheck"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the collection and install the tarball into an empty collections path."""
    work = tmp_path_factory.mktemp("galaxy")
    # a clean environment: with the checkout on ANSIBLE_COLLECTIONS_PATH, install would
    # find the collection "already installed" and do nothing
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", "--output-path", str(work), str(REPO)],
                   check=True, capture_output=True, text=True, env=env)
    tarballs = list(work.glob("safedeploy-django-*.tar.gz"))
    assert len(tarballs) == 1
    path = work / "collections"
    subprocess.run([BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", str(path), str(tarballs[0])],
                   check=True, capture_output=True, text=True, env=env)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(path)
    assert (path / "ansible_collections" / "safedeploy" / "django" / "MANIFEST.json").exists()
    return tarballs[0], path / "ansible_collections" / "safedeploy" / "django", env


def test_tarball_ships_the_collection_and_not_the_dev_tooling(installed):
    tarball, _root, _env = installed
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    for expected in ("MANIFEST.json", "meta/runtime.yml", "roles/release/tasks/main.yml",
                     "playbooks/deploy.yml", "playbooks/plan.yml", "playbooks/rollback.yml", "playbooks/backfill.yml",
                     "README.md", "docs/rules.md",
                     *(f"plugins/modules/{m}.py" for m in MODULES)):
        assert expected in names, expected
    assert not [n for n in names if n.startswith(("devtools/", ".sandbox/", ".build/", ".venv/"))]


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_each_module_from_the_installed_tarball(installed, module):
    _tarball, _root, env = installed
    result = subprocess.run([BIN / "ansible-doc", "-t", "module", f"safedeploy.django.{module}"],
                            capture_output=True, check=False, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert f"safedeploy.django.{module}" in result.stdout
    for section in ("OPTIONS", "EXAMPLES", "RETURN VALUES"):
        assert section in result.stdout


def test_installed_playbooks_pass_syntax_check_by_fqcn(installed, tmp_path):
    _tarball, _root, env = installed
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[app]\nweb1 ansible_connection=local\n")
    for playbook in ("safedeploy.django.deploy", "safedeploy.django.plan"):
        result = subprocess.run([BIN / "ansible-playbook", "-i", str(inventory), "--syntax-check", playbook],
                                capture_output=True, check=False, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
