"""The paired layer-1 GEMM lever, measured alone (session 8; output in pair-gemm.txt).

A BN-on and a BN-off member of the same seed see the same batches, so their first layers could
be one product x @ [W_off | W_on] ([B, 784] x [784, 128]) instead of two ([B, 784] x [784, 64]).
This times layer 1's forward and weight-gradient products as XLA runs them in the fused engine
(a while loop, each step depending on the last): 10 members unpaired (K=10, N=64) against the
same FLOPs as 5 pairs (K=5, N=128). Run: .venv/bin/python docs/bench-issue12/pair_gemm.py
"""

import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=false")  # as bnpipe runs XLA
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def gflops(members: int, width: int, batch: int, steps: int = 300) -> float:
    x = tf.constant(np.random.rand(members, batch, 784).astype(np.float32))
    w0 = tf.constant(np.random.rand(members, 784, width).astype(np.float32))

    @tf.function(jit_compile=True)
    def loop(x, w):
        def body(i, w):
            h = tf.einsum("kbi,kio->kbo", x, w)  # forward
            dw = tf.einsum("kbi,kbo->kio", x, h)  # weight gradient
            return i + 1, w - 1e-9 * dw  # the next step needs this one's result

        return tf.reduce_sum(tf.while_loop(lambda i, w: i < steps, body, (0, w))[1])

    loop(x, w0).numpy()  # compile
    start = time.perf_counter()
    loop(x, w0).numpy()
    return steps * 2 * 2 * members * batch * 784 * width / 1e9 / (time.perf_counter() - start)


for batch in (16, 32, 64, 128):
    for _ in range(3):
        unpaired, paired = gflops(10, 64, batch), gflops(5, 128, batch)
        print(f"B={batch}: unpaired {unpaired:.0f}, paired {paired:.0f} GFLOP/s", end="")
        print(f": {paired / unpaired:.2f}x")
