"""What the fault tests share (docs/reliability.md): which checkpoints a run had committed, whether they survived a
fault, and one record per fault case for `scripts/reliability_report.py`.

    with reliability.case("kill -9", "save:8") as c:
        before = reliability.committed(model_dir)
        ...                                   # the fault, the resume, the test's assertions
        c.data_lost = len(reliability.lost(before, model_dir))
        assert c.data_lost == 0

or, for a whole test, the decorator `@reliability.fault_case("NaN loss", "stop at step 6")` (a test that
measures data loss sets `reliability.current().data_lost`).

Each case appends `{"fault", "case", "survived", "tried", "data_lost"}` to the JSON-lines file named by
PLMJAX_RELIABILITY_LOG (nothing when it is unset); `survived` is whether the block ended without an exception;
`tried` counts the inputs of a case that tries many (`tick()`: a fuzzing test's examples); `data_lost` is None
where the case does not measure it (no checkpoint was at stake).
"""

import contextlib
import functools
import hashlib
import json
import os
import pathlib

COMMIT_FILE = "commit_success.txt"


def _digest(directory: pathlib.Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def committed(model_dir) -> dict[int, str]:
    """{step: digest of its files} for every committed checkpoint of a run (`<model_dir>/checkpoints/<step>`)."""
    root = pathlib.Path(model_dir) / "checkpoints"
    if not root.is_dir():
        return {}
    return {int(p.name): _digest(p) for p in root.iterdir()
            if p.name.isdigit() and (p / COMMIT_FILE).exists()}


def lost(before: dict[int, str], model_dir) -> list[int]:
    """The steps of `before` whose files are no longer intact in `checkpoints/` or kept aside in
    `checkpoints.corrupt/` (under their step name, or with a `.N` suffix)."""
    model_dir = pathlib.Path(model_dir)
    found = {}
    for root in (model_dir / "checkpoints", model_dir / "checkpoints.corrupt"):
        if root.is_dir():
            for p in root.iterdir():
                step = p.name.split(".")[0]
                if step.isdigit() and p.is_dir():
                    found.setdefault(int(step), set()).add(_digest(p))
    return sorted(step for step, digest in before.items() if digest not in found.get(step, ()))


class Case:
    data_lost = None
    tried = 0  # inputs tried within the case (a fuzzing test's examples); 0 counts as one


def tick() -> None:
    """One more input tried in the open case (none open: nothing)."""
    if _current:
        _current[-1].tried += 1


_current: list[Case] = []


def current() -> Case:
    """The innermost open case."""
    return _current[-1]


@contextlib.contextmanager
def case(fault: str, name: str):
    """Records one fault case (see the module docstring); re-raises whatever the block raised."""
    record, survived = Case(), False
    _current.append(record)
    try:
        yield record
        survived = True
    finally:
        _current.pop()
        log = os.environ.get("PLMJAX_RELIABILITY_LOG")
        if log:
            lost_count = None if record.data_lost is None else int(record.data_lost)
            with open(log, "a") as f:
                f.write(json.dumps({"fault": fault, "case": name, "survived": survived,
                                    "tried": max(record.tried, 1), "data_lost": lost_count}) + "\n")


def fault_case(fault: str, name=None):
    """A test as one case; `name` is a string, or a function of the test's keyword arguments (parametrized)."""
    def decorate(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            label = name(**kwargs) if callable(name) else (name or test.__name__.removeprefix("test_"))
            with case(fault, label):
                return test(*args, **kwargs)
        return run
    return decorate
