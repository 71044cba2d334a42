# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options of every module that runs code in the Django application's interpreter.
    DOCUMENTATION = r"""
options:
  project_path:
    description:
      - Directory of the Django project, the one that contains C(manage.py).
      - The helper runs with this directory as working directory and first entry of C(sys.path).
    type: path
    required: true
    aliases: [app_path, chdir]
  virtualenv:
    description:
      - Virtual environment of the application; the interpreter is C(<virtualenv>/bin/python).
      - Mutually exclusive with O(python).
    type: path
  python:
    description:
      - The application's Python interpreter (a path, or a name looked up on E(PATH)).
      - Mutually exclusive with O(virtualenv). Without both, C(python3) on E(PATH) is used.
    type: path
  settings:
    description:
      - Django settings module (E(DJANGO_SETTINGS_MODULE)), for example V(shopsite.settings).
      - Without it, E(DJANGO_SETTINGS_MODULE) from O(app_environment) or the environment is used, else the
        module that C(manage.py) sets with C(os.environ.setdefault).
    type: str
  pythonpath:
    description:
      - A directory prepended to E(PYTHONPATH) for the application's interpreter.
    type: path
    aliases: [python_path]
  database:
    description:
      - The Django database alias (a key of C(settings.DATABASES)). It must use the PostgreSQL backend.
    type: str
    default: default
  timeout:
    description:
      - Seconds after which the helper process (and everything it started) is killed.
    type: int
    default: 3600
  app_environment:
    description:
      - Extra environment variables for the application's interpreter, for example the libpq variables
        E(PGHOST), E(PGPORT), E(PGUSER), E(PGPASSWORD), E(PGDATABASE) that the settings read.
      - Values of variables whose name contains C(PASS), C(SECRET), C(TOKEN), C(KEY), C(CREDENTIAL),
        C(URL) or C(DSN) (a E(DATABASE_URL) embeds the password)
        are treated as secrets, and so are those of the module's own environment; they are replaced by
        C(********) in everything the module returns.
      - Prefer this to the task keyword C(environment) for secrets; with C(-vvv), Ansible prints the
        task environment as part of the command line it runs.
    type: dict
    default: {}
notes:
  - The module runs a small helper in the application's interpreter (not Ansible's), so Django, the
    application and its PostgreSQL driver only need to be installed in the application's environment.
  - The database password is never passed on a command line, and never returned.
requirements:
  - Django 4.2 or later and psycopg (3) or psycopg2 in the application's interpreter.
  - PostgreSQL.
"""
