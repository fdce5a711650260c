"""Teacher-output cache: same numbers as running the teacher, keyed, verified, refused where unsafe."""

import json

import pytest
import torch
from test_stage import tiny_data

from hintdistill.config import SpeedConfig, StageConfig
from hintdistill.engine import cache as cache_mod
from hintdistill.engine.cache import TeacherCache, decode_topk, encode_topk
from hintdistill.engine.distributed import Dist
from hintdistill.engine.loop import Phase
from hintdistill.engine.stage import PhaseTrainer, Stage
from hintdistill.errors import ConfigError

KD = [{"type": "ce", "weight": 0.1}, {"type": "kd", "temperature": 4.0, "weight": 0.9}]


def augmenting(data):
    """tiny_data whose training loader applies the stage's augmentation."""
    base = data.train_loader

    def loader(bs, augment, seed, rank, world):
        out = base(bs, augment, seed, rank, world)
        out.augment = list(augment)
        return out

    data.train_loader = loader
    return data


def train(tmp_path, small_cnn, name, augment=(), epochs=3, terms=KD, **speed):
    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    stage = StageConfig(name="kd", epochs=epochs, batch_size=12, terms=terms, augment=list(augment))
    said = []
    trainer = PhaseTrainer(Phase("distilled", student, {"name": "cnn", "args": {}}, [stage], [teacher]),
                           augmenting(tiny_data()), tmp_path / name, torch.device("cpu"), Dist(), 0, log=said.append,
                           speed=SpeedConfig(**speed))
    trainer.train()
    lines = (tmp_path / name / "distilled" / "metrics.jsonl").read_text().splitlines()
    return student.state_dict(), [json.loads(line)["train/loss"] for line in lines], said


def test_cached_run_gives_the_uncached_runs_numbers(tmp_path, small_cnn):
    ref, ref_losses, _ = train(tmp_path, small_cnn, "online", teacher_cache="off")
    got, losses, _ = train(tmp_path, small_cnn, "cached", cache_dir=str(tmp_path / "cache"))
    # Identical: epoch 1 trains on the logits it stores (float32, exact), later epochs read them back;
    # the teacher's logits for a sample do not depend on the other samples of its batch (eval mode).
    assert losses == ref_losses
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    files = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert files == [".json", ".values"]
    header = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert header["shape"] == [32, 1, 10] and list(header["blocks"]) == ["0"]  # 32 samples, one teacher, 10 logits


def test_cache_files_are_reused_verified_and_rebuilt(tmp_path, small_cnn):
    ref, ref_losses, _ = train(tmp_path, small_cnn, "online", teacher_cache="off", epochs=2)
    shared = tmp_path / "cache"
    train(tmp_path, small_cnn, "fill", cache_dir=str(shared), epochs=2)
    values = next(shared.glob("*.values"))
    stamp = values.stat().st_mtime_ns
    _, losses, said = train(tmp_path, small_cnn, "reuse", cache_dir=str(shared), epochs=2)
    assert losses == ref_losses and not any("teacher cache" in s for s in said)
    assert values.stat().st_mtime_ns == stamp  # read, not rewritten
    # corrupt a byte: the block's checksum no longer matches; its samples are recomputed, not used
    raw = bytearray(values.read_bytes())
    raw[5] ^= 0xFF
    values.write_bytes(bytes(raw))
    got, losses, said = train(tmp_path, small_cnn, "corrupt", cache_dir=str(shared), epochs=2)
    assert any("do not match their checksum" in s for s in said)
    assert losses == ref_losses and all(torch.equal(got[k], ref[k]) for k in ref)
    assert TeacherCache(shared, values.stem, 32, 1, 10).complete  # completed again


def test_a_run_killed_mid_epoch_leaves_unverified_blocks_that_are_recomputed(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "BLOCK", 8)
    cache = TeacherCache(tmp_path, "k", 20, 1, 3)
    logits = torch.arange(60, dtype=torch.float32).view(20, 3)
    cache.store(torch.arange(0, 12), [{"logits": logits[:12]}])
    assert cache.lookup(torch.tensor([0, 11]), torch.device("cpu")) is not None  # this process wrote them
    cache.flush()  # block 0 (samples 0-7) is complete and checksummed; block 1 (8-15) is not
    del cache  # "killed": samples 8-11 were written but never checksummed
    again = TeacherCache(tmp_path, "k", 20, 1, 3, log=lambda _: None)
    assert again.lookup(torch.tensor([8]), torch.device("cpu")) is None
    assert torch.equal(again.lookup(torch.tensor([7, 2]), torch.device("cpu"))[0]["logits"], logits[[7, 2]])
    assert not TeacherCache(tmp_path, "k", 20, 1, 4, log=lambda _: None).filled.any()  # wrong size: rebuilt


def test_topk_keeps_the_top_probabilities_and_the_mass_of_the_rest():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    values, classes = encode_topk(logits, 2)
    back = decode_topk(values, classes, 4)
    p, q = logits.softmax(1), back.softmax(1)
    assert torch.allclose(q[0, :2], p[0, :2])  # classes 0 and 1 keep their probabilities
    rest = (1 - p[0, :2].sum()) / 2  # the others share what is left: (e^0 + e^-1) / 2 / sum
    assert torch.allclose(q[0, 2:], torch.stack([rest, rest]))
    assert values.shape == (1, 3)  # k values + log-sum-exp


def test_bytes_per_sample():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert TeacherCache(d, "a", 100, 1, 10, "float16").bytes_per_sample == 20  # 10 fp16 logits
        assert TeacherCache(d, "b", 100, 1, 10).bytes_per_sample == 40
        assert TeacherCache(d, "c", 100, 1, 1000, "float16", topk=5).bytes_per_sample == 6 * 2 + 5 * 4


def test_random_augmentation_refuses_the_cache(tmp_path, small_cnn):
    _, _, said = train(tmp_path, small_cnn, "aug", augment=["hflip"], epochs=1)
    assert any("teacher cache off: the training loader applies random augmentation (hflip)" in s for s in said)
    assert not (tmp_path / "aug" / "distilled" / "teacher_cache").exists()
    with pytest.raises(ConfigError, match="random augmentation"):
        train(tmp_path, small_cnn, "aug_on", augment=["hflip"], epochs=1, teacher_cache="on")


def test_key_changes_with_the_teachers_weights_and_the_data(small_cnn):
    from hintdistill.engine.cache import cache_key

    teacher = small_cnn((8, 16), seed=1)
    key = cache_key([teacher], "data A", "float32", None)
    assert cache_key([small_cnn((8, 16), seed=1)], "data A", "float32", None) == key  # same weights
    with torch.no_grad():
        teacher.classifier.bias[0] += 1e-6
    assert cache_key([teacher], "data A", "float32", None) != key
    assert cache_key([small_cnn((8, 16), seed=1)], "data B", "float32", None) != key
    assert cache_key([small_cnn((8, 16), seed=1)], "data A", "float16", None) != key


def test_speed_options_channels_last_and_bf16_autocast(tmp_path, small_cnn):
    _, ref_losses, _ = train(tmp_path, small_cnn, "fp32", teacher_cache="off", epochs=1)
    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    stage = StageConfig(name="kd", epochs=1, batch_size=12, terms=KD)
    trainer = PhaseTrainer(Phase("distilled", student, {"name": "cnn", "args": {}}, [stage], [teacher]),
                           tiny_data(), tmp_path / "fast", torch.device("cpu"), Dist(), 0, log=lambda _: None,
                           speed=SpeedConfig(channels_last=True, autocast="bf16", teacher_cache="off"))
    trainer.train()
    conv = student.features.stage2[0][0].weight  # [8, 4, 3, 3]: the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    line = json.loads((tmp_path / "fast" / "distilled" / "metrics.jsonl").read_text().splitlines()[0])
    # bf16 keeps 8 bits of mantissa: the same loss to about 1%, but not bit for bit
    assert line["train/loss"] != ref_losses[0] and abs(line["train/loss"] / ref_losses[0] - 1) < 0.02
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train(tmp_path, small_cnn, "fp16", autocast="fp16", epochs=1)


def test_teacher_autocast_rounds_only_the_teachers_and_keys_the_cache(tmp_path, small_cnn):
    from hintdistill.distiller import Distiller
    from hintdistill.terms.logits import SoftTargetKD

    student, teacher = small_cnn((4, 8), seed=0), small_cnn((8, 16), seed=1)
    x = torch.randn(6, 1, 16, 16)
    exact = Distiller(student, teacher, {"kd": (SoftTargetKD(4.0), 1.0)}, example_inputs=x[:2])
    low = Distiller(student, teacher, {"kd": (SoftTargetKD(4.0), 1.0)}, example_inputs=x[:2],
                    teacher_autocast=torch.bfloat16)
    ref, got = exact.teacher_outputs(x)[0]["logits"], low.teacher_outputs(x)[0]["logits"]
    # float32 again, an ordinary tensor (a term may save it for backward), rounded through bf16
    assert got.dtype == torch.float32 and not got.is_inference() and not torch.equal(got, ref)
    torch.testing.assert_close(got, ref, atol=0.05 * ref.abs().max().item(), rtol=0)
    _, losses = low(x)
    assert losses["kd"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    # a run with it trains (loss within bf16's rounding of the exact run's) and writes its own cache file
    shared = tmp_path / "cache"
    _, ref_losses, _ = train(tmp_path, small_cnn, "exact", epochs=1, cache_dir=str(shared))
    _, bf16_losses, _ = train(tmp_path, small_cnn, "bf16", epochs=1, cache_dir=str(shared), teacher_autocast="bf16")
    assert bf16_losses != ref_losses and abs(bf16_losses[0] / ref_losses[0] - 1) < 0.02
    assert len(list(shared.glob("*.json"))) == 2
    with pytest.raises(ConfigError, match="teacher_autocast: fp16 needs a CUDA device"):
        train(tmp_path, small_cnn, "fp16", teacher_autocast="fp16", epochs=1)


def test_stored_views_replay_each_samples_augmentation_every_k_epochs():
    from hintdistill.data.classification import TensorLoader

    images, labels = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8), torch.arange(40) % 10
    loader = TensorLoader(images, labels, 16, (0.5,) * 3, (0.5,) * 3, shuffle=True, augment=["crop", "hflip"])
    loader.use_views(2)
    assert loader.random_augment == [] and loader.dataset_size == 80

    def epoch(e):
        loader.set_epoch(e)
        rows = {}
        for x, _ in loader:
            rows.update({int(i): img for i, img in zip(loader.batch_indices, x, strict=True)})
        return rows

    first, second, third = epoch(0), epoch(1), epoch(2)
    assert sorted(first) == list(range(40)) and sorted(second) == list(range(40, 80))  # rows view * N + index
    assert all(torch.equal(first[i], third[i]) for i in range(40))  # epoch 2 replays view 0, in another order
    assert sum(not torch.equal(first[i], second[i + 40]) for i in range(40)) > 30  # view 1: other crops, flips
    plain = loader.normalize(images.float())
    assert sum(not torch.equal(first[i], plain[i]) for i in range(40)) > 30  # and they are augmented
    assert "views 2 of crop+hflip" in loader.cache_identity()


def teacher_runs_per_epoch(monkeypatch) -> list[int]:
    """The teachers' forward passes in each epoch of the runs that follow (filled in as they train)."""
    from hintdistill.distiller import Distiller

    calls, per_epoch = {"n": 0}, []
    teacher_outputs, run_epoch = Distiller.teacher_outputs, Stage.run_epoch

    def counted(self, x):
        calls["n"] += 1
        return teacher_outputs(self, x)

    def epoch(self, e):
        before = calls["n"]
        out = run_epoch(self, e)
        per_epoch.append(calls["n"] - before)
        return out

    monkeypatch.setattr(Distiller, "teacher_outputs", counted)
    monkeypatch.setattr(Stage, "run_epoch", epoch)
    return per_epoch


def test_stored_views_let_augmented_runs_read_the_cache_with_the_teacher_runs_numbers(tmp_path, small_cnn,
                                                                                    monkeypatch):
    per_epoch = teacher_runs_per_epoch(monkeypatch)
    got, losses, said = train(tmp_path, small_cnn, "views", augment=["crop", "hflip"], epochs=4, cache_views=2)
    assert per_epoch == [3, 3, 0, 0]  # 3 steps: epochs 1-2 fill views 0 and 1, epochs 3-4 read them
    assert any("teacher cache of 2 stored views per sample of the augmentation (crop, hflip)" in s for s in said)
    header = json.loads(next((tmp_path / "views" / "distilled" / "teacher_cache").glob("*.json")).read_text())
    assert header["shape"] == [64, 1, 10]
    # the same views with the teacher run every step (every lookup a miss): the same numbers, bit for bit
    monkeypatch.setattr(TeacherCache, "lookup", lambda self, idx, device: None)
    ref, ref_losses, _ = train(tmp_path, small_cnn, "views_online", augment=["crop", "hflip"], epochs=4,
                               cache_views=2)
    assert losses == ref_losses and all(torch.equal(got[k], ref[k]) for k in ref)
    # without views, the augmented run differs (a fresh augmentation every epoch) and refuses the cache
    _, fresh, said = train(tmp_path, small_cnn, "fresh", augment=["crop", "hflip"], epochs=4)
    assert fresh[:1] != losses[:1] or fresh[2:] != losses[2:]
    assert any("speed.cache_views: k replays k stored views" in s for s in said)


HINT = [{"type": "hint", "hint": "features.stage2", "guided": "features.stage2"}]


@pytest.mark.parametrize("terms", [HINT, HINT + KD], ids=["hint stage", "hint and kd"])
def test_cached_features_give_the_uncached_runs_numbers(tmp_path, small_cnn, monkeypatch, terms):
    ref, ref_losses, said = train(tmp_path, small_cnn, "online", terms=terms)
    assert any("are cached unless speed.cache_features: true" in s for s in said)
    per_epoch = teacher_runs_per_epoch(monkeypatch)
    got, losses, said = train(tmp_path, small_cnn, "cached", terms=terms, cache_features=True)
    assert per_epoch == [3, 0, 0]  # the teacher runs in the first epoch only
    assert losses == ref_losses and all(torch.equal(got[k], ref[k]) for k in ref)
    folder = tmp_path / "cached" / "distilled" / "teacher_cache"
    header = json.loads(next(folder.glob("*.json")).read_text())
    assert header["features"] == [{"feat:features.stage2": [16, 4, 4]}]  # the teacher's stage 2 on 16x16 inputs
    assert header["shape"] == [32, 1, 10 if terms != HINT else 0]  # a hint stage stops the teacher: no logits
    per_sample = 16 * 4 * 4 * 4 + (40 if terms != HINT else 0)
    assert any(f"teacher cache with features: {per_sample / 1024:.1f} KiB per sample" in s for s in said)
    assert sorted(p.name.split(".", 1)[1] for p in folder.iterdir()) == sorted(
        ["json", "t0.feat_features.stage2.values"] + (["values"] if terms != HINT else []))


def test_a_cache_that_does_not_fit_on_the_disk_is_refused_not_a_crash(tmp_path, small_cnn, monkeypatch):
    """The files are allocated when made: a full disk fails there (not as a SIGBUS on a mapped page later)."""
    import errno
    import os

    ref, ref_losses, _ = train(tmp_path, small_cnn, "online", teacher_cache="off")

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod.os, "posix_fallocate", full)
    got, losses, said = train(tmp_path, small_cnn, "full", cache_dir=str(tmp_path / "cache"))
    assert any(s.startswith("[distilled/kd] teacher cache off: the cache's files do not fit on the disk of "
                            f"{tmp_path / 'cache'} (No space left on device); the teachers run every step")
               for s in said)
    assert losses == ref_losses and not any((tmp_path / "cache").iterdir())  # trained on; nothing half made
    with pytest.raises(ConfigError, match="Free disk space, set speed.cache_dir to a folder on a larger disk"):
        train(tmp_path, small_cnn, "full_on", teacher_cache="on")


def train_detector(tmp_path, name, terms, augment=(), epochs=3, **speed):
    """Two tiny YOLOs on 6 BCCD images at 64 px (2 steps per epoch): the student's weights, losses and log."""
    from test_detection_recipe import needs_bccd, tiny_recipe

    if needs_bccd.args[0]:
        pytest.skip(needs_bccd.kwargs["reason"])
    from hintdistill.build import build_data, instantiate, model_spec
    from hintdistill.config import recipe_from_dict

    recipe = recipe_from_dict(tiny_recipe(tmp_path, terms))
    data = build_data(recipe)
    torch.manual_seed(0)
    teacher = instantiate(model_spec(recipe.teachers[0], data.model_defaults)).eval()
    student = instantiate(model_spec(recipe.student, data.model_defaults))
    stage = StageConfig(name="kd", epochs=epochs, batch_size=3, terms=terms, augment=list(augment),
                        optimizer={"name": "sgd", "lr": 0.01})
    said = []
    trainer = PhaseTrainer(Phase("distilled", student, {"name": "yolo", "args": {}}, [stage], [teacher]), data,
                           tmp_path / name, torch.device("cpu"), Dist(), 0, log=said.append, speed=SpeedConfig(**speed))
    trainer.train()
    lines = (tmp_path / name / "distilled" / "metrics.jsonl").read_text().splitlines()
    return student.state_dict(), [json.loads(line)["train/loss"] for line in lines], said


DETECTION_KD = [{"type": "detection"}, {"type": "objectness_kd"}]
NECK = [{"type": "neck_hints", "weight": 0.5}]


@pytest.mark.parametrize("terms", [DETECTION_KD, DETECTION_KD + NECK], ids=["objectness_kd", "with neck hints"])
def test_detection_teachers_head_maps_are_cached_with_the_uncached_runs_numbers(tmp_path, monkeypatch, terms):
    features = terms != DETECTION_KD
    ref, ref_losses, said = train_detector(tmp_path, "online", terms, teacher_cache="off")
    per_epoch = teacher_runs_per_epoch(monkeypatch)
    got, losses, said = train_detector(tmp_path, "cached", terms, cache_features=features)
    assert per_epoch == [2, 0, 0]  # 6 images in batches of 3: the teacher runs in the first epoch only
    # identical: in eval mode a sample's head maps do not depend on the rest of its batch, and float32 is exact
    assert losses == ref_losses and all(torch.equal(got[k], ref[k]) for k in ref)
    folder = tmp_path / "cached" / "distilled" / "teacher_cache"
    header = json.loads(next(folder.glob("*.json")).read_text())
    heads = {f"head:{i}": [3, side, side, 8] for i, side in enumerate((8, 4, 2))}  # 64 px, strides 8/16/32, 3 classes
    assert {k: v for k, v in header["features"][0].items() if k.startswith("head:")} == heads
    assert any(k.startswith("feat:") for k in header["features"][0]) == features
    # stored as the head lays them out ([B, A, 5+C, H, W] permuted), read back with the same strides
    assert all(header["orders"][0][k] == [0, 3, 1, 2] for k in heads)
    assert header["shape"] == [6, 1, 0] and list(header["blocks"]) == ["0"]  # 6 images, no logits
    assert any(s.startswith("teacher cache with head maps" + (" and features" if features else "")) for s in said)


def test_augmented_detection_refuses_the_cache_and_names_the_augmentation(tmp_path, monkeypatch):
    per_epoch = teacher_runs_per_epoch(monkeypatch)
    _, _, said = train_detector(tmp_path, "augmented", DETECTION_KD, augment=["hflip"], epochs=2)
    assert per_epoch == [2, 2]
    assert any("teacher cache off: the training loader applies random augmentation (hflip)" in s for s in said)
    with pytest.raises(ConfigError, match="cannot be cached: the training loader applies random augmentation"):
        train_detector(tmp_path, "augmented_on", DETECTION_KD, augment=["hflip"], epochs=1, teacher_cache="on")


def test_detection_loader_names_each_batchs_images_and_keys_them_by_file(tmp_path):
    from test_detection_recipe import needs_bccd, tiny_recipe

    if needs_bccd.args[0]:
        pytest.skip(needs_bccd.kwargs["reason"])
    from hintdistill.build import build_data
    from hintdistill.config import recipe_from_dict

    data = build_data(recipe_from_dict(tiny_recipe(tmp_path, DETECTION_KD)))
    loader = data.train_loader(4, [], 0, 0, 1)
    loader.set_epoch(1)
    seen = []
    for _, targets in loader:
        assert loader.batch_indices.tolist() == [t["image_id"] for t in targets]
        seen += loader.batch_indices.tolist()
    assert sorted(seen) == list(range(6)) and loader.dataset_size == 6 and loader.random_augment == []
    assert data.train_loader(4, ["hflip", "multiscale"], 0, 0, 1).random_augment == ["hflip", "multiscale"]
    other = build_data(recipe_from_dict(tiny_recipe(tmp_path, DETECTION_KD, image_size=96)))
    assert other.train_loader(4, [], 0, 0, 1).cache_identity() != loader.cache_identity()


def test_sample_order_follows_the_memory_layout_and_round_trips_the_strides(tmp_path):
    from hintdistill.engine.cache import sample_order

    plain, head = torch.randn(4, 3, 5, 6), torch.randn(4, 3, 8, 5, 6).permute(0, 1, 3, 4, 2)
    last = torch.randn(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    assert sample_order(plain) == (0, 1, 2) and sample_order(head) == (0, 3, 1, 2) and sample_order(last) == (1, 2, 0)
    assert sample_order(torch.randn(3, 4, 5).transpose(0, 1)) == (0, 1)  # batch not outermost: stored as it is
    feats = {"head:0": tuple(head.shape[1:]), "feat:x": tuple(last.shape[1:])}
    orders = {k: sample_order(t) for k, t in (("head:0", head), ("feat:x", last))}
    cache = TeacherCache(tmp_path, "k", 4, 1, None, features=[feats], orders=[orders])
    cache.store(torch.arange(4), [{"head:0": head, "feat:x": last}])
    out = cache.lookup(torch.tensor([2, 0]), torch.device("cpu"))[0]
    for k, t in (("head:0", head), ("feat:x", last)):
        assert torch.equal(out[k], t[[2, 0]]) and out[k].stride() == t[[2, 0]].stride()
