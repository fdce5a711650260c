"""Checks on users' own files before training: unreadable or truncated images, and class names in annotations
that look like typos of a frequent class (``RBc`` next to 300 ``RBC``), which would otherwise become a class
of their own and change the model's output size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import DataError

# A typo is rare next to the name it misspells; BCCD's WBC is one edit from RBC but 1/11 as frequent.
TYPO_RATIO = 20
# The markers a complete file ends with: a cut-off download or copy lacks them. The tail is read, not the image
# decoded (0.4 ms instead of 2+ ms per image); only a file without its marker is decoded to be sure.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
TAIL_BYTES = 64


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image (missing, not an image, truncated), or None if it is fine."""
    try:
        with Image.open(path) as im:
            kind, _ = im.format, im.size
            marker = END_MARKERS.get(kind or "")
            if marker is not None:
                with open(path, "rb") as f:
                    f.seek(max(0, path.stat().st_size - TAIL_BYTES))
                    if marker in f.read():
                        return None
            if kind == "JPEG":
                im.draft("RGB", (1, 1))  # decode at 1/8 scale: still reads every byte of the scan
            im.load()
    except UnidentifiedImageError:
        return "not an image file PIL can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        return f"truncated or corrupt: {reason}" if path.is_file() else f"cannot be opened: {reason}"
    return None


def scan_images(paths: list[Path]) -> dict[Path, str]:
    """The unusable images among ``paths`` with the reason for each."""
    problems = {}
    for path in paths:
        why = image_problem(path)
        if why is not None:
            problems[path] = why
    return problems


def one_edit_apart(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` differ by exactly one inserted, deleted or replaced character."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:] if len(a) < len(b) else a[i + 1:] == b[i + 1:]


def suspicious_names(counts: Counter) -> dict[str, str]:
    """Rare names that look like a typo of a frequent one: ``{typo: intended}``. Names that differ only in case
    always count (two spellings of one class); a one-character difference counts when the other name is at
    least ``TYPO_RATIO`` times as frequent."""
    out = {}
    for rare, n in counts.items():
        for common, m in counts.items():
            if rare == common or (m, common) <= (n, rare):
                continue
            if rare.lower() == common.lower() or (m >= TYPO_RATIO * n and one_edit_apart(rare.lower(), common.lower())):
                out[rare] = common
                break
    return out


def check_class_names(counts: Counter, files: dict[str, list[str]], folder: Path) -> None:
    """DataError naming the files where a class name looks like a typo of a frequent class."""
    typos = suspicious_names(counts)
    if not typos:
        return
    parts = []
    for typo, common in sorted(typos.items()):
        shown = ", ".join(sorted(files[typo])[:10]) + (" ..." if len(files[typo]) > 10 else "")
        parts.append(f"'{typo}' ({counts[typo]}x, in {shown}) looks like '{common}' ({counts[common]}x)")
    raise DataError(
        f"{folder}: class name(s) that look like typos: {'; '.join(parts)}. They would become classes of their "
        f"own. Fix the name in those files, or, if they are real classes, list every class in data.classes "
        f"(then names are taken as given and unknown ones are skipped and counted).")


def dropped_note(loader) -> str:
    """The summary's line on test images left out as unreadable (empty if none): the numbers are over the rest."""
    dropped = getattr(getattr(loader, "dataset", None), "dropped", None)
    if not dropped:
        return ""
    shown = ", ".join(dropped[:10]) + (f" and {len(dropped) - 10} more" if len(dropped) > 10 else "")
    return f"\n{len(dropped)} unreadable test image(s) left out (not replaced; the numbers are over the rest): {shown}\n"
