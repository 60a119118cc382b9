"""The alignment methods as one shape: ``train`` (build and fit, logging a held-out measure per epoch),
``evaluate`` (the scores, from the trained state), ``weights`` (what model.safetensors stores) and
``restore`` (the trained state again from those weights, for ``omnifuse eval``). Models, losses and
solvers are the components of :mod:`omnifuse.alignment`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from omnifuse.alignment.cca import DeepCCA, LinearCCA, StoredCCA, canonical_correlations, total_correlation
from omnifuse.alignment.contrastive import ClipCriterion, DualEncoder, SigLipCriterion
from omnifuse.alignment.cycle import CycleAutoencoder
from omnifuse.alignment.heads import mlp
from omnifuse.alignment.retrieval import cosine_similarity
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import (
    AlignRecipe,
    CCAMethodSpec,
    ClipMethodSpec,
    CycleMethodSpec,
    DeepCCAMethodSpec,
    SigLipMethodSpec,
)
from omnifuse.runtime import Placement, place_model
from omnifuse.tasks.align.evaluation import Similarity, mean_r1, retrieval_eval, retrieval_predictions
from omnifuse.tasks.align.features import Gallery, Pairs
from omnifuse.tasks.align.loop import fit

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Context:
    """What a method trains and is scored on. ``train``, ``eval`` and ``gallery`` are on ``placement``'s
    device; a method's module is put there by :meth:`place`, its forward passes run under
    :meth:`autocast`; the scikit-learn parts (linear CCA, PCA) read CPU numpy copies (:func:`numpy`)."""

    recipe: AlignRecipe
    train: Pairs
    eval: Pairs
    gallery: Gallery
    names: list[str]
    progress: bool
    placement: Placement

    def place(self, model: torch.nn.Module, trained: bool = True) -> torch.nn.Module:
        """``model`` on the device: trained, its parameters stay float32 (autocast computes in the low
        precision); restored for evaluation, they are stored in the compute dtype."""
        names = [n for n, _ in model.named_parameters()] if trained else None
        return place_model(model, self.placement, names)

    def autocast(self):
        return self.placement.autocast()

    def fit(self, model: torch.nn.Module, loss, tensors, monitor: Callable[[], dict]) -> list[dict]:
        """The recipe's training loop; after each epoch the loss and ``monitor()`` (held-out) are logged."""
        t = self.recipe.train
        history: list[dict] = []

        def on_epoch(epoch: int, value: float) -> None:
            with torch.no_grad(), self.autocast():
                model.eval()
                history.append({"epoch": epoch + 1, "loss": value, **monitor()})

        fit(
            model,
            loss,
            tensors,
            epochs=t.epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            weight_decay=t.weight_decay,
            seed=self.recipe.seed,
            on_epoch=on_epoch,
            progress=self.progress,
            description=f"align ({self.recipe.method.type})",
            placement=self.placement,
        )
        return history


class Method(Protocol):
    """One alignment method. ``trained`` is whatever its evaluation needs (a module, a fitted CCA, both)."""

    def train(self, ctx: Context) -> tuple[Any, list[dict]]:
        """Build and fit; the per-epoch history (loss and a held-out measure) beside the trained state."""
        ...

    def evaluate(self, ctx: Context, trained: Any) -> dict:
        """eval.json's scores: the same at the end of training and in ``omnifuse eval``."""
        ...

    def predictions(self, ctx: Context, trained: Any) -> list[dict]:
        """predictions.jsonl: one record per query (``compare`` pairs them)."""
        ...

    def weights(self, trained: Any) -> Tensors:
        """What model.safetensors stores."""
        ...

    def restore(self, ctx: Context, tensors: Tensors, converged: bool) -> Any:
        """The trained state again, from those weights."""
        ...

    def converged(self, trained: Any) -> bool:
        """False when a solver stopped at its iteration limit (kept in the weights' metadata)."""
        ...


def numpy(x: torch.Tensor) -> np.ndarray:
    """A CPU float32 numpy copy of ``x`` (wherever it is, in whatever float dtype): what scikit-learn reads."""
    return x.detach().float().cpu().numpy()


def _state(model: torch.nn.Module) -> Tensors:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _tensors(arrays: dict[str, np.ndarray]) -> Tensors:
    return {k: torch.as_tensor(v, dtype=torch.float32, device="cpu").contiguous() for k, v in arrays.items()}


def _load(model: torch.nn.Module, tensors: Tensors) -> torch.nn.Module:
    """``model`` with its state from a run's weights (every key it has must be there, in its shape)."""
    own = model.state_dict()
    bad = [k for k, v in own.items() if k not in tensors or tensors[k].shape != v.shape]
    if bad:
        raise OmnifuseError(
            f"the run's weights lack or misshape {', '.join(bad[:5])} of the {type(model).__name__}; "
            "model.safetensors was saved from another recipe, or is damaged"
        )
    model.load_state_dict({k: tensors[k] for k in own})
    return model.eval()


def _cca_similarity(cca: LinearCCA | StoredCCA) -> Similarity:
    """Cosine similarity of the canonical variates."""

    def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, None]:
        ua, ub = cca.transform(numpy(a), numpy(b))
        return cosine_similarity(ua, ub), None

    return similarity


class _Retrieval:
    """A method scored by retrieval: ``similarity(trained)`` ranks the gallery."""

    def similarity(self, trained: Any) -> Similarity:
        raise NotImplementedError

    def predictions(self, ctx: Context, trained: Any) -> list[dict]:
        return retrieval_predictions(self.similarity(trained), ctx.gallery, ctx.names)

    def converged(self, trained: Any) -> bool:
        """False when a CCA solver stopped at its iteration limit (kept in the weights' metadata)."""
        return True


# ------------------------------------------------------------------ CLIP / SigLIP
class DualEncoderMethod(_Retrieval):
    def _build(self, ctx: Context) -> DualEncoder:
        spec: ClipMethodSpec | SigLipMethodSpec = ctx.recipe.method
        if isinstance(spec, ClipMethodSpec):
            criterion = ClipCriterion(spec.init_temperature)
        else:
            criterion = SigLipCriterion(math.log(spec.init_t), spec.init_bias)
        return DualEncoder(
            mlp(ctx.train.a.shape[1], spec.dim, spec.hidden, dropout=spec.dropout),
            mlp(ctx.train.b.shape[1], spec.dim, spec.hidden, dropout=spec.dropout),
            criterion,
        )

    def similarity(self, model: DualEncoder) -> Similarity:
        return lambda a, b: (numpy(model.embed_a(a) @ model.embed_b(b).t()), None)

    def train(self, ctx: Context) -> tuple[DualEncoder, list[dict]]:
        spec = ctx.recipe.method
        model = ctx.place(self._build(ctx))
        similarity = self.similarity(model)

        def loss(batch):
            a, b, ids = batch
            return model(a, b, ids[:, None] == ids[None, :] if spec.positives == "key" else None)

        def monitor() -> dict:
            return {
                "eval_mean_R@1": mean_r1(similarity, ctx.gallery, ctx.names),
                **model.criterion.extra_metrics(),
            }

        history = ctx.fit(model, loss, (ctx.train.a, ctx.train.b, ctx.train.key_ids()), monitor)
        return model, history

    def evaluate(self, ctx: Context, model: DualEncoder) -> dict:
        evaluation = retrieval_eval(self.similarity(model), ctx.gallery, ctx.names)
        evaluation["learned"] = model.criterion.extra_metrics()
        return evaluation

    def weights(self, model: DualEncoder) -> Tensors:
        return _state(model)

    def restore(self, ctx: Context, tensors: Tensors, converged: bool) -> DualEncoder:
        return ctx.place(_load(self._build(ctx), tensors), trained=False)


# ------------------------------------------------------------------ linear CCA
def _correlations(cca: LinearCCA | StoredCCA, train: tuple, evl: tuple) -> dict:
    return {
        "canonical_correlations": {
            "train": canonical_correlations(*cca.transform(*train)).tolist(),
            "eval": canonical_correlations(*cca.transform(*evl)).tolist(),
        },
        "cca_converged": cca.converged,
    }


class CCAMethod(_Retrieval):
    def similarity(self, cca: LinearCCA | StoredCCA) -> Similarity:
        return _cca_similarity(cca)

    def converged(self, cca: LinearCCA | StoredCCA) -> bool:
        return cca.converged

    def train(self, ctx: Context) -> tuple[LinearCCA, list[dict]]:
        spec: CCAMethodSpec = ctx.recipe.method
        return LinearCCA.fit(
            numpy(ctx.train.a), numpy(ctx.train.b), spec.components, spec.pca, spec.max_iter
        ), []

    def evaluate(self, ctx: Context, cca: LinearCCA | StoredCCA) -> dict:
        evaluation = retrieval_eval(_cca_similarity(cca), ctx.gallery, ctx.names)
        pairs = ((numpy(ctx.train.a), numpy(ctx.train.b)), (numpy(ctx.eval.a), numpy(ctx.eval.b)))
        return evaluation | _correlations(cca, *pairs)

    def weights(self, cca: LinearCCA) -> Tensors:
        return _tensors(cca.tensors())

    def restore(self, ctx: Context, tensors: Tensors, converged: bool) -> StoredCCA:
        return StoredCCA.from_tensors(tensors, converged)


# ------------------------------------------------------------------ deep CCA
class DeepCCAMethod(_Retrieval):
    def _build(self, ctx: Context) -> DeepCCA:
        spec: DeepCCAMethodSpec = ctx.recipe.method
        return DeepCCA(
            mlp(ctx.train.a.shape[1], spec.dim, spec.hidden, spec.depth),
            mlp(ctx.train.b.shape[1], spec.dim, spec.hidden, spec.depth),
            spec.r1,
            spec.r2,
        )

    def converged(self, trained: tuple[DeepCCA, LinearCCA | StoredCCA]) -> bool:
        return trained[1].converged

    def similarity(self, trained: tuple[DeepCCA, LinearCCA | StoredCCA]) -> Similarity:
        model, cca = trained
        nets = _cca_similarity(cca)
        return lambda a, b: nets(model.net_a(a), model.net_b(b))

    def train(self, ctx: Context) -> tuple[tuple[DeepCCA, LinearCCA], list[dict]]:
        spec: DeepCCAMethodSpec = ctx.recipe.method
        model = ctx.place(self._build(ctx))

        def monitor() -> dict:
            corr = total_correlation(model.net_a(ctx.eval.a), model.net_b(ctx.eval.b), spec.r1, spec.r2)
            return {"eval_total_correlation": corr.item()}

        history = ctx.fit(model, lambda batch: model(*batch), (ctx.train.a, ctx.train.b), monitor)
        with torch.no_grad(), ctx.autocast():
            ha, hb = numpy(model.net_a(ctx.train.a)), numpy(model.net_b(ctx.train.b))
        # The paper's last step: a linear CCA on the networks' outputs gives the canonical variates.
        return (model, LinearCCA.fit(ha, hb, spec.dim)), history

    def evaluate(self, ctx: Context, trained: tuple[DeepCCA, LinearCCA | StoredCCA]) -> dict:
        model, cca = trained
        with torch.no_grad(), ctx.autocast():
            ha, hb = numpy(model.net_a(ctx.train.a)), numpy(model.net_b(ctx.train.b))
            ea, eb = numpy(model.net_a(ctx.eval.a)), numpy(model.net_b(ctx.eval.b))
        evaluation = retrieval_eval(self.similarity(trained), ctx.gallery, ctx.names)
        return evaluation | _correlations(cca, (ha, hb), (ea, eb))

    def weights(self, trained: tuple[DeepCCA, LinearCCA]) -> Tensors:
        model, cca = trained
        return _state(model) | _tensors(cca.tensors())

    def restore(self, ctx: Context, tensors: Tensors, converged: bool) -> tuple[DeepCCA, StoredCCA]:
        model = ctx.place(_load(self._build(ctx), tensors), trained=False)
        return model, StoredCCA.from_tensors(tensors, converged)


# ------------------------------------------------------------------ cycle-consistent autoencoder
def _relative_mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return ((prediction - target) ** 2).mean().item() / target.var(0).mean().item()


def _key_means(x: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """Each row replaced by the mean of the rows with its key."""
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    index = torch.tensor([ids[k] for k in keys], device=x.device)
    sums = torch.zeros(len(ids), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
    return (sums / torch.bincount(index, minlength=len(ids))[:, None])[index]


class CycleMethod(_Retrieval):
    def _build(self, ctx: Context) -> CycleAutoencoder:
        spec: CycleMethodSpec = ctx.recipe.method
        da, db = ctx.train.a.shape[1], ctx.train.b.shape[1]
        return CycleAutoencoder(
            mlp(da, spec.latent, spec.hidden),
            mlp(spec.latent, da, spec.hidden),
            mlp(db, spec.latent, spec.hidden),
            mlp(spec.latent, db, spec.hidden),
            spec.translation_weight,
            spec.cycle_weight,
        )

    def similarity(self, model: CycleAutoencoder) -> Similarity:
        """A translation compared with the other modality's items, in that modality's space."""
        return lambda a, b: (cosine_similarity(model.a_to_b(a), b), cosine_similarity(model.b_to_a(b), a))

    def train(self, ctx: Context) -> tuple[CycleAutoencoder, list[dict]]:
        model = ctx.place(self._build(ctx))
        similarity = self.similarity(model)

        def monitor() -> dict:
            parts = model.losses(ctx.eval.a, ctx.eval.b).parts()
            return {"eval_mean_R@1": mean_r1(similarity, ctx.gallery, ctx.names)} | {
                f"eval_{k}": v for k, v in parts.items()
            }

        return model, ctx.fit(model, lambda batch: model(*batch), (ctx.train.a, ctx.train.b), monitor)

    def evaluate(self, ctx: Context, model: CycleAutoencoder) -> dict:
        evaluation = retrieval_eval(self.similarity(model), ctx.gallery, ctx.names)
        a, b, keys = ctx.eval.a, ctx.eval.b, ctx.eval.keys
        a_to_b, b_to_a = f"{ctx.names[0]}_to_{ctx.names[1]}", f"{ctx.names[1]}_to_{ctx.names[0]}"
        with torch.no_grad():
            # Mean squared error relative to the target's variance: 0 = perfect, 1 = as good as the mean.
            evaluation["translation_relative_mse"] = {
                a_to_b: _relative_mse(model.a_to_b(a), b),
                b_to_a: _relative_mse(model.b_to_a(b), a),
            }
            # The same for an oracle that predicts the mean of the target's key (class): within a key the
            # pairing carries no information, so this is about the best a translation can do on such data.
            evaluation["translation_relative_mse_key_means"] = {
                a_to_b: _relative_mse(_key_means(b, keys), b),
                b_to_a: _relative_mse(_key_means(a, keys), a),
            }
            evaluation["eval_losses"] = model.losses(a, b).parts()
        return evaluation

    def weights(self, model: CycleAutoencoder) -> Tensors:
        return _state(model)

    def restore(self, ctx: Context, tensors: Tensors, converged: bool) -> CycleAutoencoder:
        return ctx.place(_load(self._build(ctx), tensors), trained=False)
