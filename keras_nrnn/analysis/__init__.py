"""The theory of Noisy RNNs as measurements on trained models (DESIGN section 2).

- `jacobian_product_norms`, `jacobian_product`, `state_jacobians`, `trajectory`: state-to-state
  Jacobians along the deterministic trajectory and the spectral norms of their products.
- `lyapunov_bounds`, `lyapunov_exponent`: Theorem 3's interval and a Monte Carlo estimate.
- `implicit_regularizer`, `noisy_loss_gap`: eq. 18 and a Monte Carlo check of Theorem 1.
- `margin_lower_bounds`: Theorem 2.
- `top_hessian_eigenvalue`: sharpness of the loss (power iteration on Hessian-vector products).
- `fisher_rao_norm`: `E[<theta, grad loss>^2]`.
- `memory_function`, `memory_decay_rate`, `step_response`: the curse-of-memory view.

Written with `keras.ops` and numpy; the derivatives are taken by the backend's autodiff
(TensorFlow, JAX or PyTorch). See `docs/analysis.md`.
"""

from keras_nrnn.analysis.fisher_rao import fisher_rao_norm
from keras_nrnn.analysis.hessian import top_hessian_eigenvalue
from keras_nrnn.analysis.jacobians import (
    jacobian_product,
    jacobian_product_norms,
    state_jacobians,
    trajectory,
)
from keras_nrnn.analysis.lyapunov import lyapunov_bounds, lyapunov_exponent
from keras_nrnn.analysis.margins import margin_lower_bounds
from keras_nrnn.analysis.memory import memory_decay_rate, memory_function, step_response
from keras_nrnn.analysis.regularizer import implicit_regularizer, noisy_loss_gap

__all__ = [
    "fisher_rao_norm",
    "implicit_regularizer",
    "jacobian_product",
    "jacobian_product_norms",
    "lyapunov_bounds",
    "lyapunov_exponent",
    "margin_lower_bounds",
    "memory_decay_rate",
    "memory_function",
    "noisy_loss_gap",
    "state_jacobians",
    "step_response",
    "top_hessian_eigenvalue",
    "trajectory",
]
