#!/usr/bin/env bash
# The GPU check (docs/architecture.md, "The GPU check"): one prepared run on a
# GPU machine (an H100 / H200 with the CUDA toolkit, CMake, Ninja and PyTorch,
# maybe without GoogleTest, Google Benchmark, a BLAS or a network). It
#   1. probes the machine (nvidia-smi, nvcc, where cuDNN / cuBLAS / cudart are,
#      PyTorch), and picks the binaries: the bundle made elsewhere by
#      tools/gpu_build.sh ($GPU_STAGE, build-gpu/stage, or the archive
#      build-gpu/carry/ttq-gpu-bundle.tar.xz), else a build made here when the
#      probe finds everything a build needs;
#   2. runs the CUDA cases of the test programs (gtest filter *cuda*, *Cuda*,
#      *CUDA*; the test_cuda_* programs whole);
#   3. runs the benchmarks (short min-time; filter $GPU_CHECK_BENCH_FILTER,
#      default "cuda") and the PyTorch peer scripts in bench/peers/ (the runs
#      each names in a "gpu_check: ARGS" line);
#   4. writes OUT_DIR/gpu_report.md, OUT_DIR/gpu_report.json and the full log
#      OUT_DIR/gpu_check.log, and prints a summary table last.
# Every step has a time limit; the whole run stays under $GPU_CHECK_BUDGET_S
# seconds (default 420). Exit status: 0 when every test ran passed, 1 otherwise.
#
# Usage: tools/gpu_check.sh [OUT_DIR]        (default $OUT, else gpu-check-out)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/ttq-gpu-check.XXXXXX)
log=$out/gpu_check.log
: >"$log"
start=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-420}
bench_filter=${GPU_CHECK_BENCH_FILTER:-cuda}

say() { echo "gpu_check: $*" | tee -a "$log"; }
elapsed() { echo $(($(date +%s) - start)); }
remaining() { echo $((budget - $(elapsed))); }
# Seconds a step may take: its own cap, but never past the budget (minus a reserve for the report).
allow() {
  local cap=$1 left
  left=$(($(remaining) - 20))
  ((left < cap)) && cap=$left
  ((cap < 1)) && cap=1
  echo "$cap"
}

# ---- 1. probe ------------------------------------------------------------------------
probe=$work/probe.txt
{
  echo "## nvidia-smi"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
  echo "## nvcc"
  nvcc --version 2>&1 | tail -2 || echo "no nvcc"
  echo "## tools"
  for t in cmake ninja python3 gcc; do printf '%s: %s\n' "$t" "$(command -v $t >/dev/null && $t --version 2>&1 | head -1 || echo missing)"; done
  echo "## host"
  echo "cpus: $(nproc), memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel: $(uname -r)"
} >"$probe" 2>&1
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
gpu_name=${gpu_name:-none}

# CUDA libraries: the toolkit's, then those inside Python's nvidia-* packages.
site_dirs=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
cudnn_py=$(python3 -c 'import nvidia.cudnn as m, os; print(os.path.dirname(m.__file__) if getattr(m, "__file__", None) else list(m.__path__)[0])' 2>/dev/null)
search_dirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib ${cudnn_py:+$cudnn_py/lib} $site_dirs; do
  [[ -d $d ]] && search_dirs+=("$d")
done
find_lib() {  # first directory holding a file named $1*
  local f
  f=$(find "${search_dirs[@]}" -maxdepth 5 -name "$1*" \( -type f -o -type l \) 2>/dev/null | sort | head -1)
  [[ -n $f ]] && dirname "$f"
}
declare -A libdir=()
for l in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libcudnn_cnn.so.9 libcudnn_ops.so.9; do
  libdir[$l]=$(find_lib "$l")
done
{
  echo "## CUDA libraries"
  for l in "${!libdir[@]}"; do echo "$l: ${libdir[$l]:-NOT FOUND}"; done | sort
  echo "## PyTorch"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>&1 | tail -1
} >>"$probe"

# ---- choose the binaries ---------------------------------------------------------------
stage=${GPU_STAGE:-$root/build-gpu/stage}
bundle=$root/build-gpu/carry/ttq-gpu-bundle.tar.xz
if [[ -z ${GPU_STAGE:-} && ! -d $stage/bin && -f $bundle ]]; then
  stage=$work/stage
  mkdir -p "$stage"
  if command -v xz >/dev/null; then
    xz -dc "$bundle" | tar -C "$stage" -xf -
  else
    python3 -c 'import sys, tarfile
t = tarfile.open(sys.argv[1], "r:xz")
try:
    t.extractall(sys.argv[2], filter="fully_trusted")
except TypeError:  # Python before 3.12
    t.extractall(sys.argv[2])' "$bundle" "$stage"
  fi
  say "unpacked $(basename "$bundle") ($(du -sh "$stage" | cut -f1))"
fi
# Tests, benchmarks and peer scripts read the seed fixtures from this copy of the
# repository: the path compiled into a carried build is the build machine's.
export TTQ_SEED_DIR=$root/tests/fixtures/seed
path=""
if [[ -d $stage/bin ]] && compgen -G "$stage/bin/test_*" >/dev/null; then
  path="carried"
  bindir=$stage/bin
else
  # Build here only when everything the build needs is present.
  missing=()
  for t in cmake ninja nvcc; do command -v $t >/dev/null || missing+=("$t"); done
  for h in gtest/gtest.h benchmark/benchmark.h cblas.h stb/stb_image.h nlohmann/json.hpp CLI/CLI.hpp zlib.h; do
    [[ -n $(find /usr/include /usr/local/include -maxdepth 3 -path "*$h" 2>/dev/null | head -1) ]] || missing+=("$h")
  done
  [[ -n ${libdir[libcudnn.so.9]} ]] || missing+=("cuDNN")
  if ((${#missing[@]} == 0)); then
    path="built"
    cudnn_root=$(dirname "${libdir[libcudnn.so.9]}")
    say "no carried bundle: building in $root/build-gpu-local (CUDNN_ROOT=$cudnn_root)"
    timeout "$(allow 300)" bash -c "cmake -S '$root' -B '$root/build-gpu-local' -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DTTQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCUDNN_ROOT='$cudnn_root' && ninja -C '$root/build-gpu-local'" \
      >>"$log" 2>&1 || say "the build failed (see $log)"
    bindir=$work/bin
    mkdir -p "$bindir"
    cp "$root"/build-gpu-local/tests/test_* "$root"/build-gpu-local/bench/bench_* "$bindir"/ 2>/dev/null
  else
    path="none"
    bindir=$work/bin
    mkdir -p "$bindir"
    say "no carried bundle ($stage) and no local build possible: missing ${missing[*]}"
  fi
fi

ld_path=""
[[ -d $stage/lib && $path == carried ]] && ld_path=$stage/lib
for l in "${!libdir[@]}"; do
  d=${libdir[$l]}
  [[ -n $d && :$ld_path: != *:$d:* ]] && ld_path=${ld_path:+$ld_path:}$d
done
export LD_LIBRARY_PATH=$ld_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export TTQ_ALLOW_TF32=0
{
  echo "## binaries ($path): $bindir"
  [[ -f $stage/MANIFEST.txt && $path == carried ]] && cat "$stage/MANIFEST.txt"
  echo "## LD_LIBRARY_PATH"
  echo "$LD_LIBRARY_PATH"
  echo "## seed fixtures (TTQ_SEED_DIR)"
  echo "$TTQ_SEED_DIR: $(find "$TTQ_SEED_DIR" -maxdepth 1 -name '*.safetensors' 2>/dev/null | wc -l) safetensors files"
  echo "## ldd (libraries not found)"
  for f in "$bindir"/*; do
    nf=$(ldd "$f" 2>&1 | grep "not found" | awk '{print $1}' | tr '\n' ' ')
    echo "$(basename "$f"): ${nf:-all found}"
  done
} >>"$probe"
cat "$probe" >>"$log"
say "probe done ($(elapsed) s): GPU $gpu_name, binaries: $path"

# ---- 2. CUDA tests ---------------------------------------------------------------------
tests_dir=$work/tests
mkdir -p "$tests_dir"
for f in "$bindir"/test_*; do
  [[ -x $f ]] || continue
  name=$(basename "$f")
  filter='*cuda*:*Cuda*:*CUDA*'
  [[ $name == test_cuda_* ]] && filter='*'
  t0=$(date +%s)
  say "test $name (filter $filter)"
  (cd "$work" && timeout "$(allow 240)" "$f" --gtest_filter="$filter" --gtest_brief=0 \
    --gtest_output="json:$tests_dir/$name.json") >"$tests_dir/$name.out" 2>&1
  rc=$?
  echo "$rc $(($(date +%s) - t0))" >"$tests_dir/$name.rc"
  cat "$tests_dir/$name.out" >>"$log"
  ((rc == 124)) && say "$name timed out"
done

# ---- 3. benchmarks and peers -------------------------------------------------------------
bench_dir=$work/bench
mkdir -p "$bench_dir"
for f in "$bindir"/bench_*; do
  [[ -x $f ]] || continue
  name=$(basename "$f")
  if (($(remaining) < 60)); then
    say "skipping $name: out of time"
    echo "skipped 0" >"$bench_dir/$name.rc"
    continue
  fi
  t0=$(date +%s)
  say "benchmark $name (filter $bench_filter)"
  (cd "$work" && timeout "$(allow 150)" "$f" --benchmark_filter="$bench_filter" --benchmark_min_time=0.05 \
    --benchmark_out="$bench_dir/$name.json" --benchmark_out_format=json) >"$bench_dir/$name.out" 2>&1
  rc=$?
  echo "$rc $(($(date +%s) - t0))" >"$bench_dir/$name.rc"
  cat "$bench_dir/$name.out" >>"$log"
done
# A peer script names the runs it wants in lines "gpu_check: ARGS" (in its
# docstring or a comment); each such line runs `python3 SCRIPT ARGS` from the
# repository root. Scripts without one (reference generators) are listed, not run.
peer_dir=$work/peers
mkdir -p "$peer_dir"
for f in "$root"/bench/peers/*.py; do
  [[ -f $f ]] || continue
  base=$(basename "$f" .py)
  mapfile -t runs < <(sed -n 's/^[#[:space:]]*gpu_check:[[:space:]]*\(.*\)$/\1/p' "$f")
  if ((${#runs[@]} == 0)); then
    echo "not run: the script has no gpu_check line" >"$peer_dir/$base.out"
    echo "not-run 0" >"$peer_dir/$base.rc"
    continue
  fi
  k=0
  for args in "${runs[@]}"; do
    name=$base$( ((k > 0)) && echo ".$k")
    k=$((k + 1))
    if (($(remaining) < 40)); then
      say "skipping peer $name: out of time"
      echo "skipped 0" >"$peer_dir/$name.rc"
      continue
    fi
    t0=$(date +%s)
    say "peer $base $args"
    # shellcheck disable=SC2086  # ARGS are words
    (cd "$root" && TTQ_GPU_CHECK=1 timeout "$(allow 120)" python3 "$f" $args) >"$peer_dir/$name.out" 2>&1
    rc=$?
    echo "$rc $(($(date +%s) - t0))" >"$peer_dir/$name.rc"
    { echo "[$base $args]"; cat "$peer_dir/$name.out"; } >>"$log"
  done
done

# ---- 4. report ---------------------------------------------------------------------------
python3 - "$work" "$out" "$gpu_name" "$path" "$(elapsed)" "$probe" <<'EOF'
import json, os, sys, glob

work, out, gpu, path, seconds, probe = sys.argv[1:7]

def rc_of(p):
    try:
        code, secs = open(p).read().split()
        return code, int(secs)
    except Exception:
        return "missing", 0

def tail(p, n=30):
    try:
        return open(p, errors="replace").read().splitlines()[-n:]
    except Exception:
        return []

tests = []
for rcf in sorted(glob.glob(os.path.join(work, "tests", "*.rc"))):
    name = os.path.basename(rcf)[:-3]
    code, secs = rc_of(rcf)
    entry = {"program": name, "exit_code": code, "seconds": secs, "passed": 0, "failed": 0, "skipped": 0,
             "failures": []}
    jf = os.path.join(work, "tests", name + ".json")
    if os.path.exists(jf):
        try:
            data = json.load(open(jf))
            for suite in data.get("testsuites", []):
                for t in suite.get("testsuite", []):
                    full = suite["name"] + "." + t["name"]
                    if t.get("failures"):
                        entry["failed"] += 1
                        msg = " | ".join(f.get("failure", "").splitlines()[0] for f in t["failures"] if f.get("failure"))
                        entry["failures"].append({"test": full, "message": msg[:400]})
                    elif t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN":
                        entry["skipped"] += 1
                    else:
                        entry["passed"] += 1
        except Exception as e:  # a crash leaves no or partial JSON
            entry["failures"].append({"test": "(report)", "message": "unreadable gtest JSON: %s" % e})
    if code not in ("0",) and not entry["failures"]:
        entry["failures"].append({"test": "(program)", "message": "exit %s; last lines: %s" % (
            code, " / ".join(tail(os.path.join(work, "tests", name + ".out"), 5)))})
        entry["failed"] = max(entry["failed"], 1)
    tests.append(entry)

benches = []
for rcf in sorted(glob.glob(os.path.join(work, "bench", "*.rc"))):
    name = os.path.basename(rcf)[:-3]
    code, secs = rc_of(rcf)
    entry = {"program": name, "exit_code": code, "seconds": secs, "results": []}
    jf = os.path.join(work, "bench", name + ".json")
    if os.path.exists(jf):
        try:
            data = json.load(open(jf))
            entry["context"] = {k: data.get("context", {}).get(k) for k in ("date", "host_name", "num_cpus")}
            for b in data.get("benchmarks", []):
                r = {"name": b.get("name"), "real_time": b.get("real_time"), "time_unit": b.get("time_unit")}
                for k in ("bytes_per_second", "items_per_second"):
                    if k in b:
                        r[k] = b[k]
                for k, v in b.items():  # user counters
                    if k not in r and isinstance(v, (int, float)) and k not in (
                            "iterations", "cpu_time", "repetitions", "repetition_index", "threads",
                            "family_index", "per_family_instance_index"):
                        r[k] = v
                if b.get("error_occurred"):
                    r["error"] = b.get("error_message")
                entry["results"].append(r)
        except Exception as e:
            entry["error"] = "unreadable benchmark JSON: %s" % e
    if code != "0":
        entry["tail"] = tail(os.path.join(work, "bench", name + ".out"), 10)
    benches.append(entry)

peers = []
for rcf in sorted(glob.glob(os.path.join(work, "peers", "*.rc"))):
    name = os.path.basename(rcf)[:-3]
    code, secs = rc_of(rcf)
    peers.append({"script": name, "exit_code": code, "seconds": secs,
                  "output_tail": tail(os.path.join(work, "peers", name + ".out"), 15)})

failed = sum(t["failed"] for t in tests)
report = {
    "gpu": gpu, "binaries": path, "seconds": int(seconds),
    "probe": open(probe, errors="replace").read(),
    "tests": tests, "benchmarks": benches, "peers": peers,
    "summary": {"tests_passed": sum(t["passed"] for t in tests), "tests_failed": failed,
                "tests_skipped": sum(t["skipped"] for t in tests),
                "benchmarks": sum(len(b["results"]) for b in benches)},
}
json.dump(report, open(os.path.join(out, "gpu_report.json"), "w"), indent=1)

def fmt_time(r):
    t = r.get("real_time")
    if t is None:
        return "-"
    return "%.4g %s" % (t, r.get("time_unit", ""))

md = ["# ttq GPU check", "", "GPU: **%s**; binaries: %s; %s s in all." % (gpu, path, seconds), "",
      "## Probe", "", "```", report["probe"].rstrip(), "```", "", "## Tests", "",
      "| program | passed | failed | skipped | exit | seconds |", "| --- | ---: | ---: | ---: | --- | ---: |"]
for t in tests:
    md.append("| %s | %d | %d | %d | %s | %d |" % (t["program"], t["passed"], t["failed"], t["skipped"],
                                                t["exit_code"], t["seconds"]))
fails = [(t["program"], f) for t in tests for f in t["failures"]]
if fails:
    md += ["", "### Failures", ""]
    md += ["- `%s` %s: %s" % (p, f["test"], f["message"].replace("\n", " ")) for p, f in fails]
md += ["", "## Benchmarks", ""]
for b in benches:
    md.append("### %s (exit %s, %d s)" % (b["program"], b["exit_code"], b["seconds"]))
    md.append("")
    if b["results"]:
        md += ["| benchmark | time | GB/s | other |", "| --- | ---: | ---: | --- |"]
        for r in b["results"]:
            gbs = "%.1f" % (r["bytes_per_second"] / 1e9) if "bytes_per_second" in r else "-"
            other = ", ".join("%s=%.4g" % (k, v) for k, v in r.items() if isinstance(v, (int, float))
                              and k not in ("real_time", "bytes_per_second"))
            if r.get("error"):
                other = "ERROR " + str(r["error"])
            md.append("| %s | %s | %s | %s |" % (r["name"], fmt_time(r), gbs, other))
    else:
        md += ["```"] + b.get("tail", ["(no results)"]) + ["```"]
    md.append("")
md += ["## Peers", ""]
for p in peers:
    md += ["### %s (exit %s, %d s)" % (p["script"], p["exit_code"], p["seconds"]), "", "```"] + \
          p["output_tail"] + ["```", ""]
open(os.path.join(out, "gpu_report.md"), "w").write("\n".join(md) + "\n")

# The summary table, printed last.
print()
print("%-28s %7s %7s %8s %6s %6s" % ("test program", "passed", "failed", "skipped", "exit", "secs"))
for t in tests:
    print("%-28s %7d %7d %8d %6s %6d" % (t["program"], t["passed"], t["failed"], t["skipped"], t["exit_code"],
                                          t["seconds"]))
for b in benches:
    print("%-28s %7s %7s %8s %6s %6d" % (b["program"], "%d res" % len(b["results"]), "", "", b["exit_code"],
                                          b["seconds"]))
for p in peers:
    print("%-28s %7s %7s %8s %6s %6d" % ("peer " + p["script"], "", "", "", p["exit_code"], p["seconds"]))
for p, f in fails[:15]:
    print("FAIL %s %s: %s" % (p, f["test"], f["message"][:160]))
print("GPU %s | binaries %s | tests %d passed, %d failed, %d skipped | %d benchmark results | %s s" % (
    gpu, path, report["summary"]["tests_passed"], failed, report["summary"]["tests_skipped"],
    report["summary"]["benchmarks"], seconds))
sys.exit(1 if failed or path == "none" else 0)
EOF
status=$?
rm -rf "$work"
exit $status
