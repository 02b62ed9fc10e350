"""Judge verdicts reused: LLaSO's published ``gpt_result/`` files and the judge cache.

Prediction folders and verdict files are written by hand into ``tmp_path`` from real
LLaSO-Eval records; every judged score below is worked out by hand from the verdicts in
the test. The live judge, where one runs, is the HTTP endpoint of ``test_eval_score``
(``Score: 5`` when the prediction repeats the reference, ``Score: 2`` otherwise, no score
for ``garbage``), so each test can count the calls it received.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from llaso_eval.judge import DEFAULT_PROMPT_VERSION, OpenAIJudge
from llaso_eval.judge_cache import (CACHE_FILE, JudgeCache, JudgeIdentity, Verdict, VerdictStore,
                                    read_cache_file)
from llaso_eval.predictions import find_prediction_files
from llaso_eval.score import NO_JUDGE, score_directory
from llaso_eval.summary import summarize
from test_eval_score import (LLASO_EVAL, REPO, fixture_records, gold, judge_server,  # noqa: F401 (fixture)
                             with_predictions, write_json, write_jsonl)

DOLLY_PREDICTIONS = [None, "Something else entirely.", "", "garbage"]  # None: the reference itself
INTENTS = ["Calendar set", "Alarm query", "Calendar set"]
INTENT_PREDICTIONS = ["Calendar set", "alarm query", "Weather query"]


def write_run(root: Path) -> Path:
    """An AQA file (4 records) and an IP file (3 records) in LLaSO's results layout."""
    dolly = fixture_records("dolly_input_1")
    predictions = [gold(r) if p is None else p for r, p in zip(dolly, DOLLY_PREDICTIONS)]
    write_json(root / "dolly_input_1_test.json", with_predictions(dolly, predictions))
    intents = fixture_records("dolly_input_1")[:3]
    for record, intent in zip(intents, INTENTS):
        record["conversations"][-1]["value"] = intent
    write_json(root / "slurp_Intent_Prediction_test.json", with_predictions(intents, INTENT_PREDICTIONS, "result"))
    return root


def published_line(stem: str, index: int, predicted: str, reference: str, evaluation: str) -> dict:
    return {"file": f"{stem}_test.json", "index": index, "predicted": predicted, "reference": reference,
            "evaluation": evaluation}


def write_gpt_result(folder: Path) -> Path:
    """LLaSO-style verdicts for :func:`write_run`: one whose predicted text is not the
    record's, an unreadable one, a failed call, one for a record that does not exist."""
    dolly = [gold(r) for r in fixture_records("dolly_input_1")]
    write_jsonl(folder / "dolly_input_1_test.jsonl", [
        published_line("dolly_input_1", 0, dolly[0] + "  ", dolly[0], "Score: 5  \nExplanation: the same answer."),
        published_line("dolly_input_1", 1, "Something different.", dolly[1], "Score: 2\nExplanation: off."),
        published_line("dolly_input_1", 2, "", dolly[2], "Score: 1\nExplanation: no answer."),
        published_line("dolly_input_1", 3, "garbage", dolly[3], "I cannot rate this."),
        published_line("dolly_input_1", 7, "x", "y", "Score: 5"),
    ])
    lines = [published_line("slurp_Intent_Prediction", 0, "Calendar set", "Calendar set", "Score: 5\nExplanation: ok"),
             published_line("slurp_Intent_Prediction", 1, "alarm query", "Alarm query", "Score: 4\nExplanation: ok"),
             published_line("slurp_Intent_Prediction", 2, "Weather query", "Calendar set", "ERROR: Request timed out.")]
    path = folder / "slurp_Intent_Prediction_test.jsonl"
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    # LLaSO's Typhoon-Audio file has a raw newline inside a string: the reader repairs such a line
    path.write_text(text.replace("slurp_Intent_Prediction_test.json\", \"index\": 1",
                                 "slurp_Intent_Prediction\n_test.json\", \"index\": 1"), "utf-8")
    return folder


# Hand-computed from the verdicts above (no judge running):
# dolly: record 0 -> 5; record 1: the verdict judged other text -> not used, no verdict;
#        record 2: empty prediction -> 1 without a verdict; record 3: unreadable -> 1 (lowest), unparsed
#        mean (5 + 1 + 1) / 3 over 3 records; 2 published verdicts not used (record 1, index 7)
# IP:    records 0, 1 -> 5, 4; record 2: the judge call failed -> no verdict; mean 9 / 2 over 2 records
DOLLY_OFFLINE = {"value": 7 / 3, "n": 3, "normalized": (7 / 3 - 1) / 4, "unparsed": 1,
                 "verdicts": {"cache": 2, "live": 0, "empty": 1, "missing": 1, "rejected": 2}}
INTENT_OFFLINE = {"value": 9 / 2, "n": 2, "normalized": (9 / 2 - 1) / 4, "unparsed": 0,
                  "verdicts": {"cache": 2, "live": 0, "empty": 0, "missing": 1, "rejected": 1}}


def assert_stem(got: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert got[name] == (pytest.approx(value) if isinstance(value, float) else value), name


def test_published_verdicts_score_judged_files_with_no_judge(tmp_path):
    run = write_run(tmp_path / "run")
    write_gpt_result(run / "gpt_result")
    result = score_directory(run, verdicts=VerdictStore())
    stems = result.to_dict()
    assert_stem(stems["dolly_input_1"], DOLLY_OFFLINE)
    assert_stem(stems["slurp_Intent_Prediction"], INTENT_OFFLINE)
    assert stems["dolly_input_1"]["judges"] == ["gpt-4o-mini (prompt llaso-gpt_test)"]
    assert "skipped" not in stems["dolly_input_1"]
    problems = sorted((Path(p.file).name, p.ordinal, p.reason) for p in result.verdict_problems)
    assert problems == [("dolly_input_1_test.jsonl", 1, "verdict_mismatch"),
                        ("dolly_input_1_test.jsonl", 4, "verdict_without_record"),
                        ("slurp_Intent_Prediction_test.jsonl", 2, "judge_error")]
    mismatch = str(next(p for p in result.verdict_problems if p.reason == "verdict_mismatch"))
    assert "gpt_result/dolly_input_1_test.jsonl: record 1: verdict_mismatch: index 1: predicted text differs" in mismatch
    assert "'Something different.'" in mismatch and "'Something else entirely.'" in mismatch
    assert result.problems == []
    tasks = {t.task: t for t in summarize(result.stems.values()).tasks}
    assert tasks["AQA"].normalized == pytest.approx(1 / 3) and tasks["IP"].normalized == pytest.approx(7 / 8)
    assert tasks["IP"].verdicts == INTENT_OFFLINE["verdicts"]

    unaided = score_directory(run).to_dict()  # published verdicts are read only when asked for
    assert unaided["dolly_input_1"]["value"] is None and unaided["dolly_input_1"]["skipped"] == NO_JUDGE
    assert unaided["dolly_input_1"]["verdicts"]["missing"] == 3  # the empty prediction needs no verdict


def test_mismatched_and_failed_verdicts_go_to_the_live_judge_and_into_the_cache(tmp_path, judge_server):
    url, endpoint = judge_server
    run = write_run(tmp_path / "run")
    write_gpt_result(run / "gpt_result")
    judge = OpenAIJudge(url, "judge-test")
    new: list[Verdict] = []
    store = VerdictStore(JudgeCache(), JudgeIdentity(judge.model, judge.prompt_version), on_new=new.append)
    stems = score_directory(run, judge, verdicts=store).to_dict()
    # dolly record 1 asked live: 2 (differs from the reference) -> (5 + 2 + 1 + 1) / 4
    assert_stem(stems["dolly_input_1"], {"value": 9 / 4, "n": 4, "unparsed": 1,
                                         "verdicts": {"cache": 2, "live": 1, "empty": 1, "missing": 0, "rejected": 2}})
    # IP record 2 asked live: "Weather query" for "Calendar set" -> 2; (5 + 4 + 2) / 3
    assert_stem(stems["slurp_Intent_Prediction"], {"value": 11 / 3, "n": 3, "unparsed": 0})
    assert stems["slurp_Intent_Prediction"]["judges"] == ["gpt-4o-mini (prompt llaso-gpt_test)",
                                                         f"judge-test (prompt {DEFAULT_PROMPT_VERSION})"]
    assert len(endpoint.requests) == 2
    assert sorted((v.prediction, v.score) for v in new) == [("Something else entirely.", 2), ("Weather query", 2)]
    again = score_directory(run, judge, verdicts=store).to_dict()  # the cache answers now
    assert len(endpoint.requests) == 2
    assert again["dolly_input_1"]["value"] == pytest.approx(9 / 4)
    assert again["dolly_input_1"]["verdicts"]["cache"] == 3 and again["dolly_input_1"]["verdicts"]["live"] == 0


def test_cache_file_lets_a_rescore_run_offline(tmp_path, judge_server):
    url, endpoint = judge_server
    run = write_run(tmp_path / "run")  # no gpt_result: every verdict comes from the judge
    cache = tmp_path / "cache"
    live = [*LLASO_EVAL, "score", str(run), "--json", "--judge-url", url, "--judge-model", "judge-test",
            "--judge-cache", str(cache)]
    first = subprocess.run(live, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    # dolly: 5, 2, 1 (empty, not sent), garbage -> no score -> 1; IP: 5, 2 ("alarm query" is not "Alarm query"), 2
    expected = {"dolly_input_1": (9 / 4, 1), "slurp_Intent_Prediction": ((5 + 2 + 2) / 3, 0)}
    for stem, (value, unparsed) in expected.items():
        got = json.loads(first.stdout)[stem]
        assert (got["value"], got["unparsed"]) == (pytest.approx(value), unparsed), stem
    assert len(endpoint.requests) == 6
    assert "6 new verdicts appended" in first.stderr

    lines = [json.loads(line) for line in (cache / CACHE_FILE).read_text("utf-8").splitlines()]
    assert len(lines) == 6
    garbage = next(line for line in lines if line["prediction"] == "garbage")
    reference = gold(fixture_records("dolly_input_1")[3]).strip()
    assert garbage == {
        "key": hashlib.sha256(json.dumps(["judge-test", DEFAULT_PROMPT_VERSION, reference, "garbage"],
                                         ensure_ascii=False).encode("utf-8")).hexdigest(),
        "judge": "judge-test", "prompt": DEFAULT_PROMPT_VERSION, "reference": reference, "prediction": "garbage",
        "evaluation": "I cannot rate this.", "score": None}

    endpoint.fail = True  # a re-score with the judge configured never asks it
    second = subprocess.run(live, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert len(endpoint.requests) == 6
    offline = subprocess.run([*LLASO_EVAL, "score", str(run), "--json", "--judge-cache", str(cache)],
                             cwd=REPO, capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr
    for output in (second.stdout, offline.stdout):
        stems = json.loads(output)
        for stem, (value, unparsed) in expected.items():
            assert (stems[stem]["value"], stems[stem]["unparsed"]) == (pytest.approx(value), unparsed), stem
            assert stems[stem]["verdicts"]["live"] == 0 and stems[stem]["verdicts"]["missing"] == 0
    assert f"reusing those of judge-test (prompt {DEFAULT_PROMPT_VERSION})" in offline.stderr
    assert (cache / CACHE_FILE).read_text("utf-8").count("\n") == 6  # nothing appended


def test_the_cache_folders_gpt_result_is_read_too(tmp_path):
    run = write_run(tmp_path / "run")
    write_gpt_result(tmp_path / "cache" / "gpt_result")
    result = subprocess.run([*LLASO_EVAL, "score", str(run), "--json", "--judge-cache", str(tmp_path / "cache")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    stems = json.loads(result.stdout)
    assert_stem(stems["dolly_input_1"], DOLLY_OFFLINE)
    assert_stem(stems["slurp_Intent_Prediction"], INTENT_OFFLINE)
    assert "judge verdict not used: " in result.stderr and "record 1: verdict_mismatch: index 1" in result.stderr
    assert "dolly_input_1_test.json: 1 record(s) have no judge verdict and are left out; scored over 3" in result.stderr


def test_identical_texts_are_judged_once(tmp_path, judge_server):
    url, endpoint = judge_server
    records = [copy.deepcopy(r) for r in fixture_records("dolly_input_1") * 2]
    for record, intent in zip(records, ["Calendar set"] * 4 + ["Alarm query"] * 4):
        record["conversations"][-1]["value"] = intent
    predictions = ["Calendar set", " Calendar set", "Alarm set", "Calendar set\n", "Alarm query", "Alarm query",
                   "Alarm query", "Alarm set"]  # 2 distinct pairs for each reference
    write_json(tmp_path / "run" / "slurp_Intent_Prediction_test.json", with_predictions(records, predictions))
    judge = OpenAIJudge(url, "judge-test")
    store = VerdictStore(JudgeCache(), JudgeIdentity(judge.model, judge.prompt_version))
    stem = score_directory(tmp_path / "run", judge, verdicts=store).to_dict()["slurp_Intent_Prediction"]
    assert len(endpoint.requests) == 4  # surrounding whitespace aside, 4 distinct (reference, prediction) pairs
    assert stem["value"] == pytest.approx((5 + 5 + 2 + 5 + 5 + 5 + 5 + 2) / 8)
    assert stem["verdicts"]["live"] == 8 and len(store.cache) == 4


def test_cache_lines_are_checked_and_a_cut_off_line_is_left_alone(tmp_path, judge_server):
    url, endpoint = judge_server
    judge = JudgeIdentity("judge-test", DEFAULT_PROMPT_VERSION)
    good = Verdict.of(judge, "Calendar set", "Calendar set", "Score: 5\nExplanation: same.")
    tampered = json.loads(Verdict.of(judge, "Alarm query", "alarm", "Score: 3").to_line()) | {"score": 5}
    rekeyed = json.loads(Verdict.of(judge, "Alarm query", "wake me", "Score: 2").to_line()) | {"prediction": "other"}
    cache = tmp_path / "cache"
    cache.mkdir()
    text = "\n".join([good.to_line(), json.dumps(tampered), json.dumps(rekeyed), "[1, 2]",
                      Verdict.of(judge, "a", "b", "Score: 4").to_line()[:30]])  # the last line cut off, no newline
    (cache / CACHE_FILE).write_text(text, "utf-8")
    verdicts, problems = read_cache_file(cache / CACHE_FILE)
    assert len(verdicts) == 1 and verdicts.get(judge, " Calendar set ", "Calendar set") == good
    assert [(p.ordinal, p.reason) for p in problems] == [(1, "score_mismatch"), (2, "key_mismatch"),
                                                         (3, "not_an_object"), (4, "malformed_json")]
    assert str(problems[0]).startswith(f"{cache / CACHE_FILE}: record 1: score_mismatch: score 5, but the evaluation")

    records = fixture_records("dolly_input_1")[:2]
    for record in records:
        record["conversations"][-1]["value"] = "Calendar set"
    write_json(tmp_path / "run" / "slurp_Intent_Prediction_test.json",
               with_predictions(records, ["Calendar set", "Alarm set"]))
    result = subprocess.run([*LLASO_EVAL, "score", str(tmp_path / "run"), "--json", "--judge-url", url,
                             "--judge-model", "judge-test", "--judge-cache", str(cache)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "judge cache line not used: " in result.stderr and "record 4: malformed_json" in result.stderr
    assert len(endpoint.requests) == 1  # "Calendar set" came from the cache
    assert json.loads(result.stdout)["slurp_Intent_Prediction"]["value"] == pytest.approx((5 + 2) / 2)
    verdicts, problems = read_cache_file(cache / CACHE_FILE)
    assert len(verdicts) == 2 and len(problems) == 4  # the new verdict sits on a line of its own
    assert verdicts.get(judge, "Calendar set", "Alarm set").score == 2


def test_a_cache_of_two_judges_needs_judge_model_to_run_offline(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    records = fixture_records("dolly_input_1")[:1]
    reference = gold(records[0])
    write_json(tmp_path / "run" / "dolly_input_1_test.json", with_predictions(records, ["The Batman, 2013."]))
    lines = [Verdict.of(JudgeIdentity(name, DEFAULT_PROMPT_VERSION), reference, "The Batman, 2013.",
                        f"Score: {score}").to_line() for name, score in (("judge-a", 4), ("judge-b", 2))]
    (cache / CACHE_FILE).write_text("\n".join(lines) + "\n", "utf-8")
    command = [*LLASO_EVAL, "score", str(tmp_path / "run"), "--json", "--judge-cache", str(cache)]
    ambiguous = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert ambiguous.returncode == 2
    assert str(cache / CACHE_FILE) in ambiguous.stderr and "judge-a" in ambiguous.stderr
    assert "judge-b" in ambiguous.stderr and "--judge-model" in ambiguous.stderr
    for name, value in (("judge-a", 4.0), ("judge-b", 2.0)):
        chosen = subprocess.run([*command, "--judge-model", name], cwd=REPO, capture_output=True, text=True)
        assert chosen.returncode == 0, chosen.stderr
        assert json.loads(chosen.stdout)["dolly_input_1"]["value"] == value
    alone = subprocess.run([*LLASO_EVAL, "score", str(tmp_path / "run"), "--judge-model", "judge-a"],
                           cwd=REPO, capture_output=True, text=True)
    assert alone.returncode == 2 and "--judge-model needs --judge-url" in alone.stderr


def test_a_cache_file_among_the_predictions_is_not_a_prediction_file(tmp_path):
    run = write_run(tmp_path / "run")
    (run / CACHE_FILE).write_text(Verdict.of(JudgeIdentity("j", "p"), "a", "b", "Score: 3").to_line() + "\n")
    assert sorted(p.name for p in find_prediction_files(run)) == ["dolly_input_1_test.json",
                                                                   "slurp_Intent_Prediction_test.json"]


def _column(markdown: str, row: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {row} |"))
    return [cell.strip() for cell in line.strip("|").split("|")[1:]]


def test_report_ranks_runs_and_marks_where_verdicts_came_from(tmp_path, judge_server):
    url, endpoint = judge_server
    published = write_run(tmp_path / "published")
    write_gpt_result(published / "gpt_result")
    mine = tmp_path / "mine"  # every prediction repeats its reference: the judge gives 5
    for stem in ("dolly_input_1", "slurp_Intent_Prediction"):
        records = json.loads((published / f"{stem}_test.json").read_text("utf-8"))
        write_json(mine / f"{stem}_test.json", with_predictions(records, [gold(r) for r in records]))
    asr = fixture_records("ASR")
    write_json(mine / "ASR_test.json", with_predictions(asr, [gold(r) for r in asr]))
    cache = tmp_path / "cache"

    def report(out: str, *judge: str) -> subprocess.CompletedProcess:
        return subprocess.run([*LLASO_EVAL, "report", str(published), str(mine), "--names", "published,mine",
                               "--judge-cache", str(cache), "--out", str(tmp_path / out), *judge],
                              cwd=REPO, capture_output=True, text=True)

    live = report("live", "--judge-url", url, "--judge-model", "judge-test")
    assert live.returncode == 0, live.stderr
    assert len(endpoint.requests) == 2 + 4 + 2  # published: 2 without a verdict; mine: 4 + 3, "Calendar set" twice
    table = (tmp_path / "live" / "report.md").read_text("utf-8")
    assert table.splitlines()[0] == "| | mine | published |"  # best overall score first
    assert _column(table, "AQA") == ["1.000 l", f"{(9 / 4 - 1) / 4:.3f} cl"]
    assert _column(table, "IP") == ["1.000 l", f"{(11 / 3 - 1) / 4:.3f} cl"]
    assert _column(table, "ASR") == ["1.000", "-"]
    assert _column(table, "**tasks scored**") == ["3", "2"]
    assert "l = from the live judge" in table

    offline = report("offline")
    assert offline.returncode == 0, offline.stderr
    assert len(endpoint.requests) == 8
    header, *rows = offline.stdout.splitlines()
    assert header.split() == ["mine", "published"]
    assert next(r for r in rows if r.startswith("AQA")).split()[1:] == ["1.000", "c", f"{(9 / 4 - 1) / 4:.3f}", "c"]
    table = (tmp_path / "offline" / "report.md").read_text("utf-8")
    assert _column(table, "**overall**") == ["1.000", f"{((9 / 4 - 1) / 4 + (11 / 3 - 1) / 4) / 2:.3f}"]
    saved = json.loads((tmp_path / "offline" / "scores.json").read_text("utf-8"))["runs"]
    assert list(saved) == ["mine", "published"]
    assert saved["published"]["summary"]["tasks"]["AQA"]["verdicts"] == {
        "cache": 3, "live": 0, "empty": 1, "missing": 0, "rejected": 2}
    page = (tmp_path / "offline" / "report.html").read_text("utf-8")
    assert "c = verdicts from the judge cache" in page

    (cache / CACHE_FILE).unlink()  # without the cache file only LLaSO's published verdicts are left
    partial = report("partial")
    assert partial.returncode == 0, partial.stderr
    table = (tmp_path / "partial" / "report.md").read_text("utf-8")
    assert table.splitlines()[0] == "| | mine | published |"  # mine's overall is its ASR score alone now
    assert _column(table, "AQA") == ["- m", f"{(7 / 3 - 1) / 4:.3f} cm"]
    assert _column(table, "IP") == ["- m", f"{(9 / 2 - 1) / 4:.3f} cm"]
    assert _column(table, "**tasks scored**") == ["1", "2"]
