#!/usr/bin/python
# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_snapshot
short_description: Take a verified pg_dump snapshot of a PostgreSQL database
version_added: 0.1.0
description:
  - Dumps a database with C(pg_dump --format=custom) into a hidden partial file in O(dest), verifies it
    (exit code, error output, non-empty file, C(pg_restore --list) lists the tables, and by default every data
    block is readable), then writes a C(sha256sum) file and a JSON manifest and only then renames the archive
    to C(<name>.dump). A file named C(*.dump) in O(dest) is therefore always a complete, verified snapshot.
  - The password reaches C(pg_dump) only through the E(PGPASSWORD) environment variable (or a passfile),
    never through its command line.
  - Idempotent by O(name) when O(name) is given. If C(<name>.dump) already exists, its checksum is verified
    again and the module reports RV(reused=true) and C(changed=false). A snapshot whose checksum does not
    match is never reused silently; the module fails instead.
  - Before dumping, the module connects once with C(psql) to check credentials and to read the server
    version, and picks C(pg_dump)/C(pg_restore) of the server's major version or newer (C(pg_dump) refuses
    to dump a newer server).
author:
  - safedeploy.django maintainers (@safedeploy)
extends_documentation_fragment:
  - safedeploy.django.postgres
attributes:
  check_mode:
    support: full
    description:
      - Connects to the server and checks O(dest), then reports C(changed=true) if a snapshot would be taken.
        Nothing is written, not even O(dest).
  diff_mode:
    support: none
    description:
      - Does not return a diff.
  idempotent:
    support: full
    description:
      - With a fixed O(name), a second run re-verifies the existing snapshot and reports C(changed=false).
        Without O(name), every run makes a new, time-stamped snapshot.
options:
  dest:
    description:
      - Directory for the snapshot files. Created with mode 0700 if missing; an existing directory's mode
        is left alone. Every file written is mode 0600.
    type: path
    required: true
  name:
    description:
      - Base name of the snapshot files C(<name>.dump), C(<name>.dump.sha256) and C(<name>.json).
      - Letters, digits, V(.), V(_) and V(-) only.
      - Defaults to C(<database>-<UTC timestamp>), for example V(shop-20250101T120000Z).
    type: str
  bin_dir:
    description:
      - Directory holding C(pg_dump), C(pg_restore) and C(psql).
      - If not set, the first C(pg_dump) whose major version is at least the server's, looking on E(PATH)
        first and then in C(/usr/lib/postgresql/*/bin) and C(/usr/pgsql-*/bin), newest first.
      - The module fails with a clear message if the C(pg_dump) found is older than the server.
    type: path
  verify_data:
    description:
      - Besides C(pg_restore --list), read every data block of the archive (C(pg_restore --file /dev/null))
        to catch a truncated or corrupt file. Costs one extra read of the archive.
      - Applies to new snapshots and to the re-verification of an existing one.
    type: bool
    default: true
  state:
    description:
      - V(present) makes sure the snapshot exists and is verified.
    type: str
    choices: [present]
    default: present
notes:
  - Credentials and the target usually come from the task C(environment) (E(PGHOST), E(PGPORT), E(PGUSER),
    E(PGPASSWORD)); see the connection options.
  - The manifest records the database, host, port, user, server version, system identifier (when the user
    may read it), the applied Django migrations (when a C(django_migrations) table exists), size, sha256,
    creation time and the tables.
  - C(sha256sum -c <name>.dump.sha256) run in O(dest) checks a snapshot by hand.
requirements:
  - PostgreSQL client programs C(psql), C(pg_dump) and C(pg_restore) on the managed host.
seealso:
  - module: safedeploy.django.django_migrate_once
  - name: pg_dump
    description: The PostgreSQL documentation of pg_dump.
    link: https://www.postgresql.org/docs/current/app-pgdump.html
"""

EXAMPLES = r"""
- name: Snapshot the shop database before migrating (credentials from the environment)
  safedeploy.django.pg_snapshot:
    database: shop
    dest: /var/backups/shop
    name: "shop-before-{{ release_version }}"
  environment:
    PGHOST: db.example.com
    PGUSER: shop_app
    PGPASSWORD: "{{ vault_shop_db_password }}"
  register: snapshot

- name: Show where it went
  ansible.builtin.debug:
    msg: "{{ snapshot.path }} ({{ snapshot.size }} bytes, {{ snapshot.tables | length }} tables)"

- name: Snapshot with explicit options and a passfile, using PostgreSQL 16 client binaries
  safedeploy.django.pg_snapshot:
    host: 10.0.0.5
    port: 5433
    database: shop
    user: backup
    passfile: /etc/safedeploy/pgpass
    sslmode: verify-full
    ca_cert: /etc/ssl/certs/db-ca.pem
    bin_dir: /usr/lib/postgresql/16/bin
    dest: /var/backups/shop
"""

RETURN = r"""
path:
  description: Path of the snapshot archive (C(pg_dump) custom format). In check mode, where it would be written.
  returned: always
  type: str
  sample: /var/backups/shop/shop-before-2.4.0.dump
sha256_path:
  description: Path of the checksum file, in C(sha256sum) format.
  returned: always
  type: str
  sample: /var/backups/shop/shop-before-2.4.0.dump.sha256
manifest_path:
  description: Path of the JSON manifest.
  returned: always
  type: str
  sample: /var/backups/shop/shop-before-2.4.0.json
name:
  description: The snapshot base name (O(name) or the generated default).
  returned: always
  type: str
  sample: shop-before-2.4.0
sha256:
  description: SHA-256 of the archive.
  returned: unless check mode and no snapshot existed
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
size:
  description: Size of the archive in bytes.
  returned: unless check mode and no snapshot existed
  type: int
  sample: 73421
tables:
  description: Tables in the archive (C(schema.table)), from C(pg_restore --list).
  returned: unless check mode and no snapshot existed
  type: list
  elements: str
  sample: [public.django_migrations, public.shop_product]
manifest:
  description: The content of the manifest file.
  returned: unless check mode and no snapshot existed
  type: dict
  sample:
    format: 1
    name: shop-before-2.4.0
    file: shop-before-2.4.0.dump
    created: "2025-01-01T12:00:00Z"
    database: shop
    host: db.example.com
    port: 5432
    user: shop_app
    server_version: "15.18 (Debian 15.18-0+deb12u1)"
    server_version_num: 150018
    system_identifier: "7412345678901234567"
    pg_dump_version: "15.18 (Debian 15.18-0+deb12u1)"
    size: 73421
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    tables: 2
    table_names: [public.django_migrations, public.shop_product]
    applied_migrations: [contenttypes.0001_initial, shop.0001_initial]
dest_created:
  description: Whether O(dest) was created by this run.
  returned: when a new snapshot was taken
  type: bool
  sample: true
reused:
  description: V(true) when C(<name>.dump) already existed and was verified again instead of dumping.
  returned: always
  type: bool
  sample: false
duration:
  description: Seconds the module spent.
  returned: always
  type: float
  sample: 1.42
target:
  description: Where the module connected (never the password).
  returned: always
  type: dict
  sample: {host: db.example.com, port: 5432, database: shop, user: shop_app}
server_version:
  description: The server's version as it reports it.
  returned: when a new snapshot was taken or would be taken
  type: str
  sample: "15.18 (Debian 15.18-0+deb12u1)"
bin_dir:
  description: Directory of the C(pg_dump)/C(pg_restore) used.
  returned: when a new snapshot was taken or would be taken
  type: str
  sample: /usr/lib/postgresql/15/bin
command:
  description:
    - The C(pg_dump) command line that was (or in check mode would be) run. It holds no secret; the
      connection settings travel in the environment.
  returned: when a new snapshot was taken or would be taken
  type: list
  elements: str
  sample: [/usr/bin/pg_dump, --format=custom, --no-password, --file, /var/backups/shop/.shop-before-2.4.0.dump.partial]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.safedeploy.django.plugins.module_utils._pg import PgError, connection_argument_spec
from ansible_collections.safedeploy.django.plugins.module_utils._snapshot import snapshot


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        dest=dict(type="path", required=True),
        name=dict(type="str"),
        bin_dir=dict(type="path"),
        verify_data=dict(type="bool", default=True),
        state=dict(type="str", choices=["present"], default="present"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = snapshot(module.params, check_mode=module.check_mode)
    except PgError as exc:
        module.fail_json(msg=exc.message, error_kind=exc.kind, **exc.details)
    warning = result.pop("warning", None)
    if warning:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
