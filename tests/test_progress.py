"""The learning watch: a flat loss or a detector stuck near zero mAP is said once, with what to try."""

from hintdistill.engine.progress import LearningWatch


def test_a_falling_loss_gives_no_warning():
    watch = LearningWatch("baseline/train", epochs=20, lr=0.01)
    assert all(watch.update(1.0 - 0.05 * e, None) is None for e in range(12))


def test_a_flat_loss_is_said_once_after_patience_epochs():
    watch = LearningWatch("teacher/train", epochs=20, lr=0.01, patience=5)
    losses = [0.37, 0.38, 0.39, 0.385, 0.38, 0.382, 0.39, 0.381]  # the raccoon teacher at lr 0.01
    said = [watch.update(v, None) for v in losses]
    assert said[:5] == [None] * 5  # not before patience + 1 epochs
    assert said[5] is not None and "has not fallen" in said[5] and "learning rate (now 0.01)" in said[5]
    assert said[6:] == [None, None]  # once per stage
    # a 2 % fall over the window is learning
    falling = LearningWatch("x", 20, 0.01, patience=5)
    assert [falling.update(v, None) for v in [1, 1, 1, 1, 1, 0.97]][-1] is None


def test_map_near_zero_after_a_third_of_the_epochs():
    watch = LearningWatch("baseline/train", epochs=30, lr=0.01, patience=5)
    for e in range(9):  # 9 < 30 / 3: too early, even at mAP 0
        assert watch.update(1.0 - 0.1 * e, {"map50": 0.0}) is None
    said = watch.update(0.05, {"map50": 0.004})
    assert said is not None and "mAP@0.5 is 0.0040 after 10 of 30" in said
    assert watch.update(0.04, {"map50": 0.0}) is None
    healthy = LearningWatch("x", epochs=30, lr=0.04)
    assert all(healthy.update(1.0 - 0.02 * e, {"map50": 0.2}) is None for e in range(15))
    assert LearningWatch("c", 30, 0.05).update(0.5, {"accuracy": 0.0}) is None  # classification: no mAP rule


def test_the_warm_up_epochs_do_not_count_for_the_loss_rule():
    # the raccoon YOLO-s teacher with mosaic and 3 warm-up epochs: the loss rises while the rate ramps up
    losses = [0.386, 0.410, 0.417, 0.395, 0.392, 0.381, 0.367, 0.35, 0.33, 0.31, 0.29]
    watch = LearningWatch("teacher/train", epochs=60, lr=0.04, warmup=3)
    assert [watch.update(v, None) for v in losses] == [None] * len(losses)
    # the same losses without the warm-up: epoch 1 is the best of the first six, so it warns
    no_warmup = LearningWatch("teacher/train", 60, 0.04)
    assert [no_warmup.update(v, None) is not None for v in losses].index(True) == 5
    # after the warm-up a flat loss is still said (epochs 4-9 flat)
    flat = LearningWatch("t", 60, 0.04, warmup=3)
    said = [flat.update(v, None) for v in [0.5, 0.6, 0.6, 0.40, 0.40, 0.40, 0.40, 0.40, 0.40]]
    assert said[-1] is not None and said[:-1] == [None] * 8


def test_a_flat_loss_in_the_second_half_is_convergence():
    # a 30-epoch raccoon student: falling steadily, then flat over its last cosine epochs (0.1501 -> 0.1474)
    losses = [0.30 - 0.006 * e for e in range(24)] + [0.1501, 0.149, 0.148, 0.1474, 0.148, 0.148]
    watch = LearningWatch("distilled/distill", epochs=30, lr=0.04, warmup=3)
    assert [watch.update(v, None) for v in losses] == [None] * 30
    # the same losses in the first half of a longer stage are a stall, and said
    early = LearningWatch("distilled/distill", epochs=100, lr=0.04, warmup=3)
    assert [early.update(v, None) for v in losses][-1] is not None


def test_a_wandering_loss_is_not_said_while_the_test_score_climbs():
    # a 60-epoch raccoon baseline (3 warm-up epochs), tested every 5: its loss rose over epochs 15-19 while its
    # mAP@0.5 climbed 0.039 -> 0.169 -> 0.294 (0.632 at the end)
    losses = [0.3039, 0.3102, 0.3151, 0.3153, 0.3142, 0.3105, 0.2976, 0.2902, 0.2814, 0.2718, 0.2631, 0.2553, 0.2508,
              0.2459, 0.2412, 0.2469, 0.2524, 0.2485, 0.2436]
    maps = {5: 0.0386, 10: 0.1688, 15: 0.2939}

    def said(scores: dict) -> list:
        watch = LearningWatch("distilled/train", epochs=60, lr=0.04, warmup=3)
        return [watch.update(v, {"map50": scores[e]} if e in scores else None) for e, v in enumerate(losses, 1)]

    assert said(maps) == [None] * len(losses)
    # the same losses with the mAP@0.5 flat since epoch 10: said at epoch 19, as without scores
    flat = said({5: 0.0386, 10: 0.1688, 15: 0.1750})
    assert flat[-1] is not None and "has not fallen" in flat[-1] and flat[:-1] == [None] * (len(losses) - 1)
    assert said({})[-1] is not None
    # classification: accuracy counts the same way
    watch = LearningWatch("c", 60, 0.1, warmup=3)
    out = [watch.update(v, {"accuracy": 0.5 + 0.05 * (e // 5)} if e % 5 == 0 else None) for e, v in enumerate(losses, 1)]
    assert out == [None] * len(losses)
