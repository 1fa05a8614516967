"""The test suite's fault cases as one table (issue 18): fault, cases tried, survived, data lost.

    python scripts/reliability_report.py                  # every fault test, slow ones included
    python scripts/reliability_report.py --quick          # without the tests marked slow
    python scripts/reliability_report.py --out report.md  # also write the table to a file
    PLMJAX_RELIABILITY_LOG=/tmp/cases.jsonl bash scripts/test.sh ...; \
        python scripts/reliability_report.py --from_log /tmp/cases.jsonl   # the table of a run made elsewhere

Runs pytest on the fault tests with PLMJAX_RELIABILITY_LOG set (each case appends one JSON line through
tests/reliability.py), then prints the table. "Tried" counts inputs (a fuzzing case tries 60-200 files);
"survived" counts those whose case passed; "data lost" counts committed checkpoints that were not found intact
after the fault, over the cases that had checkpoints at stake. The exit status is pytest's.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_TESTS = [
    "tests/train/test_kill_points.py",     # kill -9 at 10 seeded points
    "tests/train/test_faults.py",          # SIGTERM (1 and 2 processes), NaN, damaged checkpoints, locks
    "tests/train/test_disk_faults.py",     # a full disk, a read-only model dir
    "tests/train/test_checkpoint.py",      # half-written saves, other config / newer format
    "tests/train/test_restore_topology.py",  # another mesh / process count
    "tests/data/finetune/test_reader_fuzz.py",  # hypothesis: every reader
    "tests/convert/test_bad_hf_dirs.py",   # broken Hugging Face directories
    "tests/test_cli.py",                   # gin files and bindings, missing files, too-long sequences
]


def table(records: list[dict]) -> str:
    faults = collections.OrderedDict()
    for record in records:
        faults.setdefault(record["fault"], []).append(record)
    lines = ["| fault | cases | inputs tried | survived | data lost (cases with checkpoints at stake) |",
             "|---|---|---|---|---|"]
    for fault, cases in faults.items():
        tried = sum(case["tried"] for case in cases)
        survived = sum(case["tried"] for case in cases if case["survived"])
        measured = [case["data_lost"] for case in cases if case["data_lost"] is not None]
        lost = f"{sum(measured)} ({len(measured)})" if measured else "- (0)"
        lines.append(f"| {fault} | {len(cases)} | {tried} | {survived} | {lost} |")
    failed = [f"{case['fault']}: {case['case']}" for case in records if not case["survived"]]
    if failed:
        lines += ["", "Cases that did not survive:"] + [f"- {name}" for name in failed]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out the tests marked slow")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    parser.add_argument("--from_log", help="print the table of the cases recorded in this file; run no test")
    args, pytest_args = parser.parse_known_args()
    if args.from_log:
        return _report([json.loads(line) for line in open(args.from_log)], args.out, 0)
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "cases.jsonl")
        env = dict(os.environ, PLMJAX_RELIABILITY_LOG=log)
        files = [f for f in FAULT_TESTS if os.path.exists(os.path.join(ROOT, f))]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                   "not slow" if args.quick else "", *pytest_args, *files]
        status = subprocess.run(command, cwd=ROOT, env=env).returncode
        records = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
    return _report(records, args.out, status)


def _report(records: list[dict], out, status: int) -> int:
    report = table(records)
    print("\n" + report)
    if out:
        with open(out, "w") as f:
            f.write(report + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
