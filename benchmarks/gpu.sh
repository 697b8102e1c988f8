#!/usr/bin/env bash
# One prepared accelerator run, inside 8 minutes: run.py --quick, models.py --quick and a
# short fit_loop.py, each under its own time limit (a slow one cannot starve the next),
# results as JSON in one folder together with the device they ran on.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]     # default: $OUT if set, else benchmarks/results/gpu
#
# Needs python3 (or $PYTHON) with jax for the accelerator, optax, flax, scikit-learn and
# tqdm; jtricks is taken from this checkout. RESULTS.md is left as it was: render a
# section from the JSON afterwards, e.g. `python benchmarks/run.py --render DIR/run.json`.
# Files written (six, flat): device.txt, run.json, models.json, models-compact.json,
# fit_loop.json, gpu.log.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-${OUT:-$ROOT/benchmarks/results/gpu}}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$DIR/gpu.log"
cd "$ROOT/benchmarks" || exit 1

step() {  # step SECONDS NAME COMMAND...: one benchmark, its time and exit status logged
    local limit=$1 name=$2 t0=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
    date -u '+%Y-%m-%d %H:%M UTC'
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
        --format=csv 2>/dev/null || echo "nvidia-smi: not available"
    "$PY" -c 'import jax, optax, flax; print("jax", jax.__version__, "optax", optax.__version__,
"flax", flax.__version__); print("devices", jax.devices())'
} >"$DIR/device.txt" 2>&1
cat "$DIR/device.txt" | tee -a "$LOG"

# 8 minutes in all: 150 + 230 + 80 s of limits, plus start-up.
step 150 run.py "$PY" run.py --quick --out "$DIR/run.json" --no-markdown
step 230 models.py "$PY" models.py --quick --out "$DIR/models.json" \
    --json "$DIR/models-compact.json" --no-markdown
# fit_loop.py writes results/fit_loop.json and its RESULTS.md section: keep copies and
# put them back, so this run changes nothing but $DIR.
FIT=(--repeats 3 --epochs 5)
"$PY" fit_loop.py --help 2>/dev/null | grep -q -- '--quick' && FIT=(--quick)
cp RESULTS.md "$DIR/.RESULTS.md.keep"
[ -f results/fit_loop.json ] && cp results/fit_loop.json "$DIR/.fit_loop.json.keep"
step 80 fit_loop.py "$PY" fit_loop.py "${FIT[@]}"
cp results/fit_loop.json "$DIR/fit_loop.json" 2>/dev/null
mv "$DIR/.RESULTS.md.keep" RESULTS.md
if [ -f "$DIR/.fit_loop.json.keep" ]; then mv "$DIR/.fit_loop.json.keep" results/fit_loop.json
else rm -f results/fit_loop.json; fi
echo "results in $DIR" | tee -a "$LOG"
