"""keras_nrnn: Noisy recurrent neural networks (Lim, Erichson, Hodgkinson, Mahoney, 2021) for Keras.

Cells are `keras.layers.RNN`-compatible; their update is one step of an SDE integrator whose
noise is active only in training mode. The SDE is data, each piece on its own: the drift (one
cell class per drift), the noise model (`keras_nrnn.noise`), the Brownian source
(`keras_nrnn.brownian`) and the scheme (`keras_nrnn.schemes`); `SDERNN` is the fast
`keras.layers.RNN` for them, and `keras_nrnn.registry` lists every cell.

Example:

>>> import keras
>>> from keras_nrnn import NoisyLipschitzCell
>>> model = keras.Sequential([
...     keras.Input((140, 1)),
...     keras.layers.RNN(NoisyLipschitzCell(16, dt=0.1, beta=0.9, additive_noise=0.06,
...                                         multiplicative_noise=0.03, seed=0)),
...     keras.layers.Dense(2),
... ])
>>> model.output_shape
(None, 2)
"""

from keras_nrnn import brownian, noise, parametrization, registry, schemes
from keras_nrnn.cells.antisymmetric import AntisymmetricCell, NoisyAntisymmetricCell
from keras_nrnn.cells.base import SDECell
from keras_nrnn.cells.cornn import CoRNNCell, NoisyCoRNNCell
from keras_nrnn.cells.exprnn import ExpRNNCell, NoisyExpRNNCell
from keras_nrnn.cells.lipschitz import LipschitzCell, NoisyLipschitzCell
from keras_nrnn.layers.sde_rnn import SDERNN
from keras_nrnn.noise import DiagonalNoise, ResearchNoise

__version__ = "0.1.0"

__all__ = [
    "SDERNN",
    "AntisymmetricCell",
    "CoRNNCell",
    "DiagonalNoise",
    "ExpRNNCell",
    "LipschitzCell",
    "NoisyAntisymmetricCell",
    "NoisyCoRNNCell",
    "NoisyExpRNNCell",
    "NoisyLipschitzCell",
    "ResearchNoise",
    "SDECell",
    "brownian",
    "noise",
    "parametrization",
    "registry",
    "schemes",
]
