#!/usr/bin/env bash
# The GPU check of issue 21, one command on a bare GPU machine: its own python3 and packages
# (torch, transformers, numpy, pillow, pyyaml), no venv, no package index; the checkout on
# PYTHONPATH. A missing pure-Python package is installed from a wheel in benchmarks/wheels/
# when one is there (pip --no-index). Every part has its own time limit (together at most 8
# minutes on the GPU), so one failure or overrun does not stop the rest; a summary table of
# the figures and of the parts comes last. Not yet run on a GPU (no machine was lent).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   DRY=1 bash benchmarks/gpu_check.sh           # on a CPU: every part in tiny sizes (minutes)
#
# Parts: the trainer's step (benchmarks/bench_train.py: BiLMa and IRRA parity, ViT-B/16 at
# batch 64 bf16, eager and compiled: samples/s, MFU, peak memory, host ms and syncs per
# step); the loader's images/s at 16, 8 and 4 workers (benchmarks/bench_loader.py); the
# last.pt save time (benchmarks/bench_checkpoint.py); a 200-step training smoke through
# `python -m bilma train` on synthetic data. Logs: $OUT (default: a new temporary folder).
# Variables: PY (python3), PEAK (the card's dense bf16 TFLOP/s for the MFU; default: known
# cards by name), OUT, DRY.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
DRY=${DRY:-0}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
SUMMARY=()

# ------------------------------------------------------------------ packages
# ensure MODULE DISTRIBUTION: import it, else install it from a carried wheel if there is one.
ensure() {
    "$PY" -c "import $1" 2>/dev/null && return 0
    if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
        echo "installing $2 from benchmarks/wheels/"
        "$PY" -m pip install -q --no-index --find-links benchmarks/wheels "$2" && return 0
    fi
    echo "MISSING: python module $1 (package $2); carry its wheel in benchmarks/wheels/"
    return 1
}
for pair in torch:torch numpy:numpy PIL:pillow yaml:pyyaml transformers:transformers \
    tokenizers:tokenizers rich:rich; do
    ensure "${pair%%:*}" "${pair#*:}" || SUMMARY+=("$(printf '%-22s %-16s' "package ${pair#*:}" missing)")
done
"$PY" - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"python {platform.python_version()}, torch {torch.__version__}, {gpu}, "
      f"{torch.cuda.device_count()} GPU(s), {__import__('os').cpu_count()} CPUs")
EOF

# ------------------------------------------------------------------ parts
# part NAME SECONDS COMMAND...: run it under its own time limit, log to $OUT/NAME.log.
part() {
    local name=$1 secs=$2
    shift 2
    echo
    echo "=== $name (at most ${secs} s): $*"
    local t0=$SECONDS status
    timeout --kill-after=15 "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status="failed ($rc)" ;;
    esac
    SUMMARY+=("$(printf '%-22s %-16s %5d s   %s' "$name" "$status" $((SECONDS - t0)) "$OUT/$name.log")")
}
# absent NAME FILE: a part whose script is not in this checkout.
absent() {
    echo
    echo "=== $1: $2 is not in this checkout (it comes with the loader's branch of issue 21)"
    SUMMARY+=("$(printf '%-22s %-16s' "$1" "missing script")")
}

PEAK_ARGS=()
[ -n "${PEAK:-}" ] && PEAK_ARGS=(--peak-tflops "$PEAK")
if [ "$DRY" = 1 ]; then
    # aot_eager: torch.compile's capture without inductor's code generation (minutes on a CPU)
    STEP_ARGS=(--models tiny --batch 8 --device cpu --amp off --steps 2 --log-every 2 --backend aot_eager)
    LOADER_ARGS=(--workers 2 1 --ids 60 --batches 3)
    CKPT_ARGS=(--small)
    SMOKE=(data.synth_ids=40 data.synth_images_per_id=2 data.image_size=[128,64] model.name=tiny
        model.embed_dim=64 model.cross_depth=1 model.cross_heads=4 mim.depth=1
        train.batch_size=8 train.epochs=1 train.max_steps_per_epoch=20 eval.batch_size=64
        data.num_workers=1)
    T_EAGER=300 T_COMPILED=400 T_LOADER=180 T_CKPT=120 T_SMOKE=300
else
    STEP_ARGS=(--models vitb16 --batch 64 --device cuda --amp bf16 --steps 20)
    LOADER_ARGS=(--workers 16 8 4 --device cuda)
    CKPT_ARGS=(--device cuda --models vitb16 --repeats 2)
    # 400 ids: 320 train ids x 4 images x 2 captions = 2,560 pairs, 40 steps of 64 x 5 epochs
    SMOKE=(data.synth_ids=400 model.name=tiny train.batch_size=64 train.epochs=5 eval.every=5
        eval.batch_size=512 data.num_workers=8)
    # at most 2 x 65 + 10, 2 x 100 + 10, 40, 30, 60 s: 8 minutes if every part hit its limit
    T_EAGER=65 T_COMPILED=100 T_LOADER=40 T_CKPT=30 T_SMOKE=60
fi

# Each configuration in its own process, under the driver's --timeout: both recipes of a mode
# share the part's time.
part step_eager $((2 * T_EAGER + 10)) "$PY" benchmarks/bench_train.py "${STEP_ARGS[@]}" \
    "${PEAK_ARGS[@]}" --recipes bilma irra --modes eager --timeout "$T_EAGER"
part step_compiled $((2 * T_COMPILED + 10)) "$PY" benchmarks/bench_train.py "${STEP_ARGS[@]}" \
    "${PEAK_ARGS[@]}" --recipes bilma irra --modes compiled --timeout "$T_COMPILED"

if [ -f benchmarks/bench_loader.py ] && grep -q -- "--workers" benchmarks/bench_loader.py; then
    part loader "$T_LOADER" "$PY" benchmarks/bench_loader.py "${LOADER_ARGS[@]}"
else
    absent loader "benchmarks/bench_loader.py --workers"
fi
if [ -f benchmarks/bench_checkpoint.py ]; then
    part checkpoint "$T_CKPT" "$PY" benchmarks/bench_checkpoint.py "${CKPT_ARGS[@]}"
else
    absent checkpoint benchmarks/bench_checkpoint.py
fi

# 200 steps (DRY: 20) of `python -m bilma train` on a generated synthetic set (full BiLMa
# losses), evaluated once; its samples/s and loss from the trial's metrics.jsonl.
part smoke "$T_SMOKE" "$PY" -m bilma train --config configs/synth_tiny.yaml \
    "data.root=$OUT/synth" "paths.runs=$OUT/runs" tracking.enabled=false optim.warmup_epochs=0 \
    loss.mlm_weight=1 loss.mim_weight=1 "${SMOKE[@]}"
"$PY" - "$OUT/runs" <<'EOF' | tee -a "$OUT/smoke.log"
import json, pathlib, sys
for path in pathlib.Path(sys.argv[1]).glob("*/*/metrics.jsonl"):
    for line in path.read_text().splitlines():
        r = json.loads(line)
        keys = ("split", "step", "loss", "samples_per_s", "R1")
        print("smoke:", ", ".join(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                                  for k in keys if k in r))
EOF

# ------------------------------------------------------------------ summary
echo
echo "=== the figures"
grep -h -E "^\| (model|tiny|vitb16) " "$OUT/step_eager.log" "$OUT/step_compiled.log" 2>/dev/null | awk '!seen[$0]++'
[ -f "$OUT/loader.log" ] && grep -h -E "^\|" "$OUT/loader.log"
[ -f "$OUT/checkpoint.log" ] && grep -h -E "^\|" "$OUT/checkpoint.log"
grep -h "^smoke:" "$OUT/smoke.log" 2>/dev/null
echo
echo "=== the parts (logs in $OUT)"
printf '%-22s %-16s %7s   %s\n' part status time log
for line in "${SUMMARY[@]}"; do echo "$line"; done
