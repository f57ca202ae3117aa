"""The two Keras internals this package relies on, in one place.

- `PreLoopHook`: `keras.layers.RNN` calls `get_dropout_mask` / `reset_dropout_mask` on
  cells that derive from Keras's `DropoutRNNCell`, once before and once after its time
  loop. The cells use the hook to form A and W once per sequence.
- `backend_rnn`: the time loop `keras.layers.RNN` itself runs (`tf.while_loop` with
  `maximum_iterations` on TensorFlow, `lax.scan` on JAX), which handles masks,
  `go_backwards` and `unroll`. `keras.ops.scan` has no `maximum_iterations` on TensorFlow,
  so its gradient uses dynamically sized tensor lists: slower, and XLA rejects it.

Neither is exported by `keras` publicly (checked with Keras 3.13 to 3.15). If a future
Keras moves them, the fallbacks keep the cells correct (work is then done per step).
"""

from __future__ import annotations

try:
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell as PreLoopHook
except ImportError:  # pragma: no cover - the cells then form A and W at every step

    class PreLoopHook:  # type: ignore[no-redef]
        """Stand-in when Keras no longer has `DropoutRNNCell` (no pre-loop hook)."""


try:
    from keras.src.backend import rnn as backend_rnn
except ImportError:  # pragma: no cover
    backend_rnn = None

__all__ = ["PreLoopHook", "backend_rnn"]
