"""Classification data: IDX files, errors that say where we looked, jitter, TensorLoader order and sharding."""

import gzip
import struct

import pytest
import torch
from conftest import FASHION_DIR, needs_fashion

from hintdistill.data import classification as data
from hintdistill.data.classification import TensorLoader, jitter, load_idx_dataset, read_idx, shifts
from hintdistill.errors import DataError


def idx_bytes(t: torch.Tensor) -> bytes:
    """An unsigned-byte IDX file: 0x0000, type 0x08, ndim, big-endian dims, then the data."""
    header = struct.pack(">HBB", 0, 0x08, t.dim()) + struct.pack(f">{t.dim()}I", *t.shape)
    return header + t.to(torch.uint8).numpy().tobytes()


def write_idx(path, t: torch.Tensor, gz: bool = False):
    raw = idx_bytes(t)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(folder, n=3, gz_images=True, gz_labels=False):
    images = torch.arange(n * 4 * 4).view(n, 4, 4) % 256
    labels = torch.arange(n) % 10
    for img_stem, lbl_stem in data.IDX_FILES.values():
        write_idx(folder / (img_stem + (".gz" if gz_images else "")), images, gz_images)
        write_idx(folder / (lbl_stem + (".gz" if gz_labels else "")), labels, gz_labels)
    return images, labels


def test_read_idx_raw_and_gzipped(tmp_path):
    t = torch.randint(0, 256, (5, 3, 2), generator=torch.Generator().manual_seed(0))
    raw = read_idx(write_idx(tmp_path / "x-idx3-ubyte", t))
    gz = read_idx(write_idx(tmp_path / "x-idx3-ubyte.gz", t, gz=True))
    assert raw.dtype == torch.uint8 and raw.shape == (5, 3, 2)
    assert torch.equal(raw, t.to(torch.uint8)) and torch.equal(gz, raw)


@pytest.mark.parametrize("content, reason", [
    (b"\x00\x00\x0d\x03" + b"\x00" * 20, "bad magic number"),                            # float IDX
    (idx_bytes(torch.zeros(2, 3, 3))[:-4], "header announces"),                           # truncated
    (idx_bytes(torch.zeros(2, 3, 3)) + b"\x00", "header announces"),                      # trailing bytes
    (b"\x00\x00", "unpack"),                                                              # no header
])
def test_corrupt_idx_is_a_data_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "Delete it" in str(err.value)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read IDX file .*train-images-idx3-ubyte.gz"):
        read_idx(path)


def test_load_idx_dataset_from_data_dir_mixed_gz_and_raw(tmp_path):
    images, labels = fake_mnist(tmp_path)
    x, y = load_idx_dataset("fashion_mnist", "train", str(tmp_path), download=False)
    assert x.shape == (3, 1, 4, 4) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], images.to(torch.uint8)) and torch.equal(y, labels)
    # torchvision's layout <data_dir>/FashionMNIST/raw is found too
    sub = tmp_path / "tv" / "FashionMNIST" / "raw"
    sub.mkdir(parents=True)
    fake_mnist(sub, n=2)
    assert load_idx_dataset("fashion_mnist", "test", str(tmp_path / "tv"), download=False)[0].shape[0] == 2


def test_images_and_labels_that_do_not_match(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", torch.zeros(5))
    with pytest.raises(DataError, match=r"do not match: \(3, 4, 4\) images, \(5,\) labels"):
        load_idx_dataset("fashion_mnist", "test", str(tmp_path), download=False)


def test_missing_data_says_where_it_looked_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HINTDISTILL_DATA", str(tmp_path / "env"))
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion_mnist", str(tmp_path / "debian"))
    with pytest.raises(DataError) as err:
        load_idx_dataset("fashion_mnist", "train", str(tmp_path / "mine"), download=False)
    message = str(err.value)
    assert "fashion_mnist (train) was not found" in message
    for looked in ("mine", "env", "home/.cache/hintdistill", "debian"):
        assert str(tmp_path / looked) in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.data_dir" in message


@needs_fashion
def test_installed_fashion_mnist_test_split():
    x, y = load_idx_dataset("fashion_mnist", "test", None, download=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file()


def one_hot_images(n: int, size: int = 9) -> torch.Tensor:
    images = torch.zeros(n, 1, size, size)
    images[:, 0, size // 2, size // 2] = 1.0
    return images


def test_jitter_shifts_at_most_two_pixels_and_uses_every_shift():
    # A one-hot pixel in the middle of a 9x9 image could move by up to 4 and stay visible: every
    # observed move must be within ±2 and all 25 moves of [-2, 2]² should occur in 500 draws.
    out = jitter(one_hot_images(500), 2, *shifts(500, 2, torch.Generator().manual_seed(0)))
    assert out.shape == (500, 1, 9, 9)
    assert torch.equal(out.flatten(1).sum(1), torch.ones(500))  # the pixel moved, never duplicated or lost
    where = out.flatten(1).argmax(1)
    moves = {(int(i) // 9 - 4, int(i) % 9 - 4) for i in where}
    assert moves == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_jitter_fills_with_black_not_with_the_mean():
    # uint8 images all black except one white pixel; normalized black is (0 - 0.5) / 0.5 = -1.
    images = torch.zeros(64, 1, 6, 6, dtype=torch.uint8)
    images[:, 0, 0, 0] = 255
    loader = TensorLoader(images, torch.zeros(64, dtype=torch.long), 64, (0.5,), (0.5,), augment=["jitter"])
    x, _ = next(iter(loader))
    values = set(x.unique().tolist())
    assert values <= {-1.0, 1.0} and -1.0 in values  # 0.0 would be the mean colour shifted in
    assert ((x == 1.0).flatten(1).sum(1) <= 1).all()  # the white pixel may leave the frame, never doubles


def loader(n=20, batch_size=4, **kw) -> TensorLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return TensorLoader(images, torch.arange(n), batch_size, (0.0,), (1 / 255,), **kw)


def order(dl: TensorLoader) -> list[int]:
    return [int(v) for _, y in dl for v in y]


def test_tensor_loader_normalizes_and_keeps_order_without_shuffle():
    dl = loader(10, 4)
    batches = list(dl)
    assert [len(y) for _, y in batches] == [4, 4, 2] and len(dl) == 3
    assert order(dl) == list(range(10))
    x, y = batches[1]
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0, 0], y.float())  # (v/255 - 0) / (1/255) = v


def test_tensor_loader_is_deterministic_per_seed_and_epoch():
    a, b = loader(shuffle=True, seed=3), loader(shuffle=True, seed=3)
    assert order(a) == order(b) and sorted(order(a)) == list(range(20)) and order(a) != list(range(20))
    first = order(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert order(a) == order(b) != first
    assert order(loader(shuffle=True, seed=4)) != first
    a.set_epoch(0)
    assert order(a) == first
    # augmentation draws come from the same per-epoch generator
    j1, j2 = loader(shuffle=True, seed=3, augment=["jitter", "hflip"]), loader(shuffle=True, seed=3,
                                                                               augment=["jitter", "hflip"])
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(j1, j2, strict=True))


@pytest.mark.parametrize("n", [20, 21, 23])
def test_ddp_shards_are_disjoint_and_equally_long(n):
    shards = [loader(n, 4, shuffle=True, seed=1, rank=r, world=2) for r in range(2)]
    orders = [order(s) for s in shards]
    assert not set(orders[0]) & set(orders[1])
    assert len(set(orders[0]) | set(orders[1])) >= n - 1  # at most world - 1 examples wait for the next epoch
    # every rank must run the same number of steps, or DistributedDataParallel waits forever
    assert len(orders[0]) == len(orders[1]) == shards[0].num_examples == n // 2
    assert len(shards[0]) == len(shards[1]) == len(list(shards[1]))
