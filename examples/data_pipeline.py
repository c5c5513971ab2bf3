"""A three-step data pipeline: each step is its own sandboxed run, sharing the work dir.

    uv run examples/data_pipeline.py [--backend userns|bubblewrap]

A session's work dir is its persistent disk: what one run writes there, the next run reads.
``/tmp`` is the opposite: every run gets a fresh, empty one. The pipeline:

0. stage a messy CSV into the work dir with ``put_bytes``;
1. **clean** (Python): drop blank, malformed and duplicate rows, normalise names, write
   ``clean.csv`` to the work dir (and a scratch file to ``/tmp``, to show it does not last);
2. **aggregate** (Python): total and average per region, written to ``summary.json``;
3. **report** (Python): render ``summary.json`` as a small text table, ``report.txt``;

then fetch every output with ``get_bytes``. All runs have the network blocked (the default).
"""

from __future__ import annotations

import argparse
import json

import anyio

from union import sandbox as sb

SALES_CSV = b"""\
region,rep,amount
north, Alice ,120.50
south,bob,80
north,alice,120.50

east,Carol,not-a-number
south,Dave,45.25
east,carol,200
west,Eve
north,Frank,99.5
"""

CLEAN = r"""
import csv

rows, seen, dropped = [], set(), []
with open("raw/sales.csv", newline="") as f:
    reader = csv.DictReader(f)   # skips blank lines
    for row in reader:
        n = reader.line_num
        try:
            key = (row["region"].strip().lower(), row["rep"].strip().title(),
                   round(float(row["amount"]), 2))
        except (AttributeError, TypeError, ValueError):
            dropped.append(f"line {n}: malformed {row}")
            continue
        if key in seen:
            dropped.append(f"line {n}: duplicate {key}")
            continue
        seen.add(key)
        rows.append(key)

with open("clean.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["region", "rep", "amount"])
    writer.writerows(rows)
with open("/tmp/step1-scratch.txt", "w") as f:   # scratch: gone when this run ends
    f.write("\n".join(dropped))
print(f"kept {len(rows)} rows, dropped {len(dropped)}")
for reason in dropped:
    print("  dropped", reason)
"""

AGGREGATE = r"""
import csv, json, os, collections

print("scratch file from step 1 still there?", os.path.exists("/tmp/step1-scratch.txt"))
totals, counts = collections.defaultdict(float), collections.Counter()
with open("clean.csv", newline="") as f:
    for row in csv.DictReader(f):
        totals[row["region"]] += float(row["amount"])
        counts[row["region"]] += 1
summary = {
    region: {"total": round(totals[region], 2), "deals": counts[region],
             "average": round(totals[region] / counts[region], 2)}
    for region in sorted(totals)
}
json.dump(summary, open("summary.json", "w"), indent=2)
print("regions:", ", ".join(summary))
"""

REPORT = r"""
import json

summary = json.load(open("summary.json"))
lines = ["Sales by region", "", f"{'region':<8}{'deals':>6}{'total':>10}{'average':>10}"]
for region, s in sorted(summary.items(), key=lambda item: -item[1]["total"]):
    lines.append(f"{region:<8}{s['deals']:>6}{s['total']:>10.2f}{s['average']:>10.2f}")
grand = sum(s["total"] for s in summary.values())
lines += ["", f"{'all':<8}{sum(s['deals'] for s in summary.values()):>6}{grand:>10.2f}"]
open("report.txt", "w").write("\n".join(lines) + "\n")
print(f"wrote report.txt ({len(lines)} lines)")
"""


async def step(sbx: sb.Session, title: str, code: str) -> None:
    """One pipeline step: a separate run of Python code in the session's work dir."""
    print(f"\n== {title}")
    proc = await sbx.run(code, script_type="python")
    out, err = await proc.communicate_text()
    for line in out.splitlines():
        print(f"  {line}")
    if proc.returncode != 0:
        raise SystemExit(f"{title} failed ({proc.termination_reason}):\n{err}")
    print(f"  ({proc.runtime_ms} ms, exit {proc.returncode})")


async def main(backend: str) -> None:
    async with sb.on_device.session(backend=backend) as sbx:
        work = sbx.work_dir
        print(f"session work dir: {work} (backend {backend})")

        # 0. Stage the input. put_bytes needs an existing parent directory.
        await sbx.exec("mkdir raw", check=True)
        await sbx.put_bytes(f"{work}/raw/sales.csv", SALES_CSV)
        print(f"staged raw/sales.csv ({len(SALES_CSV)} bytes)")

        await step(sbx, "step 1: clean", CLEAN)

        # Between runs: the work dir kept clean.csv, /tmp was thrown away.
        check = await sbx.exec(
            "for f in clean.csv /tmp/step1-scratch.txt; do"
            '  if [ -e $f ]; then echo "$f: still there"; else echo "$f: gone"; fi;'
            " done"
        )
        print("\n== between runs: what persisted?")
        for line in check.stdout.splitlines():
            print(f"  {line}")

        await step(sbx, "step 2: aggregate", AGGREGATE)
        await step(sbx, "step 3: report", REPORT)

        # Fetch the outputs from the host side.
        print("\n== fetched with get_bytes")
        clean = (await sbx.get_bytes(f"{work}/clean.csv")).decode()
        summary = json.loads(await sbx.get_bytes(f"{work}/summary.json"))
        report = (await sbx.get_bytes(f"{work}/report.txt", max_bytes=64 * 1024)).decode()
        print(f"  clean.csv: {len(clean.splitlines()) - 1} rows")
        print(f"  summary.json: {json.dumps(summary)}")
        print("  report.txt:")
        for line in report.splitlines():
            print(f"    {line}")
        assert summary["north"] == {"total": 220.0, "deals": 2, "average": 110.0}, summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns", choices=["bubblewrap", "userns"])
    args = parser.parse_args()
    anyio.run(main, args.backend)
