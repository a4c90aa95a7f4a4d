#!/usr/bin/env bash
# The CUDA path in one run, for a GPU machine lent for minutes: install zest-edge against the machine's torch (missing
# pure-Python pieces from tools/wheelhouse, made here by `make wheelhouse`), build the C++/CUDA extension, run the
# `cuda` tests, then profile MobileNetV2 and ResNet-50 (batch 32, 224 px; full vs ZEST@5 vs last@5 vs head-only;
# torch backend, interleaved rounds, CUDA peak memory) into reports/profile_cuda_*. Each step has its own time budget
# (all together under 8 minutes); a failed step does not stop the others; one summary table at the end.
#
# Usage: tools/gpu_check.sh             on the GPU machine (without a GPU: says so in one line, exits 0)
#        tools/gpu_check.sh --dry-run   anywhere: checks the wheelhouse, the test selection and the command lines
# PYTHON=python3.12 picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
[[ $DRY == 1 && -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
COMMON=(--batch-size 32 --resolution 224 --top-k 5 --weights random --configs full,zest,last,head --backends torch
        --device cuda --steps 20 --warmup 5)
PROFILE_MNV2=(profile --model mobilenet_v2 --ranking reports/profile_cpu_mobilenet_v2_ranking.json "${COMMON[@]}"
              --out reports/profile_cuda_mobilenet_v2)
PROFILE_R50=(profile --model resnet50 --ranking reports/profile_cuda_resnet50_ranking.json "${COMMON[@]}"
             --out reports/profile_cuda_resnet50)
TESTS=(-m pytest -q -m cuda tests/test_cuda.py tests/test_fused.py)
#          name            budget (s)
STEPS=("dependencies 30" "build 180" "cuda-tests 60" "profile-mobilenet_v2 100" "profile-resnet50 100")

if [[ $DRY == 1 ]]; then
  "$PY" - "${STEPS[@]}" -- "${PROFILE_MNV2[@]}" -- "${PROFILE_R50[@]}" <<'EOF' || exit 1
"""Dry run: the pieces the GPU run depends on, checked without a GPU."""
import re, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
cut = [i for i, a in enumerate(args) if a == "--"]
steps, commands = args[:cut[0]], [args[cut[0] + 1:cut[1]], args[cut[1] + 1:]]
problems = []
pins = lambda path: dict(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", l).groups() for l in Path(path).read_text().splitlines()
                         if re.match(r"[A-Za-z0-9_.-]+==", l))
gpu, ours = pins("tools/gpu_requirements.txt"), {k.lower(): v for k, v in pins("requirements.txt").items()}
own = {l.split("==")[0] for l in Path("tools/gpu_requirements.txt").read_text().splitlines() if "# pairs with" in l}
problems += [f"tools/gpu_requirements.txt pins {k}=={v}, requirements.txt {ours[k.lower()]}"
             for k, v in gpu.items() if k.lower() in ours and ours[k.lower()] != v and k not in own]
house = Path("tools/wheelhouse")
if house.is_dir():
    wheels = [w.name.lower() for w in house.glob("*.whl")]
    missing = [f"{k}=={v}" for k, v in gpu.items()
               if not any(w.startswith(f"{k.lower().replace('-', '_')}-{v}-") for w in wheels)]
    problems += [f"tools/wheelhouse lacks {m} (make wheelhouse)" for m in missing]
    print(f"wheelhouse: {len(wheels)} wheels, {sum(w.stat().st_size for w in house.glob('*.whl')) >> 20} MB")
else:
    print("wheelhouse: not built here (make wheelhouse GPU_PY=<the GPU machine's Python>, before carrying the tree)")
collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "tests/test_cuda.py"],
                           capture_output=True, text=True)
count = sum(1 for l in collected.stdout.splitlines() if "::" in l)
if collected.returncode != 0 or count < 4:
    problems.append(f"pytest -m cuda collects {count} tests (rc {collected.returncode}): {collected.stdout[-300:]}")
print(f"cuda tests: {count} collected")
from zest_edge.cli import cli
for command in commands:
    try:
        sub = cli.get_command(None, command[0])
        sub.make_context(command[0], list(command[1:]))
        for flag in ("--ranking",):
            path = command[command.index(flag) + 1]
            if not Path(path).is_file():
                raise ValueError(f"{flag} {path} does not exist")
        print(f"command ok: zest-edge {' '.join(command[:3])} ...")
    except Exception as e:  # click raises UsageError/BadParameter; report each as one line
        problems.append(f"zest-edge {' '.join(command[:3])} ...: {e}")
budget = sum(int(s.split()[1]) for s in steps)
print(f"budgets: {budget} s in all")
if budget > 480:
    problems.append(f"step budgets add up to {budget} s, over 8 minutes")
for p in problems:
    print("problem:", p)
print("dry run:", "ok" if not problems else f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
EOF
  exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no CUDA GPU here (or no torch for $PY): nothing to check; tools/gpu_check.sh --dry-run checks the script"
  exit 0
fi

declare -a ROWS
run_step() {   # run_step NAME BUDGET COMMAND...: time-boxed, logged under reports/gpu_check/, never stops the script
  local name=$1 budget=$2; shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$budget" "$@" > "reports/gpu_check/$name.log" 2>&1
  local rc=$? status=ok
  (( rc == 124 || rc == 137 )) && status="timed out" || { (( rc != 0 )) && status="failed (rc $rc)"; }
  ROWS+=("$(printf '%-24s %-16s %5d s / %3d s' "$name" "$status" $((SECONDS - start)) "$budget")")
}
budget_of() { for s in "${STEPS[@]}"; do [[ ${s%% *} == "$1" ]] && echo "${s##* }"; done; }
mkdir -p reports/gpu_check
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee reports/gpu_check/machine.txt

install_missing() {
  local line name
  while read -r line; do
    [[ $line =~ ^([A-Za-z0-9_.-]+)== ]] || continue
    name=${BASH_REMATCH[1]}
    module=$(case ${name,,} in pyyaml) echo yaml;; pillow) echo PIL;; *) echo "${name,,}";; esac)
    "$PY" -c "import $module" 2>/dev/null && continue
    "$PY" -m pip install -q --no-index --no-deps --find-links tools/wheelhouse "$line" || return 1
  done < tools/gpu_requirements.txt
}
run_step dependencies "$(budget_of dependencies)" bash -c "$(declare -f install_missing); PY=$PY; install_missing"
run_step build "$(budget_of build)" env ZEST_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
run_step cuda-tests "$(budget_of cuda-tests)" "$PY" "${TESTS[@]}"
run_step profile-mobilenet_v2 "$(budget_of profile-mobilenet_v2)" "$PY" -m zest_edge.cli "${PROFILE_MNV2[@]}"
run_step profile-resnet50 "$(budget_of profile-resnet50)" "$PY" -m zest_edge.cli "${PROFILE_R50[@]}"

printf '%s\n' "step                     status           time / budget" "${ROWS[@]}" | tee reports/gpu_check/summary.txt
