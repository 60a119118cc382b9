"""Unimodal and fused logistic regression on the cached classifier features of a recipe.

How informative is each modality alone? A multinomial logistic regression (scikit-learn) on each
modality's standardised features, and on all of them concatenated, trained on the recipe's training
data and scored on its eval data. It reads the same cached features as ``omnifuse train`` (extracted
on first use), so it is the baseline the fusion heads are compared with in docs/classic.md.

    python benchmarks/classic_unimodal.py src/omnifuse/recipes/classic/av-digits.yaml
    python benchmarks/classic_unimodal.py src/omnifuse/recipes/classic/easy-vqa-cls.yaml --set data.train_limit=10000
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression

from omnifuse.recipe import ClassifierRecipe, load_recipe
from omnifuse.tasks.classify.features import (
    class_names,
    fit_normalizers,
    label_indices,
    raw_features,
    split_samples,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 regularisation strength")
    parser.add_argument("--set", action="append", default=[], help="recipe override dotted.key=value")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    if not isinstance(recipe, ClassifierRecipe):
        raise SystemExit(f"{args.recipe} is not a classifier recipe (task: classify)")
    train, evaluation = split_samples(recipe)
    classes = class_names(train)
    y_train = label_indices(train, classes, "training").numpy()
    y_eval = label_indices(evaluation, classes, "eval").numpy()
    raw_train, raw_eval = raw_features(recipe, train, True), raw_features(recipe, evaluation, True)
    norms = fit_normalizers(recipe, raw_train)
    x_train = {m: norms[m](x).flatten(1).numpy() for m, x in raw_train.items()}
    x_eval = {m: norms[m](x).flatten(1).numpy() for m, x in raw_eval.items()}
    rows = [(m, [m]) for m in sorted(x_train)] + [("+".join(sorted(x_train)), sorted(x_train))]
    print(
        f"{recipe.name}: logistic regression (C={args.C}) on {len(train)} training / {len(evaluation)} eval samples"
    )
    for name, mods in rows:
        a = np.concatenate([x_train[m] for m in mods], axis=1)
        b = np.concatenate([x_eval[m] for m in mods], axis=1)
        clf = LogisticRegression(max_iter=3000, C=args.C).fit(a, y_train)
        print(
            f"  {name:16s} train {100 * clf.score(a, y_train):5.1f} %   eval {100 * clf.score(b, y_eval):5.1f} %"
        )


if __name__ == "__main__":
    main()
