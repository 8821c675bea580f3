import time, sys
import numpy as np, tensorflow as tf
rng = np.random.default_rng(0)
dt = tf.bfloat16 if sys.argv[1] == "bf16" else tf.float32
def bench(f, *a, n=8):
    for _ in range(2): f(*a)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); r = f(*a); [v.numpy() for v in tf.nest.flatten(r)]; ts.append(time.perf_counter() - t)
    return np.median(ts)
x = tf.cast(tf.constant(rng.normal(size=(128, 20, 20, 256)).astype("float32")), dt)
w = tf.cast(tf.constant(rng.normal(size=(9, 9, 256, 256)).astype("float32") * 0.01), dt)
dy = tf.cast(tf.constant(rng.normal(size=(128, 6, 6, 256)).astype("float32")), dt)
fwd = tf.function(lambda x, w: tf.nn.conv2d(x, w, 2, "VALID"))
dw = tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[9, 9, 256, 256], out_backprop=dy, strides=[1, 2, 2, 1], padding="VALID"))
dx = tf.function(lambda w, dy: tf.raw_ops.Conv2DBackpropInput(input_sizes=[128, 20, 20, 256], filter=w, out_backprop=dy, strides=[1, 2, 2, 1], padding="VALID"))
print(sys.argv[1], "fwd %.3f dW %.3f dX %.3f" % (bench(fwd, x, w), bench(dw, x, dy), bench(dx, w, dy)))
# patches-based dW and dX
@tf.function
def dw_p(x, dy):
    p = tf.reshape(tf.image.extract_patches(x, [1, 9, 9, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID"), (-1, 81 * 256))
    return tf.matmul(p, tf.reshape(dy, (-1, 256)), transpose_a=True)
print(sys.argv[1], "dW via patches %.3f" % bench(dw_p, x, dy))
# dX via space-to-depth: x (20x20) stride 2 -> polyphase 4 x (10x10); kernel 9x9 -> 4 kernels 5x5 (zero padded)
@tf.function
def dx_poly(w, dy):
    wp = tf.pad(w, [[0, 1], [0, 1], [0, 0], [0, 0]])  # 10x10
    wp = tf.reshape(wp, (5, 2, 5, 2, 256, 256))
    wp = tf.transpose(wp, (0, 2, 1, 3, 4, 5))  # (5,5,2,2,cin,cout)
    wp = tf.reshape(wp, (5, 5, 4 * 256, 256))
    g = tf.raw_ops.Conv2DBackpropInput(input_sizes=[128, 10, 10, 1024], filter=wp, out_backprop=dy, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depth_to_space(g, 2)
ref = dx(w, dy); alt = dx_poly(w, dy)
print("poly err", float(tf.reduce_max(tf.abs(tf.cast(ref, tf.float32) - tf.cast(alt, tf.float32)))), float(tf.reduce_max(tf.abs(tf.cast(ref, tf.float32)))))
print(sys.argv[1], "dX polyphase %.3f" % bench(dx_poly, w, dy))
@tf.function
def dw_dil(x, dy):
    xt = tf.transpose(x[:, :19, :19, :], (3, 1, 2, 0))  # (ci, 19, 19, b)
    f = tf.transpose(dy, (1, 2, 0, 3))  # (6, 6, b, co)
    out = tf.nn.conv2d(xt, f, 1, "VALID", dilations=2)  # (ci, 9, 9, co)
    return tf.transpose(out, (1, 2, 0, 3))
ref = dw(x, dy)
for name, f in (("patches", dw_p), ("dilated", dw_dil)):
    alt = tf.reshape(f(x, dy), (9, 9, 256, 256))
    print(name, "err", float(tf.reduce_max(tf.abs(tf.cast(ref, tf.float32) - tf.cast(alt, tf.float32)))), float(tf.reduce_max(tf.abs(tf.cast(ref, tf.float32)))))
print(sys.argv[1], "dW dilated %.3f  dW patches %.3f  dW ref %.3f" % (bench(dw_dil, x, dy), bench(dw_p, x, dy), bench(dw, x, dy)))
