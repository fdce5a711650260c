"""Training throughput of hintdistill against hand-written PyTorch loops and torchdistill (issue 11).

    OMP_NUM_THREADS=1 python benchmarks/throughput.py                 # full: batch 128, 3 rounds of 8 steps
    OMP_NUM_THREADS=1 python benchmarks/throughput.py --short         # a few dozen steps per variant
    OMP_NUM_THREADS=1 python benchmarks/throughput.py --keep-freed-memory   # glibc's thresholds as `run` sets them

Every variant of a workload lives in this one process, on the same model pair, random data, batch size and
thread count. After one untimed warm-up epoch each, the variants run interleaved (A B C ... A B C ...), one
epoch of ``--steps`` steps per turn; images/s is the median over the rounds. ``aa_control`` is
``hand_student`` run a second time as if it were another variant: the spread between the two shows the noise.
Peak RSS is the process's high-water mark, reset (``/proc/self/clear_refs``) before each variant's turns.

Variants: hand_student (a), hand_kd (b), hd_student (c), hd_kd (d), hd_kd_cached (e), hd_kd_cache_fill (e1),
hd_hint (f), hand_hint (f0, the hand loop truncated at the hint layer), td_kd (g) and td_hint (h) with
torchdistill's ForwardHookManager and KDLoss, hand_kd_memory (i: teacher logits from an in-memory tensor), and
hd_kd_deferred (d': hd_kd with ``speed.nonfinite_check: deferred``, no host read per step, fused SGD) and
hd_hint_cached (f': hd_hint reading the teacher's hint from the cache, ``speed.cache_features``).
Writes benchmarks/results/throughput.json (a list of {workload, variant, images_per_s, peak_rss_mb, ...}).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# --src <tree>/src measures another version of hintdistill (the BCCD step factor "before" this branch)
SRC = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(ROOT / "src")
sys.path.insert(0, SRC)

from hintdistill.config import SpeedConfig, StageConfig  # noqa: E402
from hintdistill.data.classification import TensorLoader  # noqa: E402
from hintdistill.data.task import TaskData  # noqa: E402
from hintdistill.engine.distributed import Dist  # noqa: E402
from hintdistill.engine.loop import Phase  # noqa: E402
from hintdistill.engine.stage import PhaseTrainer, Stage  # noqa: E402
from hintdistill.errors import ConfigError  # noqa: E402
from hintdistill.models import build_model  # noqa: E402

T, CE_W, KD_W = 4.0, 0.1, 0.9
SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
WORKLOADS = {  # teacher, student, input shape, hint layer (same name in both), logit module, truncated forward
    "fmnist_cnn": (("cnn", {"widths": [32, 64, 128], "depth": 2, "first_stride": 2}),
                   ("cnn", {"widths": [8, 16, 32], "depth": 3, "first_stride": 2}), (1, 28, 28),
                   "features.stage2", "classifier", lambda m, x: m.features[:2](x)),
    "cifar_resnet": (("resnet56", {}), ("resnet20", {}), (3, 32, 32), "layer2", "fc",
                     lambda m, x: m.layer2(m.layer1(F.relu(m.bn1(m.conv1(x)))))),
}


def rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_rss_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


class Workload:
    """One model pair, its random data and a fresh student (same initial weights) per variant."""

    def __init__(self, name: str, batch: int, steps: int):
        (t_name, t_args), (s_name, s_args), shape, self.hint, self.logit_module, self.trunk = WORKLOADS[name]
        self.name, self.batch, self.steps = name, batch, steps
        args = {"num_classes": 10, **({"in_channels": shape[0]} if t_name == "cnn" else {})}
        torch.manual_seed(1)
        self.teacher = build_model(t_name, {**t_args, **args}).eval()
        self.s_spec = (s_name, {**s_args, **args})
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (batch * steps, *shape), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (batch * steps,), generator=g)
        self.mean, self.std = (0.5,) * shape[0], (0.25,) * shape[0]

    def student(self) -> nn.Module:
        torch.manual_seed(0)
        return build_model(*self.s_spec)

    def loader(self, seed: int = 0) -> TensorLoader:
        return TensorLoader(self.images, self.labels, self.batch, self.mean, self.std, shuffle=True, seed=seed)

    def data(self) -> TaskData:
        test = TensorLoader(self.images[:8], self.labels[:8], 8, self.mean, self.std)
        return TaskData("classification", lambda bs, aug, seed, rank, world: self.loader(seed), test, 10,
                        tuple(self.images.shape[1:]))


def hand_epoch(wl: Workload, student, opt, loader, loss_fn) -> None:
    """The hand loop: losses summed on the device and read once, as hintdistill does."""
    total = torch.zeros((), dtype=torch.float64)
    for x, y in loader:
        loss = loss_fn(x, y, loader.batch_indices)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().double()
    float(total)


def kd_loss(s_logits, t_logits, y):
    soft = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
    return CE_W * F.cross_entropy(s_logits, y) + KD_W * soft


def hand_variant(wl: Workload, kind: str):
    """a, b, f0, i: plain PyTorch, written for this one pair."""
    student, teacher, loader = wl.student().train(), wl.teacher, wl.loader()
    params = list(student.parameters())
    if kind == "hand_hint":
        c_s, c_t = (wl.trunk(m, wl.images[:2].float()).shape[1] for m in (student, teacher))
        regressor = nn.Conv2d(c_s, c_t, 1)
        params += list(regressor.parameters())
    if kind == "hand_kd_memory":
        in_order = TensorLoader(wl.images, wl.labels, wl.batch, wl.mean, wl.std)  # sample i is row i
        with torch.inference_mode():
            memory = torch.cat([teacher(x) for x, _ in in_order]).clone()
    opt = torch.optim.SGD(params, **{k: v for k, v in SGD.items() if k != "name"})

    def loss_fn(x, y, idx):
        if kind in ("hand_student", "aa_control"):
            return F.cross_entropy(student(x), y)
        if kind == "hand_kd":
            with torch.inference_mode():
                t = teacher(x)
            return kd_loss(student(x), t.clone(), y)
        if kind == "hand_kd_memory":
            return kd_loss(student(x), memory[idx], y)
        with torch.inference_mode():
            t = wl.trunk(teacher, x)
        return F.mse_loss(regressor(wl.trunk(student, x)), t.clone())

    return lambda: hand_epoch(wl, student, opt, loader, loss_fn)


def hd_variant(wl: Workload, kind: str, folder: Path):
    """c, d, e, e1, f: hintdistill's own Stage (build, then run_epoch), as `hintdistill run` trains."""
    from hintdistill.config import SpeedConfig

    terms = {"hd_student": [{"type": "ce"}],
             "hd_hint": [{"type": "hint", "hint": wl.hint, "guided": wl.hint}],
             "hd_hint_cached": [{"type": "hint", "hint": wl.hint, "guided": wl.hint}]}.get(
        kind, [{"type": "ce", "weight": CE_W}, {"type": "kd", "temperature": T, "weight": KD_W}])
    # epochs: more than the benchmark runs. With epochs=1 every round after the first counted as past the stage's
    # end, where `bn_frozen_epochs` (0) puts the student's BatchNorms in eval mode: a cheaper step than the hand
    # loop's, which trains them (measured until 2026-12-07).
    cfg = StageConfig(name=kind, epochs=10**6, batch_size=wl.batch, optimizer=SGD, schedule={"name": "none"},
                      terms=terms, trainable="up_to_guided" if kind.startswith("hd_hint") else "all")
    cache = "on" if kind in ("hd_kd_cached", "hd_kd_cache_fill", "hd_hint_cached") else "off"
    check = "deferred" if kind == "hd_kd_deferred" else "step"
    teachers = [] if kind == "hd_student" else [wl.teacher]
    trainer = PhaseTrainer(Phase(kind, wl.student(), {"name": "x"}, [cfg], teachers), wl.data(), folder / kind,
                           torch.device("cpu"), Dist(), 0, log=lambda _: None,
                           speed=SpeedConfig(teacher_cache=cache, nonfinite_check=check,
                                             cache_features=kind == "hd_hint_cached"))
    stage = Stage(trainer, 0, cfg, teachers, 0)
    stage.build()
    stage.model = stage.distiller
    epoch = [0]

    def run():
        if kind == "hd_kd_cache_fill":  # every turn is a first epoch: nothing cached yet
            stage.cache.filled[:] = False
            stage.cache.checksums.clear()
        stage.run_epoch(epoch[0])
        epoch[0] += 1

    return run, stage


def td_variant(wl: Workload, kind: str):
    """g, h: torchdistill's ForwardHookManager (its I/O capture) and, for KD, its KDLoss."""
    from torchdistill.core.forward_hook import ForwardHookManager
    from torchdistill.losses.mid_level import KDLoss

    student, teacher, loader = wl.student().train(), wl.teacher, wl.loader()
    s_hooks, t_hooks = ForwardHookManager("cpu"), ForwardHookManager("cpu")
    path = wl.logit_module if kind == "td_kd" else wl.hint
    s_hooks.add_hook(student, path, requires_input=False, requires_output=True)
    t_hooks.add_hook(teacher, path, requires_input=False, requires_output=True)
    params = list(student.parameters())
    if kind == "td_kd":
        criterion = KDLoss(path, "output", path, "output", temperature=T, alpha=CE_W, beta=KD_W)
    else:
        c_s, c_t = (wl.trunk(m, wl.images[:2].float()).shape[1] for m in (student, teacher))
        regressor = nn.Conv2d(c_s, c_t, 1)
        params += list(regressor.parameters())
    opt = torch.optim.SGD(params, **{k: v for k, v in SGD.items() if k != "name"})

    def loss_fn(x, y, idx):
        with torch.no_grad():
            teacher(x)
        student(x)
        s_io, t_io = s_hooks.pop_io_dict(), t_hooks.pop_io_dict()
        if kind == "td_kd":
            return criterion(s_io, t_io, y)
        return F.mse_loss(regressor(s_io[path]["output"]), t_io[path]["output"])

    return lambda: hand_epoch(wl, student, opt, loader, loss_fn)


VARIANTS = ["hand_student", "hand_kd", "hd_student", "hd_kd", "hd_kd_cached", "hd_kd_cache_fill", "hd_hint",
            "hand_hint", "td_kd", "td_hint", "hand_kd_memory", "hd_kd_deferred", "hd_hint_cached",
            "aa_control"]


def make_variants(wl: Workload, folder: Path) -> tuple[dict, dict]:
    runs, notes = {}, {}
    for kind in VARIANTS:
        if kind.startswith("hd_"):
            runs[kind], stage = hd_variant(wl, kind, folder)
            if stage.cache is not None:
                notes[kind] = {"bytes_per_sample": stage.cache.bytes_per_sample}
        elif kind.startswith("td_"):
            try:
                runs[kind] = td_variant(wl, kind)
            except ImportError as e:
                notes[kind] = {"skipped": f"torchdistill not importable: {e}"}
        else:
            runs[kind] = hand_variant(wl, "hand_student" if kind == "aa_control" else kind)
    return runs, notes


# the targets: (variant, against, the least speed ratio) with speed ratio = against's time / variant's time
TARGETS = {"(c)/(a)": ("hd_student", "hand_student", 0.95), "(d)/(b)": ("hd_kd", "hand_kd", 0.95),
           "(f)/(f0)": ("hd_hint", "hand_hint", 0.95), "(e)/(c)": ("hd_kd_cached", "hd_student", 0.90),
           "(e)/(i)": ("hd_kd_cached", "hand_kd_memory", 0.95), "(e1)/(d)": ("hd_kd_cache_fill", "hd_kd", 1.0),
           "(d)/(g)": ("hd_kd", "td_kd", 1.0), "(f)/(h)": ("hd_hint", "td_hint", 1.0),
           "(d')/(d)": ("hd_kd_deferred", "hd_kd", None), "(d')/(g)": ("hd_kd_deferred", "td_kd", None),
           "(f')/(f)": ("hd_hint_cached", "hd_hint", None),
           "A/A": ("aa_control", "hand_student", None)}


def paired_ratios(times: dict[str, list[float]]) -> dict[str, dict]:
    """Each target's speed ratio round by round, then its median and quartiles over the rounds. The two variants
    of a round ran within one round of each other, so a change of the machine's load between rounds, which moves
    every variant's median, cancels here."""
    out = {}
    for label, (kind, against, least) in TARGETS.items():
        if times.get(kind) and times.get(against):
            ratios = sorted(b / a for a, b in zip(times[kind], times[against], strict=True))
            q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
            out[label] = {"variant": kind, "against": against, "target": least, "median": round(median, 3),
                          "q1": round(q1, 3), "q3": round(q3, 3)}
    return out


def measure(wl: Workload, rounds: int, folder: Path) -> list[dict]:
    """Warm-up epoch per variant, then ``rounds`` interleaved timed epochs (each round in its own shuffled order);
    median images/s, peak RSS."""
    runs, notes = make_variants(wl, folder)
    for run in runs.values():
        run()  # warm-up (and, for hd_kd_cached, the epoch that fills its cache)
    times = {k: [] for k in runs}
    peaks = {k: 0.0 for k in runs}
    for r in range(rounds):
        # a fresh order every round (seeded): a variant's place in the round (what ran just before it, the
        # allocator's and the caches' state) must not favour it in every round
        for kind in random.Random(r).sample(list(runs), len(runs)):
            run = runs[kind]
            reset_rss_peak()
            t0 = time.perf_counter()
            run()
            times[kind].append(time.perf_counter() - t0)
            peaks[kind] = max(peaks[kind], rss_peak_mb())
    images = wl.batch * wl.steps
    paired = paired_ratios(times)
    out = []
    for kind in VARIANTS:
        row = {"workload": wl.name, "variant": kind, **notes.get(kind, {})}
        if kind in times:
            row.update(images_per_s=round(images / statistics.median(times[kind]), 1),
                       peak_rss_mb=round(peaks[kind], 1),
                       spread=round(max(times[kind]) / min(times[kind]) - 1, 3))
            mine = {label: r for label, r in paired.items() if r["variant"] == kind}
            if mine:
                row["paired"] = mine
        out.append(row)
    return out


def yolo_step_factor(steps: int, image_size: int, rounds: int = 3) -> dict:
    """BCCD YOLO-m -> YOLO-n: seconds per distilled step over seconds per step of the student alone."""
    import yaml

    from hintdistill.build import build_data, instantiate, model_spec
    from hintdistill.config import recipe_from_dict

    tree = yaml.safe_load((ROOT / "recipes/bccd_yolo_distill.yaml").read_text())
    tree["data"].update(data_dir=str(ROOT.parent / "shared/data/bccd"), image_size=image_size, workers=0,
                        train_subset=steps * 4)
    recipe = recipe_from_dict(tree)
    data = build_data(recipe)
    teacher = instantiate(model_spec(recipe.teachers[0], data.model_defaults))
    stages = {"alone": (recipe.baseline.model_dump(), []), "distilled": (recipe.distill[0].model_dump(), [teacher])}
    try:  # speed.fuse_teacher_bn (what PhaseTrainer does with it); absent from sources older than the option
        from hintdistill.engine.fuse import fused_copy

        stages["distilled_fused"] = (recipe.distill[0].model_dump(), [fused_copy(teacher)])
    except ImportError:
        pass
    # without augmentation, where the teacher cache can hold the head maps (sources since 2026-12-07): the
    # factor with the teacher run every step and with its maps read from the cache the warm-up epoch filled
    plain = {"augment": [], "teacher_cache": "off"}
    stages["alone_plain"] = ({**recipe.baseline.model_dump(), **plain}, [])
    stages["distilled_plain"] = ({**recipe.distill[0].model_dump(), **plain}, [teacher])
    stages["distilled_cached"] = ({**recipe.distill[0].model_dump(), "augment": [], "teacher_cache": "on"}, [teacher])
    # the recipe's stage with the teacher's forward in bf16 (speed.teacher_autocast, sources since 2026-12-07)
    stages["distilled_bf16_teacher"] = (recipe.distill[0].model_dump(), [teacher])
    speeds = {"distilled_cached": {"cache_features": True}, "distilled_bf16_teacher": {"teacher_autocast": "bf16"}}
    built, seconds = {}, {label: [] for label in stages}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (cfg, teachers) in stages.items():
            # epoch 0 of a long stage, without the recipe's bn_frozen_epochs: BatchNorms train, as in most epochs
            # (until 2026-12-07 "epochs": 1 made every timed epoch a BN-frozen one, for both stages)
            cfg = StageConfig(**{**cfg, "name": label, "batch_size": 4, "epochs": 10**6, "bn_frozen_epochs": 0})
            student = instantiate(model_spec(recipe.student, data.model_defaults))
            try:
                trainer = PhaseTrainer(Phase(label, student, {"name": "yolo"}, [cfg], teachers), data, Path(tmp),
                                       torch.device("cpu"), Dist(), 0, log=lambda _: None,
                                       **({"speed": SpeedConfig(**speeds[label])} if label in speeds else {}))
                built[label] = Stage(trainer, 0, cfg, teachers, 0)
                built[label].build()
            except (ConfigError, ValueError) as e:  # a source without the detection cache or teacher_autocast
                print(f"{label}: {e}", file=sys.stderr)
                built.pop(label, None)
                continue
            built[label].model = built[label].distiller
            built[label].run_epoch(0)  # warm-up
        for _ in range(rounds):  # interleaved: alone, distilled, distilled_fused, alone, ...
            for label, stage in built.items():
                t0 = time.perf_counter()
                stage.run_epoch(0)
                seconds[label].append((time.perf_counter() - t0) / len(stage.loader))
        for stage in built.values():
            stage.close()
    seconds = {k: statistics.median(v) for k, v in seconds.items() if v}
    before = Path(SRC).resolve() != (ROOT / "src").resolve()
    return {"workload": "bccd_yolo", "variant": "step_factor_before" if before else "step_factor",
            "image_size": image_size, "src": SRC,
            "alone_s_per_step": round(seconds["alone"], 3), "distilled_s_per_step": round(seconds["distilled"], 3),
            "factor": round(seconds["distilled"] / seconds["alone"], 2),
            **({"fused_s_per_step": round(seconds["distilled_fused"], 3),
                "factor_fused": round(seconds["distilled_fused"] / seconds["alone"], 2)}
               if "distilled_fused" in seconds else {}),
            **({"plain_alone_s_per_step": round(seconds["alone_plain"], 3),
                "plain_distilled_s_per_step": round(seconds["distilled_plain"], 3),
                "plain_cached_s_per_step": round(seconds["distilled_cached"], 3),
                "factor_plain": round(seconds["distilled_plain"] / seconds["alone_plain"], 2),
                "factor_cached": round(seconds["distilled_cached"] / seconds["alone_plain"], 2)}
               if "distilled_cached" in seconds else {}),
            **({"bf16_teacher_s_per_step": round(seconds["distilled_bf16_teacher"], 3),
                "factor_bf16_teacher": round(seconds["distilled_bf16_teacher"] / seconds["alone"], 2)}
               if "distilled_bf16_teacher" in seconds else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="small batches and few steps (minutes on one core)")
    p.add_argument("--workloads", nargs="+", default=["fmnist_cnn", "cifar_resnet", "bccd_yolo"])
    p.add_argument("--src", default=SRC, help="the hintdistill sources to measure (default: this checkout's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput.json"))
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timed rounds per variant (default 5; 3 with --short): more rounds, a steadier median")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed round (default 8; 6/3 with --short): longer rounds, less timer noise")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="fix glibc's malloc thresholds first, as `hintdistill run` does (speed.keep_freed_memory); "
                        "every variant of the process then runs with them")
    a = p.parse_args()
    torch.set_num_threads(1)
    allocator = "glibc defaults"
    if a.keep_freed_memory:
        from hintdistill.engine.memory import keep_freed_memory

        allocator = keep_freed_memory()
        print(allocator, flush=True)
    sizes = {"fmnist_cnn": (64, 6, 3), "cifar_resnet": (32, 3, 3)} if a.short else \
        {"fmnist_cnn": (128, 8, 5), "cifar_resnet": (128, 8, 5)}
    sizes = {k: (batch, a.steps or steps, a.rounds or rounds) for k, (batch, steps, rounds) in sizes.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.workloads:
            if name == "bccd_yolo":
                rows.append(yolo_step_factor(3 if a.short else 10, 128 if a.short else 256))
            else:
                batch, steps, rounds = sizes[name]
                rows += measure(Workload(name, batch, steps), rounds, Path(tmp))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"command": " ".join(["python benchmarks/throughput.py", *sys.argv[1:]]), "date": str(date.today()),
            "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip(),
            "threads": torch.get_num_threads(), "batch_steps_rounds": sizes, "allocator": allocator}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps([{**row, "run": meta} for row in rows], indent=1) + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    """A markdown table of images/s with the ratios the issue's targets name."""
    lines = ["| workload | variant | images/s | peak RSS MB | spread | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["variant"].startswith("step_factor"):
            lines.append(f"| {r['workload']} | distilled/alone step | {r['factor']}x | | | "
                         f"{r['distilled_s_per_step']} s vs {r['alone_s_per_step']} s at {r['image_size']} px |")
            if "factor_fused" in r:
                lines.append(f"| {r['workload']} | distilled/alone step, fuse_teacher_bn | {r['factor_fused']}x | | | "
                             f"{r['fused_s_per_step']} s |")
            if "factor_bf16_teacher" in r:
                lines.append(f"| {r['workload']} | distilled/alone step, teacher_autocast bf16 | "
                             f"{r['factor_bf16_teacher']}x | | | {r['bf16_teacher_s_per_step']} s |")
            if "factor_cached" in r:
                lines.append(f"| {r['workload']} | unaugmented: distilled/alone step | {r['factor_plain']}x | | | "
                             f"{r['plain_distilled_s_per_step']} s vs {r['plain_alone_s_per_step']} s |")
                lines.append(f"| {r['workload']} | unaugmented, teacher cache: distilled/alone step | "
                             f"{r['factor_cached']}x | | | {r['plain_cached_s_per_step']} s |")
            continue
        note = r.get("skipped", "") or (f"{r['bytes_per_sample']:g} B/sample" if "bytes_per_sample" in r else "")
        lines.append(f"| {r['workload']} | {r['variant']} | {r.get('images_per_s', '-')} | "
                     f"{r.get('peak_rss_mb', '-')} | {r.get('spread', '-')} | {note} |")
    return "\n".join(lines + ["", *target_table(rows)])


def target_table(rows: list[dict]) -> list[str]:
    """The targets' speed ratios: of the median images/s, and paired round by round (median, quartiles)."""
    speed = {(r["workload"], r["variant"]): r.get("images_per_s") for r in rows}
    lines = ["| workload | target | ratio of medians | paired by round: median (quartiles) | at least | met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for label, p in r.get("paired", {}).items():
            a, b = speed.get((r["workload"], p["variant"])), speed.get((r["workload"], p["against"]))
            of_medians = f"{a / b:.3f}" if a and b else "-"
            met = "" if p["target"] is None else ("yes" if p["median"] >= p["target"] else "**no**")
            lines.append(f"| {r['workload']} | {label} | {of_medians} | {p['median']:.3f} ({p['q1']:.3f}-{p['q3']:.3f}) "
                         f"| {'' if p['target'] is None else p['target']} | {met} |")
    return lines if len(lines) > 2 else []


if __name__ == "__main__":
    main()
