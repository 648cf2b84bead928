"""Fail unless a pytest JUnit report shows tests run and none failed (used by .ci/run).

pytest exits 5 when it collects nothing; CI must never read that, or a report
with zero passed tests, as success."""
import sys
import xml.etree.ElementTree as ET


def counts(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def main(path, name):
    c = counts(path)
    print(f"CI: suite '{name}': {c['passed']} passed, {c['skipped']} skipped, {c['failures']} failed, "
          f"{c['errors']} errors")
    if c["failures"] or c["errors"] or c["passed"] < 1:
        print(f"CI: suite '{name}' did not pass with tests run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
