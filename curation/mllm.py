"""The MLLM rating client (RefineNet step 1): an OpenAI-compatible chat endpoint asked to rate an
image-caption pair on fidelity and consistency with a fixed, versioned prompt.

Only the wire protocol lives here: the prompt, the request body, one HTTP POST with bounded retries
and the strict answer parser. :func:`curation.reward.annotate` samples the pairs, runs this client
in threads and stores the ratings. Standard library only (urllib): no client package needed.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path

from curation.errors import CurationError

AXES = ("fidelity", "consistency")
PROMPT_VERSION = "refinenet-rate-v1"
SYSTEM_PROMPT = (
    "You are a radiologist reviewing image-caption pairs for a training dataset. You rate each pair "
    "on two axes, each an integer from 1 (worst) to 5 (best):\n"
    "- fidelity: does the caption describe what this image actually shows (modality, anatomy, view, "
    "findings)? 1 = unrelated to the image, 5 = accurate and specific.\n"
    "- consistency: is the caption medically coherent and internally consistent (no contradictory "
    "findings, plausible terminology)? 1 = incoherent, 5 = fully coherent.\n"
    "Answer with only a JSON object and nothing else, for example: {\"fidelity\": 4, \"consistency\": 5}"
)
USER_TEMPLATE = "Caption:\n{caption}\n\nRate this image-caption pair."
RATING_MIN, RATING_MAX = 1, 5


def parse_rating(text: str) -> dict | None:
    """The two integer ratings from an answer, or None when the answer is not exactly a JSON object
    with integer ``fidelity`` and ``consistency`` in 1..5 (an optional ```json fence is allowed)."""
    if not isinstance(text, str):
        return None
    t = text.strip()
    m = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", t, flags=re.S)
    if m:
        t = m.group(1)
    try:
        obj = json.loads(t)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or set(obj) != set(AXES):
        return None
    out = {}
    for k in AXES:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, int) or not RATING_MIN <= v <= RATING_MAX:
            return None
        out[k] = v
    return out


def image_data_url(path: Path, max_side: int = 512) -> str:
    """The image as a JPEG data URL, downsized to ``max_side`` (what the MLLM sees)."""
    from PIL import Image

    img = Image.open(path)
    img.load()
    img = img.convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_request(model: str, caption: str, image_url: str) -> dict:
    """The chat-completions request body for one pair (the versioned prompt)."""
    return {"model": model, "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": [
                             {"type": "text", "text": USER_TEMPLATE.format(caption=caption)},
                             {"type": "image_url", "image_url": {"url": image_url}}]}]}


class EndpointDown(CurationError):
    """The endpoint gave no usable response. ``response`` is True when something came back broken
    (a bad status line, a truncated body): that is stored with its text as ``transport_error``;
    False when nothing came back (refused, timed out): nothing is stored."""

    def __init__(self, msg: str, response: bool = False):
        super().__init__(msg)
        self.response = response


class Stopped(Exception):
    """Raised inside a rating worker once the run was told to stop (Ctrl-C)."""


def _post(url: str, body: dict, timeout: float, api_key: str | None) -> str:
    """POST a chat-completions request and return the answer's text.

    An answer of any other shape (not JSON, not UTF-8, no ``choices[0].message.content``, content
    that is null or not text) is returned as its raw text, which :func:`parse_rating` then reports
    as malformed: it is stored with that text, never a crash. Transport failures (refused
    connection, timeout, a bad status line, a truncated body) raise :class:`EndpointDown`.
    """
    import http.client
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        if e.code in (401, 403, 404):
            raise CurationError(f"endpoint {url} answered HTTP {e.code}: {detail}. Fix: check --endpoint "
                                "(it ends in /v1), --model and the API key (OPENAI_API_KEY).") from None
        raise EndpointDown(f"HTTP {e.code}: {detail}") from None
    except (http.client.HTTPException, ConnectionResetError) as e:  # something came back, broken
        raise EndpointDown(f"{type(e).__name__}: {e}", response=True) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise EndpointDown(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    text = raw.decode("utf-8", "replace")
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return text[:2000]
    return content if isinstance(content, str) else text[:2000]


def chat_url(endpoint: str) -> str:
    e = endpoint.rstrip("/")
    return e if e.endswith("/chat/completions") else e + "/chat/completions"


def rate_one(url, model, caption, image_url, *, retries=2, timeout=60.0, api_key=None,
             down_retries=3, backoff=1.0, stop=None) -> dict:
    """Rate one pair: retry malformed answers up to ``retries`` times, transient errors with backoff.

    ``stop`` (a threading.Event): when set, no further request is sent (:class:`Stopped` is raised).
    """
    body = build_request(model, caption, image_url)
    answers = []
    attempts = 0
    for _ in range(retries + 1):
        for k in range(down_retries + 1):
            if stop is not None and stop.is_set():
                raise Stopped()
            try:
                attempts += 1
                text = _post(url, body, timeout, api_key)
                break
            except EndpointDown:
                if k == down_retries:
                    raise
                if stop is not None:
                    stop.wait(backoff * 2 ** k)
                else:
                    time.sleep(backoff * 2 ** k)
        answers.append(text)
        parsed = parse_rating(text)
        if parsed:
            return {"status": "ok", **parsed, "attempts": attempts, "answer": text}
    return {"status": "malformed", "fidelity": None, "consistency": None, "attempts": attempts,
            "answer": answers[-1][:2000] if answers else None}
