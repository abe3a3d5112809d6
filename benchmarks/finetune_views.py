"""Multi-view features for the frozen head, on the few-shot protocol's folders (issue 17).

    python benchmarks/finetune_views.py WORK/data/*   # folders built by finetune_fewshot.py

For each folder (train/, val/, test/ of class sub-folders), EfficientNet-Lite0's frozen
features of the evaluation view (resize + centre crop) and of its mirror image, then the
default head (`models/head_fit.py`: L-BFGS, L2 by cross-validation on train + val) fitted and
scored on the test photos three ways:
- eval:      fitted on the evaluation view's features, tested on them (today's default);
- tta:       fitted on the evaluation view, tested on the mean of the two views' features
             (for a linear head the same as the mean of the two views' logits);
- mean:      fitted and tested on the mean of the two views' features (one row per photo:
             the cross-validation folds keep a photo's views together).
Prints one JSON line per folder and a table of photos wrong per method.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch


def features(body, paths, preprocess) -> torch.Tensor:
    """(n, 2, D): the frozen body on the evaluation view and its mirror of each photo."""
    from cnnlab.data.decode import load_image

    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), 16):
            x = torch.stack([load_image(p, preprocess) for p in paths[i:i + 16]])
            x = torch.cat([x, x.flip(-1)]).contiguous(memory_format=torch.channels_last)
            f = body(x).float()
            out.append(torch.stack([f[:len(f) // 2], f[len(f) // 2:]], 1))
    return torch.cat(out)


def main() -> None:
    from cnnlab.data.splits import load_splits
    from cnnlab.models.head_fit import select_and_fit
    from cnnlab.models.registry import create_pretrained
    from cnnlab.models.transfer import TransferModel

    model, preprocess, _ = create_pretrained("efficientnet_lite0")
    body = TransferModel.from_pretrained(model, 2).body.eval()
    rows = []
    for folder in sys.argv[1:]:
        split = load_splits(folder, (0.6, 0.2, 0.2), 0.2, 0)
        fit_items = split.train + split.val
        y = torch.tensor(split.targets("train") + split.targets("val"))
        yt = torch.tensor(split.targets("test"))
        f = features(body, [it.path for it in fit_items], preprocess)
        ft = features(body, [it.path for it in split.test], preprocess)
        n = len(split.classes)
        wrong = {}
        head = select_and_fit(f[:, 0], y, n).head
        wrong["eval"] = int((head.logits(ft[:, 0]).argmax(1) != yt).sum())
        wrong["tta"] = int((head.logits(ft.mean(1)).argmax(1) != yt).sum())
        head = select_and_fit(f.mean(1), y, n).head
        wrong["mean"] = int((head.logits(ft.mean(1)).argmax(1) != yt).sum())
        row = {"folder": Path(folder).name, "n_test": len(yt), **wrong}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| method | photos wrong, all folders | mean top-1 error |\n| --- | ---: | ---: |")
    for m in ("eval", "tta", "mean"):
        errs = [100 * r[m] / r["n_test"] for r in rows]
        print(f"| {m} | {sum(r[m] for r in rows)} of {sum(r['n_test'] for r in rows)} | "
              f"{statistics.mean(errs):.1f}% |")


if __name__ == "__main__":
    main()
