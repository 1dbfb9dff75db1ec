#!/usr/bin/env bash
# A kvctl session on a demo store: the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin kvctl
kvctl=target/release/kvctl
db=${1:-$(mktemp -d)/demo.kv}
run() {
    printf '$ kvctl --db %s %s\n' "$db" "$*"
    "$kvctl" --db "$db" "$@"
}
run init
run put greeting "hello, world"
run put answer 42
echo "a value from standard input" | run put note -
run get greeting && echo
run get note
run del answer
run get answer || echo "(exit status $?: not found)"
run --hex put 00ff 68690a
run scan
run --json get greeting
run dump --format mdb --print
run stats
run compact
run backup "${db%.kv}-copy.kv"
run verify
