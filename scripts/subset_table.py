"""The headline table (worst case per object) of an ``evaluate`` run restricted to its images after the first ``--skip``.

An adapter chosen among variants on the first N held-out scenes is checked on scenes it was not
chosen on: evaluate ``scenes:M`` (M > N), then pool only images N+1..M (the per-image raw
outputs in ``per_image.jsonl`` hold everything needed; intervals are recomputed the same way).

    python scripts/subset_table.py runs/eval-confirm60 --skip 20 --out docs/results/confirm/records.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from make_results import headline_table  # noqa: E402

from samdemo.evaluate import Defense, Settings, aggregate  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluate --out folder (per_image.jsonl)")
    parser.add_argument("--skip", type=int, required=True, help="leave out the first N images")
    parser.add_argument("--out", type=Path, help="write the subset's records (JSON) here")
    args = parser.parse_args(argv)
    lines = (args.run / "per_image.jsonl").read_text(encoding="utf-8").splitlines()
    header, entries = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    settings = header["settings"]
    kept = entries[args.skip:]
    if not kept:
        sys.exit(f"{args.run} has {len(entries)} images; nothing is left after --skip {args.skip}")
    defenses = [Defense(d["label"], d["method"], None, d["ref"], d["digest"]) for d in settings["defenses"]]
    names = {f.name for f in fields(Settings)}
    records = aggregate(kept, defenses, Settings(**{k: v for k, v in settings.items() if k in names}))
    print(f"{settings['model']}: images {args.skip + 1}-{len(entries)} ({len(kept)} images, "
          f"{sum(e['instances'] for e in kept)} instances)")
    print("\n".join(headline_table(records, list(settings["prompts"]))))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"source": str(args.run), "skip": args.skip, "images": len(kept),
                                        "settings": settings, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
