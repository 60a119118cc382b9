"""One place decides where a model runs and in which precision (:mod:`.placement`), and how several
processes share the work (:mod:`.distributed`). Nothing else in omnifuse calls ``.cuda()`` or picks a
dtype: it asks the model (``next(model.parameters()).device``) or the processor (``processor.device``)."""

from omnifuse.runtime.distributed import World, current_world, init_world, sum_across
from omnifuse.runtime.placement import (
    Placement,
    configure_model,
    load_dtype,
    place,
    place_model,
    placement_of,
    resolve_placement,
)

__all__ = [
    "Placement",
    "World",
    "configure_model",
    "current_world",
    "init_world",
    "load_dtype",
    "place",
    "place_model",
    "placement_of",
    "resolve_placement",
    "sum_across",
]
