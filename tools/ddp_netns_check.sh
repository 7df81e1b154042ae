#!/usr/bin/env bash
# Two "hosts" on one machine: two network namespaces joined by a veth pair, one
# rank in each, talking TCP (Open MPI's tcp BTL, out-of-band over the veth), as
# two machines would. mpirun runs in the first namespace and starts the second
# rank's daemon through a launch agent (the role ssh plays between machines)
# that enters the other namespace. The run must give what the same two ranks
# give on one host (shared memory): the same checkpoint weights.
# Usage: tools/ddp_netns_check.sh [BUILD_DIR]   (root; exit 77 = skipped: no
# permission for network namespaces, no mpirun, no python3)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
[[ $build == /* ]] || build="$PWD/$build"
train="$build/tools/ttq_train"

skip() { echo "ddp_netns_check: skipped: $*"; exit 77; }
[[ -x "$train" ]] || { echo "ddp_netns_check: $train not built" >&2; exit 2; }
command -v mpirun >/dev/null || skip "no mpirun (Debian: openmpi-bin)"
command -v ip >/dev/null || skip "no ip (Debian: iproute2)"
command -v python3 >/dev/null || skip "no python3 (to write the data and compare the checkpoints)"

id=$$
ns_a="ttq_a_$id" ns_b="ttq_b_$id" veth_a="ttqa$id" veth_b="ttqb$id"
addr_a=10.213.0.1 addr_b=10.213.0.2
work=$(mktemp -d)
cleanup() {
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns_a" 2>/dev/null || skip "cannot create network namespaces here"
ip netns add "$ns_b"
ip link add "$veth_a" type veth peer name "$veth_b" || skip "cannot create a veth pair here"
ip link set "$veth_a" netns "$ns_a"
ip link set "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add "$addr_a/24" dev "$veth_a"
ip -n "$ns_b" addr add "$addr_b/24" dev "$veth_b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$veth_a" up
ip -n "$ns_b" link set "$veth_b" up

# The launch agent: mpirun calls it as `agent [options] HOST COMMAND...`, as it would ssh.
cat >"$work/agent" <<EOF
#!/usr/bin/env bash
while [[ \$1 == -* ]]; do shift; done
host=\$1; shift
case \$host in
  $addr_a) ns=$ns_a ;;
  $addr_b) ns=$ns_b ;;
  *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
EOF
chmod +x "$work/agent"

# A tiny MNIST-shaped data set: a bright square at a class-specific place, plus noise.
python3 tools/tiny_mnist.py "$work/data" 7 160 32

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
args=(--model small_densenet --data "mnist:$work/data" --device cpu --epochs 1 --batch 8 --sync-bn
      --dropout 0 --lr 0.01 --limit-train 32 --limit-val 16 --limit-test 8 --seed 5 --workers 1 --quiet)
# Waiting ranks yield the CPU instead of polling: this check runs beside other tests.
mpi=(--oversubscribe --bind-to none --mca mpi_yield_when_idle 1)

echo "ddp_netns_check: 2 ranks on one host (shared memory)"
mpirun "${mpi[@]}" -np 2 "$train" "${args[@]}" --out "$work/local" >"$work/local.log" 2>&1 ||
  { cat "$work/local.log"; exit 1; }

echo "ddp_netns_check: 2 ranks in namespaces $ns_a ($addr_a) and $ns_b ($addr_b) over TCP"
ip netns exec "$ns_a" mpirun "${mpi[@]}" -np 2 --host "$addr_a:1,$addr_b:1" \
  --mca plm_rsh_agent "$work/agent" --mca btl tcp,self --mca btl_tcp_if_include 10.213.0.0/24 \
  --mca oob_tcp_if_include 10.213.0.0/24 -x OMP_NUM_THREADS -x OMP_WAIT_POLICY \
  "$train" "${args[@]}" --out "$work/netns" >"$work/netns.log" 2>&1 ||
  { cat "$work/netns.log"; exit 1; }
grep -q "data parallel: 2 ranks" "$work/netns.log" || { cat "$work/netns.log"; exit 1; }

# The same weights (and optimiser state): every float tensor of the two last checkpoints.
python3 - "$work/local/last.safetensors" "$work/netns/last.safetensors" <<'EOF'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
worst = 0.0
for k, x in a.items():
    m = len(x) // 4
    xs, ys = struct.unpack(f"<{m}f", x), struct.unpack(f"<{m}f", b[k])
    scale = max(1e-2, max(abs(v) for v in xs))
    worst = max(worst, max(abs(p - q) for p, q in zip(xs, ys)) / scale)
print(f"ddp_netns_check: {len(a)} tensors, largest difference {worst:.3g} (relative, at least 1e-2 scale)")
sys.exit(0 if worst <= 1e-6 else 1)
EOF
echo "ddp_netns_check: OK"
