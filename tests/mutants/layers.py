"""Feed-forward mutants: dense, activations, norm, embedding, nodes, containers, reshape.

Each class is the real layer with ONE line of its backward wrong (the comment on that line says what the
right line is). Where the bug is easiest to state as "the right result, changed", the mutant calls the real
backward and changes the one quantity; either way the gradient it returns is the buggy rule's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import manualbp as mbp
from mutants.base import SeesIO, mutant_of, per_feature

# ---- dense.py ------------------------------------------------------------------------------------------------


@mutant_of(mbp.Dense)
class DenseDxNoTranspose(mbp.Dense):
    """dx = dy W (runs only because this W is square): BP2's W^T written as W."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, dy @ params["W"]  # right: dy @ W.T


@mutant_of(mbp.Dense)
class DenseDbMean(mbp.Dense):
    """db averaged over the batch instead of summed (BP3 sums the deltas; the head already divided by N)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        grads["b"] = jnp.mean(dy.reshape(-1, dy.shape[-1]), axis=0)  # right: jnp.sum
        return grads, dx


@mutant_of(mbp.Dense)
class DenseForgetsDb(mbp.Dense):
    """An omission: the backward returns dW and forgets db (the params tree has both)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {"W": grads["W"]}, dx  # right: {"W": ..., "b": ...}


@mutant_of(mbp.Dense)
class DenseDWReshapeNotTranspose(SeesIO, mbp.Dense):
    """dW = (dy^T x).reshape(W.shape): a missing transpose that a reshape hides (the shapes still agree)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache[0], dy)
        x2, dy2 = cache[1].reshape(-1, cache[1].shape[-1]), dy.reshape(-1, dy.shape[-1])
        grads["W"] = (dy2.T @ x2).reshape(params["W"].shape)  # right: x2.T @ dy2
        return grads, dx


@mutant_of(mbp.Dense)
class DenseTimeMajorRows(SeesIO, mbp.Dense):
    """Time-distributed dW with x's rows folded time-major and dy's batch-major: x_(b,t) paired with the wrong dy."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache[0], dy)
        x = cache[1]
        grads["W"] = jnp.swapaxes(x, 0, 1).reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])  # right: x.reshape
        return grads, dx


# ---- activations.py ------------------------------------------------------------------------------------------


@mutant_of(mbp.Tanh)
class TanhOneMinusY(SeesIO, mbp.Tanh):
    """tanh' = 1 - y instead of 1 - y^2."""

    def backward(self, params, cache, dy):
        return {}, dy * (1 - cache[2])  # right: 1 - y * y


@mutant_of(mbp.Tanh)
class TanhReturnsNoDx(mbp.Tanh):
    """An omission: the backward returns dx = None (as if its input needed no gradient)."""

    def backward(self, params, cache, dy):
        return {}, None  # right: dy * (1 - y) * (1 + y)


@mutant_of(mbp.Sigmoid)
class SigmoidOfOutput(SeesIO, mbp.Sigmoid):
    """sigma'(z) = s(1 - s) evaluated at s = sigma(y), the cached OUTPUT, instead of s = y."""

    def backward(self, params, cache, dy):
        s = jax.nn.sigmoid(cache[2])  # right: s = y
        return {}, dy * s * (1 - s)


@mutant_of(mbp.ReLU)
class ReLUPrimeZeroIsOne(SeesIO, mbp.ReLU):
    """ReLU'(0) = 1 ([x >= 0]) instead of 0 (jax.nn.relu's convention): differs only where x is exactly 0."""

    def backward(self, params, cache, dy):
        return {}, jnp.where(cache[1] >= 0, dy, 0)  # right: x > 0


@mutant_of(mbp.LeakyReLU)
class LeakyReLUSlopeDropped(SeesIO, mbp.LeakyReLU):
    """LeakyReLU' = 0 on the negative side (ReLU's rule) instead of the slope s."""

    def backward(self, params, cache, dy):
        return {}, jnp.where(cache[1] >= 0, dy, 0)  # right: negative_slope * dy


@mutant_of(mbp.Softplus)
class SoftplusSignFlip(SeesIO, mbp.Softplus):
    """softplus' = sigmoid(-x) instead of sigmoid(x)."""

    def backward(self, params, cache, dy):
        return {}, dy * jax.nn.sigmoid(-cache[1])  # right: sigmoid(x)


_C = (2 / jnp.pi) ** 0.5


@mutant_of(mbp.GELU)
class GELUTanhCubeRule(SeesIO, mbp.GELU):
    """Tanh-approximate GELU with d(x^3)/dx written as x^2 (the power rule's 3 dropped)."""

    def backward(self, params, cache, dy):
        x = cache[1]
        t = jnp.tanh(_C * (x + 0.044715 * x**3))
        du = _C * (1 + 0.044715 * x * x)  # right: 1 + 3 * 0.044715 * x * x
        return {}, dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)


@mutant_of(mbp.GELU)
class GELUErfProductRule(SeesIO, mbp.GELU):
    """Exact GELU x Phi(x) with derivative Phi(x): the product rule's x phi(x) term dropped."""

    def backward(self, params, cache, dy):
        return {}, dy * 0.5 * (1 + lax.erf(cache[1] / 2**0.5))  # right: Phi(x) + x phi(x)


@mutant_of(mbp.GELU)
class GELUTanhForwardErfBackward(SeesIO, mbp.GELU):
    """Forward the tanh approximation, backward the EXACT derivative Phi(x) + x phi(x): ~1e-3 apart."""

    def backward(self, params, cache, dy):
        x = cache[1]
        pdf = jnp.exp(-0.5 * x * x) / (2 * jnp.pi) ** 0.5
        return {}, dy * (0.5 * (1 + lax.erf(x / 2**0.5)) + x * pdf)  # right: the tanh form's derivative


def swish(x):
    return x * jax.nn.sigmoid(x)


def swish_derivative(x):
    s = jax.nn.sigmoid(x)
    return s * (1 + x * (1 - s))


def swish_derivative_wrong(x):
    return jax.nn.sigmoid(x)  # a user's derivative with the product rule's x sigma'(x) term dropped


# ---- norm.py ---------------------------------------------------------------------------------------------------


def _stats(layer, x, axes):
    """(xhat, rstd, n) over ``axes``, recomputed from x."""
    mu = jnp.mean(x, axis=axes, keepdims=True)
    rstd = lax.rsqrt(jnp.mean((x - mu) ** 2, axis=axes, keepdims=True) + layer.epsilon)
    n = 1
    for a in axes:
        n *= x.shape[a]
    return (x - mu) * rstd, rstd, n


@mutant_of(mbp.LayerNorm)
class LayerNormNoMeanTerm(SeesIO, mbp.LayerNorm):
    """dx = (rstd/D)(D dxhat - xhat sum(dxhat xhat)): the -sum(dxhat) term (the path through the mean) dropped."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache[0], dy)
        _, rstd, n = _stats(self, cache[1], (dy.ndim - 1,))
        dxhat = dy * per_feature(params["gamma"], dy.ndim)
        return grads, dx + rstd / n * jnp.sum(dxhat, axis=-1, keepdims=True)  # right: dx


@mutant_of(mbp.LayerNorm)
class LayerNormEpsOutsideRoot(SeesIO, mbp.LayerNorm):
    """Backward's rstd recomputed as 1 / (sqrt(var) + eps) while forward used 1 / sqrt(var + eps): ~eps apart."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache[0], dy)
        x = cache[1]
        var = jnp.var(x, axis=-1, keepdims=True)
        wrong = 1 / (jnp.sqrt(var) + self.epsilon)  # right: lax.rsqrt(var + eps)
        return grads, dx * wrong * jnp.sqrt(var + self.epsilon)  # dx is linear in rstd: rescale it to the wrong one


@mutant_of(mbp.LayerNorm)
class LayerNormDgammaFromX(SeesIO, mbp.LayerNorm):
    """dgamma = sum dy x, the raw input where the normalized xhat belongs."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache[0], dy)
        grads["gamma"] = jnp.sum((dy * cache[1]).reshape(-1, dy.shape[-1]), axis=0)  # right: dy * xhat
        return grads, dx


@mutant_of(mbp.BatchNorm)
class BatchNormNoVarianceTerm(SeesIO, mbp.BatchNorm):
    """dx = (rstd/N)(N dxhat - sum dxhat): the batch variance treated as a constant (its xhat sum(dxhat xhat) term dropped)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache[0], dy)
        axes = tuple(range(dy.ndim - 1))
        xhat, rstd, n = _stats(self, cache[1], axes)
        dxhat = dy * per_feature(params["gamma"], dy.ndim)
        return grads, dx + rstd / n * xhat * jnp.sum(dxhat * xhat, axis=axes, keepdims=True)  # right: dx


@mutant_of(mbp.BatchNorm)
class BatchNormCountsBatchOnly(SeesIO, mbp.BatchNorm):
    """On (B, H, W, C) the backward's N counts the batch B only, not the B H W entries each statistic averages."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache[0], dy)
        axes = tuple(range(dy.ndim - 1))
        xhat, rstd, _ = _stats(self, cache[1], axes)
        n = dy.shape[0]  # right: B H W
        dxhat = dy * per_feature(params["gamma"], dy.ndim)
        sums = jnp.sum(dxhat, axis=axes, keepdims=True), jnp.sum(dxhat * xhat, axis=axes, keepdims=True)
        return grads, (rstd / n) * (n * dxhat - sums[0] - xhat * sums[1])


# ---- embedding.py ----------------------------------------------------------------------------------------------


@mutant_of(mbp.Embedding)
class EmbeddingSetNotAdd(SeesIO, mbp.Embedding):
    """dE[id] = one dy row (.set) instead of the sum over every use of id (.add): wrong on repeated ids."""

    def backward(self, params, cache, dy):
        ids, E = cache[1], params["E"]
        return {"E": jnp.zeros_like(E).at[ids.reshape(-1)].set(dy.reshape(-1, E.shape[1]))}, None  # right: .add


@mutant_of(mbp.Embedding)
class EmbeddingMeanOverUses(SeesIO, mbp.Embedding):
    """dE[id] averaged over the uses of id instead of summed."""

    def backward(self, params, cache, dy):
        (grads, _), ids = super().backward(params, cache[0], dy), cache[1].reshape(-1)
        uses = jnp.zeros(params["E"].shape[0], dy.dtype).at[ids].add(1)
        return {"E": grads["E"] / jnp.maximum(uses, 1)[:, None]}, None  # right: grads["E"]


# ---- nodes.py, residual.py, sequential.py, reshape.py ---------------------------------------------------------


@mutant_of(mbp.Add)
class AddSplitsGradient(mbp.Add):
    """The add node SPLITS dy between its inputs (da = db = dy / 2) instead of passing it to both."""

    def backward(self, params, cache, dy):
        return {}, (dy / 2, dy / 2)  # right: (dy, dy)


@mutant_of(mbp.Multiply)
class MultiplyOwnInput(mbp.Multiply):
    """da = dy * a, db = dy * b: each input scaled by ITSELF instead of by the other input."""

    def backward(self, params, cache, dy):
        a, b = cache
        return {}, (dy * a, dy * b)  # right: (dy * b, dy * a)


@mutant_of(mbp.Residual)
class ResidualNoIdentity(mbp.Residual):
    """dx = (dF/dx)^T dy: the identity path's dy dropped from y = x + F(x)."""

    def backward(self, params, cache, dy):
        return self.block.backward(params, cache, dy)  # right: (dparams, dy + dx_block)

    def replace_children(self, layers):
        return type(self)(*layers)


@mutant_of(mbp.Parallel)
class ParallelLastBranchOnly(mbp.Parallel):
    """dx = the LAST branch's dx: each branch overwrites it instead of adding (x is used by every branch)."""

    def backward(self, params, cache, dy):
        grads, dx = [], None
        for layer, p, c, d in zip(self.layers, self.split_params(params), cache, dy):
            g, dx = layer.backward(p, c, d)  # right: dx = dx + dx_i
            grads.append(g)
        return tuple(grads), dx


@mutant_of(mbp.Flatten)
class FlattenChannelsFirst(SeesIO, mbp.Flatten):
    """dx un-flattened channels-first, (N, C, H, W) transposed to NHWC: the forward flattened NHWC row-major."""

    def backward(self, params, cache, dy):
        n, h, w, c = cache[1].shape
        return {}, dy.reshape(n, c, h, w).transpose(0, 2, 3, 1)  # right: dy.reshape(n, h, w, c)
