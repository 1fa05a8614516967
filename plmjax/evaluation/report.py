"""Results tables (Markdown + JSON) and the leaderboards' submission files.

Results are rows `{task, split, metric, value, num_examples, checkpoint}`; `write_results` merges them into
`<out>/results.json` and `<out>/results.md` (a row replaces an earlier one of the same task, split, metric and
checkpoint, so several tasks can be evaluated into one folder).

Submission files, named by the task's `TaskInfo.submission_name`:
- GLUE `<Task>.tsv` (e.g. `SST-2.tsv`, `MNLI-m.tsv`, `AX.tsv` from the MNLI model): a header `index\tprediction`,
  then one row per test example in index order, the prediction as the label string (STS-B: the score);
- CLUE/FewCLUE `<task>_predict.json`: JSON lines `{"id": <id>, "label": "<label string>"}` (multiple choice: the
  choice index); CMRC2018 one JSON object `{"<official question id>": "<answer text>"}` and CLUE's
  CHID `{"#idiom<id, 6 digits>#": index}`, as their official evaluation scripts read them.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Iterable, Mapping, Sequence

FIELDS = ("task", "split", "metric", "value", "num_examples", "checkpoint")


def result_rows(task: str, split: str, scores: Mapping[str, float], num_examples: int,
                checkpoint: str = "") -> list[dict]:
    return [{"task": task, "split": split, "metric": metric, "value": float(value), "num_examples": int(num_examples),
             "checkpoint": checkpoint} for metric, value in scores.items()]


def markdown_table(rows: Sequence[Mapping]) -> str:
    lines = ["| task | split | metric | value | examples | checkpoint |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['split']} | {r['metric']} | {r['value']:.2f} | {r['num_examples']} | "
                     f"{r['checkpoint']} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str, rows: Iterable[Mapping]) -> tuple[str, str]:
    """Merges `rows` into `<out_dir>/results.json` and rewrites `<out_dir>/results.md`; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")
    rows = [dict(r) for r in rows]
    previous = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            previous = json.load(f)

    def key(r):
        return r["task"], r["split"], r["metric"], r["checkpoint"]

    replaced = {key(r) for r in rows}
    merged = [r for r in previous if key(r) not in replaced] + rows
    with open(json_path, "w") as f:
        json.dump(merged, f, indent=2)
    with open(md_path, "w") as f:
        f.write(markdown_table(merged))
    return md_path, json_path


def _label(task_info, prediction) -> str:
    if task_info.kind == "regression":
        return f"{float(prediction):.3f}"
    if not task_info.label_names:
        return str(prediction)
    if not 0 <= int(prediction) < len(task_info.label_names):
        raise ValueError(f"Prediction {prediction} is outside the {len(task_info.label_names)} labels of task "
                         f"{task_info.name!r}.")
    return task_info.label_names[int(prediction)]


def _sorted(predictions) -> list[tuple[int, object]]:
    return sorted(zip((int(i) for i in predictions.example_ids), predictions.predictions), key=lambda p: p[0])


def submission_text(task_info, predictions) -> str:
    """The content of the task's submission file for `predictions` (plmjax.evaluation.predict.Predictions)."""
    name = task_info.submission_name
    rows = _sorted(predictions)
    if name.endswith(".tsv"):
        lines = ["index\tprediction"] + [f"{i}\t{_label(task_info, p)}" for i, p in rows]
        return "\n".join(lines) + "\n"
    if not name.endswith(".json"):
        raise ValueError(f"Task {task_info.name!r}: no submission format for {name!r} (expected .tsv or .json).")
    if task_info.kind == "span_extraction":  # keyed by the official (string) question ids
        ids = predictions.official_ids or list(predictions.example_ids)
        answers = sorted(zip((int(i) for i in predictions.example_ids), ids, predictions.predictions))
        return json.dumps({str(i): p for _, i, p in answers}, ensure_ascii=False, indent=1) + "\n"
    if task_info.kind == "multiple_choice" and task_info.benchmark == "clue" and name.startswith("chid"):
        return json.dumps({f"#idiom{i:06d}#": int(p) for i, p in rows}, indent=1) + "\n"
    if task_info.kind == "multiple_choice":
        lines = [json.dumps({"id": i, "label": int(p)}) for i, p in rows]
    else:
        lines = [json.dumps({"id": i, "label": _label(task_info, p)}, ensure_ascii=False) for i, p in rows]
    return "\n".join(lines) + "\n"


def write_submission(out_dir: str, task_info, predictions) -> str | None:
    """Writes `<out_dir>/<submission_name>`; None (nothing written) when the task has no leaderboard file."""
    if not task_info.submission_name:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, task_info.submission_name)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(submission_text(task_info, predictions))
    return path


def read_glue_tsv(path: str) -> list[dict]:
    """The rows of a GLUE submission file, as the GLUE server reads them (a check for tests and users)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
