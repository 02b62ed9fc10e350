"""LLM judges for the open-ended tasks (AQA, intent prediction, entity extraction, speech commands).

A judge implements :class:`Judge`: ``evaluate(question, reference, prediction)`` returns
its answer text (``Score: n`` then ``Explanation: ...``) and ``score(...)`` the ``n`` of it
(1..5, or None when the answer holds no readable score). ``model`` and ``prompt_version``
name the judge in the judge cache (:mod:`llaso_eval.judge_cache`). Two are provided:

* :class:`OpenAIJudge`: any OpenAI-compatible chat-completions endpoint (OpenAI, Azure
  behind a proxy, vLLM, llama.cpp server, ...), called with the standard library only;
* :class:`HFJudge`: a local Hugging Face causal LM, run with ``transformers.generate``.

The protocol follows LLaSO's GPT evaluation (gpt-4o-mini at temperature 0.1): the judge
sees the **reference answer** and the **predicted answer**, rates relevance and accuracy
from 1 to 5, and answers ``Score: <n>`` then ``Explanation: ...``. The default prompt
(:data:`SYSTEM_PROMPT`, :data:`USER_TEMPLATE`, written for this project) shows the judge
what LLaSO's shows it and no more, so scores stay comparable; the question is available
to a custom ``user_template`` as ``{question}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

SYSTEM_PROMPT = (
    "You judge the answers of an AI assistant that listens to audio and responds to it.\n"
    "You are given a Reference Answer and a Predicted Answer. Rate the Predicted Answer "
    "from 1 (irrelevant or wrong) to 5 (as relevant and accurate as the reference), "
    "judging relevance and accuracy against the Reference Answer.\n"
    "Reply in exactly this format and nothing else:\n"
    "Score: <an integer from 1 to 5>\n"
    "Explanation: <one or two sentences on relevance and accuracy>\n"
)
USER_TEMPLATE = (
    "Reference Answer:\n{reference}\n\n"
    "Predicted Answer:\n{prediction}\n\n"
    "Give your evaluation."
)
LLASO_JUDGE_MODEL = "gpt-4o-mini"
"""The judge of LLaSO's published verdicts (``results/<model>/gpt_result/``; Azure, temperature 0.1)."""
LLASO_PROMPT_VERSION = "llaso-gpt_test"
"""The prompt version naming LLaSO's own judge prompt (``llaso/evaluation/metrics/gpt_scores/gpt_test.py``)."""
_SCORE = re.compile(r"score\W{0,3}\s*[:=]\s*\W{0,2}\s*([1-5])(?!\d|[.,]\d)", re.IGNORECASE)


def prompt_version(system_prompt: str = SYSTEM_PROMPT, user_template: str = USER_TEMPLATE) -> str:
    """The version of a prompt in the judge cache: the first 16 hex digits of the SHA-256 of
    the system prompt, a NUL byte and the user template (UTF-8), so an edited prompt never
    reuses the verdicts of another."""
    digest = hashlib.sha256(f"{system_prompt}\0{user_template}".encode("utf-8")).hexdigest()
    return digest[:16]


DEFAULT_PROMPT_VERSION = prompt_version()
"""The version of the default prompt (:data:`SYSTEM_PROMPT`, :data:`USER_TEMPLATE`)."""


class Judge(Protocol):
    """Rates a predicted answer against the reference, 1 (worst) to 5 (best).

    ``name`` is for messages; ``model`` and ``prompt_version`` key its verdicts in the judge
    cache; ``uses_question`` says whether its prompt shows the question (then the question
    is part of the key too).
    """

    name: str
    model: str
    prompt_version: str
    uses_question: bool

    def evaluate(self, question: str, reference: str, prediction: str) -> str:
        """The judge's answer text (``Score: n`` and an explanation, when the judge obeys)."""

    def score(self, question: str, reference: str, prediction: str) -> int | None:
        """The score, or None when the judge's answer holds no readable ``Score: n``."""


class JudgeError(RuntimeError):
    """The judge could not be asked (endpoint unreachable, HTTP error, malformed response)."""


def parse_score(text: str) -> int | None:
    """The ``n`` of the first ``Score: n`` (1..5) in a judge's answer (``**Score:** 4``
    ``Score: 4.`` and ``score = 4`` too), or None (also for ``Score: 4.5`` or ``Score: 7``)."""
    match = _SCORE.search(text)
    return int(match.group(1)) if match else None


def build_messages(question: str, reference: str, prediction: str,
                   system_prompt: str = SYSTEM_PROMPT, user_template: str = USER_TEMPLATE) -> list[dict]:
    """The chat messages sent to a judge: a system turn and a user turn."""
    user = user_template.format(question=question, reference=reference.strip(), prediction=prediction.strip())
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


class OpenAIJudge:
    """A judge behind an OpenAI-compatible ``POST .../v1/chat/completions`` endpoint.

    ``base_url`` is the server root (``http://127.0.0.1:8000``) or its ``/v1`` URL
    (``https://api.openai.com/v1``); ``api_key`` (optional) is sent as a bearer token.
    In the judge cache it is ``model`` (the name sent, whatever the URL).
    A failed request is retried ``retries`` times (1 s, 2 s, ... apart) before
    :class:`JudgeError` is raised naming the URL and the cause. Thread-safe.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, temperature: float = 0.1,
                 max_tokens: int = 256, timeout: float = 120.0, retries: int = 2,
                 system_prompt: str = SYSTEM_PROMPT, user_template: str = USER_TEMPLATE):
        root = base_url.rstrip("/")
        self.url = f"{root}/chat/completions" if root.endswith("/v1") else f"{root}/v1/chat/completions"
        self.model = model
        self.name = f"{model} at {self.url}"
        self.prompt_version = prompt_version(system_prompt, user_template)
        self.uses_question = "{question}" in user_template
        self._api_key = api_key
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._timeout = timeout
        self._retries = retries
        self._system_prompt = system_prompt
        self._user_template = user_template

    def evaluate(self, question: str, reference: str, prediction: str) -> str:
        return self.complete(build_messages(question, reference, prediction, self._system_prompt,
                                            self._user_template))

    def score(self, question: str, reference: str, prediction: str) -> int | None:
        return parse_score(self.evaluate(question, reference, prediction))

    def complete(self, messages: list[dict]) -> str:
        """The assistant text the endpoint answers ``messages`` with."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self._temperature,
                           "max_tokens": self._max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in range(self._retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as error:
                cause = f"HTTP {error.code} {error.reason}: {error.read()[:300]!r}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                cause = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            if attempt == self._retries:
                raise JudgeError(f"judge {self.url}: {cause} (after {attempt + 1} attempts)")
            time.sleep(1.0 * (attempt + 1))
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise JudgeError(f"judge {self.url}: malformed response ({error!r}): {payload[:300]!r}") from None
        if not isinstance(content, str):
            raise JudgeError(f"judge {self.url}: message content is {type(content).__name__}, not text")
        return content


class HFJudge:
    """A local Hugging Face causal LM as judge (greedy decoding, ``max_new_tokens`` tokens).

    ``model_path`` is a local folder with the model and its tokenizer (nothing is
    downloaded; a missing folder raises ValueError). The tokenizer's chat
    template renders the messages when it has one; otherwise they are written as
    ``System: ...`` / ``User: ...`` / ``Assistant:`` lines. Calls are serialised (one
    generation at a time), so any number of scoring threads may share the judge. In the
    judge cache it is ``hf:`` and the folder's absolute path.
    """

    def __init__(self, model_path: Path | str, *, device: str | None = None, max_new_tokens: int = 64,
                 system_prompt: str = SYSTEM_PROMPT, user_template: str = USER_TEMPLATE):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(model_path).is_dir():
            raise ValueError(f"{model_path}: not a model folder")
        self.name = f"local model {model_path}"
        self.model = f"hf:{Path(model_path).resolve()}"
        self.prompt_version = prompt_version(system_prompt, user_template)
        self.uses_question = "{question}" in user_template
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True).to(self._device).eval()
        self._max_new_tokens = max_new_tokens
        self._system_prompt = system_prompt
        self._user_template = user_template
        self._lock = threading.Lock()

    def evaluate(self, question: str, reference: str, prediction: str) -> str:
        return self.complete(build_messages(question, reference, prediction, self._system_prompt,
                                            self._user_template))

    def score(self, question: str, reference: str, prediction: str) -> int | None:
        return parse_score(self.evaluate(question, reference, prediction))

    def complete(self, messages: list[dict]) -> str:
        """The model's greedy continuation of the rendered ``messages`` (special tokens removed)."""
        if getattr(self._tokenizer, "chat_template", None):
            prompt = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
        inputs = self._tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self._device)
        pad_id = self._tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self._tokenizer.eos_token_id
        with self._lock, self._torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self._max_new_tokens, do_sample=False,
                                          pad_token_id=pad_id)
        return self._tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
