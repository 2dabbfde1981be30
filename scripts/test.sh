#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and clippy, starts Kafka
# (Tansu) and MongoDB (SecantusDB) on loopback, builds the project once, runs every test, and
# stops the services.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

started=$(date +%s)
scripts/services.sh install
# Habits first (fast, and before anything starts): the tree is formatted and clippy-clean.
cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
trap 'scripts/services.sh down' EXIT
scripts/services.sh up

# The tests read these; the embedded tests deliberately ignore them.
export RUNNER_TEST_KAFKA="127.0.0.1:${KAFKA_PORT:-9092}"
export RUNNER_TEST_MONGODB="mongodb://127.0.0.1:${MONGODB_PORT:-27017}"
# The Python that has aiosmtpd (the email alert test starts its own SMTP server with it).
export RUNNER_TEST_SMTPD_PYTHON="${RUNNER_SERVICES_DIR:-$root/.services}/venv/bin/python"

# One build profile for everything (the tests measure real throughput too).
cargo build --release --all-targets
set +e
cargo test --release --no-fail-fast --lib --bins --tests 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
scripts/services.sh down
trap - EXIT
echo
echo "== test summary ($(( $(date +%s) - started ))s in all) =="
grep -E '^test result:' target/test-output.log || true
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' target/test-output.log
exit "$status"
