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
    assert any("only logits are cached unless speed.cache_features: true" in s for s in said)
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
