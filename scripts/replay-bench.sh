#!/bin/bash
# replay-bench.sh BINARY... -- runs `flowrun replay` and `flowrun run` of
# examples/kv/flow.yaml over the same input with each binary in turn,
# alternating them (A B A B ...), each time on a fresh store, and prints
# one line per run: wall and CPU (user + system) seconds, peak RSS
# (ru_maxrss, as /usr/bin/time -v reports it), and the peaks of its two
# parts sampled from /proc every 20 ms: private memory (RssAnon) and the
# mapped files (RssFile, mostly the flowrun binary itself), plus a digest
# of the output so that builds can be checked to print the same bytes.
#
# Environment: INPUT (default /tmp/1m100.jsonl, generated when missing:
# 1,000,000 puts of 100-byte values over 100,000 keys), ROUNDS (default 3),
# MODES (default "replay run").
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
INPUT=${INPUT:-/tmp/1m100.jsonl}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-replay run}
FLOW=$(cd "$(dirname "$0")/.." && pwd)/examples/kv/flow.yaml
if [ ! -e "$INPUT" ]; then
	awk 'BEGIN { srand(1); v = sprintf("%100s", ""); gsub(/ /, "x", v)
		for (i = 0; i < 1000000; i++)
			printf "{\"data\":\"%s\",\"meta\":{\"kv\":{\"put\":\"k%d\"},\"correlation\":%d}}\n", v, int(rand() * 100000), i }' > "$INPUT"
fi

one() { # BINARY MODE
	local d t pid anon=0 file=0 a f
	d=$(mktemp -d)
	cp "$FLOW" "$d/flow.yaml"
	if [ "$2" = replay ]; then
		/usr/bin/time -f "%e %U %S %M" -o "$d/time" "$1" replay -q "$d/flow.yaml" "$INPUT" > "$d/out" 2> "$d/err" &
	else
		/usr/bin/time -f "%e %U %S %M" -o "$d/time" "$1" run "$d/flow.yaml" < "$INPUT" > "$d/out" 2> "$d/err" &
	fi
	t=$!
	sleep 0.05
	pid=$(pgrep -P "$t" | head -1 || true)
	while [ -n "$pid" ] && [ -e "/proc/$pid/status" ]; do
		a=$(awk '/^RssAnon/ { print $2 }' "/proc/$pid/status" 2> /dev/null || true)
		f=$(awk '/^RssFile/ { print $2 }' "/proc/$pid/status" 2> /dev/null || true)
		[ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
		[ -n "$f" ] && [ "$f" -gt "$file" ] && file=$f
		sleep 0.02
	done
	wait "$t"
	read -r wall user sys maxrss < "$d/time"
	printf '%s %s wall=%s cpu=%.2f maxrss=%dM anon=%dM file=%dM out=%s\n' "$1" "$2" "$wall" \
		"$(echo "$user + $sys" | bc)" $((maxrss / 1024)) $((anon / 1024)) $((file / 1024)) "$(md5sum < "$d/out" | cut -c1-8)"
	rm -rf "$d"
}

echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg) input $INPUT"
for _ in $(seq "$ROUNDS"); do
	for mode in $MODES; do
		for bin in "$@"; do
			one "$bin" "$mode"
		done
	done
done
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
