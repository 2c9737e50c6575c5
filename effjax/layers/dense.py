"""Dense layer whose weight gradient is one plain matmul over the flattened rows, for XLA:CPU.

    y = x W + b,   dx = dy Wᵀ,   dW = Σ_rows xᵀ dy,   db = Σ_rows dy          x [..., m], W [m, n]

Autodiff gives the same maths; on XLA:CPU (jaxlib 0.10.2) it made the weight gradient of a [B, N, m] input out
of a transposed copy of dy fused with the ops that produce dy, which ran several times slower than a plain
transpose. `weight_gradient` flattens both operands to [rows, ·] behind an optimisation barrier, so the
matmul reads them as they are: a CRATE-T training step is ≈ 5% faster (experiments/crate/README.md, levers).
Parameters are those of `flax.linen.Dense` ("kernel" [m, n], "bias" [n]), so checkpoints and converters do
not change.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def weight_gradient(x, dy):
  """Σ over all leading axes of xᵀ dy: x [..., m], dy [..., n] -> [m, n]."""
  x, dy = jax.lax.optimization_barrier((x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])))
  return jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())))


@jax.custom_vjp
def matmul(x, kernel):
  """x [..., m] @ kernel [m, n] -> [..., n], with `weight_gradient` in its backward."""
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(res, dy):
  x, kernel = res
  return dy @ kernel.T, weight_gradient(x, dy).astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """A drop-in for `flax.linen.Dense(features, use_bias, kernel_init, bias_init)`: [..., m] -> [..., features],
  float32 parameters, computed in the dtype of the input and the parameters combined."""
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
    dtype = jnp.result_type(x, kernel) if bias is None else jnp.result_type(x, kernel, bias)
    y = matmul(x.astype(dtype), kernel.astype(dtype))
    return y if bias is None else y + bias.astype(dtype)
