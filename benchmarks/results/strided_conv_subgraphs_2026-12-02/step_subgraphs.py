import os, sys, time
import numpy as np, keras, tensorflow as tf
prec = sys.argv[1]
if prec != "float32":
    keras.mixed_precision.set_global_policy(prec)
import caps_zoo
from caps_zoo import losses
from caps_zoo.layers import capsule as C
model = caps_zoo.registry.create_model("capsnet")
rng = np.random.default_rng(0)
x = tf.constant(rng.uniform(size=(128, 28, 28, 1)).astype("float32"))
y = tf.constant(rng.integers(0, 10, size=(128,)).astype("int32"))
model.compile(optimizer=keras.optimizers.Adam(1e-3))
def bench(f, *a, n=8):
    for _ in range(2): r = f(*a)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); r = f(*a); [v.numpy() for v in tf.nest.flatten(r)]; ts.append(time.perf_counter() - t)
    return np.median(ts)
step = tf.function(lambda x, y: model.train_step((x, y)))
print(prec, "full train step %.3f" % bench(step, x, y), flush=True)
stack = model.capsules
def front(x):
    h = x
    for c in stack.convs: h = c(h)
    return stack.primary_caps(h)
fvars = [v for c in stack.convs for v in c.trainable_variables] + stack.primary_caps.trainable_variables
@tf.function
def f_front(x):
    with tf.GradientTape() as t:
        p = front(x); loss = tf.reduce_sum(tf.square(p))
    return t.gradient(loss, fvars)
print(prec, "convs+primary fwd+bwd %.3f" % bench(f_front, x), flush=True)
p = front(x)
digit = stack.routing_stages[-1]
bvars = digit.trainable_variables + model.decoder.trainable_variables
@tf.function
def f_back(p, y):
    with tf.GradientTape() as t:
        t.watch(p)
        poses = digit(p, training=True)
        scores = model.length(poses)
        rec = model.decode(poses, y)
        loss = tf.reduce_mean(losses.margin_loss(y, scores) + losses.reconstruction_squared_error(x, rec, 0.0005))
    return t.gradient(loss, bvars + [p])
print(prec, "routing+decoder+loss fwd+bwd %.3f" % bench(f_back, p, y), flush=True)
@tf.function
def f_route(p):
    with tf.GradientTape() as t:
        t.watch(p)
        poses = digit(p, training=True); loss = tf.reduce_sum(tf.square(poses))
    return t.gradient(loss, digit.trainable_variables + [p])
print(prec, "digitcaps fwd+bwd %.3f" % bench(f_route, p), flush=True)
@tf.function
def f_pred(p):
    with tf.GradientTape() as t:
        t.watch(p)
        u = digit.predictions(p); loss = tf.reduce_sum(tf.square(u))
    return t.gradient(loss, digit.trainable_variables + [p])
print(prec, "predictions fwd+bwd %.3f" % bench(f_pred, p), flush=True)
u = digit.predictions(p)
@tf.function
def f_r(u):
    with tf.GradientTape() as t:
        t.watch(u)
        v = C._route_xla(u, 3, False); loss = tf.reduce_sum(tf.square(v))
    return t.gradient(loss, [u])
print(prec, "routing xla fwd+bwd %.3f" % bench(f_r, u), flush=True)
@tf.function
def f_opt():
    g = [tf.zeros_like(v) for v in model.trainable_variables]
    model.optimizer.apply_gradients(zip(g, model.trainable_variables))
    return tf.constant(0.)
print(prec, "adam apply %.3f" % bench(f_opt), flush=True)
