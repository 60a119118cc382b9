"""Interpretability for one image and one question: attention to the image tokens, gradient × input
on the pixels, the answer's log-probability with and without the image, and a logit lens."""

from omnifuse.explain.attribution import Explanation, explain
from omnifuse.explain.inputs import open_image, parse_layers
from omnifuse.explain.lens import LensResult, logit_lens
from omnifuse.explain.render import write_explanation

__all__ = [
    "Explanation",
    "LensResult",
    "explain",
    "logit_lens",
    "open_image",
    "parse_layers",
    "write_explanation",
]
