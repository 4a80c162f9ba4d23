#!/usr/bin/env python3
"""The peers' side of `cargo run --release --example cpu_vs_gpu -- --peers`.

Measures the workloads of examples/cpu_vs_gpu.rs that have a counterpart in
numpy, JAX, Keras 3 (on JAX) and PyTorch, on the CPU, the same way: one cold run, one
warm-up, then the median of the steady-state runs. Prints a JSON array of
records shaped like the example's, plus "library" (with `--format tsv`, one
tab-separated line per record, which the example reads). A library that is not
installed is skipped with a note on stderr, so any subset can be compared:

    python3 -m pip install numpy jax keras torch   # what the README's tables used

Workloads (the names and sizes match the example's records):
  matmul 1024             1024x1024 float32 product
  elementwise_chain       1000 dependent `y * 1.0001` on 1024 floats, read once
  mnist_epoch             one epoch of the seed's Keras model on the bundled
                          training digits, batch 32 (Keras only)
  conv2d                  a 3x3 convolution, 32x64x28x28 -> 64 channels, padding
                          1, forward and both gradients (PyTorch only)
  mnist_cnn_epoch         one epoch of Keras's simple MNIST convnet on the bundled
                          training digits, batch 128, Adam 1e-3 (Keras, PyTorch)
"""

import argparse
import gzip
import json
import os
import statistics
import struct
import sys
import time


def measure(reps, run):
    """(cold, median) seconds of `run`, which must finish its work."""
    t = time.perf_counter()
    run()
    cold = time.perf_counter() - t
    run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return cold, statistics.median(times)


def record(library, workload, size, cold, seconds, flops=None):
    return {
        "workload": workload,
        "size": size,
        "device": "cpu",
        "library": library,
        "seconds": seconds,
        "cold_seconds": cold,
        "gflops": None if flops is None else flops / seconds / 1e9,
    }


def read_idx(path):
    """An IDX file (gzipped or not) as (dims, bytes)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(os.path.join(data_dir, stem + "[.gz]"))


def numpy_peer(reps, out):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 1024
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    cold, secs = measure(reps, lambda: a @ b)
    out.append(record("numpy", "matmul", str(n), cold, secs, 2.0 * n**3))

    x = np.ones(1024, dtype=np.float32)

    def chain():
        y = x
        for _ in range(1000):
            y = y * np.float32(1.0001)
        return float(y[0])

    cold, secs = measure(reps, chain)
    out.append(record("numpy", "elementwise_chain", "1000 ops x 1024", cold, secs))


def jax_peer(reps, out):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_platforms", "cpu")
    n = 1024
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), dtype=jnp.float32)
    b = jax.random.normal(kb, (n, n), dtype=jnp.float32)
    cold, secs = measure(reps, lambda: jnp.dot(a, b).block_until_ready())
    out.append(record("jax", "matmul", str(n), cold, secs, 2.0 * n**3))

    x = jnp.ones(1024, dtype=jnp.float32)

    def chain():
        # Op by op, as eager PyTorch or wgrad run it (no jit: jit would fuse
        # the chain into one kernel, a different workload).
        y = x
        for _ in range(1000):
            y = y * 1.0001
        return float(y[0])

    cold, secs = measure(reps, chain)
    out.append(record("jax", "elementwise_chain", "1000 ops x 1024", cold, secs))


def keras_peer(reps, out, data_dir):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import numpy as np
    import keras

    (count, rows, cols), pixels = read_idx(find(data_dir, "train-images-idx3-ubyte"))
    _, labels = read_idx(find(data_dir, "train-labels-idx1-ubyte"))
    x = np.frombuffer(pixels, dtype=np.uint8).reshape(count, rows, cols).astype(np.float32) / 255.0
    y = np.frombuffer(labels, dtype=np.uint8).astype(np.int32)

    keras.utils.set_random_seed(0)
    # The seed lesson's model, compiled as it is there.
    model = keras.Sequential(
        [
            keras.Input((rows, cols)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    model.fit(x, y, batch_size=32, epochs=reps + 2, verbose=0, callbacks=[timer])
    # Epoch 1 compiles the step (cold), epoch 2 is the warm-up.
    cold, steady = timer.times[0], statistics.median(timer.times[2:])
    out.append(record("keras-jax", "mnist_epoch", f"{count} digits, batch 32", cold, steady))


def mnist_arrays(data_dir):
    """The bundled training digits as float32 [N, 28, 28] in [0, 1] and int labels."""
    import numpy as np

    (count, rows, cols), pixels = read_idx(find(data_dir, "train-images-idx3-ubyte"))
    _, labels = read_idx(find(data_dir, "train-labels-idx1-ubyte"))
    x = np.frombuffer(pixels, dtype=np.uint8).reshape(count, rows, cols).astype(np.float32) / 255.0
    y = np.frombuffer(labels, dtype=np.uint8).astype(np.int64)
    return x, y


def keras_cnn_peer(reps, out, data_dir):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    x, y = mnist_arrays(data_dir)
    keras.utils.set_random_seed(0)
    # Keras's "simple MNIST convnet" example, channels last as Keras has it.
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x[..., None], y, batch_size=128, epochs=reps + 2, verbose=0, callbacks=[Timer()])
    cold, steady = times[0], statistics.median(times[2:])
    out.append(record("keras-jax", "mnist_cnn_epoch", f"{len(x)} digits, batch 128", cold, steady))


def torch_peer(reps, out, data_dir):
    import torch

    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    cold, t = measure(reps, lambda: a @ b)
    out.append(record("pytorch", "matmul", "1024", cold, t, 2.0 * 1024**3))

    # The conv2d row: forward and both gradients.
    xc = torch.randn(32, 64, 28, 28, requires_grad=True)
    wc = (torch.randn(64, 64, 3, 3) * 0.05).requires_grad_()
    gc = torch.randn(32, 64, 28, 28)

    def conv():
        xc.grad = wc.grad = None
        torch.nn.functional.conv2d(xc, wc, padding=1).backward(gc)

    cold, t = measure(reps, conv)
    out.append(record("pytorch", "conv2d", "32x64x28x28, 64 3x3 pad 1, fwd+bwd", cold, t, 3 * 2.0 * 32 * 64 * 784 * 64 * 9))

    # Keras's simple convnet, one epoch as `fit` runs it: shuffled batches
    # of 128, Adam 1e-3, cross-entropy, dropout on.
    x, y = mnist_arrays(data_dir)
    x, y = torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(1600, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def epoch():
        model.train()
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()

    cold, t = measure(max(reps // 2, 2), epoch)
    out.append(record("pytorch", "mnist_cnn_epoch", f"{len(x)} digits, batch 128", cold, t))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/mnist", help="MNIST directory (default: data/mnist)")
    parser.add_argument("--reps", type=int, default=7, help="steady-state runs per workload (default: 7)")
    parser.add_argument(
        "--format",
        choices=["json", "tsv"],
        default="json",
        help="json (default), or tsv: library, workload, size, seconds, cold_seconds, GFLOP/s or -",
    )
    args = parser.parse_args()
    out = []
    peers = [
        ("numpy", lambda: numpy_peer(args.reps, out)),
        ("jax", lambda: jax_peer(args.reps, out)),
        ("keras", lambda: keras_peer(max(args.reps // 2, 3), out, args.data)),
        ("keras (convnet)", lambda: keras_cnn_peer(max(args.reps // 2, 2), out, args.data)),
        ("pytorch", lambda: torch_peer(args.reps, out, args.data)),
    ]
    for name, peer in peers:
        try:
            peer()
        except ImportError as e:
            print(f"peers: {name} skipped ({e})", file=sys.stderr)
    if args.format == "tsv":
        for r in out:
            gflops = "-" if r["gflops"] is None else repr(r["gflops"])
            fields = [r["library"], r["workload"], r["size"], repr(r["seconds"]), repr(r["cold_seconds"]), gflops]
            print("\t".join(fields))
    else:
        json.dump(out, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
