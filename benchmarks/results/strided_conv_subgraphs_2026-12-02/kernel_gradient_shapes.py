import time, sys
import numpy as np, tensorflow as tf
rng = np.random.default_rng(0)
dt = tf.bfloat16 if sys.argv[1] == "bf16" else tf.float32
def bench(f, *a, n=6):
    for _ in range(2): f(*a)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); r = f(*a); [v.numpy() for v in tf.nest.flatten(r)]; ts.append(time.perf_counter() - t)
    return np.median(ts)
def kgrad(x, dy, k, s):
    oh, ow = dy.shape[1], dy.shape[2]
    h, w = s * (oh - 1) + k, s * (ow - 1) + k
    xt = tf.transpose(x[:, :h, :w, :], (3, 1, 2, 0))
    f = tf.transpose(dy, (1, 2, 0, 3))
    return tf.transpose(tf.nn.conv2d(xt, f, 1, "VALID", dilations=s), (1, 2, 0, 3))
for (cin, cout, k, s, hw) in [(1, 256, 9, 1, 28), (256, 256, 9, 2, 20), (1, 512, 9, 1, 28), (512, 256, 5, 1, 20), (256, 256, 5, 2, 16)]:
    o = (hw - k) // s + 1
    x = tf.cast(tf.constant(rng.normal(size=(128, hw, hw, cin)).astype("float32")), dt)
    dy = tf.cast(tf.constant(rng.normal(size=(128, o, o, cout)).astype("float32")), dt)
    ref = tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[k, k, cin, cout], out_backprop=dy, strides=[1, s, s, 1], padding="VALID"))
    alt = tf.function(lambda x, dy: kgrad(x, dy, k, s))
    e = float(tf.reduce_max(tf.abs(tf.cast(ref(x, dy), tf.float32) - tf.cast(alt(x, dy), tf.float32))) / tf.reduce_max(tf.abs(tf.cast(ref(x, dy), tf.float32))))
    print(sys.argv[1], (cin, cout, k, s, hw), "ref %.3f  as-conv %.3f  relerr %.1e" % (bench(ref, x, dy), bench(alt, x, dy), e), flush=True)
