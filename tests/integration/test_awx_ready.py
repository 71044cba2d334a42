"""AWX / Tower readiness: the execution environment, the module_defaults groups, docs/awx.md.

- ``ansible-builder create`` turns execution-environment.yml into a build context offline, and the galaxy
  and introspection steps that context runs install this collection and the packages the EE files list;
- the EE's Python requirements cover every third-party import of the collection's plugin code (a module may
  run on the controller: delegated to localhost, or the plan entry point on a checkout), and list nothing
  that only the application's interpreter imports;
- meta/runtime.yml puts every module in a group, and module_defaults on each group reach the module in a
  real ansible-playbook run;
- the project playbooks, the credential wiring and the survey that docs/awx.md shows work as written.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import jinja2.sandbox
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EE_FILE = REPO / "execution-environment.yml"
DOCS = REPO / "docs" / "awx.md"
PLUGINS = REPO / "plugins"
COLLECTION = "safedeploy.django"

pytestmark = pytest.mark.slow


# -- helpers -------------------------------------------------------------------------------


def _ansible_env(**extra) -> dict:
    """ansible's environment: the checkout as the collection, no colour, no stray ANSIBLE_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_DEPRECATION_WARNINGS="0", no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    env.update(extra)
    return env


def _playbook(cwd: Path, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-playbook"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=_ansible_env(**env), timeout=300, check=False)


class _UnsafeLoader(yaml.SafeLoader):
    """Reads YAML with Ansible's ``!unsafe`` tag (kept as a plain string)."""


_UnsafeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _docs_blocks() -> dict[str, str]:
    """docs/awx.md's fenced YAML blocks whose first line is a ``# <kind>: <name>`` marker, by marker."""
    blocks = {}
    for body in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S):
        first = body.splitlines()[0]
        match = re.fullmatch(r"# (project|awx|credential type): (\S+)", first)
        if match:
            blocks[f"{match[1]}: {match[2]}"] = body
    return blocks


def _docs_project(tmp_path: Path) -> Path:
    """The AWX project of docs/awx.md, written out; plan.yml is deploy.yml importing the plan playbook."""
    project = tmp_path / "project"
    for marker, body in _docs_blocks().items():
        kind, name = marker.split(": ", 1)
        if kind == "project":
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            (project / name).write_text(body)
    deploy = (project / "deploy.yml").read_text()
    assert deploy.count("safedeploy.django.deploy") == 1
    (project / "plan.yml").write_text(deploy.replace("safedeploy.django.deploy", "safedeploy.django.plan"))
    return project


def _awx_setup() -> list:
    return yaml.load(_docs_blocks()["awx: awx-setup.yml"], Loader=_UnsafeLoader)


def _awx_task(module: str) -> dict:
    tasks = [task for task in _awx_setup()[0]["tasks"] if f"awx.awx.{module}" in task]
    assert len(tasks) == 1, module
    return tasks[0][f"awx.awx.{module}"]


def _requirements(path: Path) -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def health_server():
    """A local app answering ``/healthz`` 200 with JSON; ``requests`` counts what it got."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            requests.append(self.path)
            body = json.dumps({"status": "ok", "version": "2.0.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}/healthz", requests=requests)
    httpd.shutdown()
    httpd.server_close()


# -- the execution environment ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ee_build(tmp_path_factory):
    """execution-environment.yml and the files it names, laid out as in the checkout, with the tarball
    `make build` would write built from this checkout, then `ansible-builder create` with no network."""
    work = tmp_path_factory.mktemp("ee")
    definition = yaml.safe_load(EE_FILE.read_text())
    shutil.copy(EE_FILE, work / EE_FILE.name)
    for key in ("python", "system"):
        ref = definition["dependencies"][key]
        assert isinstance(ref, str), f"dependencies.{key} should name a file the tests can parse"
        (work / ref).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / ref, work / ref)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    build = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                            str(work / ".build" / "dist"), str(REPO)],
                           capture_output=True, text=True, env=env, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    dead_proxy = "http://127.0.0.1:9"  # any download attempt fails
    offline = dict(env, http_proxy=dead_proxy, https_proxy=dead_proxy, HTTP_PROXY=dead_proxy, HTTPS_PROXY=dead_proxy,
                   no_proxy="", NO_PROXY="", PIP_NO_INDEX="1")
    context = work / "context"
    proc = subprocess.run([str(BIN / "ansible-builder"), "create", "--file", str(work / EE_FILE.name),
                           "--context", str(context), "-v", "3"],
                          capture_output=True, text=True, env=offline, check=False, timeout=300)
    galaxy_version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    return SimpleNamespace(work=work, definition=definition, context=context, proc=proc, env=env,
                           version=galaxy_version)


def test_builder_writes_a_containerfile_with_the_requirements_offline(ee_build):
    proc, definition, context = ee_build.proc, ee_build.definition, ee_build.context
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No matches for" not in proc.stdout + proc.stderr, "an additional_build_files src matched nothing"
    assert definition["version"] == 3
    containerfile = (context / "Containerfile").read_text()
    deps = definition["dependencies"]

    assert f'ARG EE_BASE_IMAGE="{definition["images"]["base_image"]["name"]}"' in containerfile
    install_refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="(.*)"$', containerfile, re.M)[1]
    assert deps["ansible_core"]["package_pip"] in install_refs
    assert deps["ansible_runner"]["package_pip"] in install_refs
    assert f'ARG PYCMD="{deps["python_interpreter"]["python_path"]}"' in containerfile

    # python and system requirements: copied into the context as written, handed to the introspection
    # step (with those of the installed collections), then installed in the final image
    build = context / "_build"
    assert (build / "requirements.txt").read_text() == (REPO / deps["python"]).read_text()
    assert (build / "bindep.txt").read_text() == (REPO / deps["system"]).read_text()
    assert "COPY _build/requirements.txt requirements.txt" in containerfile
    assert "COPY _build/bindep.txt bindep.txt" in containerfile
    assert "introspect.py introspect --user-pip=requirements.txt --user-bindep=bindep.txt" in containerfile
    assert "RUN /output/scripts/assemble" in containerfile
    assert "RUN /output/scripts/install-from-bindep" in containerfile

    # this collection: the tarball in the context under the name the galaxy requirements give
    assert yaml.safe_load((build / "requirements.yml").read_text()) == deps["galaxy"]
    assert "ansible-galaxy collection install" in containerfile and "-r requirements.yml" in containerfile
    [requirement] = deps["galaxy"]["collections"]
    assert requirement["type"] == "file"
    assert (build / requirement["name"]).is_file()
    assert requirement["name"].endswith(f"safedeploy-django-{ee_build.version}.tar.gz"), (
        f"execution-environment.yml names a tarball other than galaxy.yml's version {ee_build.version}")
    [extra_file] = definition["additional_build_files"]
    where_make_build_writes = f".build/dist/safedeploy-django-{ee_build.version}.tar.gz"
    assert extra_file["src"] == where_make_build_writes


def test_galaxy_and_introspection_steps_install_the_collection_and_its_requirements(ee_build, tmp_path):
    """Run the context's galaxy install (in _build, as `WORKDIR /build` does) and introspection like the image
    build would: the collection installs offline, and the system and Python requirements are the EE files'."""
    build = ee_build.context / "_build"
    collections = tmp_path / "collections"
    install = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline",
                              "-r", "requirements.yml", "--collections-path", str(collections)],
                             cwd=build, capture_output=True, text=True, check=False,
                             # as in the image: no other collections path, so a copy installed in
                             # ~/.ansible/collections (ansible-lint puts one there) is not "already installed"
                             env=dict(ee_build.env, ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1",
                                      ANSIBLE_COLLECTIONS_PATH=str(collections)))
    assert install.returncode == 0, install.stdout + install.stderr
    manifest = json.loads((collections / "ansible_collections/safedeploy/django/MANIFEST.json").read_text())
    assert manifest["collection_info"]["version"] == ee_build.version
    assert manifest["collection_info"]["dependencies"] == {}, "collection dependencies need galaxy requirements"

    out_bindep, out_pip = tmp_path / "bindep.txt", tmp_path / "requirements.txt"
    introspect = subprocess.run([sys.executable, str(build / "scripts" / "introspect.py"), "introspect",
                                 "--user-pip=requirements.txt", "--user-bindep=bindep.txt",
                                 f"--write-bindep={out_bindep}", f"--write-pip={out_pip}", str(collections)],
                                cwd=build, capture_output=True, text=True, check=False)
    assert introspect.returncode == 0, introspect.stdout + introspect.stderr

    def entries(path: Path) -> list[str]:
        text = path.read_text() if path.exists() else ""
        return sorted(line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip())

    deps = ee_build.definition["dependencies"]
    assert entries(out_bindep) == entries(REPO / deps["system"])
    assert entries(out_bindep), "the EE installs at least the ssh client"
    assert entries(out_pip) == entries(REPO / deps["python"])


def test_ansible_core_in_the_ee_is_the_tested_one_and_satisfies_requires_ansible():
    deps = yaml.safe_load(EE_FILE.read_text())["dependencies"]
    core = Requirement(deps["ansible_core"]["package_pip"])
    runner = Requirement(deps["ansible_runner"]["package_pip"])
    assert core.name == "ansible-core" and runner.name == "ansible-runner"
    tested = importlib.metadata.version("ansible-core")
    assert core.specifier.contains(tested), f"the EE would not install {tested}, the ansible-core the tests run"
    requires = SpecifierSet(yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"])
    candidates = [f"2.{minor}.{patch}" for minor in range(9, 30) for patch in (0, 1, 7, 99)]
    allowed = [v for v in candidates if core.specifier.contains(v)]
    assert allowed, core
    assert all(requires.contains(v) for v in allowed), f"{core} allows versions outside requires_ansible {requires}"


def test_ee_requirement_files_parse():
    from bindep.depends import Depends

    deps = yaml.safe_load(EE_FILE.read_text())["dependencies"]
    _requirements(REPO / deps["python"])  # raises on a line pip would not understand
    bindep = Depends((REPO / deps["system"]).read_text())
    for profiles in (["platform:rpm", "platform:centos"], ["platform:dpkg", "platform:debian"]):
        packages = bindep.list_all_packages(bindep.active_rules(profiles))
        assert any("openssh" in name for name in packages), (profiles, packages)


# -- what the EE's Python must import ---------------------------------------------------------


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names this file imports: (at module level, inside functions)."""
    module_level, in_functions = set(), set()
    tree = ast.parse(path.read_text())
    function_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function_nodes.update(id(child) for child in ast.walk(node) if child is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        (in_functions if id(node) in function_nodes else module_level).update(names)
    return module_level, in_functions


def _third_party(names: set[str]) -> set[str]:
    """Import names that neither the standard library, ansible-core nor this collection provides."""
    own = "ansible_collections.safedeploy.django"
    others = {n for n in names if n.startswith("ansible_collections.") and not n.startswith(own)}
    assert not others, f"imports of other collections need galaxy requirements in the EE: {sorted(others)}"
    tops = {name.split(".")[0] for name in names}
    provided = {"__future__", "ansible", "ansible_collections"}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in provided}


def _distribution(import_name: str) -> str:
    dists = importlib.metadata.packages_distributions().get(import_name, [import_name])
    return canonicalize_name(dists[0])


def _shipped_files() -> set[Path]:
    """module_utils whose source a module writes out and runs in the application's own interpreter (its
    venv has Django), read from the code: ``getsource(X)``, ``get_source(X.__name__)``, ``_source(X)``."""
    names = set()
    for path in PLUGINS.rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"(?:getsource|_source)\((\w+)\)", text))
        names |= set(re.findall(r"get_source\((\w+)\.__name__\)", text))
        if re.search(r"(?:getsource|_source)\(sys\.modules\[__name__\]\)", text):
            names.add(path.stem)  # a module_utils file that writes out its own source
    return {p for p in (PLUGINS / "module_utils" / f"{name}.py" for name in names) if p.exists()}


def _plugin_imports() -> tuple[set[str], set[str]]:
    """Third-party imports of the collection's plugin code: (what the module's / controller's interpreter
    runs, what only the application's interpreter runs). A shipped file is imported by the module too,
    so its module-level imports run in both; its imports inside functions run in the application's."""
    files = sorted(PLUGINS.rglob("*.py"))
    shipped = _shipped_files()
    assert PLUGINS / "module_utils" / "_django_helper.py" in shipped, "the derivation should find the Django helper"
    siblings = {path.stem for path in shipped}  # `import _django_helper` next to each other, once shipped
    controller, app_only = set(), set()
    for path in files:
        module_level, in_functions = _imports(path)
        module_level = {name for name in module_level if name.split(".")[0] not in siblings}
        if path in shipped:
            controller |= _third_party(module_level)
            app_only |= _third_party(in_functions)
        else:
            controller |= _third_party(module_level | in_functions)
    return controller, app_only


def _ee_python_distributions() -> set[str]:
    """What the EE's pip installs: its requirements, ansible-core, ansible-runner, and what they depend on
    (as installed here)."""
    deps = yaml.safe_load(EE_FILE.read_text())["dependencies"]
    wanted = [Requirement(deps["ansible_core"]["package_pip"]), Requirement(deps["ansible_runner"]["package_pip"])]
    wanted += _requirements(REPO / deps["python"])
    seen: set[str] = set()
    while wanted:
        req = wanted.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its own dependencies are unknown
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                wanted.append(sub)
    return seen


def test_ee_python_requirements_cover_every_import_of_the_plugins():
    controller, _app_only = _plugin_imports()
    installed = _ee_python_distributions()
    missing = {name: _distribution(name) for name in controller if _distribution(name) not in installed}
    assert not missing, (
        f"plugin code imports {sorted(missing)} (distributions {sorted(set(missing.values()))}) that the execution "
        f"environment does not install: add them to {yaml.safe_load(EE_FILE.read_text())['dependencies']['python']}")


def test_ee_lists_nothing_only_the_applications_interpreter_imports():
    controller, app_only = _plugin_imports()
    assert "django" in app_only, "the derivation should see the Django helper's imports"
    listed = {canonicalize_name(r.name)
              for r in _requirements(REPO / yaml.safe_load(EE_FILE.read_text())["dependencies"]["python"])}
    app_dists = {_distribution(name) for name in app_only - controller}
    assert not listed & app_dists, f"{sorted(listed & app_dists)} belong in the app's venv, not in the EE"


# -- action groups and module_defaults ---------------------------------------------------------


def _action_groups() -> dict[str, set[str]]:
    """Each group's modules (short names), extend_group resolved."""
    raw = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["action_groups"]

    def members(group: str, seen: tuple = ()) -> set[str]:
        assert group not in seen, f"extend_group loop through {group}"
        result = set()
        for entry in raw[group]:
            if isinstance(entry, dict):
                for other in entry["metadata"].get("extend_group", []):
                    assert other.startswith(f"{COLLECTION}.") or "." not in other, other
                    result |= members(other.removeprefix(f"{COLLECTION}."), (*seen, group))
            else:
                assert entry.startswith(f"{COLLECTION}.") or "." not in entry, entry
                result.add(entry.removeprefix(f"{COLLECTION}."))
        return result

    return {group: members(group) for group in raw}


def _modules() -> set[str]:
    return {p.stem for p in (PLUGINS / "modules").glob("*.py") if not p.name.startswith("_")}


def test_every_module_is_in_an_action_group_and_every_member_is_a_module():
    groups = _action_groups()
    grouped = set().union(*groups.values())
    assert _modules() - grouped == set(), "modules without a module_defaults group"
    assert grouped - _modules() == set(), "group members that are no module"


def test_module_defaults_on_each_group_reach_its_modules(tmp_path, health_server):
    """One task per probed module (at least one in every group), its required options given only through
    module_defaults on its group: with the defaults each module sees them (its answer names the value),
    without them it does not."""
    closed_port = _free_port()
    probe_dir = f"/nonexistent/awx-probe-{os.getpid()}"
    # per module: (defaults for its group, the task's own arguments, what its answer shows with the defaults)
    probes = {
        "django_migration_plan": ({"project_path": probe_dir}, {}, probe_dir),
        "django_migrate_once": ({"project_path": probe_dir}, {}, probe_dir),
        # an invalid choice is refused before any connection; the task's own port is closed anyway
        "pg_snapshot": ({"sslmode": "awx-probe"},
                        {"host": "127.0.0.1", "port": closed_port, "database": "probe", "dest": str(tmp_path / "snap")},
                        "awx-probe"),
        "http_healthcheck": ({"url": health_server.url, "deadline": 10, "interval": 0.1}, {}, None),
    }
    groups = _action_groups()
    for group, members in groups.items():
        assert members & set(probes), f"give a module of the group {group} a probe"
    group_of = {module: group for group, members in groups.items() for module in members}
    assert set(probes) <= set(group_of), "a probed module without a group"

    def run(with_defaults: bool) -> dict:
        out = tmp_path / f"results-{with_defaults}.json"
        tasks = [{"name": module, f"{COLLECTION}.{module}": args, "register": f"r_{module}", "ignore_errors": True}
                 for module, (_defaults, args, _marker) in probes.items()]
        results = ", ".join(f"'{module}': r_{module}" for module in probes)
        tasks.append({"name": "save", "ansible.builtin.copy": {"dest": str(out),
                                                               "content": "{{ {" + results + "} | to_json }}"}})
        play = {"hosts": "localhost", "gather_facts": False, "tasks": tasks}
        if with_defaults:
            play["module_defaults"] = {}
            for module, (defaults, _args, _marker) in probes.items():
                play["module_defaults"].setdefault(f"group/{COLLECTION}.{group_of[module]}", {}).update(defaults)
        (tmp_path / "play.yml").write_text(json.dumps([play]))
        proc = _playbook(tmp_path, "play.yml")
        assert out.exists(), proc.stdout + proc.stderr
        return json.loads(out.read_text())

    before = len(health_server.requests)
    without = run(with_defaults=False)
    assert len(health_server.requests) == before, "without module_defaults nothing knows the URL"
    with_defaults = run(with_defaults=True)

    for module, (_defaults, _args, marker) in probes.items():
        assert without[module]["failed"], module
        if marker:
            result = with_defaults[module]
            assert result["failed"] and marker in result["msg"], (module, result)
            assert marker not in without[module]["msg"], (module, without[module])
    assert "missing required arguments: url" in without["http_healthcheck"]["msg"]
    healthy = with_defaults["http_healthcheck"]
    assert not healthy.get("failed") and healthy["healthy"] is True, healthy
    assert healthy["json"]["version"] == "2.0.0"
    assert len(health_server.requests) > before


# -- docs/awx.md as written ---------------------------------------------------------------------


def test_docs_project_playbooks_pass_syntax_check(tmp_path):
    project = _docs_project(tmp_path)
    assert {"deploy.yml", "plan.yml", "rollback.yml", "inventory/hosts.yml", "inventory/group_vars/app.yml"} <= {
        str(p.relative_to(project)) for p in project.rglob("*.yml")}
    for playbook in ("deploy.yml", "plan.yml", "rollback.yml"):
        proc = _playbook(project, "-i", "inventory/hosts.yml", "--syntax-check", playbook)
        assert proc.returncode == 0, playbook + "\n" + proc.stdout + proc.stderr


def test_docs_deploy_downloads_the_artifact_and_checks_the_survey(tmp_path):
    project = _docs_project(tmp_path)
    served = tmp_path / "served"
    served.mkdir()
    tarball = served / "shop-2.0.0.tar.gz"
    tarball.write_bytes(os.urandom(2048))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietFiles, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    awx_dir = tmp_path / "awx"
    answers = {
        "release_version": "2.0.0",
        "release_artifact_url": f"http://127.0.0.1:{httpd.server_address[1]}/{tarball.name}",
        "release_artifact_checksum": "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest(),
        "release_waivers_yaml": "- {migration: shop.0004_x, rule: add_field_default, reason: small table,\n"
                                "   approved_by: dba, expires: '2099-01-01'}\n",
        "safedeploy_awx_dir": str(awx_dir),
        "release_hosts": "no_such_group",  # the imported deploy plays match no host: only the preparation runs
    }
    credential = {"SAFEDEPLOY_PG_HOST": "db.internal"}

    def deploy(values: dict, **env) -> subprocess.CompletedProcess:
        # as AWX writes survey answers: every string tagged !unsafe
        (tmp_path / "answers.yml").write_text(_unsafe_yaml(values))
        return _playbook(project, "-i", "inventory/hosts.yml", "deploy.yml", "-e", f"@{tmp_path / 'answers.yml'}",
                         **env)

    try:
        proc = deploy(answers, **credential)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (awx_dir / "release-2.0.0.tar.gz").read_bytes() == tarball.read_bytes()

        proc = deploy(dict(answers, release_waivers_yaml="migration: shop.0004_x\n"), **credential)  # not a list
        assert proc.returncode != 0 and "release_waivers_yaml (a YAML list" in " ".join(proc.stdout.split())

        # ansible-core 2.19 reads a !unsafe '2.10' as the number 2.1: refused, not deployed as release 2.1
        proc = deploy(dict(answers, release_version="2.10"), **credential)
        assert proc.returncode != 0 and "arrives as one, 2.1" in " ".join(proc.stdout.split())

        proc = deploy(answers)  # no credential attached
        assert proc.returncode != 0 and "safedeploy.django PostgreSQL" in " ".join(proc.stdout.split())
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_docs_rollback_hands_the_artifact_to_the_rollback_role(tmp_path):
    """The workflow's artifact is written where the role reads it: the role goes back to the previous release
    the artifact names, and stops (changing nothing) because that release is not staged on this machine."""
    project = _docs_project(tmp_path)
    (project / "inventory" / "hosts.yml").write_text(yaml.safe_dump(
        {"app": {"hosts": {"web1": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    awx_dir = tmp_path / "awx"
    artifact = {"release_version": "2.0.0", "status": "complete", "hosts": {"web1": "2.0.0"},
                "migration_host": "web1", "database": "shop", "previous_releases": {"web1": "1.0.0-awx-probe"},
                "migrations_before": {}, "applied_before": [], "post_migrations": []}
    extra = {"safedeploy_report": artifact, "safedeploy_awx_dir": str(awx_dir)}
    credential = {"SAFEDEPLOY_PG_HOST": "db.internal", "SAFEDEPLOY_PG_PORT": "5432", "SAFEDEPLOY_PG_DATABASE": "shop",
                  "SAFEDEPLOY_PG_APP_USER": "shop", "SAFEDEPLOY_PG_APP_PASSWORD": "pw",
                  "SAFEDEPLOY_DJANGO_SECRET_KEY": "k" * 20}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    proc = _playbook(project, "-i", "inventory/hosts.yml", "rollback.yml", "-e", f"@{tmp_path / 'extra.json'}",
                     **credential)
    report = awx_dir / "deploy-2.0.0.json"
    assert json.loads(report.read_text()) == artifact
    assert proc.returncode != 0
    assert "no longer staged on web1 (1.0.0-awx-probe)" in " ".join(proc.stdout.split()), proc.stdout[-3000:]

    del extra["safedeploy_report"]
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    proc = _playbook(project, "-i", "inventory/hosts.yml", "rollback.yml", "-e", f"@{tmp_path / 'extra.json'}",
                     **credential)
    assert proc.returncode != 0 and "No deploy report" in proc.stdout


def _render_injectors(injectors: dict, inputs: dict) -> dict:
    """What AWX does with an env injector: render each template in a Jinja sandbox with the credential's
    inputs (an input left empty renders as '') into the job's environment."""
    sandbox = jinja2.sandbox.ImmutableSandboxedEnvironment()
    return {name: sandbox.from_string(template).render(**inputs) for name, template in injectors["env"].items()}


def _unsafe_yaml(values: dict) -> str:
    """Extra variables as AWX writes them (awx.main.utils.safe_yaml): every string tagged !unsafe."""
    return "".join(f"{name}: !unsafe {json.dumps(value)}\n" for name, value in values.items())


@pytest.mark.parametrize("with_migration_role", [True, False])
def test_docs_credential_type_feeds_the_role_variables(tmp_path, with_migration_role):
    credential_type = _awx_task("credential_type")
    inputs_spec, injectors = credential_type["inputs"], credential_type["injectors"]
    blocks = _docs_blocks()
    assert yaml.safe_load(blocks["credential type: inputs"]) == inputs_spec
    assert yaml.safe_load(blocks["credential type: injectors"]) == injectors
    field_ids = {field["id"] for field in inputs_spec["fields"]}
    assert set(inputs_spec["required"]) <= field_ids
    assert set(injectors) == {"env"}, "secrets go through the environment (see docs/awx.md)"
    for template in injectors["env"].values():
        assert set(re.findall(r"{{\s*(\w+)\s*}}", template)) <= field_ids, template
    assert set(_awx_task("credential")["inputs"]) <= field_ids
    assert _awx_task("credential")["credential_type"] == credential_type["name"]

    # kept as typed: a lookup's result is not templated, and an environment variable is no YAML number
    password, migrate_password = "0123", "p{{ not_a_template }}%x"
    inputs = {"host": "db.internal", "port": "6432", "database": "shop", "app_user": "shop",
              "app_password": password, "django_secret_key": "s" * 40}
    if with_migration_role:
        inputs.update(migrate_user="shop_migrate", migrate_password=migrate_password)
    project = _docs_project(tmp_path)
    (project / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"app": {"hosts": {"web1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    injected = _render_injectors(injectors, inputs)
    assert all(name.startswith("SAFEDEPLOY_") for name in injected)
    out = tmp_path / "vars.json"
    (project / "show.yml").write_text(yaml.safe_dump([{"hosts": "app", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"dest": str(out), "content": "{{ {'env': release_environment, "
                                  "'migration': release_migration_environment, "
                                  "'expected': release_expected_database} | to_json }}"}}]}]))
    proc = _playbook(project, "-i", "inventory/hosts.yml", "show.yml", **injected)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(out.read_text())
    assert seen["env"] == {"PGHOST": "db.internal", "PGPORT": "6432", "PGDATABASE": "shop", "PGUSER": "shop",
                           "PGPASSWORD": password, "DJANGO_SECRET_KEY": "s" * 40}
    expected_migration = {"PGUSER": "shop_migrate", "PGPASSWORD": migrate_password} if with_migration_role else {}
    assert seen["migration"] == expected_migration
    assert seen["expected"] == "shop"


def test_docs_survey_matches_the_role():
    specs = yaml.safe_load((REPO / "roles" / "release" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((REPO / "roles" / "release" / "defaults" / "main.yml").read_text())
    survey = _awx_setup()[0]["vars"]["release_survey"]["spec"]
    by_variable = {question["variable"]: question for question in survey}
    assert by_variable["release_max_risk"]["choices"] == options["release_max_risk"]["choices"]
    assert by_variable["release_max_risk"]["default"] == defaults["release_max_risk"]
    assert by_variable["release_batch"]["default"] == str(defaults["release_batch"])
    deploy = _docs_blocks()["project: deploy.yml"]
    for variable in by_variable:
        assert variable in options or variable in deploy, f"survey variable {variable} is read by nothing"
    for question in survey:
        assert question["type"] in {"text", "textarea", "password", "integer", "float", "multiplechoice",
                                    "multiselect"}, question


def test_docs_name_only_what_exists():
    text = DOCS.read_text()
    defaults = set(yaml.safe_load((REPO / "roles" / "release" / "defaults" / "main.yml").read_text()))
    for variable in set(re.findall(r"\brelease_[a-z_]+", text)):
        if variable in {"release_survey"} or variable.endswith("_yaml") or variable.startswith("release_artifact_"):
            continue  # the docs' own names (the survey, the project playbooks)
        assert variable in defaults, f"docs/awx.md names {variable}, which the role does not have"
    named_paths = r"`((?:roles|meta|docs|playbooks|plugins|tests)/[\w./-]+|[\w-]+\.(?:yml|txt|md))`"
    for path in set(re.findall(named_paths, text)):
        if path in {"deploy.yml", "plan.yml", "rollback.yml", "awx-setup.yml", "requirements.yml"} or "<" in path:
            continue  # the docs' AWX project
        if path.startswith("migration-plan") or path.startswith("deploy-") or path.startswith("rollback-"):
            continue
        assert (REPO / path).exists(), f"docs/awx.md names {path}, which does not exist"
    tasks = "\n".join(p.read_text() for p in (REPO / "roles" / "release" / "tasks").rglob("*.yml"))
    for status in re.findall(r"^- `(\w+)` ", text, re.M):
        assert re.search(rf"status['\"]?:\s*['\"]?{status}\b", tasks), f"no report status {status} in the role"
    table = text.split("| key | what |", 1)[1].split("\n\n", 1)[0]
    for key in re.findall(r"`(\w+)`", table.split("\n", 2)[2]):
        assert re.search(rf"\b{key}\b", tasks), f"the report table names {key}, which the role does not write"
    rollback_post = (REPO / "roles" / "release" / "tasks" / "rollback_post.yml").read_text()
    rollback_part = text.split("`safedeploy_rollback_report`", 1)[1].split("\n\n", 1)[0]
    for key in re.findall(r"`(\w+)`", rollback_part):
        assert f"{key}:" in rollback_post, f"safedeploy_rollback_report has no {key}"
