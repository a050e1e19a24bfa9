"""The catalog: every mutant with its scene, its clean twin, and the quantity its first failing row must have."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

import manualbp as mbp
from mutants import collectives as c
from mutants import heads as h
from mutants import images as i
from mutants import layers as m
from mutants import recurrent as r
from mutants import scenes as s
from mutants import sequence as q
from mutants import transformer as t


class Mutant(NamedTuple):
    """One bug. ``expect`` is a regex the first failing row's quantity must match in full."""

    name: str
    family: str  # the file in manualbp/layers/ the mutated layer comes from
    bug: str
    scene: Callable
    clean: object
    mutant: object
    expect: str
    inside: str | None = None  # the child of the mutated container whose row is expected (None: its own)


def _entry(scene, clean, mutant, expect, name=None, bug=None, family=None, inside=None) -> Mutant:
    family = family or type(clean).__module__.rsplit(".", 1)[-1] + ".py"
    bug = bug or (type(mutant).__doc__ or "").strip().splitlines()[0]
    return Mutant(name or type(mutant).__name__, family, bug, scene, clean, mutant, expect, inside)


def _fork():
    return mbp.Dense(6), mbp.Sequential(mbp.Dense(6), mbp.Tanh())


def _block():
    return mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(6))


DX, STEP_T2 = "dL/dx", r"dL/dh\[t=4\]"  # T = 6: a broken BPTT carry first shows at t = T - 2
ATTN = r"dW[kqv]"  # the first of the attention's parameter rows (dWk, dWo, dWq, dWv, ...) that P's bug reaches
HEAD = "dL/dlogits"  # a head's bug enters at its own row, "head <Name> dL/dlogits"
KEY = jax.random.key(0)  # the Dropouts' key: manual and reference draw the same mask from it

CATALOG: list[Mutant] = [
    # dense.py
    _entry(s.dense_chain, mbp.Dense(6), m.DenseDxNoTranspose(6), DX),
    _entry(s.dense_chain, mbp.Dense(4), m.DenseDbMean(4), "db"),
    _entry(s.dense_chain, mbp.Dense(4), m.DenseForgetsDb(4), "db"),
    _entry(s.dense_chain, mbp.Dense(4), m.DenseDWReshapeNotTranspose(4), "dW"),
    _entry(s.time_distributed, mbp.Dense(4), m.DenseTimeMajorRows(4), "dW"),
    # activations.py
    _entry(s.activation, mbp.Tanh(), m.TanhOneMinusY(), DX),
    _entry(s.activation, mbp.Tanh(), m.TanhReturnsNoDx(), DX),
    _entry(s.activation, mbp.Sigmoid(), m.SigmoidOfOutput(), DX),
    _entry(s.blob_relu, mbp.ReLU(), m.ReLUPrimeZeroIsOne(), DX),
    _entry(s.activation, mbp.LeakyReLU(0.1), m.LeakyReLUSlopeDropped(0.1), DX),
    _entry(s.activation, mbp.Softplus(), m.SoftplusSignFlip(), DX),
    _entry(s.activation, mbp.GELU(), m.GELUTanhCubeRule(), DX),
    _entry(s.activation, mbp.GELU(approximate=False), m.GELUErfProductRule(approximate=False), DX),
    _entry(s.activation, mbp.GELU(), m.GELUTanhForwardErfBackward(), DX),
    _entry(s.activation, mbp.Elementwise(m.swish, m.swish_derivative, label="swish"),
           mbp.Elementwise(m.swish, m.swish_derivative_wrong, label="swish"), DX, name="ElementwiseSwishProductRule",
           bug="a user's Elementwise swish with derivative sigma(x): the product rule's x sigma'(x) term dropped"),
    # conv.py
    _entry(s.conv, mbp.Conv2D(3, 3), i.ConvKernelNotFlipped(3, 3), DX),
    _entry(s.conv, mbp.Conv2D(3, 3, stride=2), i.ConvPadSidesSwapped(3, 3, stride=2), DX),  # SAME pads (0, 1)
    _entry(lambda slot: s.conv(slot, size=7, channels=4), mbp.Conv2D(3, 3, padding="VALID", dilation=2),
           i.ConvDWDilationIgnored(3, 3, padding="VALID", dilation=2), "dW"),
    _entry(s.conv, mbp.Conv2D(3, 3, padding=1), i.ConvDbMeanOverPositions(3, 3, padding=1), "db"),
    # pool.py
    _entry(s.blob_pool, mbp.MaxPool2D(2), i.MaxPoolTiesSplit(2), DX),
    _entry(s.blob_pool, mbp.MaxPool2D(2), i.MaxPoolTiesDuplicated(2), DX),
    _entry(s.avg_pool, mbp.AvgPool2D(2, padding="SAME"), i.AvgPoolNoDivide(2, padding="SAME"), DX),
    _entry(s.avg_pool, mbp.AvgPool2D(2, padding="SAME"), i.AvgPoolCountExcludesPad(2, padding="SAME"), DX),
    # conv1d.py, conv_transpose.py, global_pool.py
    _entry(s.conv1d, mbp.Conv1D(3, 3, padding="VALID", dilation=2),
           i.Conv1DdWDilationIgnored(3, 3, padding="VALID", dilation=2), "dW"),
    _entry(s.conv_transpose, mbp.ConvTranspose2D(2, 3, stride=2), i.ConvTransposeKernelNotFlipped(2, 3, stride=2), DX),
    _entry(s.global_pool, mbp.GlobalMaxPool2D(), i.GlobalMaxPoolTiesSplit(), DX),
    _entry(s.global_pool, mbp.GlobalAvgPool2D(), i.GlobalAvgPoolNoDivide(), DX),
    # rnn.py
    _entry(s.token_rnn, mbp.RNN(5), r.RNNTruncatedBPTT(5), STEP_T2),
    _entry(s.token_rnn, mbp.RNN(5), r.RNNCarryNoTranspose(5), STEP_T2),
    _entry(s.token_rnn, mbp.RNN(5), r.RNNdWhFromCurrentState(5), "dWh"),
    _entry(s.rnn_given_state, mbp.RNN(5, initial_state="given"), r.RNNInitialStateNoGradient(5, initial_state="given"),
           DX + ".1"),
    # recurrent_base.py (what every recurrent layer shares: here the padded steps of variable lengths)
    _entry(s.variable_rnn, mbp.RNN(5, variable_length=True), r.RNNPaddedStepsKeepDy(5, variable_length=True),
           r"dL/dh\[t=5\]", family="recurrent_base.py"),
    # lstm.py
    _entry(s.lstm, mbp.LSTM(5, return_sequences=False), r.LSTMForgetFromCurrentCell(5, return_sequences=False),
           r"dL/d[hc]\[t=4\]"),
    _entry(s.lstm, mbp.LSTM(5, return_sequences=False), r.LSTMCarryWithoutForget(5, return_sequences=False),
           r"dL/dc\[t=4\]"),
    _entry(s.lstm, mbp.LSTM(5, return_sequences=False), r.LSTMNoTanhPrime(5, return_sequences=False), r"dL/dc\[t=5\]"),
    # gru.py, bidirectional.py
    _entry(s.token_rnn, mbp.GRU(5), q.GRUNoDirectPath(5), STEP_T2),
    _entry(s.token_rnn, mbp.GRU(5), q.GRUResetWithoutBhn(5), STEP_T2),
    _entry(s.variable_last, mbp.GRU(5, return_sequences=False, variable_length=True),
           q.GRUPaddedStepsUpdate(5, return_sequences=False, variable_length=True), r"dL/dh\[t=4\]"),
    _entry(s.sequence, mbp.Bidirectional(mbp.RNN(5)), q.BidirectionalDxNotReversed(mbp.RNN(5)), DX),
    _entry(s.variable_rnn, mbp.Bidirectional(mbp.RNN(5, variable_length=True)),
           q.BidirectionalPaddingReversed(mbp.RNN(5, variable_length=True)), DX + ".0"),
    # embedding.py, positional.py
    _entry(s.positional, mbp.PositionalEmbedding(8, 4), q.PositionalMeanOverBatch(8, 4), "dP"),
    _entry(s.token_embedding, mbp.Embedding(10, 4), m.EmbeddingSetNotAdd(10, 4), "dE"),
    _entry(s.token_embedding, mbp.Embedding(10, 4), m.EmbeddingMeanOverUses(10, 4), "dE"),
    # norm.py
    _entry(s.layer_norm, mbp.LayerNorm(), m.LayerNormNoMeanTerm(), DX),
    _entry(s.layer_norm, mbp.LayerNorm(), m.LayerNormEpsOutsideRoot(), DX),
    _entry(s.layer_norm, mbp.LayerNorm(), m.LayerNormDgammaFromX(), "dgamma"),
    _entry(s.batch_norm, mbp.BatchNorm(), m.BatchNormNoVarianceTerm(), DX),
    _entry(s.batch_norm, mbp.BatchNorm(), m.BatchNormCountsBatchOnly(), DX),
    # residual.py, nodes.py, sequential.py, reshape.py
    _entry(s.around, mbp.Residual(_block()), m.ResidualNoIdentity(_block()), DX),
    _entry(s.fork_node, mbp.Add(), m.AddSplitsGradient(), DX + ".0"),
    _entry(s.fork_node, mbp.Multiply(), m.MultiplyOwnInput(), DX + ".0"),
    _entry(s.fork, mbp.Parallel(*_fork()), m.ParallelLastBranchOnly(*_fork()), DX),
    _entry(s.flatten, mbp.Flatten(), m.FlattenChannelsFirst(), DX),
    # softmax.py, dropout.py, attention.py, flash.py, transformer.py
    _entry(s.activation, mbp.Softmax(), t.SoftmaxNoRowsum(), DX),
    _entry(s.activation, mbp.Dropout(0.3, key=KEY), t.DropoutNoScale(0.3, key=KEY), DX),
    _entry(s.features, mbp.MultiHeadAttention(2, causal=True), t.AttentionCausalMaskNotReapplied(2, causal=True),
           ATTN),
    _entry(s.features, mbp.MultiHeadAttention(2, causal=True), t.FlashNoRowsumTerm(2, causal=True), ATTN,
           family="flash.py"),
    _entry(s.features, mbp.MultiHeadAttention(2), t.FlashDKUnscaled(2), "dWk", family="flash.py"),
    _entry(s.features, mbp.TransformerBlock(8, 2, hidden=16, causal=True),
           t.BlockFirstResidualNoIdentity(8, 2, hidden=16, causal=True), DX),
    _entry(s.features, mbp.TransformerBlock(8, 2, hidden=16, causal=True),
           t.BlockSecondResidualNoIdentity(8, 2, hidden=16, causal=True), "dL/dy", inside="attn"),
    # heads.py
    _entry(s.softmax_head, mbp.SoftmaxCrossEntropy(), h.SoftmaxCEForgotMean(), HEAD),
    _entry(lambda slot: s.softmax_head(slot, mask=True), mbp.SoftmaxCrossEntropy(), h.SoftmaxCEMaskIgnored(), HEAD),
    _entry(s.sigmoid_head, mbp.SigmoidBinaryCrossEntropy(), h.SigmoidBCESquashedTwice(), HEAD),
    _entry(s.squared_head, mbp.MeanSquaredError(), h.MSEFactorTwo(), HEAD),
    _entry(s.squared_head, mbp.MeanSquaredError(), h.MSEResidualReversed(), HEAD),
    _entry(lambda slot: s.squared_head(slot, mask=True), mbp.MeanSquaredError(), h.MSEMaskMeanOverAll(), HEAD),
]

# What each bug IS, as a failing row's diagnosis names it (manualbp.verify.forensics), decided from the bug alone:
# a scale, a sign, a rearrangement, a missing path, a term of a named sum, a quantity left out (structure), an error
# on a named set (localised), or a wrong formula ("no simple pattern": then that is the right diagnosis, and any
# structured one a misattribution). Where the bug's cause is a rearrangement of something OTHER than the compared
# quantity (a kernel not flipped inside a convolution, dx = dy W for dy W^T), the quantity's difference is a formula.
KIND = {
    "DenseDxNoTranspose": "no simple pattern", "DenseDbMean": "scale", "DenseForgetsDb": "structure",
    "DenseDWReshapeNotTranspose": "rearranged", "DenseTimeMajorRows": "no simple pattern",
    "TanhOneMinusY": "no simple pattern", "TanhReturnsNoDx": "structure", "SigmoidOfOutput": "no simple pattern",
    "ReLUPrimeZeroIsOne": "localised", "LeakyReLUSlopeDropped": "localised", "SoftplusSignFlip": "no simple pattern",
    "GELUTanhCubeRule": "no simple pattern", "GELUErfProductRule": "no simple pattern",
    "GELUTanhForwardErfBackward": "no simple pattern", "ElementwiseSwishProductRule": "no simple pattern",
    "ConvKernelNotFlipped": "no simple pattern", "ConvPadSidesSwapped": "rearranged",
    "ConvDWDilationIgnored": "no simple pattern", "ConvDbMeanOverPositions": "scale",
    "MaxPoolTiesSplit": "localised", "MaxPoolTiesDuplicated": "localised", "AvgPoolNoDivide": "scale",
    "AvgPoolCountExcludesPad": "localised", "Conv1DdWDilationIgnored": "no simple pattern",
    "ConvTransposeKernelNotFlipped": "no simple pattern", "GlobalMaxPoolTiesSplit": "localised",
    "GlobalAvgPoolNoDivide": "scale",
    "RNNTruncatedBPTT": "localised", "RNNCarryNoTranspose": "localised", "RNNdWhFromCurrentState": "no simple pattern",
    "RNNInitialStateNoGradient": "zero", "RNNPaddedStepsKeepDy": "localised",
    "LSTMForgetFromCurrentCell": "localised", "LSTMCarryWithoutForget": "localised",
    "LSTMNoTanhPrime": "no simple pattern", "GRUNoDirectPath": "localised", "GRUResetWithoutBhn": "localised",
    "GRUPaddedStepsUpdate": "localised", "BidirectionalDxNotReversed": "rearranged",
    "BidirectionalPaddingReversed": "localised", "PositionalMeanOverBatch": "scale",
    "EmbeddingSetNotAdd": "localised", "EmbeddingMeanOverUses": "localised",
    "LayerNormNoMeanTerm": "term", "LayerNormEpsOutsideRoot": "no simple pattern",
    "LayerNormDgammaFromX": "no simple pattern", "BatchNormNoVarianceTerm": "term", "BatchNormCountsBatchOnly": "term",
    "ResidualNoIdentity": "missing path", "AddSplitsGradient": "scale", "MultiplyOwnInput": "no simple pattern",
    "ParallelLastBranchOnly": "missing path", "FlattenChannelsFirst": "rearranged",
    "SoftmaxNoRowsum": "no simple pattern", "DropoutNoScale": "scale",
    "AttentionCausalMaskNotReapplied": "no simple pattern", "FlashNoRowsumTerm": "no simple pattern",
    "FlashDKUnscaled": "scale", "BlockFirstResidualNoIdentity": "missing path",
    "BlockSecondResidualNoIdentity": "missing path",
    "SoftmaxCEForgotMean": "scale", "SoftmaxCEMaskIgnored": "localised", "SigmoidBCESquashedTwice": "no simple pattern",
    "MSEFactorTwo": "scale", "MSEResidualReversed": "sign", "MSEMaskMeanOverAll": "scale",
}


def _kernel_forced(kernel: str) -> list[Mutant]:
    """The attention kernel's bugs again with ``kernel`` forced (a CPU's "auto" is "loop", which the entries above run)."""
    family = "flash_pallas.py" if kernel == "pallas" else "flash.py"
    causal = dict(causal=True, kernel=kernel)
    return [
        _entry(s.features, mbp.MultiHeadAttention(2, **causal), t.AttentionCausalMaskNotReapplied(2, **causal), ATTN,
               name=f"AttentionCausalMaskNotReapplied[{kernel}]"),
        _entry(s.features, mbp.MultiHeadAttention(2, **causal), t.FlashNoRowsumTerm(2, **causal), ATTN,
               name=f"FlashNoRowsumTerm[{kernel}]", family=family),
        _entry(s.features, mbp.MultiHeadAttention(2, kernel=kernel), t.FlashDKUnscaled(2, kernel=kernel), "dWk",
               name=f"FlashDKUnscaled[{kernel}]", family=family),
    ]


CATALOG += _kernel_forced("batched") + _kernel_forced("pallas")

KIND.update({m.name: KIND[m.name.split("[")[0]] for m in CATALOG if "[" in m.name})  # a forced kernel: the same bug

# clean models beyond the catalog's own: the LSTM written out in mutants.recurrent, with no bug, must pass
CONTROLS = [("LSTMTextbook", s.lstm, r.LSTMTextbook(5, return_sequences=False)),
            ("GRUTextbook", s.token_rnn, q.GRUTextbook(5)),
            ("AttentionTextbook", s.features, t.AttentionTextbook(2, causal=True)),
            ("FlashBlockTextbook", s.features, t.FlashBlockTextbook(2, causal=True)),
            ("FlashBlockTextbook[batched]", s.features, t.FlashBlockTextbook(2, causal=True, kernel="batched")),
            ("FlashBlockTextbook[pallas]", s.features, t.FlashBlockTextbook(2, causal=True, kernel="pallas"))]


def parallel_catalog(mesh, heads: int = 4) -> list[Mutant]:
    """The collective bugs (``mutants.collectives``) on ``mesh``: they show only where its axes have >= 2 devices.

    Built for a given mesh (the devices exist only in the process that runs them), the attention with ``heads``
    heads (they must split over the model axis); the reduce done in the forward is the one bug here whose first
    failing row is a forward row, the layer's own.
    """
    col, fsdp = mbp.ColumnParallelDense(8, mesh), mbp.FSDPDense(8, mesh)
    attn = mbp.ParallelAttention(heads, mesh, causal=True)
    gathered = mbp.ColumnParallelDense(8, mesh, gather_output=True)
    return [
        _entry(s.sharded, col, c.ColumnDxNotReduced(8, mesh), DX),
        _entry(s.sharded, col, c.ColumnDxReducedTwice(8, mesh), DX),
        _entry(s.sharded, col, c.ColumnReduceInForward(8, mesh), "forward y"),
        _entry(s.sharded, gathered, c.ColumnGatherSummed(8, mesh, gather_output=True), "d[Wb]"),
        _entry(s.sharded_features, attn, c.AttentionDxNotReduced(heads, mesh, causal=True), DX),
        _entry(s.sharded, fsdp, c.FSDPGradientNotSummed(8, mesh), "d[Wb]"),
    ]
