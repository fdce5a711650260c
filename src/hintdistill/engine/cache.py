"""Teacher-output cache (offline KD): each sample's teacher logits or a detector's raw head maps (and, on
request, the tapped features that hints read), stored while the first epoch trains.

A frozen teacher given the same input every epoch gives the same logits every epoch, so later epochs
read them from a file instead of running the teacher. The cache is keyed by a fingerprint of the
teachers' weights, the training data's content and the teacher-side transform (``cache_key``); its rows
are indexed by the data set's sample index (the loader's ``batch_indices``).

Files, for a key K, in the cache folder (nothing in them is unpickled):

- ``K.values`` raw ``numpy.memmap`` ``[N, teachers, C]`` (or ``[N, teachers, k + 1]`` with top-k: the k
  largest logits and the log-sum-exp of all); with top-k also ``K.classes`` ``[N, teachers, k]`` int32;
- for a detector, ``K.t<i>.head_<l>.values`` ``[N, A, H, W, 5 + C]`` per head level l of teacher i (the training
  images are letterboxed to one size, so every sample's maps have one shape);
- with ``cache_features``, ``K.t<i>.<feature>.values`` ``[N, *shape]`` per tapped feature of teacher i;
- ``K.json``: format, key, shapes, dtype, and a CRC-32 per block of ``BLOCK`` samples, recorded only once
  every sample of the block is written and flushed (``flush``, at the end of every epoch).

A run killed mid-epoch leaves blocks without a checksum: their samples count as missing and are computed
again (and the cache completed) on the next epoch; a block whose bytes no longer match its checksum is
recomputed too. A cache is never read for a sample it has not verified.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..taps import Outputs

FORMAT = "hintdistill-teacher-cache-1"
BLOCK = 1024  # samples per checksummed block


def model_fingerprint(model: nn.Module) -> str:
    """A hash of a model's class and every parameter and buffer (names, shapes, dtypes, bytes)."""
    digest = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(teachers: list[nn.Module], data_identity: str, dtype: str, topk: int | None,
              features: list[dict] | None = None, orders: list[dict] | None = None) -> str:
    """The file name stem: teachers' weights, data content and teacher transform, storage layout (and the
    cached features and their memory orders, where there are any)."""
    layout = {"features": [{k: list(v) for k, v in f.items()} for f in features]} if features and any(features) else {}
    if orders and any(o != tuple(range(len(o))) for f in orders for o in f.values()):
        layout["orders"] = [{k: list(v) for k, v in f.items()} for f in orders]
    blob = json.dumps({"format": FORMAT, "teachers": [model_fingerprint(t) for t in teachers],
                       "data": data_identity, "dtype": dtype, "topk": topk, **layout})
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def sample_order(t: torch.Tensor) -> tuple[int, ...]:
    """The order of a batch tensor's per-sample dimensions in memory, outermost first (0, 1, ... for a contiguous
    one): rows stored in this order are read back with the tensor's own strides, so the terms sum in the same order
    as with the teacher's tensor (a YOLO head map ``[B, A, H, W, 5+C]`` is a permuted view, ``(0, 3, 1, 2)``)."""
    order = tuple(sorted(range(t.dim() - 1), key=lambda d: (-t.stride(d + 1), d)))
    return order if t.permute(0, *(d + 1 for d in order)).is_contiguous() else tuple(range(t.dim() - 1))


def encode_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C]`` logits as (the k largest plus the log-sum-exp ``[B, k + 1]``, their classes ``[B, k]``)."""
    values, classes = logits.float().topk(k, dim=1)
    return torch.cat([values, logits.float().logsumexp(1, keepdim=True)], 1), classes.int()


def decode_topk(values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax keeps the stored top-k probabilities exactly and spreads the remaining mass
    evenly over the other classes (Shen & Xing 2022 keep top-k soft labels the same way)."""
    top, lse = values[:, :-1].float(), values[:, -1:].float()
    k = top.shape[1]
    if k >= num_classes:
        return torch.empty(top.shape[0], num_classes).scatter_(1, classes.long(), top)
    rest = (1 - (top - lse).exp().sum(1, keepdim=True)).clamp_min(1e-12) / (num_classes - k)
    full = (rest.log() + lse).expand(-1, num_classes).clone()
    return full.scatter_(1, classes.long(), top)


def allocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the file on disk (ENOSPC here when they do not fit); where the system or file
    system cannot, the file stays sparse."""
    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:  # no posix_fallocate on this platform
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


class TeacherCache:
    """Per-sample teacher outputs in memory-mapped files; ``lookup`` a batch, ``store`` it, ``flush``.

    Every teacher's logits share one array ``[N, teachers, C]`` (top-k: ``k + 1`` values and ``k`` classes);
    ``features`` (one ``{key: per-sample shape}`` per teacher, e.g. ``{"feat:layer2": (64, 8, 8)}`` or a detector's
    ``{"head:0": (3, 40, 40, 8), ...}``) adds an array ``[N, *shape]`` per entry, its dimensions stored in the
    ``orders`` given (``sample_order``; default as they are). ``num_classes`` None: the teachers give no logits (a
    hint stage stops them at the hint; a detector)."""

    def __init__(self, folder: Path, key: str, num_samples: int, num_teachers: int, num_classes: int | None,
                 dtype: str = "float32", topk: int | None = None, log=print,
                 features: list[dict[str, tuple[int, ...]]] | None = None,
                 orders: list[dict[str, tuple[int, ...]]] | None = None):
        self.folder, self.key, self.log = Path(folder), key, log
        self.num_classes = num_classes
        self.topk = topk if topk and num_classes and topk < num_classes else None
        width = (num_classes if self.topk is None else self.topk + 1) if num_classes else 0
        self.shape = (num_samples, num_teachers, width)
        self.features = [dict(f) for f in features] if features else [{} for _ in range(num_teachers)]
        given = orders or [{} for _ in self.features]
        self.orders = [{k: tuple(o.get(k, range(len(shape)))) for k, shape in f.items()}
                       for f, o in zip(self.features, given, strict=True)]
        # the permutations of a batch tensor into the stored order and back, worked out once
        self._to_stored = [{k: (0, *(1 + d for d in o)) for k, o in f.items()} for f in self.orders]
        self._from_stored = [{k: (0, *(1 + int(d) for d in np.argsort(o))) for k, o in f.items()} for f in self.orders]
        self.dtype = np.dtype(dtype)
        self.header_path = self.folder / f"{key}.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.filled = np.zeros(num_samples, dtype=bool)
        self.checksums: dict[str, int] = {}
        header = self._read_header()
        if header is None:
            self._reserve()
        self.arrays = {name: np.memmap(path, dt, "r+", shape=shape) for name, (path, dt, shape) in self._layout().items()}
        self.values, self.classes = self.arrays.get("values"), self.arrays.get("classes")
        if header is not None:
            self._verify(header["blocks"])
        else:
            self._write_header()

    # -- files ------------------------------------------------------------------------------------
    def _reserve(self) -> None:
        """Create the data files with their blocks allocated on disk, not sparse: a full disk then fails here,
        as an OSError the Stage reports, instead of killing the process (SIGBUS) when a mapped page is written."""
        made = []
        try:
            for path, dt, shape in self._layout().values():
                size = int(np.prod(shape)) * dt.itemsize
                with open(path, "wb") as f:
                    made.append(path)
                    if size:
                        allocate(f.fileno(), size)
                    f.truncate(size)
        except OSError:
            for path in made:
                path.unlink(missing_ok=True)
            raise

    def _layout(self) -> dict[str, tuple[Path, np.dtype, tuple[int, ...]]]:
        """Each array's file, dtype and shape: the logits (and top-k classes), then each teacher's features."""
        n, t, _ = self.shape
        out = {}
        if self.num_classes:
            out["values"] = (self.folder / f"{self.key}.values", self.dtype, self.shape)
        if self.topk:
            out["classes"] = (self.folder / f"{self.key}.classes", np.dtype(np.int32), (n, t, self.topk))
        for i, feats in enumerate(self.features):
            for k, shape in feats.items():
                safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in k)
                stored = tuple(shape[d] for d in self.orders[i][k])
                out[f"{i}/{k}"] = (self.folder / f"{self.key}.t{i}.{safe}.values", self.dtype, (n, *stored))
        return out

    def _expected(self) -> dict:
        out = {"format": FORMAT, "key": self.key, "shape": list(self.shape), "dtype": self.dtype.name,
               "topk": self.topk, "block": BLOCK}
        if any(self.features):
            out["features"] = [{k: list(v) for k, v in f.items()} for f in self.features]
            out["orders"] = [{k: list(v) for k, v in f.items()} for f in self.orders]
        return out

    def _read_header(self) -> dict | None:
        """The header when it and the data files match this cache's layout; None starts a new cache."""
        layout = self._layout().values()
        if not self.header_path.is_file() or not all(path.is_file() for path, _, _ in layout):
            return None
        if [path.stat().st_size for path, _, _ in layout] != [int(np.prod(sh)) * dt.itemsize for _, dt, sh in layout]:
            self.log(f"teacher cache {self.header_path}: data files have the wrong size; rebuilding it")
            return None
        try:
            header = json.loads(self.header_path.read_text())
            ok = {k: header.get(k) for k in self._expected()} == self._expected()
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            self.log(f"teacher cache {self.header_path}: unreadable or another layout; rebuilding it")
            return None
        return header

    def _write_header(self) -> None:
        tmp = self.header_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**self._expected(), "blocks": self.checksums}))
        os.replace(tmp, self.header_path)  # atomic: a killed run leaves the old header or the new one

    def _block_crc(self, b: int) -> int:
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, self.shape[0])
        crc = 0
        for array in self.arrays.values():
            crc = zlib.crc32(np.ascontiguousarray(array[lo:hi]).tobytes(), crc)
        return crc

    def _verify(self, blocks: dict) -> None:
        """Trust exactly the blocks whose bytes match their recorded checksum."""
        bad = 0
        for b, crc in blocks.items():
            if self._block_crc(int(b)) == crc:
                self.checksums[b] = crc
                self.filled[int(b) * BLOCK : (int(b) + 1) * BLOCK] = True
            else:
                bad += 1
        if bad:
            self.log(f"teacher cache {self.header_path}: {bad} block(s) do not match their checksum; "
                     f"recomputing those samples")
        if not self.complete:
            self.log(f"teacher cache {self.header_path}: {int(self.filled.sum())} of {self.shape[0]} samples "
                     f"verified; the rest are computed and stored during the next epoch")

    # -- use --------------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    @property
    def bytes_per_sample(self) -> float:
        """Data bytes per sample (logits, top-k classes, features)."""
        return float(sum(a[0].nbytes for a in self.arrays.values()))

    def lookup(self, indices: torch.Tensor, device: torch.device) -> list[Outputs] | None:
        """The teachers' Outputs for these samples, or None unless every one of them is verified or stored."""
        idx = indices.numpy()
        if not self.filled[idx].all():
            return None
        outs: list[Outputs] = [{} for _ in self.features]
        if self.values is not None:
            values = torch.from_numpy(self.values[idx]).float()
            for i, out in enumerate(outs):
                if self.classes is None:
                    logits = values[:, i]
                else:
                    logits = decode_topk(values[:, i], torch.from_numpy(self.classes[idx][:, i]), self.num_classes)
                out["logits"] = logits.to(device, non_blocking=True)
        for i, feats in enumerate(self.features):
            for k in feats:
                rows = torch.from_numpy(self.arrays[f"{i}/{k}"][idx]).float().permute(self._from_stored[i][k])
                outs[i][k] = rows.to(device, non_blocking=True)
        return outs

    def store(self, indices: torch.Tensor, teacher_outputs: list[Outputs]) -> None:
        """Write these samples' rows (data first; a block counts as filled only after ``flush``)."""
        new = ~self.filled[indices.numpy()]  # a verified row is never rewritten (its checksum stays valid)
        idx = indices.numpy()[new]
        if not len(idx):
            return
        rows = torch.from_numpy(new)
        for i, out in enumerate(teacher_outputs):
            if self.values is not None:
                logits = out["logits"].detach().float().cpu()[rows]
                if self.classes is None:
                    self.values[idx, i] = logits.numpy().astype(self.dtype)
                else:
                    values, classes = encode_topk(logits, self.topk)
                    self.values[idx, i] = values.numpy().astype(self.dtype)
                    self.classes[idx, i] = classes.numpy()
            for k in self.features[i]:
                stored = out[k].detach().permute(self._to_stored[i][k])
                self.arrays[f"{i}/{k}"][idx] = stored.float().cpu()[rows].numpy().astype(self.dtype)
        self.filled[idx] = True

    def flush(self) -> None:
        """Write the data to disk, then checksum every newly completed block into the header."""
        for array in self.arrays.values():
            array.flush()
        new = False
        for b in range(-(-self.shape[0] // BLOCK)):
            if str(b) not in self.checksums and self.filled[b * BLOCK : (b + 1) * BLOCK].all():
                self.checksums[str(b)] = self._block_crc(b)
                new = True
        if new:
            self._write_header()


def cache_refusal(loader, distiller, distributed: bool, augment: bool = True,
                  features: bool = False) -> str | None:
    """Why this stage's teacher outputs cannot be cached safely, or None where they can; ``augment=False`` leaves
    out the loader's random augmentation, which stored views (``speed.cache_views``) can make safe;
    ``features``: tapped teacher features are cached too (``speed.cache_features``)."""
    if not distiller.teachers or not any(t.uses_teacher for t in distiller.terms.values()):
        return "no term reads the teachers"
    tapped = sorted({n for taps in distiller.teacher_taps for n in taps.names})
    if tapped and not features:
        return (f"the terms read teacher features ({', '.join(tapped)}); only logits and a detector's head "
                f"maps are cached unless speed.cache_features: true")
    if not hasattr(loader, "cache_identity"):
        return (f"the training loader ({type(loader).__name__}) does not expose each batch's sample indices "
                f"(the built-in in-memory data sets do)")
    if distributed:
        return "distributed training (each process would write the same cache files)"
    if augment and loader.random_augment:
        hint = " (speed.cache_views: k replays k stored views per sample, which can be cached)" \
            if hasattr(loader, "use_views") else ""
        return (f"the training loader applies random augmentation ({', '.join(loader.random_augment)}) to the "
                f"teachers' input, which differs every epoch{hint}")
    return None


def open_teacher_cache(folder: Path, loader, distiller, example, dtype: str, topk: int | None,
                       log=print, features: bool = False) -> TeacherCache:
    """The cache for this loader's samples and the distiller's teachers (probed on one example batch);
    ``features``: the tapped features (``feat:`` entries) too."""
    probe = distiller.teacher_outputs(example)
    logits = ["logits" in out for out in probe]
    extra = [{k: tuple(v.shape[1:]) for k, v in out.items() if k != "logits"} for out in probe]
    if any(not k.startswith(("feat:", "head:")) or (k.startswith("feat:") and not features)
           for f in extra for k in f) or len(set(logits)) > 1:
        raise ValueError(f"teacher outputs {[sorted(o) for o in probe]}: the cache holds every teacher's 'logits' "
                         f"or detection head maps ('head:'), and with features their 'feat:' entries")
    orders = [{k: sample_order(v) for k, v in out.items() if k != "logits"} for out in probe]
    identity = loader.cache_identity()
    if distiller.teacher_autocast is not None:  # the teachers' outputs rounded through it
        identity += f" teachers under autocast {distiller.teacher_autocast}"
    key = cache_key(list(distiller.teachers), identity, dtype, topk, extra, orders)
    num_classes = probe[0]["logits"].shape[1] if all(logits) else None
    cache = TeacherCache(folder, key, loader.dataset_size, len(probe), num_classes, dtype, topk, log, extra, orders)
    if any(extra):
        what = " and ".join(name for name, prefix in (("head maps", "head:"), ("features", "feat:"))
                            if any(k.startswith(prefix) for f in extra for k in f))
        log(f"teacher cache with {what}: {cache.bytes_per_sample / 1024:.1f} KiB per sample, "
            f"{cache.bytes_per_sample * loader.dataset_size / 2**20:.1f} MiB in {folder}")
    return cache
