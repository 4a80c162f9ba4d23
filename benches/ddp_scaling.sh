#!/usr/bin/env bash
# Data-parallel scaling on this machine: samples/s of one process against
# two (`mpirun -np 2`, the global batch split over them), each process on
# one CPU thread (WGRAD_NUM_THREADS=1), for the seed's MLP at batch 256 and
# Keras's MNIST convnet at batch 128; prints a Markdown table.
#
#     benches/ddp_scaling.sh            # builds examples/mnist with --features mpi
#
# The one-process run is the plain example (no MPI); samples/s is the best
# epoch of each run (its first warms up); test accuracy after 5 (MLP) and 3
# (convnet) epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features mpi --example mnist >/dev/null 2>&1
bin=target/release/examples/mnist
export WGRAD_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp -d)
# Best "(N samples/s)" of the epoch lines, and the last test accuracy.
rate() { tr '\r' '\n' | grep -aoE 'epoch [0-9]+/[0-9]+: .*\(([0-9]+) samples/s\)|test accuracy: [0-9.]+' |
    awk '/samples/ { gsub(/[()]/, "", $0); for (i = 1; i <= NF; i++) if ($(i+1) == "samples/s") r = $i + 0; if (r > best) best = r }
         /test accuracy/ { acc = $3 } END { printf "%d %s\n", best, acc }'; }
printf '| model | batch | 1 process (samples/s) | 2 processes (samples/s) | speed-up | test accuracy 1 / 2 |\n|---|---|---|---|---|---|\n'
for spec in "mlp 256 5" "cnn 128 3"; do
    set -- $spec
    one=$($bin --model "$1" --batch-size "$2" --epochs "$3" --save "$out/one.safetensors" 2>/dev/null | rate)
    two=$(mpirun --oversubscribe -np 2 $bin --distributed --model "$1" --batch-size "$2" --epochs "$3" \
        --save "$out/two.safetensors" 2>/dev/null | rate)
    read -r r1 a1 <<<"$one"
    read -r r2 a2 <<<"$two"
    printf '| %s | %s | %s | %s | %.2fx | %s / %s |\n' "$1" "$2" "$r1" "$r2" "$(awk -v a="$r2" -v b="$r1" 'BEGIN { print a / b }')" "$a1" "$a2"
done
rm -rf "$out"
