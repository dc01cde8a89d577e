"""Running one call under both kernel backends, for the Triton-vs-reference parity tests."""
import faircalib.kernels as K


def on_both(fn, *args, **kwargs):
    """fn(*args, **kwargs) under the reference and under the Triton backend -> (reference, triton)."""
    with K.use_backend("reference"):
        expected = fn(*args, **kwargs)
    with K.use_backend("triton"):
        actual = fn(*args, **kwargs)
    return expected, actual
