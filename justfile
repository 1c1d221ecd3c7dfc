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

# Benchmarks (long; prints ratios against baselines measured in the same run).
bench: setup
    for b in benchmarks/bench_*.py; do {{python}} "$b"; done

# Code reduction of the items worker migration (legacy vs PatternWorker).
loc: setup
    {{python}} benchmarks/loc.py

# Randomised kill -9 trials against a real app on SQLite (TRIALS, default 50).
crash trials="50": setup
    {{python}} -m tests.crash.trials {{trials}}

# Load and soak: 100 workers under sustained appends (SECONDS, default 120).
soak seconds="120": setup
    {{python}} -m tests.soak {{seconds}}
