#!/usr/bin/env bash
# capsule's main job, end to end, on the embedded default (a local file://
# store), printing what it checked:
#
#   1. a throwaway PostgreSQL cluster (the machine's own binaries, installed
#      with apt-get when missing) on a free loopback port, in a temp dir;
#   2. a sample database: tables of a few hundred thousand rows, a view, a
#      sequence, bytea, non-ASCII text, an owner role and a reader role;
#   3. capsule pg --create   (backup into file://<tmp>/store)
#      capsule pg --verify   (restore drill into a throwaway database)
#      DROP DATABASE, DROP ROLE
#      capsule pg --restore  (roles and database come back)
#      then compares row counts and checksums of every table itself;
#   4. capsule pg --list;
#   5. the legacy Go capsule's bucket (fixtures/legacy-v1alpha1): restores
#      postgresql-9nVJ8sGmQbXc3RkHzW2tLp and checks 500/1200/20000 rows.
#
# Exits non-zero on any failed check; removes everything it made on exit.
# Runs as root (PostgreSQL then runs as the `postgres` user) or as a normal
# user (sudo is used only to install PostgreSQL when it is missing).
#
# capsule is built in the dev profile: on 2 cores a cold `cargo build` of
# capsule-cli takes about half as long as `--release` (dependencies are
# optimised in both, see [profile.dev.package."*"] in Cargo.toml), and the
# demo's few tens of MiB run as fast either way. CAPSULE_DEMO_PROFILE=release
# builds and uses the release binary instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '[demo] %s\n' "$*" >&2; }
fail() {
  printf '[demo] FAILED: %s\n' "$*" >&2
  exit 1
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# --- 1. PostgreSQL binaries ---------------------------------------------------
find_initdb() { ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1; }
INITDB=$(find_initdb || true)
if [ -z "$INITDB" ]; then
  step "installing PostgreSQL (apt-get install postgresql)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  # Debian starts the packaged cluster; the demo starts its own.
  $SUDO systemctl stop postgresql >/dev/null 2>&1 || $SUDO service postgresql stop >/dev/null 2>&1 || true
  INITDB=$(find_initdb || true)
  [ -n "$INITDB" ] || fail "no initdb under /usr/lib/postgresql/*/bin after installing postgresql"
fi
PGBIN=$(dirname "$INITDB")
log "PostgreSQL: $("$PGBIN/postgres" --version)"

# --- 2. capsule ---------------------------------------------------------------
PROFILE=${CAPSULE_DEMO_PROFILE:-dev}
step "building capsule (cargo build -p capsule-cli, profile $PROFILE)"
t=$(now)
cargo build -q -p capsule-cli --profile "$PROFILE"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ "$PROFILE" = dev ] && OUT=debug || OUT=$PROFILE
CAPSULE="$TARGET_DIR/$OUT/capsule"
[ -x "$CAPSULE" ] || fail "no capsule binary at $CAPSULE"
log "built $CAPSULE in $(since "$t")"

# --- throwaway cluster ----------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/capsule-demo.XXXXXX")
chmod 0755 "$WORK"
PGDIR="$WORK/pg"
mkdir -p "$PGDIR/sock"
STARTED=""
cleanup() {
  local rc=$?
  if [ -n "$STARTED" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  if [ $rc -ne 0 ]; then log "exit $rc (temp files removed)"; fi
}
trap cleanup EXIT

if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root.
  id postgres >/dev/null 2>&1 || fail "running as root but there is no postgres user (apt-get install postgresql creates it)"
  chown -R postgres: "$PGDIR"
  as_pg() { (cd "$WORK" && runuser -u postgres -- "$@"); }
else
  as_pg() { (cd "$WORK" && "$@"); }
fi

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  fail "no free port found"
}

step "starting a throwaway PostgreSQL cluster"
as_pg "$INITDB" -D "$PGDIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
PORT=$(free_port)
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
  -o "-p $PORT -k $PGDIR/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" \
  start >/dev/null || { cat "$PGDIR/server.log" >&2 || true; fail "PostgreSQL did not start"; }
STARTED=1
log "cluster in $PGDIR/data on 127.0.0.1:$PORT"

# psql DB SQL: one statement at a time (autocommit), unaligned, tuples only,
# stop on the first error.
psql_in() {
  PGPASSWORD="" "$PGBIN/psql" -X -q -A -t -F ' ' -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PORT" -U postgres -d "$1" -f - <<<"$2"
}

# --- sample data --------------------------------------------------------------
step "loading sample data into database shop"
t=$(now)
psql_in postgres "CREATE ROLE shop_owner LOGIN; CREATE ROLE shop_reader NOLOGIN; CREATE DATABASE shop OWNER shop_owner"
psql_in shop "
SET ROLE shop_owner;
CREATE TABLE customers (
  id integer PRIMARY KEY,
  name text NOT NULL,
  city text NOT NULL,
  created_at timestamptz NOT NULL
);
INSERT INTO customers
SELECT i,
       (ARRAY['Zoë', 'Ana', 'Łukasz', 'Søren', 'José', '美咲', 'Dmitrij', 'Ayşe'])[1 + i % 8] || ' #' || i,
       (ARRAY['Zürich', 'Kraków', 'Åre', 'São Paulo', '東京', 'Reykjavík', 'Москва'])[1 + i % 7],
       timestamptz '2024-01-01 00:00:00+00' + i * interval '7 minutes'
FROM generate_series(1, 60000) i;
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES customers,
  amount numeric(12, 2) NOT NULL,
  placed_at timestamptz NOT NULL,
  note text
);
INSERT INTO orders (customer_id, amount, placed_at, note)
SELECT 1 + i % 60000, (i % 9973) / 7.0, timestamptz '2024-02-01 00:00:00+00' + i * interval '1 minute',
       CASE WHEN i % 5 = 0 THEN 'gift wrap ✓ — merci' END
FROM generate_series(1, 300000) i;
CREATE TABLE events (
  id bigint PRIMARY KEY,
  order_id bigint NOT NULL,
  payload jsonb NOT NULL
);
INSERT INTO events
SELECT i, 1 + i % 300000, jsonb_build_object('kind', (ARRAY['placed', 'paid', 'shipped'])[1 + i % 3], 'n', i, 'tag', md5(i::text))
FROM generate_series(1, 150000) i;
CREATE TABLE attachments (
  id integer PRIMARY KEY,
  name text NOT NULL,
  data bytea NOT NULL
);
INSERT INTO attachments
SELECT i, 'scan-' || i || '.bin', decode(repeat(md5(i::text) || md5((i * 7)::text), 16), 'hex')
FROM generate_series(1, 3000) i;
CREATE SEQUENCE invoice_no START 1000;
SELECT setval('invoice_no', 4242);
CREATE VIEW city_totals AS
  SELECT c.city, count(*) AS orders, sum(o.amount) AS total
  FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.city;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shop_reader;
" >/dev/null
DB_SIZE=$(psql_in postgres "SELECT pg_size_pretty(pg_database_size('shop'))")
log "loaded in $(since "$t"): database shop is $DB_SIZE"

# One line per object: name, rows, checksum (md5 over every row's text, in key order).
SNAPSHOT_SQL="SELECT * FROM (
SELECT 'public.customers', count(*), md5(string_agg(md5(t::text), '' ORDER BY id)) FROM customers t
UNION ALL SELECT 'public.orders', count(*), md5(string_agg(md5(t::text), '' ORDER BY id)) FROM orders t
UNION ALL SELECT 'public.events', count(*), md5(string_agg(md5(t::text), '' ORDER BY id)) FROM events t
UNION ALL SELECT 'public.attachments', count(*), md5(string_agg(md5(t::text), '' ORDER BY id)) FROM attachments t
UNION ALL SELECT 'public.city_totals(view)', count(*), md5(string_agg(t::text, '' ORDER BY city)) FROM city_totals t
UNION ALL SELECT 'public.invoice_no(sequence)', last_value, md5(last_value::text || is_called::text) FROM invoice_no
UNION ALL SELECT 'grants(shop_reader)', count(*), md5(string_agg(table_name, ',' ORDER BY table_name))
  FROM information_schema.role_table_grants WHERE grantee = 'shop_reader'
) s ORDER BY 1"
BEFORE=$(psql_in shop "$SNAPSHOT_SQL")

# --- capsule --------------------------------------------------------------------
export CAPSULE_HOME="$WORK/home" NO_COLOR=1
STORE="file://$WORK/store"
URL="postgres://postgres@127.0.0.1:$PORT/shop"
capsule() {
  printf '$ capsule %s\n' "$*" >&2
  "$CAPSULE" --store "$STORE" "$@"
}

step "backup"
t=$(now)
ID=$(capsule pg --create --pg-url "$URL" --description "capsule demo")
BACKUP_TIME=$(since "$t")
case "$ID" in postgresql-*) ;; *) fail "capsule pg --create printed no backup id: $ID" ;; esac
STORED=$(du -sb "$WORK/store" | cut -f1)
capsule pg --describe --id "$ID" | grep -q '^  "status": "finished"' || fail "backup $ID is not finished"

step "verify (restore drill into a throwaway database)"
t=$(now)
capsule pg --verify --id "$ID" --pg-url "$URL" || fail "capsule pg --verify failed"
VERIFY_TIME=$(since "$t")
LEFT=$(psql_in postgres "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop\\_\\_capsule\\_verify%'")
[ "$LEFT" = 0 ] || fail "the drill left its database behind"

step "disaster: DROP DATABASE shop; DROP ROLE shop_reader"
psql_in postgres "DROP DATABASE shop; DROP ROLE shop_reader"

step "restore"
t=$(now)
RESTORE_OUT=$(capsule pg --restore --id "$ID" --pg-url "$URL" --yes) || fail "capsule pg --restore failed"
RESTORE_TIME=$(since "$t")
printf '%s\n' "$RESTORE_OUT"
grep -q "roles created: shop_reader" <<<"$RESTORE_OUT" || fail "the restore did not report recreating role shop_reader"

step "checking the restored database against the original"
AFTER=$(psql_in shop "$SNAPSHOT_SQL")
OWNER=$(psql_in postgres "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'")
[ "$OWNER" = shop_owner ] || fail "database shop is owned by $OWNER, not shop_owner"
ok=1
printf '%-30s %10s  %s\n' OBJECT ROWS CHECK
while read -r name rows sum; do
  after=$(awk -v n="$name" '$1 == n { print $2 " " $3 }' <<<"$AFTER")
  if [ "$after" = "$rows $sum" ]; then
    printf '%-30s %10s  %s\n' "$name" "$rows" "ok (md5 ${sum:0:12}…)"
  else
    printf '%-30s %10s  %s\n' "$name" "$rows" "MISMATCH: restored $after"
    ok=0
  fi
done <<<"$BEFORE"
[ $ok = 1 ] || fail "the restored database differs from the original"
ROWS=$(awk '$1 ~ /^public\.[a-z_]+$/ { n += $2 } END { print n }' <<<"$BEFORE")

step "list"
capsule pg --list

# --- the legacy bucket ----------------------------------------------------------
step "legacy: restoring a backup written by the Go capsule"
LEGACY_ID=postgresql-9nVJ8sGmQbXc3RkHzW2tLp
mkdir -p "$WORK/legacy"
cp -R "$ROOT/fixtures/legacy-v1alpha1/cnvrg-smart-backups" "$WORK/legacy/"
LEGACY_URL="postgres://postgres@127.0.0.1:$PORT/cnvrg_production"
t=$(now)
STORE="file://$WORK/legacy" capsule pg --restore --id "$LEGACY_ID" --pg-url "$LEGACY_URL" --yes \
  || fail "restoring the legacy backup failed"
LEGACY_TIME=$(since "$t")
LEGACY=$(psql_in cnvrg_production "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM projects), (SELECT count(*) FROM experiments), (SELECT count(*) FROM project_stats)")
[ "$LEGACY" = "500 1200 20000 1200" ] || fail "legacy restore: users/projects/experiments/project_stats = $LEGACY, expected 500 1200 20000 1200"
LEGACY_OWNER=$(psql_in postgres "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'cnvrg_production'")
[ "$LEGACY_OWNER" = cnvrg ] || fail "legacy restore: cnvrg_production is owned by $LEGACY_OWNER, not cnvrg"
log "users 500, projects 1200, experiments 20000, view project_stats 1200 rows; owner cnvrg"

# --- summary ----------------------------------------------------------------------
step "summary: every check passed"
cat >&2 <<EOF
  backup id        $ID
  database shop    $DB_SIZE on disk, 4 tables with $ROWS rows, a view, 2 sequences, bytea, non-ASCII text, 2 roles
  stored           $(numfmt --to=iec-i --suffix=B "$STORED") in $STORE (statefile, dump.pgc.zst, roles.sql.zst)
  backup           $BACKUP_TIME (capsule pg --create)
  verify           $VERIFY_TIME (restore drill: row counts and sequences compared, throwaway database dropped)
  restore          $RESTORE_TIME (database and role shop_reader recreated; every table's rows and md5 match)
  legacy restore   $LEGACY_TIME ($LEGACY_ID from fixtures/legacy-v1alpha1: 500/1200/20000 rows)
EOF
