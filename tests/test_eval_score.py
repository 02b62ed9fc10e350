"""``llaso-eval score`` / ``report`` on hand-made prediction files built from real LLaSO-Eval records.

Each test copies real fixture records, adds predictions whose right score is worked out by
hand in the test, writes them in one of the layouts found in the wild (JSON array or
JSONL; the prediction under ``answer``, ``result`` or ``prediction``) and checks the scorer.
The LLM judge is exercised against a real HTTP server on 127.0.0.1 answering like an
OpenAI endpoint, and against a real (tiny, hand-wired) Hugging Face model.
"""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import EVAL_SAMPLE
from llaso_eval.judge import JudgeError, OpenAIJudge, parse_score
from llaso_eval.metrics import error_rate, named_labels, pronunciation_scores
from llaso_eval.normalize import normalize_text, phone_symbols
from llaso_eval.predictions import PredictionDirError, find_prediction_files
from llaso_eval.report import Run, load_scores, write_report
from llaso_eval.score import NO_JUDGE, score_directory
from llaso_eval.summary import summarize

REPO = Path(__file__).resolve().parents[1]
LLASO_EVAL = [sys.executable, "-m", "llaso_eval.cli"]
TEXT_AUDIO = EVAL_SAMPLE / "text_audio"


def fixture_records(stem: str) -> list[dict]:
    """The real records of ``<stem>_test.json`` (a fresh copy)."""
    return json.loads((TEXT_AUDIO / f"{stem}_test.json").read_text("utf-8"))


def gold(record: dict) -> str:
    return record["conversations"][-1]["value"]


def with_predictions(records: list[dict], predictions: list[str | None], field: str = "answer") -> list[dict]:
    """Copies of ``records`` with each prediction under ``field`` (None: no prediction field)."""
    out = []
    for index, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
        record = copy.deepcopy(record)
        record["key"] = f"k{index}"
        if prediction is not None:
            record[field] = prediction
        out.append(record)
    return out


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), "utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records))
    return path


# ---------------------------------------------------------------- the hand-scored run

ASR_WORDS = [36, 28, 37, 25]  # words in the 4 real ASR references
GENDER_PREDICTIONS = ["Male.", "female", "FEMALE", "It could be male or female."]   # golds M, M, F, F
EMOTION_PREDICTIONS = ["", "neutrality", "joyful", "The speaker sounds sad; sadness."]  # Joy, Neutrality, Joy, Sadness
PITCH_PREDICTIONS = ["68", "The MIDI number is 30.", "", "forty-nine"]               # golds 68, 23, 31, 49


def asr_predictions() -> list[str]:
    golds = [gold(r) for r in fixture_records("ASR")]
    assert [len(g.split()) for g in golds] == ASR_WORDS
    return [
        golds[0].upper() + "!!",                        # case and punctuation only: 0 errors
        golds[1].replace("timothy", "timmy", 1),        # 1 substitution
        "",                                             # empty: 37 deletions
        golds[3] + " indeed",                           # 1 insertion
    ]


def pronunciation_predictions() -> list[str]:
    golds = [gold(r) for r in fixture_records("pronunciation_scoring_word_level")]
    assert len(pronunciation_scores(golds[1])) == 9 and len(pronunciation_scores(golds[0])) == 18
    return [golds[0],                                            # all 18 scores right
            golds[1].replace("accuracy is 8", "accuracy is 9", 1),  # 8 of 9 right
            "",                                                  # no score: 0, unparsed
            golds[3].lower()]                                    # all right, whatever the case


def write_hand_scored_run(root: Path) -> Path:
    """A prediction folder in LLaSO's layout whose scores are worked out below."""
    write_json(root / "text_audio" / "ASR_test.json", with_predictions(fixture_records("ASR"), asr_predictions()))
    write_json(root / "text_audio" / "common-voice_gender_classification_test.json",
               with_predictions(fixture_records("common-voice_gender_classification"), GENDER_PREDICTIONS))
    write_jsonl(root / "text_audio" / "meld_ER_classification_test.jsonl",
                with_predictions(fixture_records("meld_ER_classification"), EMOTION_PREDICTIONS, "result"))
    write_json(root / "text_audio" / "NSynth_pitch_recognition_test.json",
               with_predictions(fixture_records("NSynth_pitch_recognition"), PITCH_PREDICTIONS, "prediction"))
    write_json(root / "text_audio" / "pronunciation_scoring_word_level_test.json",
               with_predictions(fixture_records("pronunciation_scoring_word_level"), pronunciation_predictions()))
    dolly = fixture_records("dolly_input_1")
    write_json(root / "text_audio" / "dolly_input_1_test.json",
               with_predictions(dolly, [gold(dolly[0]), "Something else entirely.", "", "garbage"]))
    return root


HAND_SCORES = {  # stem: (metric, value, normalised, abstention_rate, unparsed)
    "ASR": ("wer", 39 / 126, 1 - 39 / 126, None, None),                      # (0 + 1 + 37 + 1) / 126 words
    "common-voice_gender_classification": ("accuracy", 2 / 4, 2 / 4, 1 / 4, None),
    "meld_ER_classification": ("accuracy", 2 / 4, 2 / 4, 2 / 4, None),
    "NSynth_pitch_recognition": ("mae", 7 / 2, (1 + (1 - 7 / 12)) / 4, None, 2),  # |68-68|, |30-23|; 2 unparsed
    "pronunciation_scoring_word_level": ("exact_match", (1 + 8 / 9 + 0 + 1) / 4, (1 + 8 / 9 + 0 + 1) / 4, None, 1),
}


def assert_hand_scores(stems: dict) -> None:
    for stem, (metric, value, normalized, abstention, unparsed) in HAND_SCORES.items():
        got = stems[stem]
        assert got["metric"] == metric, stem
        assert got["value"] == pytest.approx(value), stem
        assert got["n"] == 4, stem
        assert got["normalized"] == pytest.approx(normalized), stem
        assert got.get("abstention_rate") == (pytest.approx(abstention) if abstention is not None else None), stem
        assert got.get("unparsed") == unparsed, stem


def test_hand_scored_run_gives_the_worked_out_scores(tmp_path):
    result = score_directory(write_hand_scored_run(tmp_path / "run"))
    stems = result.to_dict()
    assert_hand_scores(stems)
    assert stems["dolly_input_1"]["value"] is None and stems["dolly_input_1"]["skipped"] == NO_JUDGE
    assert stems["dolly_input_1"]["task"] == "AQA" and stems["dolly_input_1"]["n"] == 4
    assert result.problems == []
    assert stems["meld_ER_classification"]["file"] == "text_audio/meld_ER_classification_test.jsonl"


def test_summary_pools_tasks_and_averages_them(tmp_path):
    summary = summarize(score_directory(write_hand_scored_run(tmp_path / "run")).stems.values())
    tasks = {t.task: t for t in summary.tasks}
    assert list(tasks) == ["ASR", "AQA", "SGC", "ER", "PSWL", "PP"]  # catalogue order
    assert summary.skipped == ("AQA",)
    expected = {task: HAND_SCORES[stem][2] for task, stem in (
        ("ASR", "ASR"), ("SGC", "common-voice_gender_classification"), ("ER", "meld_ER_classification"),
        ("PSWL", "pronunciation_scoring_word_level"), ("PP", "NSynth_pitch_recognition"))}
    for task, normalized in expected.items():
        assert tasks[task].normalized == pytest.approx(normalized), task
    assert summary.categories["linguistic"] == pytest.approx(expected["ASR"])
    assert summary.categories["semantic"] is None
    paralinguistic = [expected[t] for t in ("SGC", "ER", "PSWL", "PP")]
    assert summary.categories["paralinguistic"] == pytest.approx(sum(paralinguistic) / 4)
    assert summary.overall == pytest.approx(sum(expected.values()) / 5)


# ---------------------------------------------------------------- metric details

def test_text_normalisation_is_the_documented_one():
    assert normalize_text("After his nap, Timothy's  cat\u2014well-known!") == "after his nap timothys cat well known"
    assert normalize_text("ＡＢＣ 2013.") == "abc 2013"
    assert error_rate([["a", "b", "c", "d"]], [["a", "x", "c", "d"]]).rate == 0.25


def test_phone_error_rate_counts_ipa_symbols(tmp_path):
    assert phone_symbols("ˈt͡ʃiːz") == ["t͡ʃ", "iː", "z"]
    assert phone_symbols("k æ t") == phone_symbols("kæt") == ["k", "æ", "t"]
    records = fixture_records("ASR")[:2]
    records[0]["conversations"][-1]["value"] = "ðə kæt sæt"   # 8 symbols
    records[1]["conversations"][-1]["value"] = "t͡ʃiːz"        # 3 symbols
    write_json(tmp_path / "run" / "phoneme_recognition_test.json",
               with_predictions(records, ["ðəkɑtsæt", "t͡ʃiz"]))  # 1 + 1 substitutions
    stem = score_directory(tmp_path / "run").to_dict()["phoneme_recognition"]
    assert (stem["metric"], stem["task"]) == ("per", "PR")
    assert stem["value"] == pytest.approx(2 / 11)


def test_chinese_references_are_scored_by_character_error_rate(tmp_path):
    records = fixture_records("ASR")[:2]
    records[0]["conversations"][-1]["value"] = "今天天气不错。"   # 6 characters after normalisation
    records[1]["conversations"][-1]["value"] = "你好"             # 2
    write_json(tmp_path / "run" / "ASR_test.json", with_predictions(records, ["今天天气很好", "你好！"]))
    stem = score_directory(tmp_path / "run").to_dict()["ASR"]
    assert stem["metric"] == "cer" and stem["value"] == pytest.approx(2 / 8)


def test_labels_are_matched_at_word_boundaries_and_nested_labels_count_once():
    labels = ("female", "male")
    assert named_labels("Female.", labels) == ["female"]
    assert named_labels("male or female", labels) == ["female", "male"]
    assert named_labels("males", labels) == []
    assert named_labels("20-24.", ("20-24", "25-29")) == ["20-24"]
    nested = ("irish", "northern irish")
    assert named_labels("Northern  Irish.", nested) == ["northern irish"]
    assert named_labels("Irish, or maybe Northern Irish", nested) == ["irish", "northern irish"]


def test_nested_labels_and_trailing_periods_in_a_file(tmp_path):
    records = fixture_records("vctk_accent_classification")    # golds: Irish. x4
    records[1]["conversations"][-1]["value"] = "Northern Irish."
    predictions = ["Irish", "Northern Irish.", "Northern Irish", "Irish, or maybe Northern Irish"]
    # correct, correct (nested label counted once), followed but wrong, two labels: abstention
    write_json(tmp_path / "run" / "vctk_accent_classification_test.json", with_predictions(records, predictions))
    stem = score_directory(tmp_path / "run").to_dict()["vctk_accent_classification"]
    assert stem["value"] == pytest.approx(2 / 4) and stem["abstention_rate"] == pytest.approx(1 / 4)


def test_age_is_mean_absolute_error_for_numbers_and_accuracy_for_buckets(tmp_path):
    numeric = fixture_records("NSynth_pitch_recognition")[:2]
    numeric[0]["conversations"][-1]["value"] = "19"
    numeric[1]["conversations"][-1]["value"] = "25."
    write_json(tmp_path / "run" / "vocalsound_age_prediction_test.json",
               with_predictions(numeric, ["I think 21", "25"]))           # errors 2 and 0 years
    buckets = fixture_records("common-voice_gender_classification")[:2]
    buckets[0]["conversations"][-1]["value"] = "Twenties"
    buckets[1]["conversations"][-1]["value"] = "Fourties"
    write_json(tmp_path / "run" / "common-voice_age_classification_test.json",
               with_predictions(buckets, ["twenties", "thirties"]))        # correct; no label: abstention
    stems = score_directory(tmp_path / "run").to_dict()
    assert stems["vocalsound_age_prediction"]["metric"] == "mae"
    assert stems["vocalsound_age_prediction"]["value"] == pytest.approx(1.0)
    assert stems["vocalsound_age_prediction"]["normalized"] == pytest.approx((0.8 + 1.0) / 2)  # scale 10 years
    age = stems["common-voice_age_classification"]
    assert (age["metric"], age["value"], age["abstention_rate"]) == ("accuracy", 0.5, 0.5)
    assert summarize(score_directory(tmp_path / "run").stems.values()).tasks[0].metric == "mixed"


def test_sentence_level_pronunciation_scores_match_exactly(tmp_path):
    records = fixture_records("pronunciation_scoring_word_level")[:1]
    records[0]["conversations"][-1]["value"] = ("I like apples. Accuracy is 8, fluency is 7, prosodic is 8, "
                                                "and total score is 8.")
    write_json(tmp_path / "run" / "pronunciation_scoring_sentence_level_test.json",
               with_predictions(records, ["accuracy: 8, fluency: 9, prosodic: 8, total: 8"]))
    stem = score_directory(tmp_path / "run").to_dict()["pronunciation_scoring_sentence_level"]
    assert (stem["task"], stem["metric"], stem["value"]) == ("PSSL", "exact_match", 0.75)


# ---------------------------------------------------------------- layouts and bad input

def test_every_prediction_layout_gives_the_same_scores(tmp_path):
    records = fixture_records("meld_ER_classification")
    for record in records:  # MELD text holds U+0085 (NEL): a splitlines() reader would break the lines
        record["meta-data"]["utt"] = "Oh\u0085 my God!\u0085"
    predictions = ["Joy.\u0085", "NEUTRALITY", "Sadness", "joy and sadness"]  # correct, correct, wrong, abstention
    results = {}
    for field in ("answer", "result", "prediction"):
        for writer, suffix in ((write_json, ".json"), (write_jsonl, ".jsonl")):
            root = tmp_path / f"{field}{suffix}"
            path = writer(root / f"meld_ER_classification_test{suffix}", with_predictions(records, predictions, field))
            if suffix == ".jsonl":
                assert "\u0085" in path.read_text("utf-8")
            stem = score_directory(root).to_dict()["meld_ER_classification"]
            results[(field, suffix)] = (stem["n"], stem["value"], stem["abstention_rate"])
    assert set(results.values()) == {(4, 0.5, 0.25)}


def test_answer_wins_over_result_and_a_missing_prediction_is_empty(tmp_path):
    records = with_predictions(fixture_records("meld_ER_classification"), ["Joy.", None, "Joy.", "Sadness."])
    records[0]["result"] = "Sadness."   # ignored: `answer` comes first
    write_json(tmp_path / "run" / "meld_ER_classification_test.json", records)
    stem = score_directory(tmp_path / "run").to_dict()["meld_ER_classification"]
    assert (stem["value"], stem["abstention_rate"]) == (0.75, 0.25)


def test_unscorable_records_are_named_and_counted(tmp_path):
    good = with_predictions(fixture_records("common-voice_gender_classification"), GENDER_PREDICTIONS)
    no_turns = {k: v for k, v in good[0].items() if k != "conversations"}
    listed = dict(good[0], answer=["Male"])
    empty_gold = copy.deepcopy(good[0])
    empty_gold["conversations"][-1]["value"] = " "
    text = json.dumps([*good, 42, no_turns, listed, empty_gold, good[0]])
    path = tmp_path / "run" / "common-voice_gender_classification_test.json"
    path.parent.mkdir()
    path.write_text(text[:-40], "utf-8")  # the last record is cut off
    result = score_directory(tmp_path / "run")
    stem = result.to_dict()["common-voice_gender_classification"]
    assert (stem["n"], stem["value"], stem["rejected"]) == (4, 0.5, 5)
    reasons = [(p.ordinal, p.reason) for p in result.problems]
    assert reasons == [(4, "not_an_object"), (5, "missing_turns"), (6, "bad_prediction_type"),
                       (7, "empty_reference"), (8, "malformed_json")]
    assert str(result.problems[2]).startswith("common-voice_gender_classification_test.json: record 6: ")


def test_prediction_folder_errors_are_clear(tmp_path):
    with pytest.raises(PredictionDirError, match="not a folder"):
        find_prediction_files(tmp_path / "missing")
    with pytest.raises(PredictionDirError, match="no .json or .jsonl"):
        find_prediction_files(tmp_path)
    records = fixture_records("ASR")
    write_json(tmp_path / "text_audio" / "ASR_test.json", records)
    write_jsonl(tmp_path / "other" / "ASR_test.jsonl", records)
    with pytest.raises(PredictionDirError, match="stem 'ASR' appears twice"):
        find_prediction_files(tmp_path)
    (tmp_path / "other" / "ASR_test.jsonl").unlink()
    # LLaSO's results folders also hold the judge's and the abstention script's outputs
    write_jsonl(tmp_path / "gpt_result" / "dolly_input_1_test.jsonl", [{"file": "x", "index": 0}])
    write_jsonl(tmp_path / "abstention" / "instruction_follow_stats.jsonl", [{"file": "x"}])
    assert find_prediction_files(tmp_path) == [tmp_path / "text_audio" / "ASR_test.json"]


# ---------------------------------------------------------------- the LLM judge

class _JudgeEndpoint(BaseHTTPRequestHandler):
    """Answers like an OpenAI chat-completions endpoint: ``Score: 5`` when the predicted
    answer repeats the reference, no score for ``garbage``, ``Score: 2`` otherwise."""

    requests: list = []
    fail = False

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, dict(self.headers), body))
        if type(self).fail:
            self.send_error(500, "judge is down")
            return
        user = body["messages"][-1]["content"]
        reference = user.split("Reference Answer:\n", 1)[1].split("\n\nPredicted Answer:\n", 1)[0]
        predicted = user.split("Predicted Answer:\n", 1)[1].rsplit("\n\n", 1)[0]
        text = ("I cannot rate this." if predicted == "garbage"
                else f"**Score:** {5 if predicted == reference else 2}\nExplanation: compared.")
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    _JudgeEndpoint.requests = []
    _JudgeEndpoint.fail = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _JudgeEndpoint
    server.shutdown()
    server.server_close()


def test_judge_scores_open_answers_over_http(tmp_path, judge_server):
    url, endpoint = judge_server
    run = write_hand_scored_run(tmp_path / "run")
    judge = OpenAIJudge(url + "/v1", "judge-test", api_key="sekret")
    stem = score_directory(run, judge, judge_workers=3).to_dict()["dolly_input_1"]
    # 5 (repeats the reference), 2 (differs), 1 (empty: not sent), no score (garbage): the lowest, 1
    assert stem["value"] == pytest.approx(9 / 4) and stem["normalized"] == pytest.approx((9 / 4 - 1) / 4)
    assert stem["unparsed"] == 1 and "skipped" not in stem and stem["n"] == 4
    assert stem["verdicts"] == {"cache": 0, "live": 3, "empty": 1, "missing": 0, "rejected": 0}
    assert len(endpoint.requests) == 3
    for path, headers, body in endpoint.requests:
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == "Bearer sekret"
        assert body["model"] == "judge-test" and body["temperature"] == 0.1
        assert body["messages"][0]["role"] == "system" and "Score:" in body["messages"][0]["content"]
    assert_hand_scores(score_directory(run, judge).to_dict())  # the other stems do not change


def test_an_unreachable_judge_is_an_error_naming_the_endpoint(tmp_path, judge_server):
    url, endpoint = judge_server
    endpoint.fail = True
    run = write_hand_scored_run(tmp_path / "run")
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*HTTP 500"):
        score_directory(run, OpenAIJudge(url, "judge-test", retries=0))


def test_judge_score_parsing():
    assert parse_score("Score: 4\nExplanation: fine") == 4
    assert parse_score("**Score:** 5") == 5
    assert parse_score("score = 3.") == 3
    assert parse_score("Score: 4.5") is None
    assert parse_score("Score: 7") is None
    assert parse_score("no idea") is None


def test_local_hf_judge_reads_the_score_its_model_generates(tmp_path):
    """A tiny Llama wired by hand as a bigram machine (attention and MLP outputs zero, so
    each position's logits depend on its own token only) that answers ``Score: 4``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llaso_data.stream.chat import tiny_tokenizer
    from llaso_eval.judge import HFJudge

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
                               "{{ m.content }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n")
    prompt_end = tokenizer("<|end_header_id|>\n\n", add_special_tokens=False).input_ids[-1]
    answer = tokenizer("Score: 4", add_special_tokens=False).input_ids
    chain = [prompt_end, *answer, tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain)
    size = len(tokenizer)
    config = LlamaConfig(vocab_size=size, hidden_size=size, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "lm_head.weight")):
                parameter.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(size))
        for current, following in zip(chain, chain[1:]):
            model.lm_head.weight[following, current] = 1.0
    model.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")

    judge = HFJudge(tmp_path / "judge", device="cpu", max_new_tokens=8)
    assert judge.score("", "The Batman was introduced in 2013", "in 2013") == 4


# ---------------------------------------------------------------- command line and report

def test_score_cli_prints_the_json_contract(tmp_path, judge_server):
    url, _ = judge_server
    run = write_hand_scored_run(tmp_path / "run")
    result = subprocess.run([*LLASO_EVAL, "score", str(run), "--json"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    stems = json.loads(result.stdout)
    assert set(stems) == {*HAND_SCORES, "dolly_input_1"}
    assert_hand_scores(stems)
    assert all({"metric", "value", "n"} <= set(v) for v in stems.values())
    assert stems["dolly_input_1"]["value"] is None
    assert "notice:" in result.stderr and "LLM judge" in result.stderr and "dolly_input_1" in result.stderr

    judged = subprocess.run([*LLASO_EVAL, "score", str(run), "--json", "--judge-url", url, "--judge-model", "m"],
                            cwd=REPO, capture_output=True, text=True)
    assert judged.returncode == 0, judged.stderr
    assert json.loads(judged.stdout)["dolly_input_1"]["value"] == pytest.approx(9 / 4)

    missing = subprocess.run([*LLASO_EVAL, "score", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "not a folder" in missing.stderr


def _perfect_run(root: Path) -> Path:
    """Every prediction equal to its reference."""
    for stem in ("ASR", "common-voice_gender_classification", "NSynth_pitch_recognition",
                 "pronunciation_scoring_word_level"):
        records = fixture_records(stem)
        write_json(root / f"{stem}_test.json", with_predictions(records, [gold(r) for r in records]))
    return root


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_puts_two_runs_side_by_side(tmp_path):
    hand = score_directory(write_hand_scored_run(tmp_path / "hand"))
    perfect = score_directory(_perfect_run(tmp_path / "perfect"))
    runs = [Run.of("hand", "hand", hand.stems), Run.of("perfect", "perfect", perfect.stems)]
    assert runs[1].summary.overall == 1.0
    png, page, markdown, scores = write_report(runs, tmp_path / "report")
    width, height = _png_size(png)
    assert width > 300 and height > 200
    text = page.read_text("utf-8")
    assert "<th colspan=\"3\">hand</th>" in text and "<th colspan=\"3\">perfect</th>" in text
    assert "data:image/png;base64," in text and ">SGC<" in text and ">PSWL<" in text
    saved = json.loads(scores.read_text("utf-8"))["runs"]
    assert saved["perfect"]["summary"]["overall"] == 1.0
    assert saved["hand"]["summary"]["overall"] == pytest.approx(runs[0].summary.overall)
    table = markdown.read_text("utf-8").splitlines()
    assert table[0] == "| | hand | perfect |"
    assert "| AQA | - m | - |" in table  # judged, no verdict: marked missing; perfect has no AQA file
    assert f"| **overall** | {runs[0].summary.overall:.3f} | 1.000 |" in table
    assert "| **tasks scored** | 5 | 4 |" in table
    assert_hand_scores(saved["hand"]["stems"])


def test_report_cli_reads_score_json_and_folders(tmp_path):
    hand = tmp_path / "hand.json"
    scored = subprocess.run([*LLASO_EVAL, "score", str(write_hand_scored_run(tmp_path / "hand")), "--json"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    hand.write_text(scored.stdout, "utf-8")
    assert_hand_scores({s: v.to_dict() for s, v in load_scores(hand).items()})
    result = subprocess.run([*LLASO_EVAL, "report", str(hand), str(_perfect_run(tmp_path / "perfect")),
                             "--out", str(tmp_path / "out"), "--names", "base,oracle"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["oracle", "base"]  # best overall score first
    overall = next(r for r in rows if r.startswith("overall")).split()
    assert overall[1] == "1.000" and float(overall[2]) < 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.md", "report.png",
                                                                    "scores.json"]
