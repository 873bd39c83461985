"""recommender: `user`, `item` strings -> interaction score; a label > 0 is an interaction.

Implicit feedback, trained with sampled negatives, judged on precision@k / recall@k.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

from feedback_loop.train.families.base import RANKING, Examples, Family, numeric_labels, require

RECOMMENDER = "recommender"
USER, ITEM = "user", "item"
# Above this share of interactions with users or items the parent never saw, warm-starting
# a recommender would leave most of the data in the out-of-vocabulary bucket.
MAX_UNKNOWN_SHARE = 0.2


class Recommender(Family):
    name = RECOMMENDER
    task = RANKING
    output_name = "scores"
    loss = "binary_crossentropy"
    metrics = ("binary_accuracy",)
    priority = 10
    negatives = 4  # sampled non-interactions per interaction
    dimension = 16

    @classmethod
    def claims(cls, columns: set[str]) -> bool:
        return {USER, ITEM} <= columns

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        require(frame, [USER, ITEM], self.name)
        numeric_labels(frame, self.name)
        return {
            "classes": [],
            "feature_columns": [USER, ITEM],
            "inputs": [USER, ITEM],
            "users": sorted(frame[USER].astype(str).unique()),
            "items": sorted(frame[ITEM].astype(str).unique()),
        }

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        require(frame, [USER, ITEM], self.name)
        return {USER: frame[USER].astype(str).to_numpy(object), ITEM: frame[ITEM].astype(str).to_numpy(object)}

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return (numeric_labels(frame, self.name) > 0).astype(np.float32)

    def examples(self, frame: pd.DataFrame, spec: dict[str, Any], rng: np.random.Generator) -> Examples:
        """The rows as given, plus `negatives` random catalogue items per interaction, labelled 0."""
        inputs, targets = self.inputs(frame, spec), self.targets(frame, spec)
        positive = np.flatnonzero(targets > 0)
        rows = np.repeat(positive, self.negatives)
        items = np.asarray(spec["items"], dtype=object)
        sampled = items[rng.integers(0, len(items), size=len(rows))]
        # A sampled "negative" the user did interact with would teach the opposite: drop it.
        seen = set(zip(inputs[USER][positive], inputs[ITEM][positive], strict=True))
        keep = np.array([(u, i) not in seen for u, i in zip(inputs[USER][rows], sampled, strict=True)], dtype=bool)
        rows, sampled = rows[keep], sampled[keep]
        return Examples(
            {USER: np.concatenate([inputs[USER], inputs[USER][rows]]), ITEM: np.concatenate([inputs[ITEM], sampled])},
            np.concatenate([targets, np.zeros(len(rows), np.float32)]),
            np.concatenate([np.arange(len(frame)), rows]),
        )

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        user, item = keras.Input((), dtype="string", name=USER), keras.Input((), dtype="string", name=ITEM)
        # The vocabularies are part of the model: an unknown user or item maps to index 0.
        u = keras.layers.StringLookup(vocabulary=spec["users"], name="user_lookup")(user)
        i = keras.layers.StringLookup(vocabulary=spec["items"], name="item_lookup")(item)
        u_vec = keras.layers.Embedding(len(spec["users"]) + 1, self.dimension, name="user_embedding")(u)
        i_vec = keras.layers.Embedding(len(spec["items"]) + 1, self.dimension, name="item_embedding")(i)
        i_bias = keras.layers.Embedding(len(spec["items"]) + 1, 1, name="item_bias")(i)
        logit = keras.layers.Add()([keras.layers.Dot(axes=1)([u_vec, i_vec]), i_bias])
        out = keras.layers.Activation("sigmoid", dtype="float32", name=self.output_name)(logit)
        return keras.Model({USER: user, ITEM: item}, out, name=self.name)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        users, items = set(spec["users"]), set(spec["items"])
        unknown = ~(frame[USER].astype(str).isin(users) & frame[ITEM].astype(str).isin(items))
        if unknown.mean() > MAX_UNKNOWN_SHARE:
            return f"{unknown.mean():.0%} of the interactions involve users or items the production model never saw"
        return None
