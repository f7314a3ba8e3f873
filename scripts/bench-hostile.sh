#!/usr/bin/env bash
# Peak memory under hostile NIfTI files: `cggm validate` on each file of a hostile corpus, then
# `cggm serve` receiving ROUNDS x 6 hostile uploads at once. Prints one line per measurement and a
# JSON summary.
#
#   scripts/bench-hostile.sh [--cggm target/debug/cggm] [--rounds 4] [--out /tmp/cggm-hostile]
#
# The corpus: a gzip bomb (~3 MB claiming 1500^3 uint8), a header claiming 20000^3 with no data, a
# 1024^3 constant volume (all of its voxel bytes present), a 400^3 volume cut short, a 64^3 volume
# followed by 64 MiB of zeros (a bomb behind a small header), and a file whose gzip stream is
# corrupt. Peak memory is the kernel's high-water mark (VmHWM / ru_maxrss), not a sample.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cggm="$root/target/debug/cggm"
rounds=4
out=/tmp/cggm-hostile
while [ $# -gt 0 ]; do
  case "$1" in
    --cggm) cggm="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -x "$cggm" ] || { echo "no cggm binary at $cggm: build it (cargo build -p cggm-server) or pass --cggm" >&2; exit 1; }
python="${CGGM_PYTHON:-python3}"
# Error backtraces would make a failing `cggm validate` read the binary's debug information
# (hundreds of MB with a debug build): measure what a user sees.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

rm -rf "$out"
mkdir -p "$out/corpus"
"$python" - "$out/corpus" <<'EOF'
import gzip, os, struct, sys, zlib
out = sys.argv[1]

def header(dims, datatype=2, bitpix=8):
    h = bytearray(352)
    h[0:4] = struct.pack("<i", 348)
    h[40:56] = struct.pack("<8h", 3, *dims, 1, 1, 1, 1)
    h[70:74] = struct.pack("<hh", datatype, bitpix)
    h[76:92] = struct.pack("<4f", 1, 1, 1, 1)
    h[108:112] = struct.pack("<f", 352.0)
    h[112:116] = struct.pack("<f", 1.0)  # scl_slope
    h[344:348] = b"n+1\0"
    return bytes(h)

def gz_stream(path, head, zeros):
    # Streams `zeros` zero bytes after the header through one gzip member, 16 MiB at a time.
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(16 << 20)
    with open(path, "wb") as f:
        f.write(c.compress(head))
        left = zeros
        while left > 0:
            n = min(left, len(chunk))
            f.write(c.compress(chunk[:n]))
            left -= n
        f.write(c.flush())

gz_stream(f"{out}/bomb_1500.nii.gz", header((1500, 1500, 1500)), 3 << 30)
gz_stream(f"{out}/liar_20000.nii.gz", header((20000, 20000, 20000)), 0)
gz_stream(f"{out}/constant_1024.nii.gz", header((1024, 1024, 1024)), 1 << 30)
gz_stream(f"{out}/tailbomb_64.nii.gz", header((64, 64, 64)), 64 << 20)
full = header((400, 400, 400)) + bytes(400 * 400 * 400)
with open(f"{out}/truncated_400.nii.gz", "wb") as f:
    f.write(gzip.compress(full, 1)[: 200_000])
good = gzip.compress(header((32, 32, 16)) + bytes(32 * 32 * 16), 1)
bad = bytearray(good)
for i in range(40, min(len(bad), 400)):
    bad[i] ^= 0x5A
with open(f"{out}/corrupt_32.nii.gz", "wb") as f:
    f.write(bytes(bad))
EOF
ls -l "$out/corpus" | awk 'NR>1 {printf "corpus: %-24s %10d bytes\n", $9, $5}'

peak_kb() { # command...: runs it, prints its peak RSS in kB (output discarded)
  /usr/bin/time -f "%M" -o "$out/time.txt" "$@" >/dev/null 2>&1 || true
  tail -1 "$out/time.txt"
}

summary="$out/summary.json"
echo "{" > "$summary"
mkdir -p "$out/empty"
base_empty=$(peak_kb "$cggm" validate "$out/empty")
echo "cggm validate on an empty folder (nothing read): peak $((base_empty / 1024)) MB"
echo "  \"validate_empty_peak_mb\": $((base_empty / 1024))," >> "$summary"
for file in "$out"/corpus/*.nii.gz; do
  name="$(basename "$file" .nii.gz)"
  case_dir="$out/datasets/$name/BraTS2021_00001"
  mkdir -p "$case_dir"
  for m in flair t1 t1ce t2 seg; do ln -sf "$file" "$case_dir/BraTS2021_00001_$m.nii.gz"; done
  start=$(date +%s.%N)
  kb=$(peak_kb "$cggm" validate "$out/datasets/$name")
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  line="cggm validate $name: peak $((kb / 1024)) MB, ${secs} s"
  echo "  \"validate_${name}_peak_mb\": $((kb / 1024))," >> "$summary"
  echo "$line"
done

# The server: idle, then ROUNDS x 6 hostile uploads at once.
"$cggm" serve --bind 127.0.0.1:0 --no-demo --data-dir "$out/server" 2> "$out/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  address=$(grep -o 'open http://[^/]*' "$out/server.log" | head -1 | sed 's|open http://||' || true)
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "the server did not start:" >&2; cat "$out/server.log" >&2; exit 1; }
hwm() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$server/status"; }
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$server/status"; }
anon() { awk '/RssAnon/ {print int($2 / 1024)}' "/proc/$server/status"; }
idle=$(hwm)
echo "server idle: peak $idle MB (anonymous $(anon) MB; the rest is shared library pages: the server links no libtorch)"
start=$(date +%s.%N)
pids=()
count=0
for round in $(seq 1 "$rounds"); do
  for file in "$out"/corpus/*.nii.gz; do
    curl -s -o "$out/upload-$round-$(basename "$file").json" -w '%{http_code}\n' \
      -H 'X-CGGM-Request: 1' -F "files=@$file;filename=H_flair.nii.gz" \
      "http://$address/api/studies" >> "$out/statuses.txt" &
    pids+=($!)
    count=$((count + 1))
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done
secs=$(echo "$(date +%s.%N) - $start" | bc)
peak=$(hwm)
statuses=$(sort "$out/statuses.txt" | uniq -c | awk '{printf "%s x %s, ", $1, $2}')
rate=$(echo "scale=1; $count / $secs" | bc)
echo "server, $count hostile uploads at once: ${secs} s ($rate uploads/s), statuses: ${statuses%, }"
echo "server peak memory: $peak MB (idle peak $idle MB, now $(rss) MB)"
{
  echo "  \"server_idle_peak_mb\": $idle,"
  echo "  \"server_uploads\": $count,"
  echo "  \"server_upload_seconds\": $secs,"
  echo "  \"server_peak_mb\": $peak"
  echo "}"
} >> "$summary"
cat "$summary"
