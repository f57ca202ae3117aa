"""Keras RNN cells whose update is a step of an SDE, one file per drift.

Importing this package imports every cell file, which registers its drift in
`keras_nrnn.registry`; the order here is the registry's order (the paper's cell first).
"""

# isort: skip_file
from keras_nrnn.cells import lipschitz  # noqa: F401
from keras_nrnn.cells import antisymmetric  # noqa: F401
from keras_nrnn.cells import cornn  # noqa: F401
from keras_nrnn.cells import exprnn  # noqa: F401
