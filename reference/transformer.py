"""Reference TransformerBlock: the pre-norm block written out, each child through its own reference forward and taps."""

import manualbp.layers as mbp

from .dispatch import apply, forward


@forward.register
def _(layer: mbp.TransformerBlock, params, x, taps):
    children = dict(layer.children)

    def run(name, h):
        return apply(children[name], params[name], h, taps.child(name))

    def maybe_drop(name, h):
        return run(name, h) if name in children else h

    x = x + maybe_drop("drop1", run("attn", run("ln1", x)))
    return x + maybe_drop("drop2", run("fc2", run("gelu", run("fc1", run("ln2", x)))))
