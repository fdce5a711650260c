"""A ViT-style token map [B, N, C] as a hint: one clear message without ``tokens_to_map``, and with it the class
token dropped and the H*W tokens reshaped to [B, C, H, W]."""

import pytest
import torch
from torch import nn

from hintdistill import Distiller, HintLoss, ShapeError
from hintdistill.adapters import build_adapter, tokens_to_map
from hintdistill.build import build_term

HintTerm = HintLoss.Config  # the hint term's recipe schema (the term registry)

# class token [9, 9], then token k = [k, 10k] for k = 1..4 on a 2 x 2 grid (row-major)
TOKENS = torch.tensor([[[9.0, 9.0], [1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]])


def test_tokens_to_map_drops_the_class_token_and_keeps_row_major_order():
    m = tokens_to_map(TOKENS)
    assert m.shape == (1, 2, 2, 2)
    assert m[0, 0].tolist() == [[1.0, 2.0], [3.0, 4.0]] and m[0, 1].tolist() == [[10.0, 20.0], [30.0, 40.0]]
    assert tokens_to_map(TOKENS[:, 1:]).tolist() == m.tolist()  # no class token: N = H*W
    four_d = torch.zeros(1, 2, 3, 3)
    assert tokens_to_map(four_d) is four_d
    with pytest.raises(ShapeError, match=r"'blocks.3' has 7 tokens, neither H\*W nor 1 \+ H\*W"):
        tokens_to_map(torch.zeros(1, 7, 2), "blocks.3")


@pytest.mark.parametrize("adapter", ["conv1x1", "conv3x3", "regressor", "linear"])
def test_token_map_without_reshape_gets_one_message_naming_the_fix(adapter):
    with pytest.raises(ShapeError) as info:
        build_adapter(adapter, (2, 64, 32), (2, 197, 768))
    message = str(info.value)
    assert "a 3-d feature [B, N, C] is a token map" in message and f"adapter '{adapter}' cannot take" in message
    assert "Set tokens_to_map: true on the hint term" in message


def test_hint_on_tokens_by_hand():
    # student guided map zeros [1, 2, 2, 2]; hint = the tokens reshaped; identity, l2 mean:
    # (1 + 4 + 9 + 16 + 100 + 400 + 900 + 1600) / 8 = 378.75
    term = HintLoss("h", "g", adapter="identity", tokens_to_map=True)
    student, teachers = {"feat:g": torch.zeros(1, 2, 2, 2)}, [{"feat:h": TOKENS}]
    term.setup(student, teachers)
    assert term(student, teachers).item() == pytest.approx(378.75)


class TinyViT(nn.Module):
    """Patchify 8x8 into 2x2 patches (16 tokens), prepend a class token, one linear block."""

    def __init__(self, dim: int):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 2, 2)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = self.block(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1))
        return self.head(tokens[:, 0])


def test_vit_teacher_guides_a_cnn_student_through_a_recipe_entry():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.Flatten(), nn.LazyLinear(3))
    cfg = HintTerm(type="hint", hint="block", guided="0", tokens_to_map=True)
    distiller = Distiller(student, TinyViT(6), {"hint": (build_term(cfg), 1.0)}, example_inputs=torch.randn(2, 3, 8, 8))
    adapter = distiller.terms["hint"].adapter
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (5, 6)
    _, losses = distiller(torch.randn(2, 3, 8, 8))
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad
    with pytest.raises(ShapeError, match="is a token map"):
        Distiller(student, TinyViT(6), {"hint": (build_term(HintTerm(type="hint", hint="block", guided="0")), 1.0)},
                  example_inputs=torch.randn(2, 3, 8, 8))
