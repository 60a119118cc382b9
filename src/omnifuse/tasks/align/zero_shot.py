"""DeViSE on an alignment recipe: features of one modality mapped into the text space of the class names
(the other modality's features of each class's answer), trained on the seen classes, scored zero-shot on
the held-out ones (``method.heldout``) and on the seen ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnifuse.alignment.devise import DeViSE, zero_shot
from omnifuse.alignment.heads import mlp
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import DeViSEMethodSpec
from omnifuse.tasks.align.features import Pairs
from omnifuse.tasks.align.methods import Context, Tensors, _load, _state


@dataclass(frozen=True)
class _Classes:
    """The classes of a DeViSE run, their text embeddings and which rows of the data belong where."""

    names: list[str]  # every class, seen and held out, sorted
    embeddings: torch.Tensor  # [classes, D_text]
    heldout: list[int]  # indices into names
    seen_index: dict[str, int]  # seen class → its index among the seen classes
    source: object  # Pairs → the features mapped into the text space

    @classmethod
    def of(cls, ctx: Context) -> _Classes:
        spec: DeViSEMethodSpec = ctx.recipe.method
        text_is_b = ctx.recipe.model.encoders[ctx.names[1]].reads.value == "text"
        source = (lambda p: p.a) if text_is_b else (lambda p: p.b)
        target = (lambda p: p.b) if text_is_b else (lambda p: p.a)  # the class-name embeddings
        missing = [c for c in spec.heldout if c not in ctx.eval.keys]
        if missing:
            raise OmnifuseError(
                f"method.heldout: {missing} have no sample in data.eval, so they cannot be evaluated; the "
                f"classes (answers) there are: {', '.join(sorted(set(ctx.eval.keys)))}"
            )
        names = sorted(set(ctx.train.keys) | set(ctx.eval.keys))
        embedding: dict[str, torch.Tensor] = {}
        for pairs in (ctx.train, ctx.eval):
            for i, k in enumerate(pairs.keys):
                embedding.setdefault(k, target(pairs)[i])
        seen = [c for c in names if c not in spec.heldout]
        return cls(
            names,
            torch.stack([embedding[c] for c in names]),
            [names.index(c) for c in spec.heldout],
            {c: i for i, c in enumerate(seen)},
            source,
        )

    def rows(self, pairs: Pairs, heldout: bool) -> list[int]:
        return [i for i, k in enumerate(pairs.keys) if (k not in self.seen_index) == heldout]

    def labels(self, pairs: Pairs, rows: list[int]) -> list[int]:
        return [self.names.index(pairs.keys[i]) for i in rows]


class DeViSEMethod:
    def _build(self, ctx: Context, c: _Classes) -> DeViSE:
        spec: DeViSEMethodSpec = ctx.recipe.method
        seen = [i for i, name in enumerate(c.names) if name in c.seen_index]
        x = c.source(ctx.train)
        return DeViSE(mlp(x.shape[1], c.embeddings.shape[1], spec.hidden), c.embeddings[seen])

    def train(self, ctx: Context) -> tuple[DeViSE, list[dict]]:
        spec: DeViSEMethodSpec = ctx.recipe.method
        c = _Classes.of(ctx)
        x = c.source(ctx.train)  # held-out classes were left out of the training pairs (paired_features)
        y = torch.tensor([c.seen_index[k] for k in ctx.train.keys], device=x.device)
        model = ctx.place(self._build(ctx, c))
        eval_x, held_rows = c.source(ctx.eval), c.rows(ctx.eval, heldout=True)
        held_labels = c.labels(ctx.eval, held_rows)

        def monitor() -> dict:
            result = zero_shot(model, eval_x[held_rows], held_labels, c.embeddings, c.heldout)
            return {"eval_zero_shot_heldout_only": result.accuracy_heldout}

        return model, ctx.fit(model, lambda batch: model(*batch, margin=spec.margin), (x, y), monitor)

    def evaluate(self, ctx: Context, model: DeViSE) -> dict:
        c = _Classes.of(ctx)
        eval_x, held_rows = c.source(ctx.eval), c.rows(ctx.eval, heldout=True)
        with torch.no_grad():
            result = zero_shot(
                model, eval_x[held_rows], c.labels(ctx.eval, held_rows), c.embeddings, c.heldout
            )
            seen_rows = c.rows(ctx.eval, heldout=False)
            pred = model.scores(eval_x[seen_rows], c.embeddings).argmax(1)
            truth = torch.tensor(c.labels(ctx.eval, seen_rows), device=pred.device)
        return {
            "zero_shot": result.summary(),
            "seen_classes": {"accuracy_all": (pred == truth).float().mean().item(), "n": len(seen_rows)},
            "classes": c.names,
            "heldout": list(ctx.recipe.method.heldout),
        }

    def predictions(self, ctx: Context, model: DeViSE) -> list[dict]:
        """One record per eval sample of a held-out class: its nearest class name among all classes."""
        c = _Classes.of(ctx)
        rows = c.rows(ctx.eval, heldout=True)
        with torch.no_grad():
            pred = model.scores(c.source(ctx.eval)[rows], c.embeddings).argmax(1).tolist()
        records = []
        for i, p in zip(rows, pred, strict=True):
            truth = ctx.eval.keys[i]
            hit = c.names[p] == truth
            sample_id = ctx.eval.ids[i] if ctx.eval.ids else str(i)
            records.append({"id": sample_id, "correct": hit, "score": float(hit), "question_type": "zero-shot",
                            "answer": truth, "prediction": c.names[p]})  # fmt: skip
        return records

    def converged(self, model: DeViSE) -> bool:
        return True

    def weights(self, model: DeViSE) -> Tensors:
        return _state(model)

    def restore(self, ctx: Context, tensors: Tensors, converged: bool) -> DeViSE:
        return ctx.place(_load(self._build(ctx, _Classes.of(ctx)), tensors), trained=False)
