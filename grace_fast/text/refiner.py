"""CATE refinement (docs/method.md section 3, step 4): caption + coarse labels + action units -> one emotion-aware
description, from an LLM behind any OpenAI-compatible endpoint, or from the deterministic template without one.

Requests run in a bounded thread pool at temperature 0, each with a timeout on the whole request (connecting,
sending and receiving all of the answer), retried with exponential backoff
on 429, 5xx, timeouts, dropped connections and malformed answers. A 401, 403 or 404 stops the run (every
request would fail alike); a clip whose request finally fails is reported and left for the next run. Only
successful descriptions reach the cache and the output.

>>> refiner = Refiner(Lexicon.load())  # no endpoint: the template
>>> refiner.describe("A man speaks.", ["happiness"])
'A man speaks. The face suggests happiness, with cheeks raised (AU6) and lip corners pulled up (AU12).'
"""

import argparse
import json
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import httpcore2
import httpx2
import openai
from openai.types.chat import ChatCompletion
from tqdm import tqdm

from grace_fast.arguments import integer, positive
from grace_fast.errors import UserError
from grace_fast.files import write_jsonl
from grace_fast.text.cache import Cache, cache_key
from grace_fast.text.jobs import CACHE_NAME, LABELS_NAME, Summary, read_jsonl
from grace_fast.text.lexicon import DEFAULT_PATH, Lexicon
from grace_fast.text.prompt import PROMPT_VERSION, TEMPLATE_VERSION, render_messages, template_description

DEFAULT_MODEL = "gpt-4o-mini"
FATAL_STATUS = (401, 403, 404)


class EndpointError(UserError, RuntimeError):
    """The endpoint refuses every request (bad key, no access, unknown model or URL): the run stops."""


class RequestFailed(RuntimeError):
    """One request failed for good: retries exhausted, or an answer that retrying cannot change."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat completions endpoint and how to call it.

    timeout: seconds per request, all of it (a server that trickles its answer is cut off); max_retries:
    retries after the first attempt; the wait before retry r (0-based) is backoff * 2**r seconds (or the
    server's Retry-After), at most max_backoff, times a random factor in [0.5, 1] so that parallel requests do
    not retry in step.
    """

    base_url: str | None = None
    model: str = DEFAULT_MODEL
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0

    @classmethod
    def from_env(cls, base_url=None, model=None, api_key=None, **options) -> "Endpoint | None":
        """The endpoint given by the arguments, else by OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL;
        None when neither a base URL nor an API key is given (the template stands in)."""
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not base_url and not api_key:
            return None
        return cls(base_url, model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL, api_key, **options)

    def __post_init__(self):
        for name in ("timeout", "backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


class Refiner:
    """Writes the emotion-aware description of one clip; thread-safe (describe() runs in a thread pool)."""

    def __init__(self, lexicon: Lexicon, endpoint: Endpoint | None = None):
        self.lexicon, self.endpoint = lexicon, endpoint
        self.source = endpoint.model if endpoint else "template"
        self.version = PROMPT_VERSION if endpoint else TEMPLATE_VERSION
        self._client = None
        self._deadline = _Deadline()
        if endpoint is not None:
            transport = httpx2.HTTPTransport()
            # httpx's timeouts bound each read, so the whole request is bounded in the network backend (which
            # HTTPTransport takes no argument for)
            transport._pool._network_backend = _DeadlineBackend(transport._pool._network_backend, self._deadline)
            # local servers take any key, but the client insists on one; retries are ours (see _request)
            self._client = openai.OpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key or "none",
                timeout=endpoint.timeout,
                max_retries=0,
                http_client=openai.DefaultHttpxClient(transport=transport),
            )

    def key(self, caption: str, labels: Sequence[str]) -> str:
        """The cache key: a hash of the caption, labels, their action units, the model and the prompt version."""
        emotions = [self.lexicon.emotion(label) for label in labels]
        units = [[[u.au, u.name, u.phrase] for u in self.lexicon.action_units(e)] for e in emotions]
        return cache_key(
            task="refine", caption=caption, labels=emotions, descriptors=units, model=self.source, prompt=self.version
        )

    def describe(self, caption: str, labels: Sequence[str]) -> str:
        """The description of one clip; raises RequestFailed or EndpointError when the endpoint fails."""
        if self._client is None:
            return template_description(caption, labels, self.lexicon)
        return self._request(render_messages(caption, labels, self.lexicon))

    def _request(self, messages: list[dict[str, str]]) -> str:
        endpoint = self.endpoint
        attempt = 0
        while True:
            retry_after = None
            try:
                self._deadline.at = time.monotonic() + endpoint.timeout
                response = self._client.chat.completions.create(
                    model=endpoint.model, messages=messages, temperature=0, max_tokens=256
                )
                return _content(response)
            except openai.APIStatusError as error:
                status, message = error.status_code, _error_message(error)
                if status in FATAL_STATUS:
                    raise EndpointError(
                        f"the endpoint {self._client.base_url} answered HTTP {status} ({message}) for model "
                        f"{endpoint.model!r}; check --api-key/OPENAI_API_KEY, --base-url/OPENAI_BASE_URL and --model"
                    ) from error
                if status not in (408, 409, 429) and status < 500:
                    raise RequestFailed(f"HTTP {status}: {message}") from error
                cause, retry_after = f"HTTP {status}: {message}", _retry_after(error.response)
            except openai.APITimeoutError:
                cause = f"timed out after {endpoint.timeout} s"
            except openai.APIConnectionError as error:
                cause = f"connection failed: {error.__cause__ or error}"
            except (json.JSONDecodeError, openai.APIResponseValidationError, MalformedResponse) as error:
                cause = f"malformed response: {error}"
            finally:
                self._deadline.at = None
            if attempt == endpoint.max_retries:
                raise RequestFailed(f"{cause} (after {attempt + 1} attempts)")
            delay = retry_after if retry_after is not None else endpoint.backoff * 2**attempt
            time.sleep(min(delay, endpoint.max_backoff) * random.uniform(0.5, 1.0))
            attempt += 1


class _Deadline(threading.local):
    """When the calling thread's request must be over (time.monotonic()), or None outside a request."""

    at: float | None = None


class _DeadlineBackend(httpcore2.NetworkBackend):
    """A network backend whose connects, reads and writes each wait at most until the calling thread's deadline,
    so that a timeout bounds the whole request."""

    def __init__(self, backend: httpcore2.NetworkBackend, deadline: _Deadline):
        self._backend, self._deadline = backend, deadline

    def left(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """timeout cut to the time left before the deadline; raises expired once it has passed."""
        if self._deadline.at is None:
            return timeout
        left = self._deadline.at - time.monotonic()
        if left <= 0:
            raise expired("the request ran out of time")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = self.left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options), self)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = self.left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, stream: httpcore2.NetworkStream, backend: _DeadlineBackend):
        self._stream, self._backend = stream, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> "_DeadlineStream":
        timeout = self._backend.left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class MalformedResponse(ValueError):
    """A 200 answer without a chat completion message in it."""


def _content(response) -> str:
    if not isinstance(response, ChatCompletion) or not getattr(response, "choices", None):
        raise MalformedResponse(f"no choices in {str(response)[:200]!r}")
    content = getattr(getattr(response.choices[0], "message", None), "content", None)
    if not isinstance(content, str) or not content.strip():
        raise MalformedResponse("the first choice has no text content")
    return " ".join(content.split())


def _error_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        body = body.get("message", body)
    return str(body or error.message)[:300]


def _retry_after(response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after")))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ClipText:
    """What refinement starts from for one clip."""

    clip: str
    caption: str
    labels: tuple[str, ...]


def refine_clips(
    clips: Sequence[ClipText], refiner: Refiner, cache: Cache, *, concurrency: int = 8, progress: bool = True
) -> tuple[dict[str, dict], Summary]:
    """Describe every clip not yet in the cache, `concurrency` requests at a time; store each success at once.

    Returns the output records of all described clips (cached or new), by clip, and the summary. Clips whose
    inputs hash alike share one request. Raises EndpointError (after stopping the pool) when the endpoint
    refuses requests; everything finished before stays cached.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    summary, records, pending = Summary(), {}, {}
    for item in clips:
        key = refiner.key(item.caption, item.labels)
        hit = cache.get(key)
        if hit is not None:
            records[item.clip] = _record(item, hit)
            summary.cached += 1
        else:
            pending.setdefault(key, []).append(item)
    version = refiner.version
    bar = tqdm(total=len(clips), initial=summary.cached, desc="refine", unit="clip", disable=not progress)
    refused: list[EndpointError] = []

    def describe(item: ClipText) -> str | None:
        if refused:  # the endpoint refused a request: start no more
            return None
        try:
            return refiner.describe(item.caption, item.labels)
        except EndpointError as error:
            refused.append(error)
            raise

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = {pool.submit(describe, group[0]): (key, group) for key, group in pending.items()}
        waiting = set(futures)
        while waiting:
            finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            if refused:
                raise refused[0]
            for future in finished:
                key, group = futures[future]
                try:
                    value = {"description": future.result(), "source": refiner.source, "prompt_version": version}
                except RequestFailed as error:
                    summary.failed.update({item.clip: str(error) for item in group})
                else:
                    cache.put(key, value)
                    records.update({item.clip: _record(item, value) for item in group})
                    summary.done += len(group)
                bar.update(len(group))
    finally:  # on EndpointError or Ctrl-C: drop the queued requests instead of waiting for them
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return records, summary


def _record(item: ClipText, value: dict) -> dict:
    return {"clip": item.clip, "caption": item.caption, "labels": list(item.labels), **value}


def load_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """The refined descriptions of a `grace-fast refine` output file, by clip."""
    return {record["clip"]: record["description"] for record in read_jsonl(path, "refined descriptions")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", required=True, help="captions JSONL written by `grace-fast caption`")
    parser.add_argument("--labels", help=f"coarse labels JSONL (default: {LABELS_NAME} beside --captions)")
    parser.add_argument("--out", required=True, help="output JSONL of refined descriptions")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--model", help=f"model name (default: $OPENAI_MODEL or {DEFAULT_MODEL})")
    parser.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY)")
    parser.add_argument("--template", action="store_true", help="use the deterministic template, not an endpoint")
    parser.add_argument("--concurrency", type=integer(1), default=8, help="requests in flight at once")
    parser.add_argument("--timeout", type=positive, default=60.0, help="seconds per request, all of it")
    parser.add_argument("--retries", type=integer(0), default=4, help="retries per request after the first attempt")
    parser.add_argument("--backoff", type=positive, default=1.0, help="first retry wait in seconds, doubled each retry")
    parser.add_argument("--max-backoff", type=positive, default=30.0, help="longest retry wait in seconds")
    parser.add_argument("--cache", help=f"cache file (default: {CACHE_NAME} beside --out)")
    parser.add_argument("--lexicon", default=str(DEFAULT_PATH), help="lexicon JSON (default: the built-in one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`grace-fast refine`: exit 0 when every clip is described, 1 when some failed; the endpoint refusing requests
    (EndpointError) is a user error."""
    lexicon = Lexicon.load(args.lexicon)
    endpoint = None
    if not args.template:
        endpoint = Endpoint.from_env(
            args.base_url,
            args.model,
            args.api_key,
            timeout=args.timeout,
            max_retries=args.retries,
            backoff=args.backoff,
            max_backoff=args.max_backoff,
        )
    if endpoint is None:
        print("refine: no endpoint (--base-url/OPENAI_BASE_URL, --api-key/OPENAI_API_KEY): using the template")
    labels_path = Path(args.labels) if args.labels else Path(args.captions).with_name(LABELS_NAME)
    labels = {r["clip"]: r["labels"] for r in read_jsonl(labels_path, "coarse labels (run grace-fast coarse-labels)")}
    clips, summary = [], Summary()
    for record in read_jsonl(args.captions, "captions"):
        if record["clip"] in labels:
            clips.append(ClipText(record["clip"], record["caption"], tuple(labels[record["clip"]])))
        else:
            summary.failed[record["clip"]] = f"no coarse labels in {labels_path}"
    out = Path(args.out)
    with Cache(args.cache or out.with_name(CACHE_NAME)) as cache:
        refiner = Refiner(lexicon, endpoint)
        records, result = refine_clips(clips, refiner, cache, concurrency=args.concurrency, progress=not args.quiet)
    write_jsonl(out, [records[c.clip] for c in clips if c.clip in records])
    summary.done, summary.cached = result.done, result.cached
    summary.failed.update(result.failed)
    summary.report("refine")
    return 1 if summary.failed else 0
