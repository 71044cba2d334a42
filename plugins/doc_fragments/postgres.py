# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the collection's PostgreSQL modules (argspec: module_utils/_pg.py)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  host:
    description:
      - Host name or IP address of the PostgreSQL server, or a directory holding its unix socket.
      - If not set, the E(PGHOST) environment variable of the task applies, else libpq's default (the local socket).
    type: str
  port:
    description:
      - TCP port of the server.
      - If not set, the E(PGPORT) environment variable of the task applies, else V(5432).
    type: int
  database:
    description:
      - Name of the database to connect to.
    type: str
    required: true
    aliases: [db]
  user:
    description:
      - Role to connect as.
      - If not set, the E(PGUSER) environment variable applies, else the name of the user running the module.
    type: str
  password:
    description:
      - Password of O(user).
      - It reaches the PostgreSQL client programs only through the E(PGPASSWORD) environment variable of the
        child process, never through the command line, and it is never logged or returned.
      - If not set, a E(PGPASSWORD) set with the task's C(environment) keyword applies, or O(passfile).
    type: str
  passfile:
    description:
      - Path of a libpq password file (mode 0600, lines C(host:port:database:user:password)), passed as E(PGPASSFILE).
      - When set and O(password) is not, an inherited E(PGPASSWORD) is ignored so that the file is used.
    type: path
  sslmode:
    description:
      - libpq SSL mode (E(PGSSLMODE)).
      - If not set, E(PGSSLMODE) from the environment applies, else libpq's default V(prefer).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - File with the certificate authorities that sign the server certificate (E(PGSSLROOTCERT)).
      - Needed with O(sslmode=verify-ca) or O(sslmode=verify-full) unless C(~/.postgresql/root.crt) exists.
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description:
      - Client certificate file for certificate authentication (E(PGSSLCERT)).
      - If not set, E(PGSSLCERT) from the environment applies, else libpq's default C(~/.postgresql/postgresql.crt).
    type: path
  ssl_key:
    description:
      - Private key of O(ssl_cert) (E(PGSSLKEY)). The file must not be readable by group or others.
      - If not set, E(PGSSLKEY) from the environment applies, else libpq's default C(~/.postgresql/postgresql.key).
    type: path
  connect_timeout:
    description:
      - Seconds to wait for the connection to be established (E(PGCONNECT_TIMEOUT)).
      - If not set, E(PGCONNECT_TIMEOUT) from the environment applies, else V(10).
    type: int
notes:
  - Connection options fall back to the libpq environment variables (E(PGHOST), E(PGPORT), E(PGUSER),
    E(PGPASSWORD)), so credentials can be given once with the task or play C(environment) keyword.
  - Uses the PostgreSQL client programs (C(psql), C(pg_dump), C(pg_restore)); no Python database driver is
    needed on the managed host.
"""
