"""The VQ-VAE bottleneck (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural
Discrete Representation Learning"): ``VectorQuantizer``.

Every position of an encoder feature map ``z_e`` ``(batch, height, width,
code_dim)`` is replaced by its nearest vector of a codebook of ``num_codes``
vectors ``e_k``. The layer returns the quantized map with the
straight-through gradient, the code ids, their one-hot and the two per-example
loss terms of the paper's eq. 3 (the reconstruction term is the model's)::

    L = log p(x | z_q) + |sg[z_e] - e|^2 + beta |z_e - sg[e]|^2
                         codebook_loss     commitment_loss

The layer computes in float32 under every dtype policy (``autocast=False``):
nearest-neighbour distances ``|z|^2 - 2 z.e + |e|^2`` cancel large terms,
which bfloat16's 8-bit mantissa cannot resolve, and the EMA statistics
accumulate small increments.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import checks

USAGE_DECAY = 0.99  # decay of ``code_usage_ema`` (restarts without EMA)




def _check_features(layer, shape):
    shape = tuple(shape)
    if len(shape) != 4 or shape[-1] != layer.code_dim:
        raise ValueError(
            f"{layer.__class__.__name__} '{layer.name}' expects feature maps (batch, height, "
            f"width, code_dim={layer.code_dim}), got shape {shape}."
        )


@keras.saving.register_keras_serializable(package="caps_zoo")
class VectorQuantizer(keras.layers.Layer):
    """Nearest-code quantization of a feature map, VQ-VAE's bottleneck.

    ``call(inputs, training=None)`` takes ``(batch, height, width, code_dim)``
    and returns a dict:

    - ``quantized``: float32 ``(b, h, w, code_dim)``, the straight-through
      estimator: forward the nearest code ``e_k``, backward the identity to
      ``z_e`` (the decoder's gradient is copied to the encoder).
    - ``codes``: int32 ``(b, h, w)``, the nearest code's id (squared
      Euclidean distance; ties go to the lower id).
    - ``assignment``: float32 ``(b, h, w, num_codes)``, the one-hot of
      ``codes`` (soft quantizers return probabilities under this key).
    - ``commitment_loss``: float32 ``(b,)``, ``commitment_weight`` times the
      mean over (h, w, d) of ``(z_e - sg[e])^2``: it moves only the encoder,
      towards its codes, so that its outputs do not grow away from the
      codebook.
    - ``codebook_loss``: float32 ``(b,)``, the mean over (h, w, d) of
      ``(sg[z_e] - e)^2``, unweighted: it moves only the codebook, towards
      the encoder outputs. Zero under EMA (the codebook is not learned by
      gradient then). ``loss_term_names`` names both terms, which a model
      adds into its loss (e.g. ``LossTermsModel``'s per-example terms).

    Means over (h, w, d), not sums, keep the loss scale independent of the
    map size; beta = 0.25 is the paper's value for that normalisation.
    taming-transformers' VQGAN (``VectorQuantizer2`` with ``legacy=True``,
    the default) puts beta on the codebook term and 1 on the commitment term,
    the opposite of the paper; that is a known bug, not a variant, and is not
    copied here: ``commitment_weight`` multiplies the commitment term only.

    Args:
        num_codes: codebook size K >= 1.
        code_dim: dimension D >= 1 of each code, the input's last axis.
        commitment_weight: beta >= 0 of the commitment term.
        ema_decay: None: the codebook is a trainable weight learned by
            ``codebook_loss``. A float in (0, 1), e.g. 0.99: the codebook is
            not trainable and is updated in every training call by
            exponential moving averages of the assigned vectors (the paper's
            appendix A.1; Sonnet's ``VectorQuantizerEMA``)::

                N_k <- decay N_k + (1 - decay) n_k           # ema_cluster_size
                m_k <- decay m_k + (1 - decay) sum_{z->k} z  # ema_code_sum
                e_k  = m_k / N~_k,  N~_k = (N_k + eps) / (n + K eps) * n,  n = sum_k N_k

            (Laplace smoothing keeps ``N~_k > 0`` for codes no vector chose).
            Usually faster and stabler than the codebook loss. To set the
            codebook by hand under EMA, set ``ema_code_sum`` to it times
            ``ema_cluster_size[:, None]`` too (the next update starts from
            those sums).
        ema_epsilon: eps > 0 of the Laplace smoothing.
        restart_dead_codes: in training, codes whose usage falls below
            ``dead_code_threshold`` are re-initialised to randomly chosen
            encoder vectors of the current batch. Usage is ``N_k / sum N``
            under EMA, else ``code_usage_ema``, an EMA (decay 0.99) of each
            code's share of the batch's positions.
        dead_code_threshold: in (0, 1 / num_codes) with restarts: a uniformly
            used codebook has usage 1 / num_codes, and a restarted code is
            given that usage (below the threshold it would restart at once).
        seed: seeds the codebook initializer and the restart draws.

    Under ``tf.distribute`` (e.g. ``MirroredStrategy``) the batch statistics
    of the EMA and usage updates are summed over the replicas, so every
    replica computes the update of the global batch; the updated variables
    aggregate ``ONLY_FIRST_REPLICA``, which keeps their mirrors identical
    (a restart draws from the first replica's batch).
    """

    def __init__(
        self,
        num_codes=512,
        code_dim=64,
        commitment_weight=0.25,
        ema_decay=None,
        ema_epsilon=1e-5,
        restart_dead_codes=False,
        dead_code_threshold=1e-3,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)  # float32 throughout; see module doc
        super().__init__(**kwargs)
        for name, value in (("num_codes", num_codes), ("code_dim", code_dim)):
            if not checks.is_integer(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if not checks.is_real(commitment_weight) or not commitment_weight >= 0:
            raise ValueError(f"commitment_weight must be a number >= 0, got {commitment_weight!r}.")
        if ema_decay is not None and (not checks.is_real(ema_decay) or not 0 < ema_decay < 1):
            raise ValueError(
                f"ema_decay must be None (codebook learned by its loss) or a number in (0, 1), "
                f"e.g. 0.99; got {ema_decay!r}."
            )
        if not checks.is_real(ema_epsilon) or not ema_epsilon > 0:
            raise ValueError(f"ema_epsilon must be a number > 0, got {ema_epsilon!r}.")
        if restart_dead_codes not in (True, False):
            raise ValueError(
                f"restart_dead_codes must be True or False, got {restart_dead_codes!r}."
            )
        if not checks.is_real(dead_code_threshold) or not 0 < dead_code_threshold < 1:
            raise ValueError(
                f"dead_code_threshold must be a number in (0, 1), got {dead_code_threshold!r}."
            )
        if restart_dead_codes and not dead_code_threshold < 1 / num_codes:
            raise ValueError(
                f"dead_code_threshold must be below 1 / num_codes = {1 / num_codes:.3g} (the "
                "usage of a uniformly used codebook, which a restarted code is given) when "
                f"restart_dead_codes is True; got {dead_code_threshold!r}."
            )
        if seed is not None and not checks.is_integer(seed):
            raise ValueError(f"seed must be None or an int, got {seed!r}.")
        self.num_codes = int(num_codes)
        self.code_dim = int(code_dim)
        self.commitment_weight = float(commitment_weight)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.ema_epsilon = float(ema_epsilon)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.dead_code_threshold = float(dead_code_threshold)
        self.seed = None if seed is None else int(seed)
        # Restart draws; a layer attribute, so its state is saved with the
        # layer and advances identically on every replica.
        self.seed_generator = keras.random.SeedGenerator(seed, name="restart_seed")

    @property
    def has_codes(self):
        """Always: a code id per position (the bottleneck contract shared with
        ``CapsuleQuantizer``, whose reference mode has none)."""
        return True

    @property
    def loss_term_names(self):
        """The per-example loss terms of ``call``'s dict, to add into a loss."""
        return ("commitment_loss", "codebook_loss")

    @property
    def codes_need_parents(self):
        """False: the codebook is shared by every image, so a code map alone
        decodes (``lookup``). (``CapsuleQuantizer``: its parents are routed per
        image.)"""
        return False

    def lookup(self, codes, parents=None):
        """The ``quantized`` map of integer ``codes`` ``(b, h, w)``: their
        codebook vectors, float32 ``(b, h, w, code_dim)``."""
        if parents is not None:
            raise ValueError(f"VectorQuantizer '{self.name}': a code map decodes alone (one codebook for "
                             "every image); parents are for CapsuleQuantizer.")
        return ops.take(ops.convert_to_tensor(self.codebook), ops.cast(codes, "int32"), axis=0)

    @property
    def use_ema(self):
        return self.ema_decay is not None

    def build(self, input_shape):
        _check_features(self, input_shape)
        # Sonnet's initialisation: uniform with per-element variance 1 / D, so
        # |e_k| ~ 1.
        limit = (3.0 / self.code_dim) ** 0.5
        # Variables that call() assigns in training aggregate
        # ONLY_FIRST_REPLICA: each replica computes the same value (the
        # statistics are all-reduced first), and the aggregation keeps the
        # mirrors identical even where replicas would differ (a restart's
        # random vector comes from the replica's own batch). With "none",
        # each replica would write only its own copy.
        self.codebook = self.add_weight(
            name="codebook",
            shape=(self.num_codes, self.code_dim),
            initializer=keras.initializers.RandomUniform(-limit, limit, seed=self.seed),
            dtype="float32",
            trainable=not self.use_ema,
            autocast=False,
            aggregation="only_first_replica",
        )
        if self.use_ema:
            # Cluster sizes start at 1 and sums at the codebook, so that
            # m / N starts at the initial codebook: codes that no vector
            # chooses then stay where they are while both decay, instead of
            # jumping to 0 (sums from 0) or to e / eps (sizes from 0).
            self.ema_cluster_size = self.add_weight(
                name="ema_cluster_size",
                shape=(self.num_codes,),
                initializer="ones",
                dtype="float32",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
            self.ema_code_sum = self.add_weight(
                name="ema_code_sum",
                shape=(self.num_codes, self.code_dim),
                # Initializers run eagerly (in an init scope), where the
                # codebook already holds its initial value.
                initializer=lambda shape, dtype=None: ops.convert_to_tensor(self.codebook),
                dtype="float32",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
        if self.restart_dead_codes and not self.use_ema:
            # Without EMA nothing tracks usage: an EMA of each code's share
            # of the positions, starting uniform (no code is dead at once).
            self.code_usage_ema = self.add_weight(
                name="code_usage_ema",
                shape=(self.num_codes,),
                initializer=keras.initializers.Constant(1.0 / self.num_codes),
                dtype="float32",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )

    def nearest_codes(self, flat, codebook):
        """Ids int32 ``(n,)`` of the nearest codes to ``flat`` ``(n, D)``.

        ``|z|^2 - 2 z.e + |e|^2``: one ``(n, D) x (D, K)`` matmul, instead of
        an ``(n, K, D)`` difference tensor.
        """
        distances = (
            ops.sum(ops.square(flat), axis=1, keepdims=True)
            - 2.0 * ops.matmul(flat, ops.transpose(codebook))
            + ops.sum(ops.square(codebook), axis=1)[None, :]
        )
        return ops.cast(ops.argmin(distances, axis=1), "int32")

    def call(self, inputs, training=None):
        _check_features(self, inputs.shape)
        z_e = ops.cast(inputs, "float32")
        # One read of the codebook: outputs and losses use the codebook
        # before this call's update (as Sonnet does), whatever the order in
        # which the graph runs the read and the assignments below.
        codebook = ops.convert_to_tensor(self.codebook)
        flat = ops.reshape(z_e, (-1, self.code_dim))
        flat_codes = self.nearest_codes(flat, codebook)
        flat_assignment = ops.one_hot(flat_codes, self.num_codes, dtype="float32")
        map_shape = ops.shape(z_e)[:3]
        codes = ops.reshape(flat_codes, map_shape)
        e = ops.take(codebook, codes, axis=0)  # (b, h, w, D)

        # Forward value e exactly (z - sg(z) is exactly 0; the form
        # z + sg(e - z) rounds, off by ~1 ulp of |z|), gradient identity to z.
        quantized = ops.stop_gradient(e) + (z_e - ops.stop_gradient(z_e))
        commitment = self.commitment_weight * ops.mean(
            ops.square(z_e - ops.stop_gradient(e)), axis=(1, 2, 3)
        )
        if self.use_ema:
            codebook_loss = ops.zeros_like(commitment)
        else:
            codebook_loss = ops.mean(ops.square(ops.stop_gradient(z_e) - e), axis=(1, 2, 3))

        if training and (self.use_ema or self.restart_dead_codes):
            self._update_codebook(flat, flat_assignment, codebook)

        return {
            "quantized": quantized,
            "codes": codes,
            "assignment": ops.reshape(flat_assignment, tuple(map_shape) + (self.num_codes,)),
            "commitment_loss": commitment,
            "codebook_loss": codebook_loss,
        }

    def _update_codebook(self, flat, flat_assignment, codebook):
        """The training-time updates: EMA and dead-code restarts.

        Batch statistics are summed over the replicas first, so that every
        replica applies the global batch's update (not its own shard's).
        """
        statistics = [ops.sum(flat_assignment, axis=0)]  # counts (K,)
        if self.use_ema:
            statistics.append(ops.matmul(ops.transpose(flat_assignment), flat))  # sums (K, D)
        context = tf.distribute.get_replica_context()
        # None in a cross-replica context: the layer then sees the whole batch.
        if context is not None and context.num_replicas_in_sync > 1:
            statistics = context.all_reduce("sum", statistics)
        counts = statistics[0]

        if self.use_ema:
            decay = self.ema_decay
            cluster_size = decay * self.ema_cluster_size + (1.0 - decay) * counts
            code_sum = decay * self.ema_code_sum + (1.0 - decay) * statistics[1]
            total = ops.sum(cluster_size)
            smoothed = (
                (cluster_size + self.ema_epsilon)
                / (total + self.num_codes * self.ema_epsilon)
                * total
            )
            codebook = code_sum / smoothed[:, None]
            usage = cluster_size / total
        else:
            share = counts / ops.maximum(ops.sum(counts), 1.0)
            usage = USAGE_DECAY * self.code_usage_ema + (1.0 - USAGE_DECAY) * share

        if self.restart_dead_codes:
            # Dead codes are the usual failure of VQ: a code that is nearest
            # to no encoder output gets no gradient (no EMA mass), so it never
            # moves and never wins; most of a large codebook can end up so.
            # Moving it onto an encoder vector puts it where the data is.
            num_vectors = ops.shape(flat)[0]
            # A replica can get an empty shard (the last, short batch of a
            # dataset): it restarts nothing, and gathers from the codebook
            # appended to its (no) vectors so that the gather stays valid.
            dead = ops.logical_and(usage < self.dead_code_threshold, num_vectors > 0)
            draw = keras.random.uniform((self.num_codes,), seed=self.seed_generator)
            index = ops.clip(
                ops.cast(draw * ops.cast(num_vectors, "float32"), "int32"), 0, num_vectors - 1
            )
            candidates = ops.concatenate([flat, codebook], axis=0)
            replacement = ops.take(candidates, ops.maximum(index, 0), axis=0)
            codebook = ops.where(dead[:, None], replacement, codebook)
            # A restarted code gets the usage of a uniform codebook, so it
            # has time to win vectors before it could be declared dead again.
            uniform = 1.0 / self.num_codes
            if self.use_ema:
                restart_size = ops.sum(cluster_size) * uniform
                cluster_size = ops.where(dead, restart_size, cluster_size)
                code_sum = ops.where(dead[:, None], replacement * restart_size, code_sum)
            else:
                usage = ops.where(dead, uniform, usage)
            self.codebook.assign(codebook)
        elif self.use_ema:
            self.codebook.assign(codebook)

        if self.use_ema:
            self.ema_cluster_size.assign(cluster_size)
            self.ema_code_sum.assign(code_sum)
        else:
            self.code_usage_ema.assign(usage)

    def compute_output_spec(self, inputs, training=None):
        _check_features(self, inputs.shape)
        map_shape = tuple(inputs.shape[:3])
        return {
            "quantized": keras.KerasTensor(map_shape + (self.code_dim,), dtype="float32"),
            "codes": keras.KerasTensor(map_shape, dtype="int32"),
            "assignment": keras.KerasTensor(map_shape + (self.num_codes,), dtype="float32"),
            "commitment_loss": keras.KerasTensor(map_shape[:1], dtype="float32"),
            "codebook_loss": keras.KerasTensor(map_shape[:1], dtype="float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            num_codes=self.num_codes,
            code_dim=self.code_dim,
            commitment_weight=self.commitment_weight,
            ema_decay=self.ema_decay,
            ema_epsilon=self.ema_epsilon,
            restart_dead_codes=self.restart_dead_codes,
            dead_code_threshold=self.dead_code_threshold,
            seed=self.seed,
        )
        return config
