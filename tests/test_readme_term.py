"""README's "Add your own term" example, run as it is written there."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from hintdistill import Distiller
from hintdistill.build import build_terms
from hintdistill.config import recipe_from_dict
from hintdistill.terms import registered

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_term_code() -> str:
    section = README.read_text().split("## Add your own term", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def cosine_hint():
    namespace: dict = {"__name__": "readme_term"}
    exec(compile(readme_term_code(), str(README), "exec"), namespace)  # noqa: S102 - our own README's code
    return namespace["CosineHint"]


class Two(nn.Module):
    """A linear layer whose output is tapped as ``layer``."""

    def __init__(self, weight):
        super().__init__()
        self.layer = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor(weight))

    def forward(self, x):
        return self.layer(x)


def test_readme_term_registers_and_computes_by_hand(cosine_hint):
    assert registered()["cosine_hint"] is cosine_hint
    # x = [1, 0]: student layer gives [1, 0], teacher layer [1, 1]; cos = 1/√2, loss 1 − 1/√2 = 0.2928932
    student, teacher = Two([[1.0, 0.0], [0.0, 0.0]]), Two([[1.0, 0.0], [1.0, 0.0]])
    distiller = Distiller(student, teacher, {"cos": (cosine_hint("layer", "layer"), 0.5)},
                          example_inputs=torch.tensor([[1.0, 0.0]]))
    _, losses = distiller(torch.tensor([[1.0, 0.0]]))
    assert losses["cos"].item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    assert losses["cos.cos"].item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert losses["loss"].item() == pytest.approx(0.5 * (1 - 1 / math.sqrt(2)), rel=1e-6)


def test_readme_term_works_in_recipes(cosine_hint, tiny_recipe):
    tiny_recipe["distill"][0]["terms"].append({"type": "cosine_hint", "hint": "features.stage2",
                                               "guided": "features.stage2", "weight": 0.5})
    recipe = recipe_from_dict(tiny_recipe)
    term, weight = build_terms(recipe.distill[0].terms)["cosine_hint"]
    assert isinstance(term, cosine_hint) and (term.guided, term.eps, weight) == ("features.stage2", 1e-8, 0.5)
    assert recipe.distill[0].terms[-1].describe() == "cosine_hint (0.5)"
