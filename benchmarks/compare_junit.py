"""Test time of the tests two pytest runs have in common, from their `--junitxml` files.

    python benchmarks/compare_junit.py BEFORE.xml AFTER.xml

For "the suite takes no longer than before" when tests were added since: run the old and the
new checkout at the same time on the same machine (same load, both with cold compile caches),
each with `--junitxml`, then compare the tests whose id is in both. Skipped tests don't count.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def test_times(path: str) -> dict[tuple[str, str], float]:
    """Seconds of every test that ran, by (classname, name)."""
    times = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("skipped") is None:
            times[case.get("classname"), case.get("name")] = float(case.get("time"))
    return times


def main(before_path: str, after_path: str) -> None:
    before, after = test_times(before_path), test_times(after_path)
    common = before.keys() & after.keys()
    gone = before.keys() - after.keys()
    print(f"before: {len(before)} tests, {sum(before.values()):.1f} s")
    print(f"after:  {len(after)} tests, {sum(after.values()):.1f} s")
    print(
        f"in both: {len(common)} tests, {sum(before[k] for k in common):.1f} s before, "
        f"{sum(after[k] for k in common):.1f} s after"
    )
    print(
        f"only before (renamed or removed): {len(gone)} tests, {sum(before[k] for k in gone):.1f} s"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/compare_junit.py BEFORE.xml AFTER.xml")
    main(sys.argv[1], sys.argv[2])
