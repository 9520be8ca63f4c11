"""Writes a checkpoint as the authors' release did, with TensorFlow's own Saver, and the graph's output.

Run as a script (TensorFlow 1 graph mode in its own process): ``python tf_release_writer.py OUT_DIR
WIDTHS K SEED``. It builds a CRN generator in TensorFlow with the release's variable names
(g_<h>_conv1/2 with LayerNorm/gamma and beta, g_<H>_conv100), an Adam optimizer (so the checkpoint
also holds Adam's slots, as the released ones do), random weights, and saves OUT_DIR/model.ckpt with
tf.compat.v1.train.Saver; then it runs the graph on a random layout and writes OUT_DIR/layout.npy
(N, H, W, c) and OUT_DIR/output.npy (N, H, W, 3k, the release's channel layout).
``python tf_release_writer.py OUT_DIR dtypes`` saves instead a checkpoint of a bfloat16 and a uint16
variable, and OUT_DIR/values.npz: what TensorFlow itself reads back from them (the bfloat16 one cast to
float32 by TensorFlow).
Written for this project's tests from the paper and the public facts of the release; no code of the
release is used.
"""

import sys

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
NUM_CLASSES = 5


def lrelu(x):
    return tf.maximum(0.2 * x, x)


def conv_norm(x, width, scope, rng):
    """3x3 convolution without bias, layer normalization over H, W, C with per-channel gamma/beta, LReLU."""
    with tf1.variable_scope(scope):
        fan = int(x.shape[-1])
        w = tf1.get_variable("weights", initializer=rng.normal(0, 1 / np.sqrt(9 * fan), (3, 3, fan, width)).astype(np.float32))
        y = tf.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME")
        with tf1.variable_scope("LayerNorm"):
            gamma = tf1.get_variable("gamma", initializer=rng.uniform(0.5, 1.5, width).astype(np.float32))
            beta = tf1.get_variable("beta", initializer=rng.normal(0, 0.3, width).astype(np.float32))
        mean, variance = tf.nn.moments(y, [1, 2, 3], keepdims=True)
        return lrelu((y - mean) * tf.math.rsqrt(variance + 1e-12) * gamma + beta)


def generator(layout, widths, k, rng):
    height = int(layout.shape[1])
    heights = [4 * 2**i for i in range(len(widths))]
    assert heights[-1] == height
    net = None
    for h, width in zip(heights, widths):
        factor = height // h
        small = tf.nn.avg_pool2d(layout, factor, factor, "VALID") if factor > 1 else layout  # area averaging
        if net is None:
            x = small
        else:
            up = tf1.image.resize_bilinear(net, (h, 2 * h), align_corners=True)
            x = tf.concat([up, small], 3)  # features first, layout second
        net = conv_norm(x, width, f"g_{h}_conv1", rng)
        net = conv_norm(net, width, f"g_{h}_conv2", rng)
    with tf1.variable_scope(f"g_{heights[-1]}_conv100"):
        fan = int(net.shape[-1])
        w = tf1.get_variable("weights", initializer=rng.normal(0, 1 / np.sqrt(fan), (1, 1, fan, 3 * k)).astype(np.float32))
        b = tf1.get_variable("biases", initializer=rng.normal(0, 0.1, 3 * k).astype(np.float32))
        net = tf.nn.conv2d(net, w, strides=[1, 1, 1, 1], padding="VALID") + b
    return (net + 1.0) / 2.0 * 255.0


def main(out: str, widths: list[int], k: int, seed: int) -> None:
    tf1.disable_eager_execution()
    rng = np.random.default_rng(seed)
    height = 4 * 2 ** (len(widths) - 1)
    labels = rng.integers(0, NUM_CLASSES, (2, height, 2 * height))
    layout_value = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    layout = tf1.placeholder(tf.float32, [None, height, 2 * height, NUM_CLASSES])
    output = generator(layout, widths, k, rng)
    tf1.train.AdamOptimizer(1e-4).minimize(tf.reduce_mean(output))  # slots: weights/Adam, beta1_power, ...
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        tf1.train.Saver().save(session, f"{out}/model.ckpt")
        result = session.run(output, {layout: layout_value})
    np.save(f"{out}/layout.npy", layout_value)
    np.save(f"{out}/output.npy", result)


def dtypes(out: str) -> None:
    """A checkpoint holding a bfloat16 and a uint16 variable, and TensorFlow's own values of them."""
    tf1.disable_eager_execution()
    values = np.array([0.0, -0.0, 1.0, -2.5, np.pi, 1e-3, -65504.0, 3.0e38, 1e-39, np.inf], np.float32)
    bf16 = tf1.get_variable("g_4_conv1/LayerNorm/gamma", initializer=tf.cast(values, tf.bfloat16))
    uint16 = tf1.get_variable("counts", initializer=np.array([0, 1, 16256, 65535], np.uint16))
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        tf1.train.Saver().save(session, f"{out}/model.ckpt")
        as_float, counts = session.run([tf.cast(bf16, tf.float32), uint16])
    np.savez(f"{out}/values.npz", bfloat16=as_float, uint16=counts)


if __name__ == "__main__" and sys.argv[2:] == ["dtypes"]:
    dtypes(sys.argv[1])
elif __name__ == "__main__":
    main(sys.argv[1], [int(w) for w in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4]))
