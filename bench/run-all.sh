#!/usr/bin/env bash
# Runs every benchmark of Quilt Mesh in sequence, on release builds, and writes the
# figures with the date, the machine and the method to docs/benchmarks.md.
# Needs root (the benchmarks build hosts from network namespaces) and iperf3.
#   bench/run-all.sh            # writes docs/benchmarks.md
#   bench/run-all.sh OUT.md     # writes elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/benchmarks.md}
[ "$(id -u)" = 0 ] || { echo "run-all: needs root (network namespaces)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "run-all: needs iperf3 (apt-get install -y iperf3)" >&2; exit 1; }

echo "run-all: building release binaries"
cargo build --release --workspace --bins --quiet
bin=target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # run NAME COMMAND...: prints and keeps the output of one benchmark
  local name=$1; shift
  echo "run-all: $name"
  "$@" 2>&1 | tee "$work/$name.txt"
}

run runtime   "$bin/quiltctl" bench runtime --bin-dir "$bin"
run control   "$bin/quiltctl" bench control --bin-dir "$bin"
run cni       "$bin/quiltctl" bench cni --bin-dir "$bin"
run convergence "$bin/quiltctl" bench convergence --bin-dir "$bin"
run dataplane "$bin/quiltctl" bench dataplane --bin-dir "$bin"
lab20() { # a 20-host lab: time to full mesh and the daemons' memory, then down
  "$bin/quiltctl" lab up --name rss20 --nodes 20 --bin-dir "$bin" && "$bin/quiltctl" lab down --name rss20 --remove-logs
}
run lab20 lab20

section() { # section FILE: the figure lines of a benchmark's output
  grep -vE '^\s*(Compiling|Finished|Running|Starting|Blocking|running [0-9]+ test|test result|PASS|SKIP|Summary|Nextest run ID|START|test [a-z_]+ \.\.\.|binaries:|-+$)|^\s*─+\s*$|^\[ *[0-9.]+s\]' "$1" | cat -s || true
}

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
{
cat <<HEAD
# Benchmarks

Figures from \`bench/run-all.sh\` on $(date -u +%Y-%m-%d) ($(date -u +%H:%M) UTC): $(nproc) cores ($cpu),
$(free -g | awk '/Mem:/{print $2}') GiB of memory, Linux $(uname -r), release builds. The machine is shared and
noisy; every figure is compared with a baseline measured in the same run, and each
benchmark prints its target beside it. Run \`sudo bench/run-all.sh\` to measure again.

## Route programming (quilt-runtime)

Method: \`quiltctl bench runtime\` makes fresh network namespaces with a real \`vxlan100\` and
programs 10,000 routes \`10.X.Y.0/24 via 10.X.Y.0 dev vxlan100 onlink\`: first with
\`ip -batch\` (nexthop objects, then per-route onlink gateways) as the baseline, then
through the gRPC API with \`InjectRoutes\` (batches of 500), then with single
\`InjectRoute\` calls from 16 concurrent callers (the runtime coalesces them), then 2,000
single calls one at a time for latency, and reads the runtime's RSS with every route in
place. The client runs on one thread in its own namespace; as the anchor for latency it
also times the same connection's round trip for an RPC that does no work (a health
check), so what the runtime adds per call is the difference. Targets: >= 10,000 routes/s
through the API, p50 < 200 us per call, RSS < 15 MB.

\`\`\`
$(section "$work/runtime.txt")
\`\`\`

## Control plane (quilt-mesh-control)

Method: \`quiltctl bench control\` runs the release server as a child process on loopback over
a fresh SQLite database and calls it through \`ControlClient\` (the client the agent uses):
1,000 registrations at concurrency 50, heartbeats for 3 s at concurrency 50, 1,000 open
watch streams and one change (time from the change to each watcher reading it), and the
server's RSS with 1,000 nodes and 1,000 watchers. Targets: >= 2,000 registrations/s,
>= 10,000 heartbeats/s, fan-out p99 < 100 ms, RSS < 50 MB.

\`\`\`
$(section "$work/control.txt")
\`\`\`

## Container attach through the CNI plugin (quilt-cni)

Method: \`quiltctl bench cni\`: a host namespace running the runtime; 200 containers
(namespaces) attached and
then detached one at a time by executing the \`quilt-cni\` binary with the CNI
environment and config on stdin, as a container engine does (each call also pays for
\`ip netns exec\`). Target: p50 < 20 ms per ADD including process start.

\`\`\`
$(section "$work/cni.txt")
\`\`\`

## Convergence (the lab)

Method: a lab of hosts and containers; a new host's agent is started, and the time is
taken from that start to the first successful ping from every existing container to a
container on the new host; 10 runs. Target: p50 < 300 ms, p99 < 1 s (the original design
polled every 5 s).

\`\`\`
$(section "$work/convergence.txt")
\`\`\`

## A 20-host lab: daemon memory and time to full mesh

Method: \`quiltctl lab up --nodes 20\` (20 hosts, one container each, release binaries),
then \`lab down\`. Memory is each daemon's RSS (VmRSS) once the mesh is full. Targets:
the runtime < 15 MB with 10,000 routes (above), the control plane < 50 MB with 1,000 nodes.

\`\`\`
$(grep -E 'memory|full mesh|pairs answer|time from start' "$work/lab20.txt" || true)
\`\`\`

## Data plane (the lab)

Method: iperf3 from a container on host 1 to a container on host 2 across the overlay,
and host 1 to host 2 on the underlay, in the same run, as a ratio; ping RTT overlay vs
underlay. The kernel's own VXLAN path measured about 0.67 of the underlay's throughput
on this machine; the mesh should add nothing to that.

\`\`\`
$(section "$work/dataplane.txt")
\`\`\`
HEAD
} > "$out"
echo "run-all: wrote $out"
