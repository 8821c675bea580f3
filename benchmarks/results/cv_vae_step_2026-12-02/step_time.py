import sys, time
import caps_zoo, keras, numpy as np
from caps_zoo import data
policy = sys.argv[1]; name = sys.argv[2]
keras.mixed_precision.set_global_policy(policy)
images = data.load_images("mnist_sample", "test")[:64]
model = caps_zoo.create_model(name)
model.compile(**{k: keras.optimizers.Adam(1e-4) for k in model.named_optimizers()})
model.train_on_batch(images)  # trace
model.train_on_batch(images)
times = []
for _ in range(5):
    t = time.perf_counter(); model.train_on_batch(images); times.append(time.perf_counter() - t)
print(name, policy, "median s/step of 64:", round(float(np.median(times)), 3), [round(x, 3) for x in times])
