#!/bin/bash
# Instructions per request of examples/host_profile.mjs's measured requests, counted by
# valgrind's callgrind (V8's generated code included) through HOST_PROFILE_SYNC. Repeatable
# to about 0.1 % where CPU time on this shared VM moves by 20 %: decide A/B with it, e.g.
#
#   HOST_PROFILE_COLD=1 examples/host_icount.sh hs256 2000 target/claimguard.wasm
#
# Usage: host_icount.sh ALG REQUESTS MODULE.wasm (other HOST_PROFILE_* settings from the
# environment). Needs valgrind and node; about half a minute per run.
set -euo pipefail
alg=$1 n=$2 module=$3
here=$(cd "$(dirname "$0")" && pwd)
inputs=${HOST_PROFILE_INPUTS:-$here/../target/vm-profile-inputs.json}
# The module uses relaxed SIMD: a flag before Node 22.
relaxed=$(node --experimental-wasm-relaxed-simd -e 0 2>/dev/null && echo --experimental-wasm-relaxed-simd || true)
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
HOST_PROFILE_SYNC=$d HOST_PROFILE_ALG=$alg HOST_PROFILE_REQUESTS=$n \
  valgrind --tool=callgrind --smc-check=all-non-file --instr-atstart=no --callgrind-out-file="$d/cg.%p" \
  node --no-warnings --single-threaded $relaxed "$here/host_profile.mjs" "$module" < "$inputs" > "$d/out" 2> "$d/err" &
pid=$!
until [ -e "$d/ready" ]; do
  sleep 0.5
  kill -0 $pid 2>/dev/null || { tail "$d/err" >&2; exit 1; }
done
# valgrind runs node in its own process (the one `$!` names).
callgrind_control --instr=on $pid > /dev/null 2>&1
callgrind_control --zero $pid > /dev/null 2>&1
touch "$d/go"
until [ -e "$d/done" ]; do sleep 0.5; done
callgrind_control --dump $pid > /dev/null 2>&1
callgrind_control --instr=off $pid > /dev/null 2>&1
touch "$d/exit"
wait $pid
ir=$(awk '/^summary:/ {print $2}' "$d"/cg.*.1)
echo "$(basename "$module") $alg: $((ir / n)) instructions per request; $(head -1 "$d/out")"
