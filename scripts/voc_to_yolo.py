"""Convert a Pascal VOC folder into an Ultralytics-layout YOLO-txt folder (data.yaml, images/, labels/).

    python scripts/voc_to_yolo.py ../shared/data/bccd runs/data/bccd_yolo
    hintdistill run recipes/bccd_yolo_distill.yaml --set data.name=yolo --set data.data_dir=runs/data/bccd_yolo
"""

import argparse
import sys

from hintdistill.data.convert import voc_to_yolo
from hintdistill.errors import HintDistillError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("voc", help="VOC folder (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)")
    p.add_argument("out", help="new folder to write")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    a = p.parse_args()
    try:
        counts = voc_to_yolo(a.voc, a.out, a.splits)
    except HintDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {a.out}: " + ", ".join(f"{s} {n} images" for s, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
