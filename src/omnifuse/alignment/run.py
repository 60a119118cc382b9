"""``omnifuse train`` for an alignment recipe (``task: align``): cached frozen features of two modalities →
the recipe's method → a run directory.

::

    RUN/recipe.yaml        the resolved recipe
    RUN/model.safetensors  the method's learned tensors (heads, CCA rotations, …) and the normalisation statistics
    RUN/metrics.jsonl      one line per epoch: training loss and a held-out measure
    RUN/eval.json          retrieval R@k in both directions with their chance levels, canonical correlations,
                           translation errors, or DeViSE's zero-shot accuracy
    RUN/report.md          the same as tables, with loss.png

The pairs are the samples of the data: modality A and B are read from each sample by the encoders' input
kinds (the text encoder reads the answer — a caption — or the question, ``model.text``). A sample's
answer is also its *key*: pairs with the same key mean the same thing, so in retrieval every item with
the query's key counts as right, and contrastive losses treat them as positives (``method.positives: key``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omnifuse.alignment.cca import DeepCCA, LinearCCA, canonical_correlations, total_correlation
from omnifuse.alignment.contrastive import ClipCriterion, DualEncoder, SigLipCriterion
from omnifuse.alignment.cycle import CycleAutoencoder
from omnifuse.alignment.devise import DeViSE, zero_shot
from omnifuse.alignment.heads import mlp
from omnifuse.alignment.retrieval import (
    chance_recall,
    cosine_similarity,
    cross_modal_retrieval,
    distinct_items,
)
from omnifuse.alignment.train import fit
from omnifuse.atomic import atomic_write_text
from omnifuse.data.sample import Message, Sample, TextPart, select_subset
from omnifuse.data.sources import load_data
from omnifuse.encoders.features import Normalizer, extract_features
from omnifuse.errors import OmnifuseError
from omnifuse.recipe.schema import (
    INPUT_KINDS,
    AlignRecipe,
    CCAMethodSpec,
    ClipMethodSpec,
    CycleMethodSpec,
    DeepCCAMethodSpec,
    DeViSEMethodSpec,
    SigLipMethodSpec,
)
from omnifuse.rundir import RunDir
from omnifuse.training.checkpoint import save_tensors_atomic
from omnifuse.training.loop import prepare_run_dir, seed_everything
from omnifuse.untrusted import read_json

KS = (1, 5, 10)


# ------------------------------------------------------------------ paired features
@dataclass(frozen=True)
class Pairs:
    """Normalised features of the two modalities, row i of each forming pair i, and the pairs' keys."""

    a: torch.Tensor
    b: torch.Tensor
    keys: list[str]

    def key_ids(self) -> torch.Tensor:
        ids = {k: i for i, k in enumerate(dict.fromkeys(self.keys))}
        return torch.tensor([ids[k] for k in self.keys])


def _text_sample(sample_id: str, text: str) -> Sample:
    """A one-turn sample holding ``text`` as its question: the text encoder reads the user turn."""
    return Sample(sample_id, (Message("user", (TextPart(text),)),))


def _features(
    samples: Sequence[Sample], modality: str, spec, text_source: str, progress: bool
) -> torch.Tensor:
    if INPUT_KINDS[type(spec)] != "text" or text_source == "question":
        return extract_features(samples, modality, spec, progress=progress)
    # The answers (captions, class names) repeat: encode each distinct one once.
    answers = [s.answer() for s in samples]
    unique = list(dict.fromkeys(answers))
    feats = extract_features(
        [_text_sample(f"answer-{i}", t) for i, t in enumerate(unique)], modality, spec, progress=progress
    )
    row = {t: i for i, t in enumerate(unique)}
    return feats[[row[t] for t in answers]]


def paired_features(
    recipe: AlignRecipe, progress: bool = True, exclude_train: frozenset[str] = frozenset()
) -> tuple[Pairs, Pairs, dict[str, Normalizer], list[str]]:
    """Train and eval pairs (normalised with train statistics), the normalisers, the modality names.
    Training pairs whose key is in ``exclude_train`` are left out, before the statistics are taken
    (DeViSE's held-out classes must stay unseen)."""
    model = recipe.model
    names = list(model.encoders)
    splits = {}
    for split, ref, limit in (
        ("train", recipe.data.train, recipe.data.train_limit),
        ("eval", recipe.data.eval, recipe.data.eval_limit),
    ):
        seed = recipe.seed if split == "train" else recipe.data.eval_seed
        samples = select_subset(load_data(ref), limit, seed)
        if len(samples) < 2:
            raise OmnifuseError(f"data.{split} ({ref}) has {len(samples)} samples; alignment needs pairs")
        feats = {m: _features(samples, m, model.encoders[m], model.text, progress) for m in names}
        keys = [s.answer() for s in samples]
        if split == "train" and exclude_train:  # after extraction, so the cached features stay shared
            keep = [i for i, k in enumerate(keys) if k not in exclude_train]
            feats, keys = {m: f[keep] for m, f in feats.items()}, [keys[i] for i in keep]
        splits[split] = (feats, keys)
    norms = {m: Normalizer.fit(model.normalization(m), splits["train"][0][m]) for m in names}
    train, evl = (
        Pairs(norms[names[0]](f[names[0]]), norms[names[1]](f[names[1]]), keys)
        for f, keys in (splits["train"], splits["eval"])
    )
    return train, evl, norms, names


# ------------------------------------------------------------------ evaluation helpers
@dataclass(frozen=True)
class Gallery:
    """The eval items of each side for retrieval, identical items (the same caption many times) collapsed."""

    a: torch.Tensor
    keys_a: list[str]
    b: torch.Tensor
    keys_b: list[str]

    @classmethod
    def of(cls, pairs: Pairs) -> Gallery:
        ia, ib = distinct_items(pairs.a, pairs.keys), distinct_items(pairs.b, pairs.keys)
        return cls(pairs.a[ia], [pairs.keys[i] for i in ia], pairs.b[ib], [pairs.keys[i] for i in ib])


# (A items, B items) → similarity [n_a, n_b] for A→B queries and [n_b, n_a] for B→A (None: the transpose)
Similarity = Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray | None]]


def _retrieve(similarity: Similarity, g: Gallery, names: list[str], ks: Sequence[int] = KS) -> dict:
    with torch.no_grad():
        sim_ab, sim_ba = similarity(g.a, g.b)
    return cross_modal_retrieval(sim_ab, g.keys_a, g.keys_b, sim_ba, ks, names=(names[0], names[1]))


def _retrieval_eval(similarity: Similarity, g: Gallery, names: list[str]) -> dict:
    res = _retrieve(similarity, g, names)
    a_to_b, b_to_a = res
    return {
        "retrieval": {d: r.summary() for d, r in res.items()},
        "gallery": {names[0]: len(g.keys_a), names[1]: len(g.keys_b)},
        "chance": {
            a_to_b: chance_recall(g.keys_a, g.keys_b, KS),
            b_to_a: chance_recall(g.keys_b, g.keys_a, KS),
        },
    }


def _mean_r1(similarity: Similarity, g: Gallery, names: list[str]) -> float:
    return float(np.mean([r.recall[1] for r in _retrieve(similarity, g, names, (1,)).values()]))


@dataclass
class MethodResult:
    weights: dict[str, torch.Tensor]
    evaluation: dict
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    recipe: AlignRecipe
    train: Pairs
    eval: Pairs
    gallery: Gallery
    names: list[str]
    progress: bool

    def fit(self, model: torch.nn.Module, loss, tensors, monitor: Callable[[], dict]) -> list[dict]:
        """The recipe's training loop; after each epoch the loss and ``monitor()`` (held-out) are logged."""
        t = self.recipe.train
        history: list[dict] = []

        def on_epoch(epoch: int, value: float) -> None:
            with torch.no_grad():
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
        )
        return history


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=torch.float32).contiguous() for k, v in arrays.items()}


def _cca_similarity(cca: LinearCCA) -> Similarity:
    """Cosine similarity of the canonical variates."""

    def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, None]:
        ua, ub = cca.transform(np.asarray(a), np.asarray(b))
        return cosine_similarity(ua, ub), None

    return similarity


# ------------------------------------------------------------------ the methods
def _clip(ctx: Context) -> MethodResult:
    return _dual_encoder(ctx, ClipCriterion(ctx.recipe.method.init_temperature))


def _siglip(ctx: Context) -> MethodResult:
    spec: SigLipMethodSpec = ctx.recipe.method
    return _dual_encoder(ctx, SigLipCriterion(math.log(spec.init_t), spec.init_bias))


def _dual_encoder(ctx: Context, criterion: ClipCriterion | SigLipCriterion) -> MethodResult:
    spec: ClipMethodSpec | SigLipMethodSpec = ctx.recipe.method
    model = DualEncoder(
        mlp(ctx.train.a.shape[1], spec.dim, spec.hidden, dropout=spec.dropout),
        mlp(ctx.train.b.shape[1], spec.dim, spec.hidden, dropout=spec.dropout),
        criterion,
    )

    def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, None]:
        return (model.embed_a(a) @ model.embed_b(b).t()).numpy(), None

    def loss(batch):
        a, b, ids = batch
        return model(a, b, ids[:, None] == ids[None, :] if spec.positives == "key" else None)

    def monitor() -> dict:
        return {
            "eval_mean_R@1": _mean_r1(similarity, ctx.gallery, ctx.names),
            **criterion.extra_metrics(),
        }

    history = ctx.fit(model, loss, (ctx.train.a, ctx.train.b, ctx.train.key_ids()), monitor)
    evaluation = _retrieval_eval(similarity, ctx.gallery, ctx.names)
    evaluation["learned"] = criterion.extra_metrics()
    return MethodResult(_state(model), evaluation, history)


def _cca(ctx: Context) -> MethodResult:
    spec: CCAMethodSpec = ctx.recipe.method
    cca = LinearCCA.fit(ctx.train.a.numpy(), ctx.train.b.numpy(), spec.components, spec.pca, spec.max_iter)
    ua, ub = cca.transform(ctx.eval.a.numpy(), ctx.eval.b.numpy())
    evaluation = _retrieval_eval(_cca_similarity(cca), ctx.gallery, ctx.names)
    evaluation["canonical_correlations"] = {
        "train": canonical_correlations(*cca.transform(ctx.train.a.numpy(), ctx.train.b.numpy())).tolist(),
        "eval": canonical_correlations(ua, ub).tolist(),
    }
    evaluation["cca_converged"] = cca.converged
    return MethodResult(_tensors(cca.tensors()), evaluation)


def _dcca(ctx: Context) -> MethodResult:
    spec: DeepCCAMethodSpec = ctx.recipe.method
    model = DeepCCA(
        mlp(ctx.train.a.shape[1], spec.dim, spec.hidden, spec.depth),
        mlp(ctx.train.b.shape[1], spec.dim, spec.hidden, spec.depth),
        spec.r1,
        spec.r2,
    )

    def monitor() -> dict:
        corr = total_correlation(model.net_a(ctx.eval.a), model.net_b(ctx.eval.b), spec.r1, spec.r2)
        return {"eval_total_correlation": corr.item()}

    history = ctx.fit(model, lambda batch: model(*batch), (ctx.train.a, ctx.train.b), monitor)
    with torch.no_grad():
        ha, hb = model.net_a(ctx.train.a).numpy(), model.net_b(ctx.train.b).numpy()
        ea, eb = model.net_a(ctx.eval.a).numpy(), model.net_b(ctx.eval.b).numpy()
    # The paper's last step: a linear CCA on the networks' outputs gives the canonical variates.
    cca = LinearCCA.fit(ha, hb, spec.dim)
    ua, ub = cca.transform(ea, eb)
    nets = _cca_similarity(cca)
    evaluation = _retrieval_eval(lambda a, b: nets(model.net_a(a), model.net_b(b)), ctx.gallery, ctx.names)
    evaluation["canonical_correlations"] = {
        "train": canonical_correlations(*cca.transform(ha, hb)).tolist(),
        "eval": canonical_correlations(ua, ub).tolist(),
    }
    evaluation["cca_converged"] = cca.converged
    return MethodResult(_state(model) | _tensors(cca.tensors()), evaluation, history)


def _cycle(ctx: Context) -> MethodResult:
    spec: CycleMethodSpec = ctx.recipe.method
    da, db = ctx.train.a.shape[1], ctx.train.b.shape[1]
    model = CycleAutoencoder(
        mlp(da, spec.latent, spec.hidden),
        mlp(spec.latent, da, spec.hidden),
        mlp(db, spec.latent, spec.hidden),
        mlp(spec.latent, db, spec.hidden),
        spec.translation_weight,
        spec.cycle_weight,
    )

    def similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """A translation compared with the other modality's items, in that modality's space."""
        return cosine_similarity(model.a_to_b(a), b), cosine_similarity(model.b_to_a(b), a)

    def monitor() -> dict:
        parts = model.losses(ctx.eval.a, ctx.eval.b).parts()
        return {"eval_mean_R@1": _mean_r1(similarity, ctx.gallery, ctx.names)} | {
            f"eval_{k}": v for k, v in parts.items()
        }

    history = ctx.fit(model, lambda batch: model(*batch), (ctx.train.a, ctx.train.b), monitor)
    evaluation = _retrieval_eval(similarity, ctx.gallery, ctx.names)
    a, b, keys = ctx.eval.a, ctx.eval.b, ctx.eval.keys
    a_to_b, b_to_a = f"{ctx.names[0]}_to_{ctx.names[1]}", f"{ctx.names[1]}_to_{ctx.names[0]}"
    with torch.no_grad():
        # Mean squared error relative to the target's variance: 0 = perfect, 1 = as good as predicting the mean.
        evaluation["translation_relative_mse"] = {
            a_to_b: _relative_mse(model.a_to_b(a), b),
            b_to_a: _relative_mse(model.b_to_a(b), a),
        }
        # The same for an oracle that predicts the mean of the target's key (class): within a key the pairing
        # carries no information, so this is about the best a translation can do on such data.
        evaluation["translation_relative_mse_key_means"] = {
            a_to_b: _relative_mse(_key_means(b, keys), b),
            b_to_a: _relative_mse(_key_means(a, keys), a),
        }
        evaluation["eval_losses"] = model.losses(a, b).parts()
    return MethodResult(_state(model), evaluation, history)


def _relative_mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return ((prediction - target) ** 2).mean().item() / target.var(0).mean().item()


def _key_means(x: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """Each row replaced by the mean of the rows with its key."""
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    index = torch.tensor([ids[k] for k in keys])
    sums = torch.zeros(len(ids), x.shape[1]).index_add_(0, index, x)
    return (sums / torch.bincount(index, minlength=len(ids))[:, None])[index]


def _devise(ctx: Context) -> MethodResult:
    spec: DeViSEMethodSpec = ctx.recipe.method
    names = ctx.names
    text_is_b = INPUT_KINDS[type(ctx.recipe.model.encoders[names[1]])] == "text"
    source = (lambda p: p.a) if text_is_b else (lambda p: p.b)  # the features mapped into the text space
    target = (lambda p: p.b) if text_is_b else (lambda p: p.a)  # the class-name embeddings
    missing = [c for c in spec.heldout if c not in ctx.eval.keys]
    if missing:
        raise OmnifuseError(
            f"method.heldout: {missing} have no sample in data.eval, so they cannot be evaluated; the classes "
            f"(answers) there are: {', '.join(sorted(set(ctx.eval.keys)))}"
        )
    classes = sorted(set(ctx.train.keys) | set(ctx.eval.keys))
    embedding: dict[str, torch.Tensor] = {}
    for pairs in (ctx.train, ctx.eval):
        for i, k in enumerate(pairs.keys):
            embedding.setdefault(k, target(pairs)[i])
    class_emb = torch.stack([embedding[c] for c in classes])
    heldout = [classes.index(c) for c in spec.heldout]
    seen = [c for c in classes if c not in spec.heldout]
    seen_index = {c: i for i, c in enumerate(seen)}
    x = source(ctx.train)  # held-out classes were left out of the training pairs (paired_features)
    y = torch.tensor([seen_index[k] for k in ctx.train.keys])
    model = DeViSE(
        mlp(x.shape[1], class_emb.shape[1], spec.hidden), class_emb[[classes.index(c) for c in seen]]
    )
    eval_x = source(ctx.eval)
    held_rows = [i for i, k in enumerate(ctx.eval.keys) if k in spec.heldout]
    held_labels = [classes.index(ctx.eval.keys[i]) for i in held_rows]

    def monitor() -> dict:
        return {
            "eval_zero_shot_heldout_only": zero_shot(
                model, eval_x[held_rows], held_labels, class_emb, heldout
            ).accuracy_heldout
        }

    history = ctx.fit(model, lambda batch: model(*batch, margin=spec.margin), (x, y), monitor)
    with torch.no_grad():
        result = zero_shot(model, eval_x[held_rows], held_labels, class_emb, heldout)
        seen_rows = [i for i, k in enumerate(ctx.eval.keys) if k in seen_index]
        pred = model.scores(eval_x[seen_rows], class_emb).argmax(1)
        truth = torch.tensor([classes.index(ctx.eval.keys[i]) for i in seen_rows])
    evaluation = {
        "zero_shot": result.summary(),
        "seen_classes": {"accuracy_all": (pred == truth).float().mean().item(), "n": len(seen_rows)},
        "classes": classes,
        "heldout": list(spec.heldout),
    }
    return MethodResult(_state(model), evaluation, history)


METHODS: dict[type, Callable[[Context], MethodResult]] = {
    ClipMethodSpec: _clip,
    SigLipMethodSpec: _siglip,
    CCAMethodSpec: _cca,
    DeepCCAMethodSpec: _dcca,
    DeViSEMethodSpec: _devise,
    CycleMethodSpec: _cycle,
}


# ------------------------------------------------------------------ the run
@dataclass(frozen=True)
class AlignResult:
    evaluation: dict
    seconds: float
    run_dir: Path
    already_finished: bool = False  # --resume of a finished run: nothing was trained or written


def plot_history(history: list[dict], out: Path) -> None:
    """Training loss per epoch and the held-out measure logged beside it (second axis). Linear axes: deep
    CCA's loss is negative."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], label="training loss", linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    held = next((k for k in history[0] if k.startswith("eval_")), None)
    if held is not None:
        ax2 = ax.twinx()
        ax2.plot(epochs, [h[held] for h in history], "o-", color="black", markersize=3, label=held)
        ax2.set_ylabel(held.replace("_", " "))
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _report(recipe: AlignRecipe, evaluation: dict, has_plot: bool) -> str:
    lines = [
        f"# {recipe.name}",
        "",
        f"Alignment with **{recipe.method.type}** of "
        f"{' and '.join(f'{m} ({s.type})' for m, s in recipe.model.encoders.items())}; "
        f"train {recipe.data.train}, eval {recipe.data.eval} ({evaluation['n_eval_pairs']} pairs, "
        f"{evaluation['n_eval_keys']} distinct keys).",
        "",
    ]
    if "retrieval" in evaluation:
        lines += [
            "| direction | R@1 | R@5 | R@10 | median rank | chance R@1 | chance R@10 |",
            "|---|---|---|---|---|---|---|",
        ]
        for d, r in evaluation["retrieval"].items():
            c = evaluation["chance"][d]
            lines.append(
                f"| {d.replace('_', ' ')} | {100 * r['R@1']:.1f} | {100 * r['R@5']:.1f} | {100 * r['R@10']:.1f} | "
                f"{r['median_rank']:g} | {100 * c['R@1']:.1f} | {100 * c['R@10']:.1f} |"
            )
        lines.append("")
    if "canonical_correlations" in evaluation:
        corr = evaluation["canonical_correlations"]["eval"]
        lines += [
            f"Canonical correlations on the eval pairs (first 5): {', '.join(f'{c:.3f}' for c in corr[:5])}; "
            f"sum {sum(corr):.2f}.",
            "",
        ]
    if "translation_relative_mse" in evaluation:
        oracle = evaluation["translation_relative_mse_key_means"]
        lines += [
            "Translation error (MSE / target variance; predicting the mean of the target's key in brackets): "
            + ", ".join(
                f"{d.replace('_', ' ')} {v:.3f} ({oracle[d]:.3f})"
                for d, v in evaluation["translation_relative_mse"].items()
            ),
            "",
        ]
    if "zero_shot" in evaluation:
        z = evaluation["zero_shot"]
        lines += [
            f"Zero-shot on {z['n']} eval samples of the held-out classes {', '.join(evaluation['heldout'])}:",
            "",
            "| candidates | accuracy | chance |",
            "|---|---|---|",
            f"| all {len(evaluation['classes'])} classes | {100 * z['zero_shot_accuracy_all']:.1f} | {100 * z['chance_all']:.1f} |",
            f"| held-out classes only | {100 * z['zero_shot_accuracy_heldout_only']:.1f} | {100 * z['chance_heldout_only']:.1f} |",
            "",
            f"Seen classes (eval samples, among all classes): {100 * evaluation['seen_classes']['accuracy_all']:.1f} %.",
            "",
        ]
    if has_plot:
        lines += ["![training loss](loss.png)", ""]
    return "\n".join(lines)


def train_align(
    recipe: AlignRecipe, out: Path, *, progress: bool = True, resume: bool = False
) -> AlignResult:
    """Train an alignment recipe into the run directory ``out`` (a fresh one: alignment runs take
    seconds on cached features, so there is nothing to resume; --resume of a finished run is a no-op)."""
    start = time.perf_counter()
    run = RunDir(Path(out))
    if resume and run.exists() and prepare_run_dir(run, recipe, resume=True):
        evaluation = read_json(run.path / "eval.json", "evaluation")
        return AlignResult(evaluation, 0.0, run.path, already_finished=True)
    if resume:
        raise OmnifuseError(
            "alignment runs train in seconds on cached features and cannot be resumed; drop --resume"
        )
    prepare_run_dir(run, recipe, resume=False)
    with run.training():
        evaluation = _fit(recipe, run, progress)
    return AlignResult(evaluation, time.perf_counter() - start, run.path)


def _fit(recipe: AlignRecipe, run: RunDir, progress: bool) -> dict:
    heldout = recipe.method.heldout if isinstance(recipe.method, DeViSEMethodSpec) else ()
    train, evl, norms, names = paired_features(recipe, progress, frozenset(heldout))
    # Seeded right before the method's own random numbers (initialisation, shuffling).
    seed_everything(recipe.seed)
    ctx = Context(recipe, train, evl, Gallery.of(evl), names, progress)
    result = METHODS[type(recipe.method)](ctx)
    evaluation = {
        "method": recipe.method.type,
        "modalities": names,
        "n_train_pairs": len(train.keys),
        "n_eval_pairs": len(evl.keys),
        "n_eval_keys": len(set(evl.keys)),
        **result.evaluation,
    }
    weights = dict(result.weights)
    for m, norm in norms.items():
        weights.update(norm.tensors(f"normalize.{m}"))
    save_tensors_atomic(weights, run.weights_file, {"method": recipe.method.type})
    atomic_write_text(run.metrics_file, "".join(json.dumps(h) + "\n" for h in result.history))
    atomic_write_text(run.path / "eval.json", json.dumps(evaluation, indent=2))
    has_plot = bool(result.history)
    if has_plot:
        plot_history(result.history, run.path / "loss.png")
    atomic_write_text(run.path / "report.md", _report(recipe, evaluation, has_plot))
    return evaluation


def headline(evaluation: dict) -> str:
    if "zero_shot" in evaluation:
        z = evaluation["zero_shot"]
        return (
            f"zero-shot accuracy {100 * z['zero_shot_accuracy_all']:.1f} % among all classes, "
            f"{100 * z['zero_shot_accuracy_heldout_only']:.1f} % among held-out ones"
        )
    text = "  ".join(
        f"{d.replace('_', ' ')} R@1/5/10 {100 * r['R@1']:.1f}/{100 * r['R@5']:.1f}/{100 * r['R@10']:.1f}"
        for d, r in evaluation["retrieval"].items()
    )
    if evaluation.get("cca_converged") is False:
        text += (
            " (the linear CCA stopped at its iteration limit before converging: cca_converged in eval.json)"
        )
    return text
