#!/usr/bin/python
# Copyright: safedeploy.django contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_snapshot
short_description: Take, reuse, prune and restore verified snapshots of a PostgreSQL database
version_added: 0.1.0
description:
  - With O(state=present) (the default), dumps a database with C(pg_dump) into a hidden partial file or
    directory in O(dest), verifies it, writes a C(sha256sum) file, renames the archive to C(<name>.dump)
    (O(format=custom)) or C(<name>.dir) (O(format=directory)) and writes the JSON manifest C(<name>.json)
    last. A failure at any step removes what was written, so an archive without C(.partial) next to a
    manifest is always a complete, verified snapshot.
  - "Verification: C(pg_dump)'s exit status and error output, a non-empty archive, C(pg_restore --list) can
    read it and lists every user table that was in the database at dump time (read with C(psql) in the
    dump's own snapshot), by default a full read of the data (O(verify_data)), the sha256, and optionally a
    real restore into a scratch database (O(test_restore))."
  - The tables, the applied Django migrations and (with O(test_restore)) exact row counts are read in a
    C(psql) session whose snapshot C(pg_dump) imports (C(pg_dump --snapshot)), so they describe exactly
    what the dump holds. If the server cannot export a snapshot, they are read just before the dump and
    the module warns.
  - The password reaches the PostgreSQL clients only through the E(PGPASSWORD) environment variable (or a
    passfile), never through a command line.
  - Idempotent by O(name) when O(name) is given. If a snapshot of that name exists, its checksum is verified
    again and the module reports RV(reused=true) and C(changed=false). A snapshot whose checksum does not
    match is never reused; the module fails instead.
  - With O(max_age), the newest snapshot of the same database (same system identifier and database name,
    from the manifests) younger than O(max_age) is re-verified and reused instead of dumping again.
  - With O(keep), older snapshots of the same database in O(dest) are removed after a successful run.
  - With O(state=restored), restores the snapshot O(name) into the database with
    C(pg_restore --clean --if-exists --single-transaction --no-owner --exit-on-error), after checking
    O(confirm), the database fingerprint and the checksum, then checks the applied Django migrations
    against the manifest. A failed restore is rolled back entirely.
  - With O(provider=command), an external command (for example a wrapper around a managed database's
    snapshot API) makes the snapshot instead of C(pg_dump); the module records it in a manifest.
  - Before doing anything, the module connects once with C(psql) to check the credentials and to read the
    server version, and picks C(pg_dump)/C(pg_restore) of the server's major version or newer.
author:
  - safedeploy.django maintainers (@safedeploy)
extends_documentation_fragment:
  - safedeploy.django.postgres
attributes:
  check_mode:
    support: full
    description:
      - O(state=present) connects to the server, checks O(dest) and re-verifies a snapshot it would reuse,
        then reports C(changed=true) if a snapshot would be taken and RV(pruned) as it would be. Nothing is
        written, not even O(dest); no scratch database is created.
      - O(state=restored) checks O(confirm), the fingerprint, the checksum and the archive, and restores
        nothing.
  diff_mode:
    support: none
    description:
      - Does not return a diff.
  idempotent:
    support: partial
    description:
      - With a fixed O(name) or with O(max_age), a second run re-verifies the existing snapshot and reports
        C(changed=false). Without either, every run makes a new, time-stamped snapshot.
      - O(state=restored) restores every time it runs.
options:
  state:
    description:
      - V(present) makes sure a verified snapshot exists (taking, reusing or pruning snapshots).
      - V(restored) restores the snapshot O(name) from O(dest) into O(database). Needs O(confirm).
    type: str
    choices: [present, restored]
    default: present
  dest:
    description:
      - Directory of the snapshot files. Created with mode 0700 if missing; an existing directory's mode
        is left alone. Files are written with mode 0600, the directories of O(format=directory) with 0700.
    type: path
    required: true
  name:
    description:
      - Base name of the snapshot files C(<name>.dump) or C(<name>.dir), C(<name>.dump.sha256) or
        C(<name>.dir.sha256), and C(<name>.json).
      - Letters, digits, V(.), V(_) and V(-) only.
      - Defaults to C(<database>-<UTC timestamp>), for example V(shop-20250101T120000Z).
      - Required with O(state=restored).
    type: str
  format:
    description:
      - V(custom) is C(pg_dump --format=custom), one file C(<name>.dump).
      - V(directory) is C(pg_dump --format=directory), a directory C(<name>.dir) with one file per table,
        which O(jobs) can write in parallel. Its sha256 is the sha256 of the C(<name>.dir.sha256) file,
        which lists the sha256 of every file of the directory sorted by name (C(sha256sum -c) format).
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description:
      - Number of parallel C(pg_dump) jobs (C(--jobs)); each opens its own connection.
      - More than V(1) needs O(format=directory).
      - Also used by the restore into the scratch database of O(test_restore).
    type: int
    default: 1
  compress:
    description:
      - Compression level from V(0) (none) to V(9), passed as C(pg_dump --compress).
      - If not set, C(pg_dump)'s default applies.
    type: int
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
      - Applies to new snapshots, to the re-verification of an existing one and before a restore.
    type: bool
    default: true
  test_restore:
    description:
      - Restore the new snapshot into a scratch database C(<database>_sdverify_<random>) (characters other
        than lower case letters, digits and V(_) replaced by V(_)), created from C(template0) with the
        database's encoding and collation, count the rows of every table there and compare them with the
        exact row counts (C(count(*))) read in the dump's own snapshot. Any difference fails the module and
        the snapshot is not kept.
      - The counts are exact, so they cost one full scan of every table; meant for small and medium
        databases.
      - The scratch database is dropped afterwards, whether the test passed or not.
      - The user needs the CREATEDB right; the module fails before dumping if it is missing.
      - For a reused snapshot, the restore test runs again and compares with the counts recorded in its
        manifest (if it was taken with O(test_restore)), otherwise only checks that every table restores.
    type: bool
    default: false
  max_age:
    description:
      - Reuse the newest snapshot in O(dest) of the same target (same system identifier and database name in
        its manifest; host and port when the system identifier cannot be read) that is younger than this,
        instead of dumping. Then C(changed=false), RV(reused=true), and RV(path), RV(name) and
        RV(age_seconds) describe the reused snapshot.
      - A duration such as V(30m), V(6h), V(2d), V(1h30m), V(1w), or a number of seconds.
      - A candidate is re-verified first (checksum, C(pg_restore --list) and O(verify_data)). One that fails
        is skipped with a warning, never reused, and left in place for inspection; if no candidate passes, a
        new snapshot is taken.
      - An existing snapshot named O(name) takes precedence over O(max_age).
    type: raw
  keep:
    description:
      - After a successful run, keep the newest O(keep) snapshots of the same target in O(dest) (the one just
        made or reused always counts as one of them and is never removed) and remove the older ones (archive,
        checksum file and manifest).
      - Only snapshots with a manifest of this collection are considered; other files are never touched.
        Snapshots of O(provider=command) are neither counted nor removed.
      - Removing a snapshot is a change, so a run that reuses a snapshot but removes older ones reports
        C(changed=true).
    type: int
  confirm:
    description:
      - With O(state=restored), must be the name of the target O(database), to confirm that this database
        may be overwritten.
    type: str
  allow_other_target:
    description:
      - With O(state=restored), restore even if the snapshot was taken from another database (another system
        identifier or database name in its manifest), for example to load a copy of production into a
        staging database. Without it, such a restore is refused.
    type: bool
    default: false
  provider:
    description:
      - V(pg_dump) dumps with C(pg_dump).
      - V(command) runs O(provider_command) to make a snapshot with the database service's own tools (for
        example a managed database's snapshot API), then O(provider_check_command) until it reports the
        snapshot available, and writes a manifest C(<name>.json) with the returned id. Such snapshots cannot
        be restored by this module.
    type: str
    choices: [pg_dump, command]
    default: pg_dump
  provider_command:
    description:
      - The command making a snapshot, as a list of arguments, run without a shell. The placeholders
        C({name}), C({database}), C({host}), C({port}) and C({user}) in the arguments are replaced.
      - It must exit 0 and print a JSON object with at least C(id) on the last line of its output.
      - It runs with the module's environment minus E(PGPASSWORD).
    type: list
    elements: str
  provider_check_command:
    description:
      - The command checking a provider snapshot, as a list of arguments, run without a shell; the same
        placeholders as O(provider_command) and C({id}) (the id the snapshot got) are replaced.
      - It must exit 0 and print a JSON object on the last line of its output. The snapshot is ready when it
        has C(status) V(available); other statuses are polled every O(provider_poll_interval) seconds until
        O(provider_timeout).
      - Also used to re-verify a provider snapshot before it is reused.
    type: list
    elements: str
  provider_timeout:
    description:
      - Seconds to wait for O(provider_command) and for the snapshot to become available.
    type: int
    default: 3600
  provider_poll_interval:
    description:
      - Seconds between two runs of O(provider_check_command).
    type: int
    default: 10
notes:
  - Credentials and the target usually come from the task C(environment) (E(PGHOST), E(PGPORT), E(PGUSER),
    E(PGPASSWORD)); see the connection options.
  - The manifest records the database fingerprint (host, port, database, user, server version, system
    identifier from C(pg_control_system()) when the user may read it, whether the server is a replica),
    the C(pg_dump) version, the applied Django migrations (C(app.name), in C(django_migrations) id order;
    empty without that table), size, sha256, format, creation time (UTC) and the tables.
  - C(sha256sum -c <name>.dump.sha256) (or C(<name>.dir.sha256)) run in O(dest) checks a snapshot by hand.
  - "O(state=restored) drops and recreates the objects in the snapshot; tables created after the snapshot
    (not in it) are left alone and reported in RV(extra_tables). Stop the application's writers first: the
    restore takes exclusive locks."
  - See C(docs/snapshots.md) in the collection for the full rules and a provider example.
requirements:
  - PostgreSQL client programs C(psql), C(pg_dump) and C(pg_restore) on the managed host.
seealso:
  - module: safedeploy.django.django_migrate_once
  - name: pg_dump
    description: The PostgreSQL documentation of pg_dump.
    link: https://www.postgresql.org/docs/current/app-pgdump.html
  - name: pg_restore
    description: The PostgreSQL documentation of pg_restore.
    link: https://www.postgresql.org/docs/current/app-pgrestore.html
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

- name: Reuse a snapshot younger than 6 hours, prove it restores, keep the newest 5
  safedeploy.django.pg_snapshot:
    database: shop
    dest: /var/backups/shop
    max_age: 6h
    test_restore: true
    keep: 5

- name: Big database - directory format, 4 parallel jobs, explicit options and a passfile
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
    format: directory
    jobs: 4
    compress: 6

- name: Roll back - restore the snapshot taken before the release
  safedeploy.django.pg_snapshot:
    state: restored
    database: shop
    confirm: shop
    dest: /var/backups/shop
    name: "shop-before-{{ release_version }}"
  register: restore

- name: Managed database - let the provider make the snapshot
  safedeploy.django.pg_snapshot:
    database: shop
    dest: /var/backups/shop
    name: "shop-before-{{ release_version }}"
    provider: command
    provider_command: [/usr/local/bin/rds-snapshot, create, shop-prod, "{name}"]
    provider_check_command: [/usr/local/bin/rds-snapshot, status, "{id}"]
    provider_timeout: 1800
"""

RETURN = r"""
path:
  description:
    - Path of the snapshot archive (C(<name>.dump) file or C(<name>.dir) directory); with O(max_age), the
      reused one. In check mode, where it would be written.
    - For O(provider=command), the path of the manifest.
  returned: always
  type: str
  sample: /var/backups/shop/shop-before-2.4.0.dump
sha256_path:
  description: Path of the checksum file, in C(sha256sum) format (null for O(provider=command)).
  returned: with O(state=present)
  type: str
  sample: /var/backups/shop/shop-before-2.4.0.dump.sha256
manifest_path:
  description: Path of the JSON manifest.
  returned: always
  type: str
  sample: /var/backups/shop/shop-before-2.4.0.json
name:
  description: The snapshot base name (O(name), the generated default, or the reused snapshot's).
  returned: always
  type: str
  sample: shop-before-2.4.0
format:
  description: V(custom), V(directory), or V(provider) for O(provider=command).
  returned: always
  type: str
  sample: custom
sha256:
  description: SHA-256 of the archive (for O(format=directory), of its C(.sha256) listing).
  returned: when a pg_dump snapshot was taken, reused or restored
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
size:
  description: Size of the archive in bytes (for a directory, the sum of its files).
  returned: when a pg_dump snapshot was taken or reused
  type: int
  sample: 73421
tables:
  description: Tables in the archive (C(schema.table)), from C(pg_restore --list).
  returned: when a snapshot was taken or reused
  type: list
  elements: str
  sample: [public.django_migrations, public.shop_product]
applied_migrations:
  description:
    - With O(state=present), the Django migrations applied when the snapshot was taken (C(app.name)).
    - With O(state=restored), the migrations applied in the database after the restore (equal to the
      manifest's, else the module fails); in check mode, the manifest's.
  returned: when a snapshot was taken, reused or restored
  type: list
  elements: str
  sample: [contenttypes.0001_initial, shop.0001_initial]
manifest:
  description: The content of the manifest file.
  returned: when a snapshot was taken, reused or restored
  type: dict
  sample:
    collection: safedeploy.django
    kind: pg_snapshot
    manifest_version: 2
    name: shop-before-2.4.0
    file: shop-before-2.4.0.dump
    format: custom
    provider: pg_dump
    created: "2025-01-01T12:00:00Z"
    fingerprint:
      host: db.example.com
      port: 5432
      database: shop
      user: shop_app
      server_version: "15.18 (Debian 15.18-0+deb12u1)"
      server_version_num: 150018
      system_identifier: "7412345678901234567"
      in_recovery: false
    database: shop
    host: db.example.com
    port: 5432
    user: shop_app
    server_version: "15.18 (Debian 15.18-0+deb12u1)"
    server_version_num: 150018
    system_identifier: "7412345678901234567"
    in_recovery: false
    pg_dump_version: "15.18 (Debian 15.18-0+deb12u1)"
    size: 73421
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    sha256_method: sha256 of the archive file
    tables: 2
    table_names: [public.django_migrations, public.shop_product]
    applied_migrations: [contenttypes.0001_initial, shop.0001_initial]
    consistent_snapshot: true
    dump_seconds: 0.41
dest_created:
  description: Whether O(dest) was created by this run.
  returned: when a new pg_dump snapshot was taken
  type: bool
  sample: true
reused:
  description: V(true) when an existing snapshot (same O(name), or through O(max_age)) was verified again and
    used instead of dumping.
  returned: with O(state=present)
  type: bool
  sample: false
age_seconds:
  description: Age of the reused snapshot, from its manifest's creation time.
  returned: when a snapshot with a manifest was reused
  type: int
  sample: 5400
pruned:
  description: Names of the snapshots removed by O(keep) (in check mode, that would be removed).
  returned: with O(state=present)
  type: list
  elements: str
  sample: [shop-20250101T120000Z]
test_restore:
  description: Outcome of O(test_restore).
  returned: when O(test_restore=true) and not in check mode
  type: dict
  contains:
    database:
      description: Name of the scratch database (dropped again).
      type: str
      sample: shop_sdverify_1a2b3c4d
    seconds:
      description: Seconds spent creating, restoring, counting and dropping.
      type: float
      sample: 2.31
    tables_checked:
      description: Number of tables whose rows were counted in the scratch database.
      type: int
      sample: 12
    mismatches:
      description: Tables whose restored row count differs from the count at dump time (the module fails if any).
      type: list
      elements: dict
      sample: []
    compared_with:
      description: What the restored counts were compared with.
      type: str
      sample: exact row counts in the dump's snapshot
    row_counts:
      description: Rows per table in the scratch database.
      type: dict
      sample: {public.shop_product: 5000}
    dropped:
      description: Whether the scratch database was dropped (a warning says so when not).
      type: bool
      sample: true
provider_id:
  description: The id O(provider_command) returned for the snapshot.
  returned: with O(provider=command), when a snapshot was taken or reused
  type: str
  sample: rds:shop-before-2-4-0
restored:
  description: Whether the snapshot was restored into the database.
  returned: with O(state=restored)
  type: bool
  sample: true
seconds:
  description: Seconds C(pg_restore) took.
  returned: with O(state=restored)
  type: float
  sample: 3.2
extra_tables:
  description: Tables present in the database before the restore that are not in the snapshot (left as they are).
  returned: with O(state=restored)
  type: list
  elements: str
  sample: [public.shop_review]
timings:
  description:
    - Seconds spent in each phase of a new pg_dump snapshot - V(facts) (snapshot export, tables, migrations,
      row counts), V(dump) (C(pg_dump)), V(checksum), V(pg_restore_checks) (C(pg_restore --list) and the data
      read), V(verify) (checksum and pg_restore checks), V(test_restore) (with O(test_restore)) and V(publish)
      (writing the checksum file and manifest and renaming).
  returned: when a new pg_dump snapshot was taken
  type: dict
  sample: {facts: 0.02, dump: 3.1, checksum: 0.4, pg_restore_checks: 1.2, verify: 1.6, publish: 0.01}
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
  returned: when the module connected to the server
  type: str
  sample: "15.18 (Debian 15.18-0+deb12u1)"
bin_dir:
  description: Directory of the C(pg_dump)/C(pg_restore) used.
  returned: when a new snapshot was taken or would be taken, and with O(state=restored)
  type: str
  sample: /usr/lib/postgresql/15/bin
command:
  description:
    - The C(pg_dump) (or C(pg_restore), or provider) command line that was (or in check mode would be) run.
      It holds no secret; the connection settings travel in the environment.
  returned: when a new snapshot was taken or would be taken, and with O(state=restored)
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
        state=dict(type="str", choices=["present", "restored"], default="present"),
        dest=dict(type="path", required=True),
        name=dict(type="str"),
        format=dict(type="str", choices=["custom", "directory"], default="custom"),
        jobs=dict(type="int", default=1),
        compress=dict(type="int"),
        bin_dir=dict(type="path"),
        verify_data=dict(type="bool", default=True),
        test_restore=dict(type="bool", default=False),
        max_age=dict(type="raw"),
        keep=dict(type="int"),
        confirm=dict(type="str"),
        allow_other_target=dict(type="bool", default=False),
        provider=dict(type="str", choices=["pg_dump", "command"], default="pg_dump"),
        provider_command=dict(type="list", elements="str"),
        provider_check_command=dict(type="list", elements="str"),
        provider_timeout=dict(type="int", default=3600),
        provider_poll_interval=dict(type="int", default=10),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("provider", "command", ("provider_command", "provider_check_command"))],
    )
    # RV(path) names a snapshot, not a file this module manages: AnsibleModule would otherwise add the
    # stat of that path to the result, replacing RV(size) with a directory's inode size and adding a
    # "state" that has nothing to do with O(state).
    module.add_path_info = lambda kwargs: kwargs
    try:
        result = snapshot(module.params, check_mode=module.check_mode)
    except PgError as exc:
        details = dict(exc.details)
        for warning in details.pop("warnings", []) or []:
            module.warn(warning)
        module.fail_json(msg=exc.message, error_kind=exc.kind, **details)
    warnings = list(result.pop("warnings", None) or [])
    legacy = result.pop("warning", None)
    if legacy:
        warnings.append(legacy)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
