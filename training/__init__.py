"""Training tools for keras_nrnn: datasets, tf.data pipelines and experiment runners."""
