#!/usr/bin/env bash
# The prepared check for a GPU machine (one H200: JAX with CUDA, PyTorch, torchvision,
# TensorBoard; no TensorFlow, TFDS, ml_collections or CLU): one command of about 8 minutes.
#
# 1. experiments/benchmarks/gpu.py: ResNet-50 bf16 at 224 px, batch 256, our step against
#    torchvision (eager AMP, cuDNN autotuner on; and torch.compile), MFU from the counted FLOPs;
# 2. experiments/benchmarks/step.py: the airbench net of the speed preset, full loop against the
#    bare step at 1 and 8 steps per dispatch;
# 3. launch.py with configs/resnet.py:fashion_mnist_speed end to end, twice: the second run
#    reads the compiled programs from the persistent cache (timing.json, run twice);
# 4. experiments/benchmarks/input_pipeline.py: ImageNet-size JPEGs decoded by Grain workers on every host
#    core; ResNet-50 bf16 at 224 px (batch 256) fed from them vs from one batch on the device;
# 5. (only when named) experiments/benchmarks/compile_time.py: seconds to compile the train step of the
#    speed preset, ResNet-50 at 224 px (batch 256) and the ViT-Ti/4 preset (table in log.txt).
# Every step runs without TensorFlow. Results land in $OUT (the device tool brings back 8
# files: three benchmark JSONs, speed.txt, two timing.json, log.txt and speed_logs.txt).
# Arguments name the steps to run (gpu step speed input compile); none: the first four.
#
# Prepare here, once per session (ignored folders, carried to the machine):
#   experiments/gpu_check.sh --prepare
# Run there (the device tool):
#   command: bash experiments/gpu_check.sh   carry: [".whl", ".data"]   timeout_s: 580
# Smoke test on a CPU (tiny sizes, same plumbing): GPU_CHECK_SMOKE=1 bash experiments/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
  grep -qx '/.data/' .git/info/exclude || echo '/.data/' >>.git/info/exclude
  pins=$(grep -iE '^(ml_collections|clu|grain|portpicker|array[-_]record|cloudpickle)==' constraints.txt)
  # shellcheck disable=SC2086  # One argument per pin.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl $pins
  mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
  python3 -m experiments.benchmarks.input_pipeline --save_photos=.data/photos.npz  # No scikit-image there.
  du -sh .whl .data
  exit 0
fi

export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
if [[ -d .whl && -z "${GPU_CHECK_SMOKE:-}" ]]; then  # Python 3.12 wheels.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
if [[ -d .data/fashion-mnist && ! -d /usr/share/datasets/fashion-mnist ]]; then
  mkdir -p /usr/share/datasets && cp -r .data/fashion-mnist /usr/share/datasets/
fi
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
python3 -c "import jax; print(jax.__version__, jax.devices())"
# The machine's own JAX is used (jaxlib cannot be carried there): stop at once if the project
# does not support it.
python3 - <<'PY' || exit 1
import re, sys
import jax
low, high = re.search(r'"jax>=([\d.]+),<([\d.]+)"', open("pyproject.toml").read()).groups()
version = tuple(int(p) for p in jax.__version__.split(".")[:3])
if not tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split("."))):
    sys.exit(f"gpu_check.sh: this machine's JAX {jax.__version__} is outside the project's "
             f"range >={low},<{high} (pyproject.toml): install a JAX in that range.")
PY

if [[ -n "${GPU_CHECK_SMOKE:-}" ]]; then  # Tiny sizes: checks the plumbing on a CPU.
  GPU_ARGS=(--model=resnet8 --image_size=32 --batch_size=8 --steps=2 --warmup=1
            --num_classes=10 --notorch_compile)
  STEP_ARGS=(--steps=4 --steps_per_dispatch=1,2)
  SPEED_ARGS=(--config.training.num_train_steps=8 --config.dataset.train_size=2048)
  INPUT_ARGS=(--images=48 --image_size=32 --model=resnet8 --width=4 --batch_size=8 --steps=2
              --worker_batches=2 --threads=2)
  COMPILE_ARGS=(--cases=resnet:tiny@28x1 --batch_size=8)
else
  GPU_ARGS=(--steps=30 --warmup=5)
  STEP_ARGS=(--steps=200 --steps_per_dispatch=1,8)
  SPEED_ARGS=()
  INPUT_ARGS=(--model=resnet50 --dtype=bfloat16 --batch_size=256 --steps=10 --worker_batches=12)
  COMPILE_ARGS=(--cases=resnet:fashion_mnist_speed@28x1,resnet:imagenet@224x3,vit:fashion_mnist@28x1
                --batch_size=256)
fi
PHOTOS_ARGS=()
[[ -f .data/photos.npz ]] && PHOTOS_ARGS=(--photos=.data/photos.npz)
STEPS="${*:-gpu step speed input}"

status=0
if [[ " $STEPS " == *" gpu "* ]]; then
  python3 -m experiments.benchmarks.gpu "${GPU_ARGS[@]}" --out="$OUT/bench_gpu.json" \
    2>&1 | tee -a "$OUT/log.txt" || status=1
fi
if [[ " $STEPS " == *" step "* ]]; then
  python3 -m experiments.benchmarks.step --config=configs/resnet.py:fashion_mnist_speed \
    "${STEP_ARGS[@]}" --out="$OUT/bench_step_airbench.json" \
    2>&1 | tee -a "$OUT/log.txt" || status=1
fi
if [[ " $STEPS " == *" compile "* ]]; then
  python3 -m experiments.benchmarks.compile_time "${COMPILE_ARGS[@]}" --out=/tmp/bench_compile.json \
    2>&1 | tee -a "$OUT/log.txt" || status=1
fi
if [[ " $STEPS " == *" input "* ]]; then
  python3 -m experiments.benchmarks.input_pipeline "${INPUT_ARGS[@]}" "${PHOTOS_ARGS[@]}" --sources=folder \
    --out="$OUT/bench_input.json" 2>&1 | tee -a "$OUT/log.txt" || status=1
fi
export JAX_COMPILATION_CACHE_DIR=/tmp/gpu_check_cache
for run in 1 2; do
  [[ " $STEPS " == *" speed "* ]] || break
  start=$(date +%s.%N)
  python3 launch.py --config=configs/resnet.py:fashion_mnist_speed \
    --workdir="/tmp/gpu_check_speed_$run" "${SPEED_ARGS[@]}" >"/tmp/speed_$run.log" 2>&1 \
    || { status=1; tail -20 "/tmp/speed_$run.log"; }
  cat "/tmp/speed_$run.log" >>"$OUT/speed_logs.txt"
  end=$(date +%s.%N)
  python3 - "$run" "$start" "$end" <<'PY' | tee -a "$OUT/speed.txt"
import json, sys
run, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
workdir = f"/tmp/gpu_check_speed_{run}"
timing = json.load(open(f"{workdir}/timing.json"))
results = json.load(open(f"{workdir}/results.json"))
print(f"speed preset run {run}: wall {end - start:.1f} s, compile {timing['compile_s']:.1f} s, "
      f"test accuracy {100 * results['test/accuracy']:.2f}%")
PY
  cp "/tmp/gpu_check_speed_$run/timing.json" "$OUT/speed_timing_$run.json" 2>/dev/null
done
exit $status
