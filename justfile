# petrock_trio tasks. `just --list` shows them all.

venv := ".venv"
python := venv / "bin/python"

# Create the virtual environment with everything needed for development.
setup:
    test -x {{python}} || python3 -m venv {{venv}}
    {{python}} -m pip install -q -e '.[dev]'

# The test suite, as CI runs it.
test *args: setup
    {{python}} -m pytest {{args}}

# Lint and format check.
lint: setup
    {{python}} -m ruff format --check .
    {{python}} -m ruff check .

# Strict type checking of the package, the tests and the example feature.
typing: setup
    {{python}} -m mypy

# The main job: the items example on a SQLite file.
demo *args: setup
    {{venv}}/bin/petrock-trio demo {{args}}

# Benchmarks (long; prints ratios against baselines measured in the same run; idle 5 s).
# Append, catch-up, latency and the partitions' CPU-bound part also run on a throwaway PostgreSQL
# server when initdb is installed.
bench *args: setup
    {{python}} -m pip install -q -e '.[bench]'
    pg=$({{python}} -c 'from tests.postgres_server import find_binaries as f; print("--postgres auto" if f() else "")'); \
    for b in benchmarks/bench_*.py; do \
        case "$b" in */bench_append.py|*/bench_catchup.py|*/bench_latency.py|*/bench_partitions.py) extra="$pg";; *) extra="";; esac; \
        {{python}} "$b" $([ "$b" = benchmarks/bench_idle.py ] && echo --duration 5) $extra {{args}} || exit 1; \
    done

# The figures of docs/performance.md: full sizes, idle 30 s, saved to benchmarks/results/.
bench-full: setup
    {{python}} -m pip install -q -e '.[bench]'
    pg=$({{python}} -c 'from tests.postgres_server import find_binaries as f; print("--postgres auto" if f() else "")'); \
    for b in benchmarks/bench_*.py; do \
        case "$b" in */bench_append.py|*/bench_catchup.py|*/bench_latency.py|*/bench_partitions.py) extra="$pg";; *) extra="";; esac; \
        {{python}} "$b" --save $extra || exit 1; \
    done
    {{python}} benchmarks/plots.py

# Code reduction of the items worker migration (legacy vs PatternWorker).
loc: setup
    {{python}} benchmarks/loc.py

# Randomised kill -9 trials against a real app on SQLite (TRIALS, default 50).
crash trials="50": setup
    {{python}} -m tests.crash.trials {{trials}}

# Three processes on one PostgreSQL log, one killed or frozen mid-stream (TRIALS, default 10).
cluster trials="10": setup
    {{python}} -m tests.cluster.trial {{trials}}

# Load and soak: 100 workers under sustained appends (SECONDS, default 120).
soak seconds="120": setup
    {{python}} -m tests.soak {{seconds}}

# Lease rounds of 2, then 5 processes at once on one PostgreSQL log: no deadlock (ROUNDS each, default 3000).
lease-rounds rounds="3000": setup
    {{python}} -m tests.lease_rounds {{rounds}}

# Fault trials: disk full, write lock held, file deleted, corrupt rows, PostgreSQL stopped
# (SECONDS each fault lasts, default 40); one row each: tried, acknowledged, lost, health, recovery.
faults seconds="40": setup
    {{python}} -m tests.faults.trial --seconds {{seconds}}
