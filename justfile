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
bench *args: setup
    {{python}} -m pip install -q -e '.[bench]'
    for b in benchmarks/bench_*.py; do {{python}} "$b" $([ "$b" = benchmarks/bench_idle.py ] && echo --duration 5) {{args}} || exit 1; done

# The figures of docs/performance.md: full sizes, idle 30 s, saved to benchmarks/results/.
bench-full: setup
    {{python}} -m pip install -q -e '.[bench]'
    for b in benchmarks/bench_*.py; do {{python}} "$b" --save || exit 1; done
    {{python}} benchmarks/plots.py

# Code reduction of the items worker migration (legacy vs PatternWorker).
loc: setup
    {{python}} benchmarks/loc.py

# Randomised kill -9 trials against a real app on SQLite (TRIALS, default 50).
crash trials="50": setup
    {{python}} -m tests.crash.trials {{trials}}

# Load and soak: 100 workers under sustained appends (SECONDS, default 120).
soak seconds="120": setup
    {{python}} -m tests.soak {{seconds}}
