"""Interpretability for one image and one question: attention to the image tokens, gradient × input
on the pixels, Kernel SHAP / LIME / occlusion of image regions and question tokens, the answer's
log-probability with and without the image, and a logit lens; SHAP / LIME / occlusion of a fusion
classifier's features per modality."""

from omnifuse.explain.attribution import Explanation, explain
from omnifuse.explain.classifier import ClassifierAttribution, explain_classifier
from omnifuse.explain.inputs import open_image, parse_layers
from omnifuse.explain.lens import LensResult, logit_lens
from omnifuse.explain.perturbation import METHODS, PerturbationResult, PerturbationSettings
from omnifuse.explain.render import write_explanation

__all__ = [
    "METHODS",
    "ClassifierAttribution",
    "Explanation",
    "LensResult",
    "PerturbationResult",
    "PerturbationSettings",
    "explain",
    "explain_classifier",
    "logit_lens",
    "open_image",
    "parse_layers",
    "write_explanation",
]
